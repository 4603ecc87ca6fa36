"""AtomplugCalculator with models that read inputs (charges, total charge, spin, masses,
velocities) and with output variants, against closed forms computed here in numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from ase.md import velocitydistribution
from variant_model import export_variant_model

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.examples.coulomb import LAMMPS_METAL_COULOMB_CONSTANT, coulomb_reference, export_coulomb
from atomplug.examples.inputs import KINETIC_ENERGY, export_charge_spin, export_kinetic

COULOMB_CUTOFF = 6.0
K_E = LAMMPS_METAL_COULOMB_CONSTANT
# ChargeSpinModel as export_charge_spin builds it: types, a_t (eV/e^2), b_t (eV), soft pair term
CHARGE_TERMS = {1: 0.5, 6: 0.25, 8: 0.125}
SPIN_TERMS = {1: 0.1, 6: 0.2, 8: 0.4}
PAIR_STRENGTH, PAIR_CUTOFF = 0.3, 4.0
# ASE >= 3.26 renamed MaxwellBoltzmannDistribution
thermalize = (
    getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
)


def relative(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def pair_term(atoms: Atoms, strength: float, cutoff: float) -> tuple:
    """(sum over pairs of strength (1 - r/rc)^2, number of pairs), brute force over images."""
    positions, cell = atoms.positions, atoms.cell.array
    reach = [2 if periodic else 0 for periodic in atoms.pbc]
    energy, count = 0.0, 0
    for shift in itertools.product(*[range(-n, n + 1) for n in reach]):
        vectors = positions[None, :, :] + np.asarray(shift, float) @ cell - positions[:, None, :]
        distances = np.linalg.norm(vectors, axis=2)
        inside = (distances < cutoff) & (distances > 0.0)
        energy += 0.5 * np.sum(np.where(inside, strength * (1.0 - distances / cutoff) ** 2, 0.0))
        count += int(inside.sum())
    return energy, count // 2


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    directory = tmp_path_factory.mktemp("input_models")
    paths = {name: str(directory / f"{name}.pt") for name in ("coulomb", "charge_spin", "kinetic", "variant")}
    export_coulomb(paths["coulomb"], cutoff=COULOMB_CUTOFF)
    export_charge_spin(paths["charge_spin"])
    export_kinetic(paths["kinetic"])
    export_variant_model(paths["variant"])
    return paths


def rattled_nacl(seed: int = 4) -> Atoms:
    """64 ions of rock salt, rattled, in a slightly sheared (triclinic) cell, charges +-1 e."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 2, 2))
    atoms.set_cell(atoms.cell.array + [[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [0.0, -0.2, 0.0]], scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    atoms.set_initial_charges(np.where(atoms.numbers == 11, 0.8, -0.8))
    return atoms


def coulomb_virial(atoms: Atoms) -> np.ndarray:
    """W = sum_pairs k q_i q_j r (x) r / r^3 (= -sum_pairs r_ij (x) dE/dr_ij), brute force over images."""
    positions, charges, cell = atoms.positions, atoms.get_initial_charges(), atoms.cell.array
    inverse = np.linalg.inv(cell)
    reach = [int(np.ceil(COULOMB_CUTOFF * np.linalg.norm(inverse[:, axis]))) + 1 for axis in range(3)]
    virial = np.zeros((3, 3))
    for shift in itertools.product(*[range(-n, n + 1) for n in reach]):
        vectors = positions[None, :, :] + np.asarray(shift, float) @ cell - positions[:, None, :]
        distances = np.linalg.norm(vectors, axis=2)
        inside = (distances < COULOMB_CUTOFF) & (distances > 0.0)
        weight = np.where(inside, K_E * charges[:, None] * charges[None, :] / np.where(inside, distances, 1.0) ** 3, 0)
        virial += 0.5 * np.einsum("ij,ija,ijb->ab", weight, vectors, vectors)
    return virial


# ---- charges: plain cut Coulomb -------------------------------------------------------------------


def test_coulomb_matches_reference_on_periodic_nacl(models):
    atoms = rattled_nacl()
    atoms.calc = AtomplugCalculator(models["coulomb"])
    energy, forces = coulomb_reference(
        atoms.positions, atoms.get_initial_charges(), atoms.cell.array, atoms.pbc, COULOMB_CUTOFF, K_E
    )
    assert relative(atoms.get_potential_energy(), energy) < 1e-10
    assert relative(atoms.get_forces(), forces) < 1e-10
    stress = -coulomb_virial(atoms) / atoms.get_volume()
    assert relative(atoms.get_stress(voigt=False), stress) < 1e-10
    # the stress by central finite differences of the energy under strain (h = 1e-5)
    numeric = calculate_numerical_stress(atoms, eps=1e-5, voigt=False)
    assert relative(atoms.get_stress(voigt=False), numeric) < 1e-7
    assert relative(atoms.get_potential_energies().sum(), energy) < 1e-12


def test_coulomb_on_an_isolated_cluster_and_new_charges(models):
    atoms = rattled_nacl(seed=9)[:24]
    atoms.pbc, atoms.cell = False, np.zeros((3, 3))
    atoms.calc = AtomplugCalculator(models["coulomb"])
    for scale in (1.0, 0.5):  # initial charges are an ASE system change: the calculator recomputes
        atoms.set_initial_charges(scale * np.where(atoms.numbers == 11, 1.0, -1.0))
        energy, forces = coulomb_reference(
            atoms.positions, atoms.get_initial_charges(), np.zeros((3, 3)), atoms.pbc, 6.0, K_E
        )
        assert relative(atoms.get_potential_energy(), energy) < 1e-10, scale
        assert relative(atoms.get_forces(), forces) < 1e-10, scale


def test_charges_input_is_not_the_charges_result(models):
    """ASE's `get_charges()` asks the calculator for computed charges: a model that reads charges
    does not return them as its results (they are the user's initial charges)."""
    atoms = rattled_nacl()
    atoms.calc = AtomplugCalculator(models["coulomb"])
    atoms.get_potential_energy()
    assert "charges" not in atoms.calc.results
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_charges()


# ---- total charge and spin multiplicity -----------------------------------------------------------


def charge_spin_energy(atoms: Atoms, charge: float, spin: float) -> float:
    pair, _ = pair_term(atoms, PAIR_STRENGTH, PAIR_CUTOFF)
    return sum(CHARGE_TERMS[z] * charge**2 + SPIN_TERMS[z] * (spin - 1.0) for z in atoms.numbers) + pair


def test_charge_spin_closed_form_and_recompute_on_info_change(models):
    atoms = molecule("CH3OH")
    calc = AtomplugCalculator(models["charge_spin"])
    atoms.calc = calc
    for charge, spin in [(0, 1), (1, 2), (-2, 1), (2, 3)]:
        atoms.info["charge"], atoms.info["spin"] = charge, spin
        assert atoms.calc.check_state(atoms) or calc.atoms is None, (charge, spin)
        expected = charge_spin_energy(atoms, charge, spin)
        assert relative(atoms.get_potential_energy(), expected) < 1e-12, (charge, spin)
        assert atoms.calc.check_state(atoms) == []
    # forces do not depend on Q or S: the pair term's only
    without = atoms.get_forces().copy()
    atoms.info["charge"] = 5
    np.testing.assert_allclose(atoms.get_forces(), without, rtol=0, atol=1e-14)
    assert relative(atoms.get_potential_energy(), charge_spin_energy(atoms, 5, 3)) < 1e-12


def test_batched_compute_with_different_total_charges(models):
    calc = AtomplugCalculator(models["charge_spin"])
    structures = []
    for index, charge in enumerate([0, 1, -1, 2]):
        atoms = molecule("H2O")
        atoms.rattle(0.05, seed=index)
        atoms.info["charge"], atoms.info["spin"] = charge, 1 + index % 2
        structures.append(atoms)
    results = calc.compute(structures, ["energy", "forces"], batch_size=3, progress=False)
    for atoms, result in zip(structures, results):
        expected = charge_spin_energy(atoms, atoms.info["charge"], atoms.info["spin"])
        assert relative(result["energy"], expected) < 1e-12, atoms.info
        single = atoms.copy()
        single.calc = calc
        np.testing.assert_allclose(result["forces"], single.get_forces(), rtol=0, atol=1e-13)


# ---- masses and velocities ------------------------------------------------------------------------


def test_kinetic_energy_output_matches_ase(models):
    atoms = molecule("CH3OH")
    atoms.rattle(0.02, seed=1)
    thermalize(atoms, temperature_K=600, rng=np.random.default_rng(3))
    per_atom = KINETIC_ENERGY + "/per_atom"
    atoms.calc = AtomplugCalculator(models["kinetic"], additional_outputs=[per_atom, KINETIC_ENERGY])
    for step in range(3):
        atoms.get_potential_energy()
        expected = 0.5 * atoms.get_masses() * (atoms.get_velocities() ** 2).sum(axis=1)  # eV
        assert relative(atoms.calc.results[per_atom], expected) < 1e-12, step
        assert relative(atoms.calc.results[KINETIC_ENERGY], atoms.get_kinetic_energy()) < 1e-12, step
        # ASE's system_changes do not watch velocities or masses: the calculator does
        if step == 0:
            atoms.set_velocities(1.5 * atoms.get_velocities())
        else:
            masses = atoms.get_masses()
            masses[0] *= 2.0
            atoms.set_masses(masses)
        assert "velocities" in atoms.calc.check_state(atoms)


def test_models_without_inputs_ignore_velocities(lj_model_path):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.calc = AtomplugCalculator(lj_model_path)
    atoms.get_potential_energy()
    atoms.set_velocities(np.ones((len(atoms), 3)))
    atoms.info["charge"] = 3
    assert atoms.calc.check_state(atoms) == []


# ---- variants -------------------------------------------------------------------------------------


def test_variant_alt(models):
    atoms = bulk("NaCl", "rocksalt", a=4.2, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=2)
    extras = ["energy_uncertainty", "atomplug::n_pairs", "energy/per_atom"]
    plain = AtomplugCalculator(models["variant"], additional_outputs=extras)
    alt = AtomplugCalculator(models["variant"], variant="alt", additional_outputs=extras)
    assert plain.variant == "" and alt.todict()["variant"] == "alt"
    values = {}
    for name, calc in (("plain", plain), ("alt", alt)):
        atoms.calc = calc
        values[name] = (atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy())
        values[name + " results"] = dict(atoms.calc.results)
    energy, pairs = pair_term(atoms, 0.7, 4.0)
    assert relative(values["alt"][0], energy) < 1e-12
    assert relative(values["plain"][0], pair_term(atoms, 0.3, 4.0)[0]) < 1e-12
    for index in range(3):  # the same pairs: alt is exactly 7/3 of the plain energy, forces, stress
        assert relative(values["alt"][index], 7.0 / 3.0 * values["plain"][index]) < 1e-12, index
    results = values["alt results"]
    assert relative(results["energy_uncertainty"], pair_term(atoms, 0.02, 4.0)[0]) < 1e-12
    assert relative(values["plain results"]["energy_uncertainty"], pair_term(atoms, 0.01, 4.0)[0]) < 1e-12
    assert results["atomplug::n_pairs"] == pairs == values["plain results"]["atomplug::n_pairs"]
    assert relative(results["energy/per_atom"].sum(), energy) < 1e-12
    assert relative(atoms.get_potential_energies().sum(), energy) < 1e-12
    raw = alt.run(atoms, ["energy", "energy_uncertainty/per_atom"])
    assert relative(raw["energy"][0, 0], energy) < 1e-12
    assert relative(raw["energy_uncertainty/per_atom"].sum(), pair_term(atoms, 0.02, 4.0)[0]) < 1e-12
