"""Bad input gives a LAMMPS error message naming the problem and the fix, never a crash."""

from __future__ import annotations

import pytest
import torch
from lammps_harness import argon_box, run_lmp


def plain_torchscript(path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path))


CASES = {
    "missing-file": ("pair_style atomplug {dir}/missing.pt", "does not exist"),
    "text-file": ("pair_style atomplug {dir}/notes.txt", "is not an atomplug model: it is not a TorchScript archive"),
    "torchscript-without-metadata": (
        "pair_style atomplug {dir}/linear.pt",
        "without atomplug metadata, not an atomplug model",
    ),
    "unknown-element": (
        "pair_style atomplug {lj}\npair_coeff * * Cl",
        "atom type 1 is Cl (17), unknown to the model 'lennard-jones', which knows Ar (18)",
    ),
    "not-an-element": (
        "pair_style atomplug {lj}\npair_coeff * * Xq",
        "'Xq' for atom type 1 is neither a chemical element symbol",
    ),
    "wrong-count": (
        "pair_style atomplug {lj}\npair_coeff * * Ar Ar",
        "needs one element (symbol, atomic number or NULL) per LAMMPS atom type: 1 type(s), got 2 entries",
    ),
    "too-few": ("pair_style atomplug {lj}\npair_coeff * * Ar", "2 type(s), got 1 entry"),
    "unknown-keyword": (
        "pair_style atomplug {lj} colour blue",
        "unknown keyword 'colour': expected device, check_consistency, non_conservative, variant, charge, spin, "
        "outputs or uncertainty_threshold",
    ),
    "bad-device": ("pair_style atomplug {lj} device tpu", "device must be cpu or cuda"),
    "missing-value": ("pair_style atomplug {lj} device", "keyword 'device' needs a value"),
    "bad-flag": ("pair_style atomplug {lj} check_consistency maybe", "check_consistency must be on or off"),
    "units-lj": ("pair_style atomplug {lj}", "'units lj' are LJ reduced units with no physical scale"),
    "newton-off": ("pair_style atomplug {lj}\npair_coeff * * Ar\nrun 0", "needs newton_pair on"),
}


if not torch.cuda.is_available():
    CASES["cuda-without-gpu"] = (
        "pair_style atomplug {lj} device cuda",
        "device cuda asked, but torch sees no CUDA device",
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_lammps_error(tmp_path, plugin, lj_model_path, case):
    (tmp_path / "notes.txt").write_text("not a model\n")
    plain_torchscript(tmp_path / "linear.pt")
    commands, expected = CASES[case]
    text = (
        argon_box(
            units="lj" if case == "units-lj" else "metal",
            settings="newton off" if case == "newton-off" else "",
            ntypes=2 if case == "too-few" else 1,
        )
        + commands.format(dir=tmp_path, lj=lj_model_path)
        + "\n"
    )
    result = run_lmp(tmp_path, text, check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # LAMMPS' own error exit, not a signal
    assert "ERROR: pair_style atomplug: " in output, output[-3000:]
    # LAMMPS wraps long messages over lines: compare without line breaks
    assert expected in " ".join(output.split()), output[-3000:]
    assert "Segmentation" not in output and "core dumped" not in output
