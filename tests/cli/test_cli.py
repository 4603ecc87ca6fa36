"""The `atomplug` command line: info, eval (round trip through ASE's reader), export-example, errors."""

import os
import shutil
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from lj_reference import lennard_jones_reference
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon

from atomplug.cli import main
from atomplug.core import ModelRunner


def atomplug(*args):
    """The installed console script, as a user runs it."""
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    assert script, "the 'atomplug' console script is installed next to the interpreter"
    return subprocess.run([script, *args], capture_output=True, text=True, timeout=300)


def test_info_shows_contract(lj_model_path):
    run = atomplug("info", lj_model_path)
    assert run.returncode == 0, run.stderr
    for expected in ("Ar (18)", "Angstrom", "energy", "per atom", "half, strict", f"{AR_CUTOFF}"):
        assert expected in run.stdout


def test_eval_round_trip_matches_independent_lj(lj_model_path, tmp_path):
    frames = [displaced_triclinic_argon(seed=seed) for seed in (1, 2, 3)]
    molecule_like = frames[0][:5].copy()
    molecule_like.pbc = False
    molecule_like.cell = np.zeros((3, 3))
    frames.append(molecule_like)
    source, target = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(source, frames)
    assert main(["eval", lj_model_path, str(source), "-o", str(target), "--batch-size", "2", "--quiet"]) == 0
    written = ase.io.read(target, ":")
    assert len(written) == len(frames)
    for atoms, original in zip(written, frames):
        energy, forces, virial = lennard_jones_reference(
            original.positions, original.cell.array, original.pbc, AR_EPSILON, AR_SIGMA, AR_CUTOFF
        )
        # extxyz keeps 8 decimals in its text, hence the absolute tolerances.
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-10, abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-8)
        if original.pbc.all():
            stress = -virial / original.get_volume()
            voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-8)
        else:
            assert "stress" not in atoms.calc.results


def test_export_example_lj_runs(tmp_path):
    path = tmp_path / "lj.pt"
    run = atomplug("export-example", "lj", str(path))
    assert run.returncode == 0, run.stderr
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    assert ModelRunner(str(path)).run([atoms])["energy"][0, 0] < 0


def test_export_example_message_passing_runs(tmp_path):
    from atomplug.core import load_model

    path = tmp_path / "mp.pt"
    run = atomplug("export-example", "message-passing", str(path))
    assert run.returncode == 0, run.stderr
    capabilities = load_model(str(path)).capabilities
    assert capabilities.interaction_range == 7.5  # 3 layers x 2.5 A: beyond its one cutoff


def test_export_example_mace_needs_a_model_file(tmp_path):
    run = atomplug("export-example", "mace", str(tmp_path / "mace.pt"))
    assert run.returncode == 2
    assert "export-example mace needs the MACE model file: --from MODEL" in run.stderr
    run = atomplug("export-example", "lj", str(tmp_path / "lj.pt"), "--from", "x.model")
    assert run.returncode == 2 and "--from is for the mace example" in run.stderr


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, m: ["info", str(d / "missing.pt")], "does not exist"),
        (lambda d, m: ["eval", m, str(d / "missing.xyz"), "-o", str(d / "out.xyz")], "does not exist"),
        (
            lambda d, m: ["eval", m, str(d / "water.xyz"), "-o", str(d / "out.xyz")],
            "H (1), O (8) unknown to this model, which knows Ar (18)",
        ),
        (lambda d, m: ["eval", m, str(d / "argon.xyz"), "-o", str(d / "out.xyz"), "--batch-size", "0"], "batch-size"),
    ],
)
def test_errors_exit_2_with_message_and_write_nothing(lj_model_path, tmp_path, make_args, message):
    from ase.build import molecule

    ase.io.write(tmp_path / "water.xyz", molecule("H2O"))
    ase.io.write(tmp_path / "argon.xyz", bulk("Ar", "fcc", a=5.26, cubic=True))
    run = atomplug(*make_args(tmp_path, lj_model_path))
    assert run.returncode == 2
    assert run.stderr.startswith("atomplug: error:") and message in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.xyz").exists()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".atomplug-eval-")]
