"""The GPU path's marshalling, on the CPU: `ATOMPLUG ... DEVICE=cuda` packs each call's host tensors
(positions, cell, the pairs and shifts of every list, the per-atom masses and charges) into one
buffer, sends it in one copy and gives the model typed views of it; the CV, its forces and virial
come back in one copy (atomplug_core::DeviceTransfer). ATOMPLUG_ONE_COPY=1 makes the CPU do exactly
that, so the offsets and views are checked here without a GPU: `plumed driver` writes the same
bytes (COLVAR, the forces and virial of a RESTRAINT on the CV) with and without it, for the
coordination model (periodic triclinic box, all atoms and SELECTED_ATOMS) and for the Coulomb model
reading per-atom charges (`--mc`); the log counts one copy in and one out per call.
"""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from ase.build import bulk
from plumed_testing import FMT, check_run, random_frames, read_forces, write_xyz

from atomplug.core.units import conversion_factor
from atomplug.examples.coulomb import export_coulomb
from atomplug.plumed_cv import plumed_environment, plumed_program

TRICLINIC_BOX = np.array([[2.5, 0.0, 0.0], [0.2, 2.4, 0.0], [-0.1, 0.15, 2.6]])  # nm
N_FRAMES = 4
SUMMARY = re.compile(r"ATOMPLUG (\w+): inputs to cpu and results back: (\d+) calls, (\d+) copies in, (\d+) out")
NM = conversion_factor("Angstrom", "nm")


def driver(directory: str, text: str, trajectory: str, packed: bool, *extra: str) -> str:
    """`plumed driver` with the forces and virial dumped; its stdout."""
    with open(os.path.join(directory, "plumed.dat"), "w") as handle:
        handle.write(text)
    environment = plumed_environment()
    environment.pop("ATOMPLUG_ONE_COPY", None)
    if packed:
        environment["ATOMPLUG_ONE_COPY"] = "1"
    command = [plumed_program(), "driver", "--plumed", "plumed.dat", "--ixyz", trajectory]
    command += ["--dump-forces", "forces.xyz", "--dump-forces-fmt", FMT, "--dump-full-virial", *extra]
    result = subprocess.run(command, cwd=directory, env=environment, capture_output=True, text=True, timeout=120)
    check_run(result)
    return result.stdout


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plugin, coordination_path):
    """{(case, packed): (COLVAR text, forces text, stdout, directory)}"""
    frames = random_frames(30, N_FRAMES, 2.4, seed=21)
    salt = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(2)
    salt.rattle(stdev=0.05, seed=4)
    charges = np.where(salt.numbers == 11, 1.0, -1.0) * np.random.default_rng(5).uniform(0.7, 1.1, len(salt))
    coulomb = str(tmp_path_factory.mktemp("one-copy-models") / "coulomb.pt")
    export_coulomb(coulomb, cutoff=6.0)
    sodium = ",".join(str(k + 1) for k in np.flatnonzero(salt.numbers == 11))
    chlorine = ",".join(str(k + 1) for k in np.flatnonzero(salt.numbers == 17))
    cases = {
        "coordination": (
            f"cv: ATOMPLUG MODEL={coordination_path} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1\n",
            lambda path: write_xyz(path, frames, TRICLINIC_BOX),
            (),
        ),
        "selected": (
            f"cv: ATOMPLUG MODEL={coordination_path} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1 "
            "SELECTED_ATOMS=1-5,12,20\n",
            lambda path: write_xyz(path, frames, TRICLINIC_BOX),
            (),
        ),
        "charges": (
            f"cv: ATOMPLUG MODEL={coulomb} OUTPUT=energy SPECIES1={sodium} SPECIES2={chlorine} "
            "SPECIES_TO_TYPES=11,17\n",
            lambda path: write_xyz(path, [salt.positions * NM], salt.cell.array * NM),
            ("--mc", "mc.dat"),
        ),
    }
    results = {}
    for case, (action, write, extra) in cases.items():
        for packed in (False, True):
            directory = str(tmp_path_factory.mktemp(f"one-copy-{case}-{int(packed)}"))
            with open(os.path.join(directory, "mc.dat"), "w") as handle:
                handle.write("#! FIELDS index mass charge\n")
                for index, (mass, charge) in enumerate(zip(salt.get_masses(), charges)):
                    handle.write(f"{index} {float(mass)!r} {float(charge)!r}\n")
            trajectory = os.path.join(directory, "trajectory.xyz")
            write(trajectory)
            text = (
                "LOAD FILE=" + plugin + "\n" + action + "r: RESTRAINT ARG=cv AT=1.5 KAPPA=20.0\n"
                f"PRINT ARG=cv,r.bias FILE=COLVAR FMT={FMT}\n"
            )
            stdout = driver(directory, text, trajectory, packed, *extra)
            with (
                open(os.path.join(directory, "COLVAR")) as colvar,
                open(os.path.join(directory, "forces.xyz")) as forces,
            ):
                results[(case, packed)] = (colvar.read(), forces.read(), stdout, directory)
    return results


@pytest.mark.parametrize("case", ["coordination", "selected", "charges"])
def test_one_copy_writes_the_same_bytes(runs, case):
    plain, packed = runs[(case, False)], runs[(case, True)]
    _virial, forces = read_forces(os.path.join(plain[3], "forces.xyz"))
    assert np.abs(forces).max() > 1e-3, "the restraint must pull: a run without forces checks nothing"
    assert packed[0] == plain[0], "COLVAR differs"
    assert packed[1] == plain[1], "forces or virial differ"


@pytest.mark.parametrize("case", ["coordination", "selected", "charges"])
def test_the_log_counts_one_copy_each_way_per_call(runs, case):
    summaries = SUMMARY.findall(runs[(case, True)][2])
    frames = 1 if case == "charges" else N_FRAMES
    assert summaries == [("cv", str(frames), str(frames), str(frames))], runs[(case, True)][2][-3000:]
    assert not SUMMARY.search(runs[(case, False)][2])
