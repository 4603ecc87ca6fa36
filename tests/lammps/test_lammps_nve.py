"""A 1000-step NVE trajectory with `pair_style atomplug` stays on the `lj/cut` one, on any number of ranks.

The argon box is triclinic, displaced and hot enough for atoms to cross periodic boundaries; a
small skin with `check yes` makes LAMMPS rebuild neighbor lists (and re-sort and re-wrap atoms)
many times, so the plugin's atom mapping is rebuilt many times along the way.
"""

from __future__ import annotations

import os

import ase.io
import numpy as np
import pytest

from lammps_harness import read_dump, run_lmp
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon

STEPS = 1000
POSITION_TOLERANCE = 1e-8  # Angstrom


def nve_input(pair: str, label: str) -> str:
    return f"""
units metal
atom_style atomic
read_data argon.data
{pair}
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create 120.0 4928459 loop geom
fix nve all nve
thermo 250
thermo_style custom step temp pe etotal
thermo_modify format float %.15g
run {STEPS}
write_dump all custom {label}.dump id xu yu zu vx vy vz modify sort id format float %.17g
"""


ATOMPLUG = "pair_style atomplug {model}\npair_coeff * * Ar"
NATIVE = f"pair_style lj/cut {AR_CUTOFF!r}\npair_coeff * * {AR_EPSILON!r} {AR_SIGMA!r}\npair_modify shift yes"


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, plugin, lj_model_path):
    directory = tmp_path_factory.mktemp("lammps-nve")
    ase.io.write(str(directory / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    runs = {}
    for label, pair, nprocs in [
        ("native-1", NATIVE, 1),
        ("atomplug-1", ATOMPLUG.format(model=lj_model_path), 1),
        ("atomplug-2", ATOMPLUG.format(model=lj_model_path), 2),
    ]:
        result = run_lmp(directory, nve_input(pair, label), nprocs, name=f"in.{label}")
        runs[label] = (read_dump(directory / f"{label}.dump"), result.stdout)
    return runs


def positions(dump):
    return np.stack([dump["xu"], dump["yu"], dump["zu"]], axis=1)


def test_trajectory_follows_lj_cut(trajectories):
    native, native_log = trajectories["native-1"]
    ours, _ = trajectories["atomplug-1"]
    start = displaced_triclinic_argon()
    # the atoms did move, and some crossed the cell (neighbor lists were rebuilt along the way)
    assert np.max(np.abs(positions(native))) > 0
    assert "Neighbor list builds" in native_log
    builds = int(native_log.split("Neighbor list builds =")[1].split()[0])
    assert builds >= 10
    assert len(start) == len(native["id"])
    difference = np.max(np.abs(positions(ours) - positions(native)))
    assert difference < POSITION_TOLERANCE, difference


def test_trajectory_does_not_depend_on_ranks(trajectories):
    one, _ = trajectories["atomplug-1"]
    two, _ = trajectories["atomplug-2"]
    difference = np.max(np.abs(positions(two) - positions(one)))
    assert difference < POSITION_TOLERANCE, difference
    velocities = lambda d: np.stack([d["vx"], d["vy"], d["vz"]], axis=1)  # noqa: E731
    assert np.max(np.abs(velocities(two) - velocities(one))) < 1e-8
