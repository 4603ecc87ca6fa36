"""The engine entry point with the LJ model against an independent numpy LJ, finite differences
and symmetries."""

from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from lj_reference import lennard_jones_reference
from structures import AR_CUTOFF, AR_EPSILON, AR_LATTICE, AR_SIGMA, displaced_triclinic_argon

from atomplug.core import ModelOutput, ModelRunner, NeighborListOptions, Structure, System

RTOL = 1e-12


def run_lj(runner, atoms, **kwargs):
    return runner.run([atoms], ["energy"], forces=True, virial=True, **kwargs)


def reference(atoms):
    return lennard_jones_reference(atoms.positions, atoms.cell.array, atoms.pbc, AR_EPSILON, AR_SIGMA, AR_CUTOFF)


def assert_close(actual, expected, rtol=RTOL):
    scale = max(np.max(np.abs(expected)), 1e-300)
    assert np.max(np.abs(np.asarray(actual) - expected)) <= rtol * scale, (actual, expected)


@pytest.fixture(scope="module")
def runner(lj_model_path):
    return ModelRunner(lj_model_path)


def dimer():
    return Atoms("Ar2", positions=[[0, 0, 0], [0.3, -0.2, 3.7]])


def trimer():
    return Atoms("Ar3", positions=[[0, 0, 0], [3.6, 0.4, 0.1], [1.2, 3.3, -0.5]])


@pytest.mark.parametrize("make", [dimer, trimer, displaced_triclinic_argon], ids=["dimer", "trimer", "triclinic-box"])
def test_lj_matches_numpy_reference(runner, make):
    atoms = make()
    result = run_lj(runner, atoms)
    energy, forces, virial = reference(atoms)
    assert_close(result["energy"][0, 0], energy)
    assert_close(result["forces"], forces)
    assert_close(result["virial"][0], virial)
    assert result["energy"].dtype == np.float64


def test_per_atom_energies_and_atomic_virial_sum_to_totals(runner, argon_box):
    result = runner.run([argon_box], ["energy", "energy/per_atom"], forces=True, virial=True, atomic_virial=True)
    assert result["energy/per_atom"].shape == (len(argon_box), 1)
    assert_close(result["energy/per_atom"].sum(), result["energy"][0, 0])
    assert_close(result["atomic_virial"].sum(axis=0), result["virial"][0])


def test_forces_are_minus_finite_difference_gradient(runner):
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    forces = run_lj(runner, atoms)["forces"]
    step = 1e-5
    rng = np.random.default_rng(3)
    for atom in rng.choice(len(atoms), size=4, replace=False):
        for direction in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[atom, direction] += sign * step
                energies.append(runner.run([moved], ["energy"])["energy"][0, 0])
            numeric = -(energies[0] - energies[1]) / (2 * step)
            assert abs(numeric - forces[atom, direction]) < 1e-7 * max(1.0, abs(forces[atom, direction]))


def test_virial_is_minus_finite_difference_strain_derivative(runner):
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    virial = run_lj(runner, atoms)["virial"][0]
    step = 1e-6
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[a, b] += sign * step
                moved = atoms.copy()
                moved.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                energies.append(runner.run([moved], ["energy"])["energy"][0, 0])
            numeric = -(energies[0] - energies[1]) / (2 * step)
            assert abs(numeric - virial[a, b]) < 1e-6 * np.max(np.abs(virial))


def rotation_matrix(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return q


def test_invariances(runner, argon_box):
    base = run_lj(runner, argon_box)
    tolerance = 1e-11

    rotation = rotation_matrix(11)
    rotated = argon_box.copy()
    rotated.set_cell(argon_box.cell.array @ rotation.T, scale_atoms=False)
    rotated.positions = argon_box.positions @ rotation.T
    result = run_lj(runner, rotated)
    assert_close(result["energy"], base["energy"], tolerance)
    assert_close(result["forces"], base["forces"] @ rotation.T, tolerance)
    assert_close(result["virial"][0], rotation @ base["virial"][0] @ rotation.T, tolerance)

    translated = argon_box.copy()
    translated.positions += np.array([1.7, -3.1, 0.4])
    result = run_lj(runner, translated)
    assert_close(result["energy"], base["energy"], tolerance)
    assert_close(result["forces"], base["forces"], tolerance)

    permutation = np.random.default_rng(5).permutation(len(argon_box))
    permuted = argon_box[permutation]
    result = run_lj(runner, permuted)
    assert_close(result["energy"], base["energy"], tolerance)
    assert_close(result["forces"], base["forces"][permutation], tolerance)
    assert_close(result["virial"], base["virial"], tolerance)

    unwrapped = argon_box.copy()
    unwrapped.positions += np.random.default_rng(9).integers(-2, 3, size=(len(argon_box), 3)) @ argon_box.cell.array
    result = run_lj(runner, unwrapped)
    assert_close(result["energy"], base["energy"], tolerance)
    assert_close(result["forces"], base["forces"], tolerance)
    assert_close(result["virial"], base["virial"], tolerance)


def test_cell_smaller_than_cutoff_matches_supercell(tmp_path):
    from atomplug.examples.lj import export_lj

    # fcc has a neighbour shell at exactly 3a (a*sqrt(18/2)): a cutoff there lets roundoff pick
    # which pairs count. 3.04a lies between the shells at 3a and 3.08a.
    cutoff = 3.04 * AR_LATTICE
    path = tmp_path / "lj-long.pt"
    export_lj(str(path), epsilon=AR_EPSILON, sigma=AR_SIGMA, cutoff=cutoff)
    runner = ModelRunner(str(path))
    primitive = bulk("Ar", "fcc", a=AR_LATTICE)
    supercell = primitive.repeat((4, 4, 4))
    small = runner.run([primitive], ["energy"], forces=True, virial=True)
    large = runner.run([supercell], ["energy"], forces=True, virial=True)
    assert_close(small["energy"][0, 0], large["energy"][0, 0] / len(supercell), 1e-12)
    assert_close(small["virial"][0], large["virial"][0] / len(supercell), 1e-11)
    assert np.max(np.abs(small["forces"])) < 1e-12
    expected, _, _ = lennard_jones_reference(
        primitive.positions, primitive.cell.array, primitive.pbc, AR_EPSILON, AR_SIGMA, cutoff
    )
    assert_close(small["energy"][0, 0], expected)


def test_mixed_periodicity_and_molecules(runner):
    slab = displaced_triclinic_argon(repeat=(3, 3, 2))
    slab.pbc = [True, True, False]
    cell = slab.cell.array.copy()
    slab.set_cell([cell[0], cell[1], [0.0, 0.0, 0.0]], scale_atoms=False)
    result = run_lj(runner, slab)
    energy, forces, virial = reference(slab)
    assert_close(result["energy"][0, 0], energy)
    assert_close(result["forces"], forces)
    assert_close(result["virial"][0], virial)

    cluster = displaced_triclinic_argon(repeat=(2, 2, 2))
    cluster.pbc = False
    result = run_lj(runner, cluster)
    energy, forces, virial = reference(cluster)
    assert_close(result["energy"][0, 0], energy)
    assert_close(result["forces"], forces)


def test_batch_equals_one_by_one(runner):
    structures = [dimer(), displaced_triclinic_argon(repeat=(2, 2, 2)), trimer(), displaced_triclinic_argon(seed=1)]
    batch = runner.run(structures, ["energy", "energy/per_atom"], forces=True, virial=True, atomic_virial=True)
    offset = 0
    for index, atoms in enumerate(structures):
        single = runner.run([atoms], ["energy", "energy/per_atom"], forces=True, virial=True, atomic_virial=True)
        n = len(atoms)
        np.testing.assert_allclose(batch["energy"][index], single["energy"][0], rtol=1e-13)
        np.testing.assert_allclose(batch["forces"][offset : offset + n], single["forces"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(batch["virial"][index], single["virial"][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(
            batch["atomic_virial"][offset : offset + n], single["atomic_virial"], rtol=1e-12, atol=1e-14
        )
        offset += n


def test_selected_atoms_sum_their_energies(runner, argon_box):
    full = runner.run([argon_box], ["energy/per_atom"])["energy/per_atom"][:, 0]
    selected = [0, 5, 17, 40]
    result = runner.run([argon_box], ["energy", "energy/per_atom"], selected_atoms=selected, forces=True)
    assert_close(result["energy"][0, 0], full[selected].sum())
    assert_close(result["energy/per_atom"][:, 0], full[selected])


def test_units_are_converted_at_the_entry_point(lj_model_path, argon_box):
    from ase.units import Bohr, Hartree, kcal, mol

    ase_result = run_lj(ModelRunner(lj_model_path), argon_box)
    bohr_atoms = Structure(argon_box.numbers, argon_box.positions / Bohr, argon_box.cell.array / Bohr, argon_box.pbc)
    atomic = ModelRunner(lj_model_path, length_unit="Bohr", energy_unit="Hartree").run(
        [bohr_atoms], ["energy"], forces=True, virial=True
    )
    assert_close(atomic["energy"] * Hartree, ase_result["energy"], 1e-12)
    assert_close(atomic["forces"] * Hartree / Bohr, ase_result["forces"], 1e-12)
    assert_close(atomic["virial"] * Hartree, ase_result["virial"], 1e-12)
    real = ModelRunner(lj_model_path, energy_unit="kcal/mol").run([argon_box], ["energy"], forces=True)
    assert_close(real["energy"] * kcal / mol, ase_result["energy"], 1e-12)


class TwoFeatures(torch.nn.Module):
    """features = [sum over pairs of r^2, sum over pairs of exp(-r)]: two properties, each with
    its own derivatives."""

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(4.0, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        rows: List[torch.Tensor] = []
        for system in systems:
            distances = system.get_neighbor_list(NeighborListOptions(4.0, False, True)).distances()
            rows.append(torch.stack([(distances**2).sum(), torch.exp(-distances).sum()]))
        return {"features": torch.stack(rows)}


def test_multi_property_output_has_one_derivative_per_property(tmp_path):
    from atomplug.core import ModelCapabilities, ModelMetadata, export

    path = str(tmp_path / "features.pt")
    export(
        TwoFeatures(),
        path,
        ModelCapabilities(
            outputs={"features": ModelOutput("length", "Angstrom", False, ["r2", "exp"])},
            atomic_types=[18],
            interaction_range=4.0,
        ),
        ModelMetadata(name="two features"),
    )
    runner = ModelRunner(path)
    atoms = trimer()
    atoms.cell = np.diag([5.0, 5.5, 6.0])
    atoms.pbc = True
    result = runner.run([atoms], ["features"], gradient_output="features", forces=True, virial=True)
    assert result["forces"].shape == (2, 3, 3) and result["virial"].shape == (2, 1, 3, 3)
    step = 1e-6
    for atom in range(3):
        for axis in range(3):
            moved = [atoms.copy(), atoms.copy()]
            moved[0].positions[atom, axis] += step
            moved[1].positions[atom, axis] -= step
            plus, minus = (runner.run([m], ["features"])["features"][0] for m in moved)
            numeric = -(plus - minus) / (2 * step)
            np.testing.assert_allclose(result["forces"][:, atom, axis], numeric, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="per-atom virial needs a single-valued output"):
        runner.run([atoms], ["features"], gradient_output="features", atomic_virial=True)


def test_full_list_lj_equals_half_list_lj(tmp_path, argon_box):
    from atomplug.examples.lj import export_lj

    results = []
    for full in (False, True):
        path = str(tmp_path / f"lj-{full}.pt")
        export_lj(path, epsilon=AR_EPSILON, sigma=AR_SIGMA, cutoff=AR_CUTOFF, full_list=full)
        results.append(
            ModelRunner(path).run(
                [argon_box],
                ["energy", "energy/per_atom", "non_conservative_forces/per_atom", "non_conservative_stress"],
                forces=True,
                virial=True,
                atomic_virial=True,
            )
        )
    half, full = results
    for key in half:
        assert_close(full[key], half[key])
