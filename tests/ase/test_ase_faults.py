"""A model that raises inside TorchScript, under ASE: a Python exception with the model's message,
and the calculator stays usable."""

from __future__ import annotations

import pytest
from ase import Atoms
from bad_files import FRAGILE_LIMIT, FRAGILE_MESSAGE, export_fragile

from atomplug.ase_calculator import AtomplugCalculator


def chain(n_atoms: int) -> Atoms:
    return Atoms("H" * n_atoms, positions=[[1.5 * k, 0.0, 0.0] for k in range(n_atoms)])


def test_model_that_raises(tmp_path):
    calc = AtomplugCalculator(export_fragile(str(tmp_path / "fragile.pt")))
    small, large = chain(FRAGILE_LIMIT), chain(FRAGILE_LIMIT + 1)
    small.calc = large.calc = calc
    with pytest.raises(ValueError) as caught:
        large.get_forces()
    message = str(caught.value)
    assert message.startswith(f"the model's own code raised RuntimeError: {FRAGILE_MESSAGE} (the model refuses")
    assert "\n" not in message
    energy = small.get_potential_energy()  # a failure leaves nothing stale behind
    assert energy > 0.0 and small.get_forces().shape == (FRAGILE_LIMIT, 3)
