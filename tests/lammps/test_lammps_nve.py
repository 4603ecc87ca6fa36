"""A 1000-step NVE trajectory with `pair_style atomplug` stays on the `lj/cut` one, on any number of ranks,
and conserves energy by itself.

The argon box is triclinic, displaced and hot enough for atoms to cross periodic boundaries; a
small skin with `check yes` makes LAMMPS rebuild neighbor lists (and re-sort and re-wrap atoms)
many times, so the plugin's atom mapping is rebuilt many times along the way.
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from lammps_harness import argon_nve_start, argon_pair_styles, read_dump, run_lmp
from structures import NVE_DRIFT_TOLERANCE, displaced_triclinic_argon, linear_drift

STEPS = 1000
POSITION_TOLERANCE = 1e-8  # Angstrom
THERMO_EVERY = 10


def nve_input(pair: str, label: str) -> str:
    return (
        argon_nve_start(pair, 120.0)
        + f"""
thermo {THERMO_EVERY}
thermo_style custom step temp pe etotal
thermo_modify format float %.15g
run {STEPS}
write_dump all custom {label}.dump id xu yu zu vx vy vz modify sort id format float %.17g
"""
    )


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, plugin, lj_model_path):
    directory = tmp_path_factory.mktemp("lammps-nve")
    ase.io.write(str(directory / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    runs = {}
    native, atomplug = argon_pair_styles(lj_model_path)
    for label, pair, nprocs in [
        ("native-1", native, 1),
        ("atomplug-1", atomplug, 1),
        ("atomplug-2", atomplug, 2),
    ]:
        result = run_lmp(directory, nve_input(pair, label), nprocs, name=f"in.{label}")
        runs[label] = (read_dump(directory / f"{label}.dump"), result.stdout)
    return runs


def thermo_rows(log: str) -> np.ndarray:
    """The rows of LAMMPS' thermo table (step temp pe etotal) from a run's screen output."""
    lines = log.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:4] == ["Step", "Temp", "PotEng", "TotEng"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("Loop time"):
            break
        rows.append([float(value) for value in line.split()])
    return np.array(rows)


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


def test_atomplug_run_conserves_energy(trajectories):
    """Total-energy drift of the atomplug run itself (a linear fit of thermo etotal every 10 steps),
    next to lj/cut's on the same trajectory."""
    drifts = {}
    for label in ("atomplug-1", "native-1"):
        rows = thermo_rows(trajectories[label][1])
        assert rows.shape[0] == STEPS // THERMO_EVERY + 1 and rows[-1, 0] == STEPS
        n_atoms = len(displaced_triclinic_argon())
        drifts[label] = (linear_drift(rows[:, 3] / n_atoms), rows[:, 3].std() / n_atoms, np.ptp(rows[:, 2]) / n_atoms)
    drift, fluctuation, potential_range = drifts["atomplug-1"]
    print(
        f"\nLAMMPS NVE 108 Ar, {STEPS} x 1 fs: etotal drift {drift:.2e} eV/atom (lj/cut {drifts['native-1'][0]:.2e}), "
        f"fluctuation {fluctuation:.2e} eV/atom, potential energy range {potential_range:.2e} eV/atom"
    )
    assert potential_range > 100 * NVE_DRIFT_TOLERANCE, "the atoms hardly moved: not a test of integration"
    assert drift < NVE_DRIFT_TOLERANCE
