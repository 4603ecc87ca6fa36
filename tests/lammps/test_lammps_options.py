"""The pair_style keywords: non_conservative, check_consistency (and the per-atom energy path)."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest
from devices import NO_CUDA
from lammps_harness import read_dump, read_values, relative_difference, run_lmp
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon

TOLERANCE = 1e-10
NATIVE = f"pair_style lj/cut {AR_CUTOFF!r}\npair_coeff * * {AR_EPSILON!r} {AR_SIGMA!r}\npair_modify shift yes"


def evaluate(label: str, pair: str, pressure: bool = True) -> str:
    thermo = "step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]" if pressure else "step pe"
    values = (
        " pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g)"
        " pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)"
        if pressure
        else ""
    )
    return f"""
clear
units metal
atom_style atomic
read_data argon.data
{pair}
{"compute pv all pressure NULL virial" if pressure else ""}
thermo_style custom {thermo}
dump d all custom 1 {label}.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g){values}" append values.txt screen no
"""


@pytest.fixture
def argon(tmp_path):
    ase.io.write(str(tmp_path / "argon.data"), displaced_triclinic_argon(), format="lammps-data", masses=True)
    return tmp_path


def compare(directory, ours: str, native: str, pressure: bool = True) -> None:
    values = read_values(directory / "values.txt")
    assert abs(values[ours]["pe"] - values[native]["pe"]) <= TOLERANCE * abs(values[native]["pe"])
    if pressure:
        keys = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]
        assert relative_difference([values[ours][k] for k in keys], [values[native][k] for k in keys]) <= TOLERANCE
    a, b = read_dump(directory / f"{ours}.dump"), read_dump(directory / f"{native}.dump")
    forces = lambda d: np.stack([d["fx"], d["fy"], d["fz"]], axis=1)  # noqa: E731
    assert relative_difference(forces(a), forces(b)) <= TOLERANCE


def test_non_conservative_forces_and_stress_on_one_rank(argon, plugin, lj_model_path):
    text = evaluate("nc", f"pair_style atomplug {lj_model_path} non_conservative on\npair_coeff * * Ar")
    text += evaluate("native", NATIVE)
    result = run_lmp(argon, text)
    assert "non_conservative on" in result.stdout
    compare(argon, "nc", "native")


def test_non_conservative_on_two_ranks_takes_the_virial_from_the_energy(argon, plugin, lj_model_path):
    """Forces from non_conservative_forces; the per-structure stress cannot be split among ranks,
    so the pressure comes from the energy gradient (with a warning). For LJ both equal lj/cut."""
    text = evaluate("nc", f"pair_style atomplug {lj_model_path} non_conservative on\npair_coeff * * Ar")
    text += evaluate("native", NATIVE)
    result = run_lmp(argon, text, nprocs=2)
    assert "the virial (pressure) from the energy gradient" in " ".join(result.stdout.split())
    compare(argon, "nc", "native")


def test_check_consistency_gives_the_same_numbers(argon, plugin, lj_model_path):
    text = evaluate("checked", f"pair_style atomplug {lj_model_path} check_consistency on\npair_coeff * * Ar")
    text += evaluate("native", NATIVE)
    run_lmp(argon, text, nprocs=2)
    compare(argon, "checked", "native")


@pytest.mark.parametrize("check", ["on", "off"])
def test_non_finite_outputs_stop_the_run(tmp_path, plugin, lj_model_path, check):
    """Two atoms on top of each other: LJ is infinite there. The entry point refuses non-finite
    results whatever check_consistency says, naming the atoms."""
    text = f"""
units metal
region box block 0 12 0 12 0 12
create_box 1 box
create_atoms 1 single 3 3 3
create_atoms 1 single 3 3 3
create_atoms 1 single 6 3 3
mass 1 39.948
pair_style atomplug {lj_model_path} check_consistency {check}
pair_coeff * * Ar
run 0
"""
    result = run_lmp(tmp_path, text, check=False)
    output = " ".join(result.stdout.split())
    assert result.returncode != 0 and result.returncode < 128
    assert "the model returned NaN or infinite values in" in output
    assert "atoms 0 and 1 are only 0 Angstrom apart (overlapping atoms, at (3, 3, 3) Angstrom)" in output


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason=NO_CUDA)
def test_cuda_device_matches_lj_cut(argon, plugin, lj_model_path):
    """On the GPU, on 2 ranks: lj/cut's numbers, and each call's inputs in one copy, results in one."""
    text = evaluate("cuda", f"pair_style atomplug {lj_model_path} device cuda\npair_coeff * * Ar")
    text += evaluate("native", NATIVE)
    result = run_lmp(argon, text, nprocs=2)
    compare(argon, "cuda", "native")
    copies = re.findall(
        r"inputs to cuda(?::\d+)? and results back: (\d+) calls, (\d+) copies in, (\d+) out", result.stdout
    )
    assert copies and all(calls == copies_in == copies_out for calls, copies_in, copies_out in copies), copies
