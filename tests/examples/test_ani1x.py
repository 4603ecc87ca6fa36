"""ANI-1x through the atomplug entry point against torchani's own implementation (the oracle).

The atomplug model computes AEVs from the engine's neighbor list; torchani builds its own pairs.
Both run in float64, so everything agrees to rounding (~1e-14 relative); the tolerance below
is far looser than that but far tighter than any physics bug would allow.
"""

import itertools
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from ase.units import Hartree
from structures import water_box

from atomplug.core import ModelRunner, read_header
from atomplug.examples.ani1x import TORCHANI_REQUIREMENT, export_ani1x, main, torchani_reference

TOLERANCE = 1e-9
HCNO = {1, 6, 7, 8}
G2_HCNO = [name for name in g2.names if set(g2[name].numbers) <= HCNO]


@pytest.fixture(scope="module")
def runner(ani1x_path):
    return ModelRunner(ani1x_path)


@pytest.fixture(scope="module")
def oracle():
    return torchani_reference()


# ---- structures ------------------------------------------------------------------------------


def tiny_cells():
    """Cells much smaller than 2 Rcr = 10.4 A: many images, atoms are their own neighbors."""
    methane = molecule("CH4")
    methane.set_cell([[3.0, 0.0, 0.0], [0.8, 3.2, 0.0], [0.5, 0.7, 3.4]])
    methane.pbc = True
    methane.rattle(0.05, seed=1)
    methane.wrap()
    water = molecule("H2O")
    water.set_cell([[2.6, 0.0, 0.0], [0.3, 2.7, 0.0], [-0.2, 0.4, 2.8]])
    water.pbc = True
    water.rattle(0.05, seed=2)
    water.wrap()
    return [methane, water]


def slab() -> Atoms:
    atoms = water_box(8, seed=5)
    atoms.pbc = [True, True, False]
    return atoms


# ---- the oracle ------------------------------------------------------------------------------


def reference(model, atoms: Atoms):
    """torchani: energy (eV), forces (eV/A), virial -dE/dstrain (eV), member energies (eV)."""
    numbers = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    strain = torch.zeros((3, 3), dtype=torch.float64, requires_grad=True)
    deformation = torch.eye(3, dtype=torch.float64) + strain
    species_coordinates = (numbers, (positions @ deformation).unsqueeze(0))
    if atoms.pbc.any():
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64) @ deformation
        pbc = torch.tensor(atoms.pbc)
        energy = model(species_coordinates, cell=cell, pbc=pbc).energies.sum()
        with torch.no_grad():
            members = model.members_energies(species_coordinates, cell=cell, pbc=pbc).energies
    else:
        energy = model(species_coordinates).energies.sum()
        with torch.no_grad():
            members = model.members_energies(species_coordinates).energies
    grad_positions, grad_strain = torch.autograd.grad(energy, [positions, strain])
    return (
        energy.item() * Hartree,
        -grad_positions.numpy() * Hartree,
        -grad_strain.numpy() * Hartree,
        members.numpy().reshape(-1) * Hartree,
    )


def relative(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(actual - expected).max()) / scale


def compare(runner, oracle, atoms, errors):
    result = runner.run([atoms], ["energy", "energy_ensemble"], forces=True, virial=True)
    energy, forces, virial, members = reference(oracle, atoms)
    assert result["energy"].shape == (1, 1)
    assert result["forces"].shape == (len(atoms), 3)
    assert result["virial"].shape == (1, 3, 3)
    current = {
        "energy": relative(result["energy"][0, 0], energy),
        "forces": relative(result["forces"], forces),
        "virial": relative(result["virial"][0], virial),
        "members": relative(result["energy_ensemble"][0], members),
    }
    for key, value in current.items():
        errors[key] = max(errors.get(key, 0.0), value)
    return current


# ---- tests -----------------------------------------------------------------------------------


def test_g2_molecules_match_torchani(runner, oracle):
    assert len(G2_HCNO) >= 20
    errors = {}
    for name in G2_HCNO:
        current = compare(runner, oracle, g2[name], errors)
        assert max(current.values()) < TOLERANCE, (name, current)
    print(f"\nANI-1x vs torchani, {len(G2_HCNO)} g2 molecules, max relative errors: {errors}")


@pytest.mark.parametrize("n_molecules, seed", [(32, 0), (64, 1)])
def test_periodic_water_box_matches_torchani(runner, oracle, n_molecules, seed):
    atoms = water_box(n_molecules, seed)
    assert 9.5 < atoms.cell[0, 0] < 12.5
    errors = {}
    compare(runner, oracle, atoms, errors)
    print(f"\nANI-1x vs torchani, {n_molecules} waters in {atoms.cell[0, 0]:.2f} A, max relative errors: {errors}")
    assert max(errors.values()) < TOLERANCE, errors


def test_tiny_triclinic_cells_and_slab_match_torchani(runner, oracle):
    errors = {}
    for atoms in tiny_cells() + [slab()]:
        current = compare(runner, oracle, atoms, errors)
        assert max(current.values()) < TOLERANCE, (atoms.get_chemical_formula(), atoms.pbc, current)
    print(f"\nANI-1x vs torchani, small triclinic cells and a slab, max relative errors: {errors}")


def test_virial_matches_strain_finite_differences(runner):
    atoms = tiny_cells()[0]
    result = runner.run([atoms], ["energy"], virial=True)
    step = 1e-5
    numeric = np.zeros((3, 3))
    for a, b in itertools.product(range(3), range(3)):
        energies = []
        for sign in (1.0, -1.0):
            strained = atoms.copy()
            deformation = np.eye(3)
            deformation[a, b] += sign * step
            strained.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
            strained.positions = atoms.positions @ deformation
            energies.append(runner.run([strained], ["energy"], use_cache=False)["energy"][0, 0])
        numeric[a, b] = -(energies[0] - energies[1]) / (2 * step)
    assert np.allclose(result["virial"][0], numeric, atol=1e-5 * max(1.0, np.abs(numeric).max()))


def test_batch_equals_one_by_one(runner):
    structures = [g2[name] for name in G2_HCNO[::4]] + tiny_cells() + [water_box(32, seed=2)]
    batch = runner.run(structures, ["energy", "energy_ensemble", "energy_uncertainty"], forces=True, virial=True)
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in structures])])
    for index, atoms in enumerate(structures):
        single = runner.run([atoms], ["energy", "energy_ensemble", "energy_uncertainty"], forces=True, virial=True)
        for key in ("energy", "energy_ensemble", "energy_uncertainty", "virial"):
            np.testing.assert_allclose(batch[key][index], single[key][0], rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(
            batch["forces"][offsets[index] : offsets[index + 1]], single["forces"], rtol=1e-12, atol=1e-10
        )


def test_per_atom_ensemble_and_uncertainty_are_consistent(runner, oracle):
    structures = [g2["CH3CH2OH"], g2["HCOOH"], water_box(32, seed=3)]
    outputs = ["energy", "energy/per_atom", "energy_ensemble", "energy_uncertainty"]
    result = runner.run(structures, outputs)
    sizes = [len(s) for s in structures]
    assert result["energy/per_atom"].shape == (sum(sizes), 1)
    assert result["energy_ensemble"].shape == (len(structures), 8)
    assert result["energy_uncertainty"].shape == (len(structures), 1)
    per_structure = np.add.reduceat(result["energy/per_atom"][:, 0], np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    np.testing.assert_allclose(per_structure, result["energy"][:, 0], rtol=1e-13)
    np.testing.assert_allclose(result["energy_ensemble"].mean(axis=1), result["energy"][:, 0], rtol=1e-13)
    np.testing.assert_allclose(
        result["energy_ensemble"].std(axis=1, ddof=1), result["energy_uncertainty"][:, 0], rtol=1e-9
    )
    assert np.all(result["energy_uncertainty"] > 0.0)
    # torchani's own atomic energies (ensemble mean, self energies included)
    atoms = structures[0]
    numbers = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
    positions = torch.tensor(atoms.positions, dtype=torch.float64).unsqueeze(0)
    with torch.no_grad():
        atomic = oracle.atomic_energies((numbers, positions)).energies.numpy().reshape(-1) * Hartree
    assert relative(result["energy/per_atom"][: len(atoms), 0], atomic) < TOLERANCE


def test_ghost_atoms_reproduce_the_periodic_box(runner):
    """LAMMPS-style domain decomposition: a non-periodic cluster of local atoms plus ghost copies
    (zero shifts), with only the local atoms' energies counted, equals the periodic box."""
    box = water_box(32, seed=4)
    length = box.cell[0, 0]
    margin = 5.2 + 0.1
    positions, numbers, owners = [box.positions], [box.numbers], [np.arange(len(box))]
    for shift in itertools.product((-1, 0, 1), repeat=3):
        if shift == (0, 0, 0):
            continue
        images = box.positions + np.array(shift) @ box.cell.array
        keep = np.all((images > -margin) & (images < length + margin), axis=1)
        positions.append(images[keep])
        numbers.append(box.numbers[keep])
        owners.append(np.nonzero(keep)[0])
    cluster = Atoms(numbers=np.concatenate(numbers), positions=np.concatenate(positions), pbc=False)
    owners = np.concatenate(owners)
    assert len(cluster) > 4 * len(box)

    periodic = runner.run([box], ["energy"], forces=True, virial=True)
    local = runner.run(
        [cluster], ["energy"], forces=True, virial=True, selected_atoms=np.arange(len(box)), use_cache=False
    )
    folded = np.zeros((len(box), 3))
    np.add.at(folded, owners, local["forces"])
    assert relative(local["energy"], periodic["energy"]) < TOLERANCE
    assert relative(folded, periodic["forces"]) < TOLERANCE
    assert relative(local["virial"], periodic["virial"]) < TOLERANCE


def test_exported_header_and_cli(tmp_path, ani1x_path):
    header = read_header(ani1x_path)
    capabilities = header["capabilities"]
    assert capabilities["atomic_types"] == [1, 6, 7, 8]
    assert capabilities["length_unit"] == "Angstrom"
    assert capabilities["dtype"] == "float64"
    assert capabilities["interaction_range"] == pytest.approx(5.2)
    outputs = capabilities["outputs"]
    assert outputs["energy"] == {"quantity": "energy", "unit": "Hartree", "per_atom": True, "properties": []}
    assert outputs["energy_ensemble"]["properties"] == [f"member_{i}" for i in range(8)]
    assert not outputs["energy_ensemble"]["per_atom"] and not outputs["energy_uncertainty"]["per_atom"]
    assert any("241733" in reference for reference in header["metadata"]["references"])
    assert any("TorchANI" in reference for reference in header["metadata"]["references"])

    path = tmp_path / "cli.pt"
    main([str(path)])
    atoms = g2["NH3"]
    np.testing.assert_allclose(
        ModelRunner(str(path)).run([atoms])["energy"], ModelRunner(ani1x_path).run([atoms])["energy"], rtol=1e-14
    )


def test_missing_torchani_gives_an_install_hint(monkeypatch, tmp_path):
    for name in list(sys.modules):
        if name == "torchani" or name.startswith("torchani."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError) as error:
        export_ani1x(str(tmp_path / "never.pt"))
    assert str(error.value) == TORCHANI_REQUIREMENT
    assert not (tmp_path / "never.pt").exists()
