"""Bad input through the ASE calculator: one-line errors naming the problem and the fix; one
atom and atoms far outside a periodic cell give the right numbers."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from ase import Atoms
from bad_files import MODEL_FILE_FIX, MODEL_FILE_PROBLEMS, unpickled_marker, write_model_file
from structures import displaced_triclinic_argon

from atomplug.ase_calculator import AtomplugCalculator


@pytest.mark.parametrize(
    "kind", ["missing", "truncated", "raw-pickle", "torch-save-pickle", "metadata-lies-about-outputs"]
)
def test_model_file_is_refused(kind, lj_model_path, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        AtomplugCalculator(write_model_file(kind, tmp_path, lj_model_path))
    message = str(caught.value)
    assert re.search(MODEL_FILE_PROBLEMS[kind], message) and re.search(MODEL_FILE_FIX, message), message
    assert not os.path.exists(unpickled_marker(tmp_path))


def pair(distance: float) -> Atoms:
    return Atoms("Ar2", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])


def with_nan(atoms: Atoms, value: float) -> Atoms:
    atoms.positions[1, 2] = value
    return atoms


def periodic(atoms: Atoms, cell) -> Atoms:
    atoms.cell = cell
    atoms.pbc = True
    return atoms


STRUCTURES = {
    # case: (structure, problem, fix)
    "nan-position": (
        lambda: with_nan(pair(3.8), np.nan),
        r"atom\(s\) \[1\] are NaN or infinite",
        r"fix the structure before evaluating",
    ),
    "infinite-position": (
        lambda: with_nan(pair(3.8), -np.inf),
        r"atom\(s\) \[1\] are NaN or infinite",
        r"fix the structure before evaluating",
    ),
    "overlapping-atoms": (
        lambda: pair(0.0),
        r"atoms 0 and 1 are only 0 Angstrom apart \(overlapping atoms, at \(0, 0, 0\) Angstrom\)",
        r"remove the duplicate atom or move the atoms apart",
    ),
    "zero-volume-cell": (
        lambda: periodic(pair(3.8), [[10, 0, 0], [0, 10, 0], [0, 0, 0]]),
        r"cell vector 2 is zero but the system is periodic along it",
        r"set a cell vector or make that direction non-periodic",
    ),
    "singular-cell": (
        lambda: periodic(pair(3.8), [[10, 0, 0], [0, 10, 0], [10, 10, 0]]),
        r"linearly dependent \(the cell is flat\)",
        r"give a cell with a non-zero volume",
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURES))
def test_bad_structure(case, lj_model_path):
    make, problem, fix = STRUCTURES[case]
    calc = AtomplugCalculator(lj_model_path)
    with pytest.raises(ValueError) as caught:
        calc.get_forces(make())
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(problem, message) and re.search(fix, message), message


DEVICES = {"bad-device-name": ("tpu", r"'tpu' is not a torch device: use 'cpu', 'cuda' or 'cuda:N'")}
if not torch.cuda.is_available():
    DEVICES["cuda-without-gpu"] = ("cuda", r"device 'cuda' asked, but torch .* sees no CUDA device: use device 'cpu'")


@pytest.mark.parametrize("case", list(DEVICES))
def test_bad_device(case, lj_model_path):
    device, message = DEVICES[case]
    with pytest.raises(ValueError, match=message):
        AtomplugCalculator(lj_model_path, device=device)


def test_one_atom_has_zero_energy(lj_model_path):
    atoms = Atoms("Ar", positions=[[1.0, 2.0, 3.0]])
    atoms.calc = AtomplugCalculator(lj_model_path)
    assert atoms.get_potential_energy() == 0.0
    assert np.all(atoms.get_forces() == 0.0)
    assert np.all(atoms.get_potential_energies() == 0.0)


def test_atoms_far_outside_the_cell_are_wrapped(lj_model_path):
    """The same as the wrapped structure, also along an MD-like sequence (the neighbor-list cache
    sees atoms jump by lattice vectors)."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    rng = np.random.default_rng(5)
    far_calc, wrapped_calc = AtomplugCalculator(lj_model_path), AtomplugCalculator(lj_model_path)
    for step in range(3):
        atoms.positions += rng.normal(0.0, 0.02, atoms.positions.shape)
        far = atoms.copy()
        far.positions += rng.integers(-50, 50, size=(len(atoms), 3)) @ atoms.cell.array
        wrapped = far.copy()
        wrapped.wrap()
        far.calc, wrapped.calc = far_calc, wrapped_calc
        assert far.get_potential_energy() == pytest.approx(wrapped.get_potential_energy(), rel=1e-12), step
        forces = wrapped.get_forces()
        np.testing.assert_allclose(far.get_forces(), forces, rtol=0, atol=1e-11 * np.abs(forces).max())
        np.testing.assert_allclose(far.get_stress(), wrapped.get_stress(), rtol=1e-11)


# ---- inputs and variants --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def input_models(tmp_path_factory):
    from test_ase_inputs import export_variant_model

    from atomplug.examples.coulomb import export_coulomb
    from atomplug.examples.inputs import export_charge_spin

    directory = tmp_path_factory.mktemp("bad_inputs")
    paths = {name: str(directory / f"{name}.pt") for name in ("coulomb", "charge_spin", "variant")}
    export_coulomb(paths["coulomb"])
    export_charge_spin(paths["charge_spin"])
    export_variant_model(paths["variant"])
    return paths


def water(**info) -> Atoms:
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    atoms.info.update(info)
    return atoms


MISSING_INPUTS = {
    # case: (model, structure, problem, fix)
    "missing-charges": (
        "coulomb",
        lambda: Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]]),
        r"the model needs per-atom charges and these atoms have none",
        r"atoms.set_initial_charges",
    ),
    "missing-total-charge": (
        "charge_spin",
        lambda: water(spin=1),
        r"the model needs the total charge and atoms.info has no 'charge'",
        r'set atoms.info\["charge"\]',
    ),
    "missing-spin": (
        "charge_spin",
        lambda: water(charge=0),
        r"the model needs the spin multiplicity and atoms.info has no 'spin'",
        r'set atoms.info\["spin"\] \(the spin multiplicity 2S\+1: 1 for a singlet\)',
    ),
    "charge-not-a-number": (
        "charge_spin",
        lambda: water(charge="minus one", spin=1),
        r"atoms.info\[\"charge\"\] = 'minus one' is not a number",
        r"",
    ),
}


@pytest.mark.parametrize("case", list(MISSING_INPUTS))
def test_missing_input(case, input_models):
    model, make, problem, fix = MISSING_INPUTS[case]
    atoms = make()
    atoms.calc = AtomplugCalculator(input_models[model])
    with pytest.raises(ValueError) as caught:
        atoms.get_forces()
    message = str(caught.value)
    assert "\n" not in message
    assert re.search(problem, message) and re.search(fix, message), message


def test_unknown_variant_is_refused_at_construction(input_models, lj_model_path):
    with pytest.raises(ValueError, match=r"the model has no variant 'ccsdt' of 'energy' \(available: alt\): choose"):
        AtomplugCalculator(input_models["variant"], variant="ccsdt")
    with pytest.raises(ValueError, match=r"the model has no variant 'alt' of 'energy' \(available: none\)"):
        AtomplugCalculator(lj_model_path, variant="alt")
