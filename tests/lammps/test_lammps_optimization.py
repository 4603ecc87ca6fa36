"""`pair_style atomplug` across TorchScript's switch to optimised execution (archive.UNOPTIMIZED_CALLS).

The model's forward runs unoptimised for its first UNOPTIMIZED_CALLS calls after `pair_style`, then
optimised on a fresh copy of the module (atomplug_core::Model). Two `run` commands (the count lives
with the loaded model, not with a run) take an NVE trajectory well past the switch; energy, pressure
and forces of every step must stay those of LAMMPS' own `lj/cut` (1e-10 relative, as in
test_lammps_lj). Without the fresh copy the optimised entry point fails right after the switch.
A second `pair_style` loads the model again: its count starts again at 0.
"""

from __future__ import annotations

import os
import re

import ase.io
import numpy as np
import pytest
from lammps_harness import argon_nve_start, argon_pair_styles, read_dump, relative_difference, run_lmp
from structures import displaced_triclinic_argon

from atomplug.core.archive import UNOPTIMIZED_CALLS

TOLERANCE = 1e-10
FIRST_RUN = UNOPTIMIZED_CALLS // 2  # the switch happens during the second run
SECOND_RUN = UNOPTIMIZED_CALLS + 2  # so that several calls run optimised
STEPS = FIRST_RUN + SECOND_RUN
AGAIN = 3  # steps after pair_style is issued again (a new model: unoptimised again)


def md_input(pair: str, label: str) -> str:
    # each `run N` computes forces N + 1 times (its setup, then N steps); a dump file per step
    return (
        argon_nve_start(pair, 300.0)
        + f"""
thermo 1
thermo_style custom step pe pxx pyy pzz pxy pxz pyz
thermo_modify format float %.17g
dump d all custom 1 {label}-*.dump id fx fy fz
dump_modify d sort id format float %.17g
run {FIRST_RUN}
run {SECOND_RUN}
{pair}
run {AGAIN}
"""
    )


def thermo_rows(log: str) -> dict:
    """{step: row} of every thermo table in a run's screen output (later rows of a step win)."""
    rows = {}
    table = False
    for line in log.splitlines():
        if line.split()[:2] == ["Step", "PotEng"]:
            table = True
        elif line.startswith("Loop time"):
            table = False
        elif table:
            values = [float(value) for value in line.split()]
            rows[int(values[0])] = np.array(values[1:])
    return rows


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, plugin, lj_model_path):
    directory = tmp_path_factory.mktemp("lammps-optimization")
    ase.io.write(str(directory / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    runs = {}
    native, atomplug = argon_pair_styles(lj_model_path)
    for label, pair in [("native", native), ("atomplug", atomplug)]:
        result = run_lmp(directory, md_input(pair, label), name=f"in.{label}", env={"ATOMPLUG_LAMMPS_TIMING": "1"})
        runs[label] = (str(directory), result.stdout)
    return runs


def test_model_switches_to_optimised_execution(trajectories):
    """The pair style's own count: unoptimised in the first run, optimised by the end of the second,
    and a model loaded again by pair_style starts again."""
    _, log = trajectories["atomplug"]
    calls = re.findall(r"entry point calls since pair_style (\d+), (unoptimised so far|optimised from call \d+)", log)
    assert calls == [
        (str(FIRST_RUN + 1), "unoptimised so far"),
        (str(STEPS + 2), f"optimised from call {UNOPTIMIZED_CALLS + 1}"),
        (str(AGAIN + 1), "unoptimised so far"),
    ], calls


def test_results_stay_those_of_lj_cut_across_the_switch(trajectories):
    directory, native_log = trajectories["native"]
    _, log = trajectories["atomplug"]
    native_rows, rows = thermo_rows(native_log), thermo_rows(log)
    steps = range(STEPS + AGAIN + 1)
    assert sorted(rows) == sorted(native_rows) == list(steps)
    for step in steps:
        # pe, then the pressure tensor (virial and kinetic parts)
        assert abs(rows[step][0] - native_rows[step][0]) <= TOLERANCE * abs(native_rows[step][0]), step
        assert relative_difference(rows[step][1:], native_rows[step][1:]) <= TOLERANCE, step
        ours = read_dump(os.path.join(directory, f"atomplug-{step}.dump"))
        native = read_dump(os.path.join(directory, f"native-{step}.dump"))
        assert np.array_equal(ours["id"], native["id"])
        forces_ours = np.stack([ours[c] for c in ("fx", "fy", "fz")], axis=1)
        forces_native = np.stack([native[c] for c in ("fx", "fy", "fz")], axis=1)
        assert np.max(np.abs(forces_native)) > 1e-3, step
        assert relative_difference(forces_ours, forces_native) <= TOLERANCE, step


# ---- ATOMPLUG_OPTIMIZE_AFTER (core.archive.unoptimized_calls; a GPU never switches by default) -----


@pytest.mark.parametrize("setting, expected", [("3", "optimised from call 4"), ("never", "unoptimised so far")])
def test_the_environment_sets_the_switch(tmp_path, plugin, lj_model_path, setting, expected):
    """The count the plugin reads is core's: 3 switches at call 4; never keeps the whole run of
    UNOPTIMIZED_CALLS + 4 calls unoptimised; the forces stay those of lj/cut either way."""
    ase.io.write(str(tmp_path / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    native, atomplug = argon_pair_styles(lj_model_path)
    steps = UNOPTIMIZED_CALLS + 3
    logs = {}
    for label, pair in [("native", native), ("atomplug", atomplug)]:
        text = argon_nve_start(pair, 300.0) + f"thermo {steps}\nthermo_style custom step pe pxx pyy pzz pxy pxz pyz\n"
        text += f"thermo_modify format float %.17g\nrun {steps}\n"
        env = {"ATOMPLUG_LAMMPS_TIMING": "1", "ATOMPLUG_OPTIMIZE_AFTER": setting}
        logs[label] = run_lmp(tmp_path, text, name=f"in.{label}", env=env).stdout
    calls = re.findall(
        r"entry point calls since pair_style (\d+), (unoptimised so far|optimised from call \d+)", logs["atomplug"]
    )
    assert calls == [(str(steps + 1), expected)], calls
    ours, theirs = thermo_rows(logs["atomplug"])[steps], thermo_rows(logs["native"])[steps]
    assert relative_difference(ours, theirs) <= TOLERANCE


def test_a_bad_setting_stops_at_pair_style_with_the_choices(tmp_path, plugin, lj_model_path):
    ase.io.write(str(tmp_path / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    _, atomplug = argon_pair_styles(lj_model_path)
    text = argon_nve_start(atomplug, 300.0) + "run 1\n"
    result = run_lmp(tmp_path, text, env={"ATOMPLUG_OPTIMIZE_AFTER": "soon"}, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "ATOMPLUG_OPTIMIZE_AFTER=soon is not a number of calls: give N >= 0" in output, output[-2000:]
