"""A model that raises inside TorchScript, as a PLUMED CV: PLUMED's error with the model's message,
from Python (`plumed.PlumedError`) and under `plumed driver` (PLUMED's error report and a failed
exit: the driver aborts on any error it does not catch), never a segfault."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from bad_files import FRAGILE_LIMIT, FRAGILE_MESSAGE, export_fragile
from plumed_testing import run_driver, write_xyz
from test_plumed_bad_input import Session, error_chain

EXPECTED = f"ATOMPLUG cv: the model's own code raised RuntimeError: {FRAGILE_MESSAGE} (the model refuses this input"


def chain(n_atoms: int) -> np.ndarray:
    return np.array([[0.15 * k, 0.0, 0.0] for k in range(n_atoms)])  # nm


def cv_lines(model: str, n_atoms: int, colvar: str):
    return [
        f"cv: ATOMPLUG MODEL={model} SPECIES1=1-{n_atoms} SPECIES_TO_TYPES=1 OUTPUT=energy",
        f"PRINT ARG=cv FILE={colvar}",
    ]


@pytest.fixture(scope="module")
def fragile(tmp_path_factory):
    return export_fragile(str(tmp_path_factory.mktemp("fragile") / "fragile.pt"))


def test_model_that_raises_from_python(plugin, fragile, tmp_path):
    import plumed

    n_atoms = FRAGILE_LIMIT + 1
    session = Session(plugin, n_atoms, cv_lines(fragile, n_atoms, str(tmp_path / "COLVAR")))
    with pytest.raises(plumed.PlumedError) as caught:
        session.calc(chain(n_atoms))
    assert EXPECTED in error_chain(caught.value)


def test_model_that_raises_under_plumed_driver(plugin, fragile, tmp_path):
    n_atoms = FRAGILE_LIMIT + 1
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, [chain(n_atoms)], None)
    text = "\n".join([f"LOAD FILE={plugin}"] + cv_lines(fragile, n_atoms, "COLVAR")) + "\n"
    result = run_driver(str(tmp_path), text, trajectory)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and result.returncode not in (-signal.SIGSEGV, 128 + signal.SIGSEGV), output[-3000:]
    assert "Segmentation" not in output
    assert EXPECTED in output, output[-3000:]
    assert "PLUMED: An error happened while calculating cv" in output
