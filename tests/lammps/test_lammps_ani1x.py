"""ANI-1x in LAMMPS equals the ASE calculator on the same periodic water box frame.

One rank runs through the `lammps` Python module (as a user script would), two ranks through
`mpiexec -n 2 lmp`. Both dump the exact positions LAMMPS used; the ASE calculator evaluates those.
"""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
from ase import Atoms
from lammps_harness import lammps_cell, read_dump, read_values, relative_difference, run_lmp, run_python
from structures import water_box

TOLERANCE = 1e-8


def ani_input(model: str, label: str) -> str:
    return f"""
units metal
atom_style atomic
read_data water.data
pair_style atomplug {model}
pair_coeff * * O H
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
dump d all custom 1 {label}.dump id type x y z fx fy fz
dump_modify d sort id format float %.17g
run 0
print "{label} pe=$(pe:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values.txt screen no
"""


PYTHON_DRIVER = """
import json
from lammps import lammps

lmp = lammps(cmdargs=["-log", "python.log", "-screen", "none"])
assert lmp.has_style("pair", "atomplug"), "pair_style atomplug was not auto-loaded"
lmp.file("in.python")
result = {{"nktv2p": lmp.extract_global("nktv2p"), "pe": lmp.get_thermo("pe"), "natoms": lmp.get_natoms()}}
lmp.close()
with open("python.json", "w") as handle:
    json.dump(result, handle)
"""


@pytest.fixture(scope="module")
def water():
    atoms = water_box(32, seed=4)
    assert len(atoms) == 96
    return atoms


@pytest.fixture(scope="module")
def lammps_frames(tmp_path_factory, plugin, ani1x_path, water):
    directory = tmp_path_factory.mktemp("lammps-ani1x")
    ase.io.write(str(directory / "water.data"), water, format="lammps-data", specorder=["O", "H"], masses=True)
    with open(directory / "in.python", "w") as handle:
        handle.write(ani_input(ani1x_path, "python-1"))
    run_python(directory, PYTHON_DRIVER.format())
    with open(directory / "python.json") as handle:
        info = json.load(handle)
    run_lmp(directory, ani_input(ani1x_path, "mpi-2"), nprocs=2, name="in.mpi")
    values = read_values(directory / "values.txt")
    return {
        "nktv2p": info["nktv2p"],
        "python-1": (read_dump(directory / "python-1.dump"), values["python-1"]),
        "mpi-2": (read_dump(directory / "mpi-2.dump"), values["mpi-2"]),
    }


@pytest.mark.parametrize("label", ["python-1", "mpi-2"])
def test_ani1x_matches_ase_calculator(lammps_frames, ani1x_path, label):
    from atomplug.ase_calculator import AtomplugCalculator

    dump, values = lammps_frames[label]
    nktv2p = lammps_frames["nktv2p"]
    symbols = ["O" if t == 1 else "H" for t in dump["type"].astype(int)]
    positions = np.stack([dump["x"], dump["y"], dump["z"]], axis=1)
    atoms = Atoms(symbols, positions=positions, cell=lammps_cell(dump), pbc=True)
    atoms.calc = AtomplugCalculator(ani1x_path)

    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    stress = atoms.get_stress()  # -W / V, Voigt xx yy zz yz xz xy, eV/A^3

    assert abs(values["pe"] - energy) <= TOLERANCE * abs(energy)
    lammps_forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert relative_difference(lammps_forces, forces) <= TOLERANCE
    # LAMMPS' virial pressure is W / V in bar (nktv2p bar per eV/A^3): stress = -pressure / nktv2p
    pressure = np.array([values[k] for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    assert relative_difference(-pressure / nktv2p, stress) <= TOLERANCE


def test_python_module_and_mpi_agree(lammps_frames):
    one, values_one = lammps_frames["python-1"]
    two, values_two = lammps_frames["mpi-2"]
    assert abs(values_one["pe"] - values_two["pe"]) <= 1e-12 * abs(values_one["pe"])
    forces = lambda d: np.stack([d["fx"], d["fy"], d["fz"]], axis=1)  # noqa: E731
    assert relative_difference(forces(two), forces(one)) <= 1e-11
