"""`ATOMPLUG MODEL=model.pt2`: a compiled package (`atomplug compile`, AOTInductor) under `plumed driver`.

The coordination example, compiled, gives what its model archive gives: the CV, the bias of a
RESTRAINT on it, and the forces and virial PLUMED applies (`--dump-forces --dump-full-virial`), to
1e-10 relative, in a triclinic periodic box and in vacuum, for all atoms and for SELECTED_ATOMS.
The log says that the compiled package runs and that its program answered every call; the package
refusals (compiled for another torch or device, damaged, stale) are core's words.
"""

import os
import re
import subprocess

import numpy as np
import pytest
import torch
from compiled_packages import BAD_PACKAGE_PROBLEMS, bad_packages, core_message
from plumed_testing import FMT, check_run, random_frames, read_colvar, read_forces, run_driver, write_xyz

from atomplug.plumed_cv import plumed_environment, plumed_program

TOLERANCE = 1e-10
TRICLINIC_BOX = np.array([[2.5, 0.0, 0.0], [0.2, 2.4, 0.0], [-0.1, 0.15, 2.6]])  # nm, rows are cell vectors
N_FRAMES = 4
DESCRIPTION = f"compiled package (AOTInductor, cpu, torch {torch.__version__})"
ANSWERED = re.compile(r"ATOMPLUG cv: the compiled package answered (\d+) of (\d+) model calls \((\d+) by TorchScript\)")
CASES = [("periodic", ""), ("vacuum", ""), ("periodic", "SELECTED_ATOMS=1-5,12,20")]


def run(directory: str, plugin: str, trajectory: str, model: str, selection: str, label: str):
    """colvar (cv, r.bias), forces, virial and stdout of one driver run with a RESTRAINT on the CV."""
    text = (
        f"LOAD FILE={plugin}\n"
        f"cv: ATOMPLUG MODEL={model} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1 {selection}\n"
        "r: RESTRAINT ARG=cv AT=1.5 KAPPA=20.0\n"
        f"PRINT ARG=cv,r.bias FILE=COLVAR-{label} FMT={FMT}\n"
    )
    forces_file = f"forces-{label}.xyz"
    result = run_driver(
        directory, text, trajectory, "--dump-forces", forces_file, "--dump-forces-fmt", FMT, "--dump-full-virial"
    )
    check_run(result)
    virial, forces = read_forces(os.path.join(directory, forces_file))
    return read_colvar(os.path.join(directory, f"COLVAR-{label}")), forces, virial, result.stdout


def relative(ours, reference) -> float:
    ours, reference = np.asarray(ours, dtype=float), np.asarray(reference, dtype=float)
    assert ours.shape == reference.shape
    return float(np.max(np.abs(ours - reference))) / max(float(np.max(np.abs(reference))), 1e-300)


@pytest.mark.parametrize("geometry, selection", CASES)
def test_package_equals_the_archive(
    tmp_path, plugin, coordination_path, coordination_package_path, geometry, selection
):
    frames = random_frames(30, N_FRAMES, 2.4, seed=11)
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, frames, TRICLINIC_BOX if geometry == "periodic" else None)
    archive = run(str(tmp_path), plugin, trajectory, coordination_path, selection, "pt")
    package = run(str(tmp_path), plugin, trajectory, coordination_package_path, selection, "pt2")

    assert np.all(archive[0]["cv"] > 0.1), "the test structures must have contacts"
    assert np.max(np.abs(archive[1])) > 1e-3  # the restraint pulls: a real test of the forces
    for key in ("cv", "r.bias"):
        assert relative(package[0][key], archive[0][key]) <= TOLERANCE, key
    assert relative(package[1], archive[1]) <= TOLERANCE, "forces"
    assert relative(package[2], archive[2]) <= TOLERANCE, "virial"

    assert DESCRIPTION in package[3] and "compiled package" not in archive[3]
    counts = [tuple(int(n) for n in match) for match in ANSWERED.findall(package[3])]
    assert counts == [(N_FRAMES, N_FRAMES, 0)], package[3][-3000:]


PLUMED_PREFIX = "ERROR in input to action ATOMPLUG with label cv : "


def plumed_message(directory, plugin: str, model: str) -> str:
    (directory / "two-atoms.xyz").write_text("2\n0 0 0\nX 0 0 0\nX 0.1 0 0\n")
    (directory / "plumed.dat").write_text(
        f"LOAD FILE={plugin}\ncv: ATOMPLUG MODEL={model} SPECIES1=1 SPECIES2=2 SPECIES_TO_TYPES=8,1\n"
    )
    result = subprocess.run(
        [plumed_program(), "driver", "--plumed", "plumed.dat", "--ixyz", "two-atoms.xyz"],
        cwd=directory, env=plumed_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in result.stderr.splitlines() if line.startswith(PLUMED_PREFIX)]
    assert result.returncode != 0 and lines, (result.stdout[-2000:], result.stderr[-2000:])
    return lines[-1][len(PLUMED_PREFIX) :].strip()


@pytest.fixture(scope="module")
def refused(tmp_path_factory, plugin, coordination_path, coordination_package_path):
    """{kind: (core's message, PLUMED's message)} for each bad copy of the coordination package."""
    from atomplug.examples.coordination import export_coordination

    directory = tmp_path_factory.mktemp("plumed-compiled-refused")
    other = str(directory / "other.pt")
    export_coordination(other, r0=4.0, d_max=8.0, types_a=[8], types_b=[1])
    paths = bad_packages(coordination_package_path, coordination_path, other, directory)
    return {kind: (core_message(path), plumed_message(directory, plugin, path)) for kind, path in paths.items()}


@pytest.mark.parametrize("kind", list(BAD_PACKAGE_PROBLEMS))
def test_a_refused_package_gets_core_words(refused, kind):
    core, plumed = refused[kind]
    assert BAD_PACKAGE_PROBLEMS[kind] in core and "compile it again: `atomplug compile coordination.pt`" in core
    assert plumed == core
