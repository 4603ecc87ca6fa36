"""Bad input to ATOMPLUG: a PLUMED error naming the problem and the fix, never a crash; one atom and
atoms far outside a periodic box give the right values.

Most cases drive PLUMED through its Python API (`plumed.PlumedError`, as ASE and i-PI drive it);
one runs `plumed driver`, whose every error (input or calculation) ends with PLUMED's error report
and an abort, since the driver does not catch errors: a non-zero exit, never a segfault.
(Other input cases, e.g. atoms outside SPECIES: test_errors.py.) Models that read inputs or have
output variants: what PLUMED cannot give, a keyword missing or given for nothing, a bad variant.
"""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
import torch
from bad_files import MODEL_FILE_FIX, MODEL_FILE_KINDS, MODEL_FILE_PROBLEMS, unpickled_marker, write_model_file
from plumed_testing import read_colvar, run_driver, write_xyz
from test_plumed_inputs import export_distance_variants

NM = 10.0  # Angstrom per nm (PLUMED's default length unit)


class Session:
    """PLUMED driven from Python, as an MD code does: positions in nm, box rows in nm."""

    def __init__(self, plugin: str, n_atoms: int, lines, log: str = os.devnull):
        import plumed

        self.n_atoms = n_atoms
        self.engine = plumed.Plumed()
        self.engine.cmd("setMDEngine", "python")
        self.engine.cmd("setNatoms", n_atoms)
        self.engine.cmd("setTimestep", 1.0)
        self.engine.cmd("setLogFile", log)
        self.engine.cmd("init")
        for line in [f"LOAD FILE={plugin}"] + list(lines):
            self.engine.cmd("readInputLine", line)

    def calc(self, positions: np.ndarray, box=None, step: int = 0) -> np.ndarray:
        forces = np.zeros((self.n_atoms, 3))
        virial = np.zeros((3, 3))
        self.engine.cmd("setStep", step)
        self.engine.cmd("setBox", np.zeros((3, 3)) if box is None else np.asarray(box, dtype=np.float64))
        self.engine.cmd("setMasses", np.ones(self.n_atoms))
        self.engine.cmd("setPositions", np.ascontiguousarray(positions, dtype=np.float64))
        self.engine.cmd("setForces", forces)
        self.engine.cmd("setVirial", virial)
        self.engine.cmd("calc")
        return forces

    def close(self) -> None:
        self.engine.finalize()


def error_chain(error: BaseException) -> str:
    """PLUMED raises "An error happened while calculating cv" from the action's own error."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    return " ".join(messages)


def input_error(plugin: str, line: str, n_atoms: int = 30) -> str:
    import plumed

    with pytest.raises(plumed.PlumedError) as caught:
        Session(plugin, n_atoms, [line])
    return str(caught.value)


@pytest.mark.parametrize("kind", MODEL_FILE_KINDS)
def test_model_file_is_a_plumed_error(kind, plugin, lj_model_path, tmp_path):
    model = write_model_file(kind, tmp_path, lj_model_path)
    message = input_error(plugin, f"cv: ATOMPLUG MODEL={model} SPECIES1=1-30 SPECIES_TO_TYPES=18 OUTPUT=energy")
    assert "ERROR in input to action ATOMPLUG with label cv" in message
    assert re.search(MODEL_FILE_PROBLEMS[kind], message) and re.search(MODEL_FILE_FIX, message), message
    assert not os.path.exists(unpickled_marker(tmp_path))


DEVICES = {"bad-device-name": ("tpu", r"DEVICE='tpu' is not a torch device \(use cpu, cuda or cuda:N\)")}
if not torch.cuda.is_available():
    DEVICES["cuda-without-gpu"] = ("cuda", r"DEVICE=cuda asked, but torch .* sees no CUDA device: use DEVICE=cpu")


@pytest.mark.parametrize("case", list(DEVICES))
def test_bad_device(case, plugin, lj_model_path):
    device, expected = DEVICES[case]
    message = input_error(
        plugin, f"cv: ATOMPLUG MODEL={lj_model_path} SPECIES1=1-30 SPECIES_TO_TYPES=18 OUTPUT=energy DEVICE={device}"
    )
    assert re.search(expected, message), message


def argon_positions(n_atoms: int, seed: int = 3) -> np.ndarray:
    """Atoms on a jittered grid 0.38 nm apart (nm)."""
    grid = np.array([[i, j, k] for i in range(4) for j in range(4) for k in range(4)], dtype=float)[:n_atoms]
    return grid * 0.38 + np.random.default_rng(seed).uniform(-0.02, 0.02, (n_atoms, 3))


def lj_cv(model: str, n_atoms: int, colvar: str = "") -> list:
    lines = [f"cv: ATOMPLUG MODEL={model} SPECIES1=1-{n_atoms} SPECIES_TO_TYPES=18 OUTPUT=energy"]
    if n_atoms == 1:
        lines = [f"cv: ATOMPLUG MODEL={model} SPECIES1=1 SPECIES_TO_TYPES=18 OUTPUT=energy"]
    if colvar:
        lines.append(f"PRINT ARG=cv FILE={colvar} FMT=%.17g")
    return lines


def with_value(positions: np.ndarray, atom: int, value: float) -> np.ndarray:
    positions = positions.copy()
    positions[atom, 1] = value
    return positions


def overlapping(positions: np.ndarray) -> np.ndarray:
    positions = positions.copy()
    positions[4] = positions[2]
    return positions


STRUCTURES = {
    # case: (positions, problem, fix)
    "nan-position": (
        lambda p: with_value(p, 6, np.nan),
        r"ATOMPLUG cv: atom 7 has a NaN or infinite position",
        r"fix the positions PLUMED receives",
    ),
    "infinite-position": (
        lambda p: with_value(p, 6, np.inf),
        r"ATOMPLUG cv: atom 7 has a NaN or infinite position",
        r"fix the positions PLUMED receives",
    ),
    "overlapping-atoms": (
        overlapping,
        r"ATOMPLUG cv: the model returned NaN or infinite values in '.*': atoms 2 and 4 are only 0 nm apart \(overlapping atoms",
        r"remove the duplicate atom or move the atoms apart",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_bad_positions_are_a_plumed_error(case, plugin, lj_model_path, tmp_path):
    import plumed

    make, problem, fix = STRUCTURES[case]
    session = Session(plugin, 12, lj_cv(lj_model_path, 12, str(tmp_path / "COLVAR")))
    with pytest.raises(plumed.PlumedError) as caught:
        session.calc(make(argon_positions(12)), box=np.eye(3) * 3.0)
    message = error_chain(caught.value)
    assert re.search(problem, message) and re.search(fix, message), message


def test_nan_position_under_plumed_driver(plugin, lj_model_path, tmp_path):
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, [argon_positions(12), with_value(argon_positions(12), 6, np.nan)], np.eye(3) * 3.0)
    result = run_driver(
        str(tmp_path), "\n".join([f"LOAD FILE={plugin}"] + lj_cv(lj_model_path, 12, "COLVAR")) + "\n", trajectory
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and result.returncode not in (-signal.SIGSEGV, 128 + signal.SIGSEGV), output[-3000:]
    assert "Segmentation" not in output
    assert (
        "ATOMPLUG cv: atom 7 has a NaN or infinite position: the trajectory or the MD engine's state is broken"
        in output
    )
    assert len(read_colvar(str(tmp_path / "COLVAR"))["cv"]) == 1  # the good frame was computed


def test_one_atom_is_zero(plugin, lj_model_path, tmp_path):
    colvar = str(tmp_path / "COLVAR")
    session = Session(plugin, 1, lj_cv(lj_model_path, 1, colvar))
    forces = session.calc(np.array([[0.1, 0.2, 0.3]]))
    session.close()
    assert read_colvar(colvar)["cv"].tolist() == [0.0]
    assert np.all(forces == 0.0)


def test_atoms_far_outside_the_box(plugin, lj_model_path, tmp_path):
    """The same value and bias forces as with every atom wrapped into the box."""
    box = np.array([[1.6, 0.0, 0.0], [0.1, 1.5, 0.0], [-0.05, 0.08, 1.7]])  # nm, triclinic
    positions = argon_positions(40)
    wrapped = positions - np.floor(positions @ np.linalg.inv(box)) @ box
    far = wrapped + np.random.default_rng(9).integers(-200, 200, size=wrapped.shape) @ box
    results = {}
    for label, coordinates in (("wrapped", wrapped), ("far", far)):
        colvar = str(tmp_path / f"COLVAR-{label}")
        lines = lj_cv(lj_model_path, 40, colvar) + ["RESTRAINT ARG=cv AT=0.0 KAPPA=3.0"]
        session = Session(plugin, 40, lines)
        forces = session.calc(coordinates, box=box)
        session.close()
        results[label] = (read_colvar(colvar)["cv"][0], forces)
    value, forces = results["wrapped"]
    assert value < 0.0 and np.abs(forces).max() > 0.0
    assert results["far"][0] == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(results["far"][1], forces, rtol=0, atol=1e-10 * np.abs(forces).max())


# ---- model inputs and variants ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_with_inputs(tmp_path_factory):
    from atomplug.examples.coulomb import export_coulomb
    from atomplug.examples.inputs import export_charge_spin, export_kinetic

    directory = tmp_path_factory.mktemp("plumed-bad-inputs")
    paths = {name: str(directory / f"{name}.pt") for name in ("kinetic", "charge_spin", "coulomb", "variants", "only")}
    export_kinetic(paths["kinetic"])
    export_charge_spin(paths["charge_spin"])
    export_coulomb(paths["coulomb"])
    export_distance_variants(paths["variants"])
    export_distance_variants(paths["only"], names=("energy/ccsdt", "energy/pbe"))  # no plain energy
    return paths


INPUT_CASES = {
    # case: (model, SPECIES_TO_TYPES and other keywords, problem, fix)
    "velocities": (
        "kinetic",
        "SPECIES_TO_TYPES=18 OUTPUT=energy",
        r"the model needs masses, velocities: PLUMED does not receive velocities from the MD engine",
        r"use the model in an engine that gives velocities \(ASE, LAMMPS\)",
    ),
    "charge-missing": (
        "charge_spin",
        "SPECIES_TO_TYPES=1 OUTPUT=energy SPIN=1",
        r"the model needs total_charge, spin_multiplicity",
        r"give the total charge of its atoms with CHARGE=<number>",
    ),
    "spin-missing": (
        "charge_spin",
        "SPECIES_TO_TYPES=1 OUTPUT=energy CHARGE=0",
        r"the model needs total_charge, spin_multiplicity",
        r"give the spin multiplicity 2S\+1 with SPIN=<number> \(1 for a singlet\)",
    ),
    "charge-not-used": (
        "coulomb",
        "SPECIES_TO_TYPES=11 OUTPUT=energy CHARGE=1",
        r"CHARGE is given but the model does not use a total charge \(it needs charges\)",
        r"remove CHARGE",
    ),
    "spin-not-used": (
        "lj",
        "SPECIES_TO_TYPES=18 OUTPUT=energy SPIN=1",
        r"SPIN is given but the model does not use a spin multiplicity \(it needs no inputs\)",
        r"remove SPIN",
    ),
    "unknown-variant": (
        "variants",
        "SPECIES_TO_TYPES=1 OUTPUT=energy/pbe",
        r"the model has no variant 'pbe' of 'energy' \(available: ccsdt\)",
        r"in PLUMED, OUTPUT names the output in full: OUTPUT=energy/<variant>",
    ),
    "no-plain-energy": (
        "only",
        "SPECIES_TO_TYPES=1 OUTPUT=energy",
        r"the model has no plain 'energy', only its variants ccsdt, pbe",
        r"OUTPUT=energy/<variant>",
    ),
    "unknown-output-with-slash": (
        "variants",
        "SPECIES_TO_TYPES=1 OUTPUT=features/pbe",
        r"the model has no output 'features/pbe' \(it declares: energy, energy/ccsdt, features, features/double\)",
        r"set OUTPUT to one of those",
    ),
}


@pytest.mark.parametrize("case", list(INPUT_CASES))
def test_model_inputs_and_variants_are_input_errors(case, plugin, models_with_inputs, lj_model_path):
    model, keywords, problem, fix = INPUT_CASES[case]
    path = lj_model_path if model == "lj" else models_with_inputs[model]
    message = input_error(plugin, f"cv: ATOMPLUG MODEL={path} SPECIES1=1-30 {keywords}")
    assert "ERROR in input to action ATOMPLUG with label cv" in message
    assert re.search(problem, message) and re.search(fix, message), message


def coulomb_cv(model: str, colvar: str) -> list:
    return [
        f"cv: ATOMPLUG MODEL={model} SPECIES1=1-12 SPECIES_TO_TYPES=11 OUTPUT=energy",
        f"PRINT ARG=cv FILE={colvar}",
    ]


def test_charges_not_passed_by_the_engine(plugin, models_with_inputs, tmp_path):
    """An MD engine (here PLUMED's Python API) that never calls setCharges: an error at the first step."""
    import plumed

    session = Session(plugin, 12, coulomb_cv(models_with_inputs["coulomb"], str(tmp_path / "COLVAR")))
    with pytest.raises(plumed.PlumedError) as caught:
        session.calc(argon_positions(12), box=np.eye(3) * 3.0)
    message = error_chain(caught.value)
    assert re.search(
        r"ATOMPLUG cv: the model needs per-atom charges and the MD engine did not pass charges to PLUMED "
        r"\(cmd setCharges\); with `plumed driver`, give them with --mc FILE",
        message,
    ), message


def test_charges_missing_under_plumed_driver(plugin, models_with_inputs, tmp_path):
    """`plumed driver` without --mc hands PLUMED NaN masses and charges: an error naming --mc, no crash."""
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, [argon_positions(12)], np.eye(3) * 3.0)
    lines = [f"LOAD FILE={plugin}"] + coulomb_cv(models_with_inputs["coulomb"], "COLVAR")
    result = run_driver(str(tmp_path), "\n".join(lines) + "\n", trajectory)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and result.returncode not in (-signal.SIGSEGV, 128 + signal.SIGSEGV), output[-3000:]
    assert (
        "ATOMPLUG cv: the model needs the atoms' charges and atom 1 has nan in PLUMED: the MD engine passed no "
        "charges (cmd setCharges); with `plumed driver`, give them with --mc FILE (the format DUMPMASSCHARGE writes)"
        in output
    ), output[-3000:]


def test_single_point_inputs(models_with_inputs, tmp_path):
    """evaluate_with_plumed (`atomplug crosscheck`): a model that needs velocities is skipped with the
    reason; Atoms without the charges or the total charge a model needs are refused, saying where to
    put them."""
    from ase import Atoms

    from atomplug.plumed_cv.single_point import evaluate_with_plumed

    atoms = Atoms(numbers=[1, 8, 1], positions=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    result = evaluate_with_plumed(models_with_inputs["kinetic"], atoms, str(tmp_path))
    assert result == {"skipped": "the model needs velocities, which PLUMED does not receive from the MD engine"}
    with pytest.raises(ValueError, match=r"the model needs per-atom charges and these atoms have none: set them"):
        evaluate_with_plumed(models_with_inputs["coulomb"], atoms, str(tmp_path))
    atoms.info["spin"] = 1
    with pytest.raises(ValueError, match=r"the model needs the total charge and atoms.info has no 'charge'"):
        evaluate_with_plumed(models_with_inputs["charge_spin"], atoms, str(tmp_path))
