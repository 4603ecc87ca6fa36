"""A model that raises inside TorchScript, under LAMMPS (1 and 2 MPI ranks): LAMMPS' own error
with the model's message and its error exit, no segfault, no hang."""

from __future__ import annotations

import re
import signal

import pytest
from bad_files import FRAGILE_MESSAGE, export_fragile
from lammps_harness import argon_box, run_lmp


@pytest.mark.parametrize("nprocs", [1, 2], ids=["1-rank", "2-ranks"])
def test_model_that_raises(tmp_path, plugin, nprocs):
    model = export_fragile(str(tmp_path / "fragile.pt"))
    text = (
        argon_box()
        + f"""pair_style atomplug {model}
pair_coeff * * Ar
run 0
"""
    )
    result = run_lmp(tmp_path, text, nprocs=nprocs, check=False, timeout=120)
    output = " ".join((result.stdout + result.stderr).split())  # LAMMPS wraps long lines
    assert result.returncode != 0, output[-3000:]
    assert result.returncode not in (-signal.SIGSEGV, 128 + signal.SIGSEGV, -signal.SIGABRT), output[-3000:]
    assert "Segmentation" not in output and "core dumped" not in output
    assert re.search(
        r"ERROR on proc \d: pair_style atomplug on rank \d at step 0: the model's own code raised "
        + re.escape(f"RuntimeError: {FRAGILE_MESSAGE} (the model refuses this input"),
        output,
    ), output[-3000:]
