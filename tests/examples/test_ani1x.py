"""ANI-1x through the atomplug entry point against torchani's own implementation (the oracle).

The atomplug model computes AEVs from the engine's neighbor list; torchani builds its own pairs.
Both run in float64, so everything agrees to rounding (~1e-14 relative); the tolerance below
is far looser than that but far tighter than any physics bug would allow.
"""

import itertools
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.collections import g2
from ase.units import Hartree
from structures import water_box

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import ModelRunner, NeighborList, NeighborListOptions, System, load_model, read_header
from atomplug.core.neighbors import compute_pairs
from atomplug.examples import ani1x
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


# ---- ANI-1ccx as the variant "ccsdt" ------------------------------------------------------------
#
# torchani 2.2.4's wheel ships ANI-1ccx's files empty (torchani.models.ANI1ccx() downloads them at
# first use) and nothing here downloads. Where torchani already keeps complete ANI-1ccx files, the
# tests below use them; otherwise a stand-in ANI-1ccx directory: ANI-1x's files with other self
# energies and rescaled last two layers of every member (other energies AND forces), in ANI-1ccx's
# layout. The oracle is torchani building its BuiltinEnsemble from those files by the very code
# path torchani.models.ANI1ccx() takes (BuiltinEnsemble._from_neurochem_resources on an .info file).

VARIANT_TOLERANCE = 1e-10  # float64 on both sides: rounding is ~1e-15 relative
STAND_IN_SAE = "H,0=-0.59915013\nC,1=-38.03750806\nN,2=-54.67448348\nO,3=-75.16043537\n"


def make_stand_in_ani1ccx(directory) -> str:
    """An ANI-1ccx-shaped NeuroChem directory from ANI-1x's files (see above)."""
    import torchani

    source = os.path.join(os.path.dirname(torchani.__file__), "resources", ani1x.RESOURCE_DIRECTORY)
    target = os.path.join(str(directory), ani1x.ANI1CCX_RESOURCE_DIRECTORY)
    shutil.copytree(source, target)
    with open(os.path.join(target, ani1x.SAE_FILE), "w") as handle:
        handle.write(STAND_IN_SAE)
    for member in range(ani1x.ENSEMBLE_SIZE):
        networks = os.path.join(target, f"{ani1x.ENSEMBLE_PREFIX}{member}", "networks")
        for name in os.listdir(networks):
            if name.endswith(("-l3.wparam", "-l4.wparam")):
                weights = np.fromfile(os.path.join(networks, name), dtype=np.float32)
                (weights * np.float32(1.0 + 0.05 * (member + 1))).astype(np.float32).tofile(
                    os.path.join(networks, name)
                )
    return target


@pytest.fixture(scope="module")
def ccsdt_directory(tmp_path_factory):
    real = ani1x.find_ani1ccx_resources()
    if real is not None:
        print(f"\nANI-1ccx: torchani's own files in {real}")
        return real
    print("\nANI-1ccx: not in torchani 2.2.4's wheel; a stand-in built from ANI-1x's files")
    return make_stand_in_ani1ccx(tmp_path_factory.mktemp("ani1ccx"))


@pytest.fixture(scope="module")
def ccsdt_path(ccsdt_directory, tmp_path_factory):
    path = tmp_path_factory.mktemp("ani1x_ccsdt") / "ani1x_ccsdt.pt"
    export_ani1x(str(path), ccsdt=ccsdt_directory)
    return str(path)


@pytest.fixture(scope="module")
def ccsdt_runner(ccsdt_path):
    return ModelRunner(ccsdt_path)


@pytest.fixture(scope="module")
def ccsdt_oracle(ccsdt_directory, tmp_path_factory):
    """torchani's ANI1ccx() construction (BuiltinEnsemble._from_neurochem_resources), on the files
    of `ccsdt_directory` through an .info file naming them (torchani's own .info format)."""
    from torchani.models import BuiltinEnsemble

    info = tmp_path_factory.mktemp("ani1ccx_info") / "ani-1ccx_8x.info"
    info.write_text(
        "\n".join(
            [
                os.path.join(ccsdt_directory, ani1x.CONSTANTS_FILE),
                os.path.join(ccsdt_directory, ani1x.SAE_FILE),
                os.path.join(ccsdt_directory, ani1x.ENSEMBLE_PREFIX),
                str(ani1x.ENSEMBLE_SIZE),
            ]
        )
        + "\n"
    )
    # torchani.models.ANI1ccx() is exactly this on its own .info file (which would download when empty)
    model = BuiltinEnsemble._from_neurochem_resources(str(info), periodic_table_index=True)
    return model.to(torch.float64).eval()


def variant_structures():
    return [g2[name] for name in ("CH3CH2OH", "HCOOH", "CH3CONH2", "H2O", "NH3")] + tiny_cells() + [water_box(32, 6)]


def test_ccsdt_variant_matches_torchani_ani1ccx(ccsdt_runner, ccsdt_oracle, oracle):
    """energy/ccsdt (picked by the archive's rule) against torchani's ANI-1ccx, and the plain
    energy of the same file still against torchani's ANI-1x."""
    energy = ccsdt_runner.output_name("energy", "ccsdt")
    ensemble = ccsdt_runner.output_name("energy_ensemble", "ccsdt")
    uncertainty = ccsdt_runner.output_name("energy_uncertainty", "ccsdt")
    assert (energy, ensemble, uncertainty) == ("energy/ccsdt", "energy_ensemble/ccsdt", "energy_uncertainty/ccsdt")
    assert ccsdt_runner.output_name("energy", "") == "energy"
    errors = {}
    for atoms in variant_structures():
        result = ccsdt_runner.run(
            [atoms], [energy, ensemble, uncertainty], forces=True, virial=True, gradient_output=energy
        )
        reference_energy, reference_forces, reference_virial, reference_members = reference(ccsdt_oracle, atoms)
        current = {
            "energy": relative(result[energy][0, 0], reference_energy),
            "forces": relative(result["forces"], reference_forces),
            "virial": relative(result["virial"][0], reference_virial),
            "members": relative(result[ensemble][0], reference_members),
            "uncertainty": relative(result[uncertainty][0, 0], np.std(reference_members, ddof=1)),
        }
        for key, value in current.items():
            errors[key] = max(errors.get(key, 0.0), value)
        assert max(current.values()) < VARIANT_TOLERANCE, (atoms.get_chemical_formula(), current)
        # the plain energy of the same file is ANI-1x, a different potential
        plain = ccsdt_runner.run([atoms], ["energy"], forces=True, use_cache=False)
        ani1x_energy, ani1x_forces, _, _ = reference(oracle, atoms)
        assert relative(plain["energy"][0, 0], ani1x_energy) < VARIANT_TOLERANCE
        assert relative(plain["forces"], ani1x_forces) < VARIANT_TOLERANCE
        assert abs(plain["energy"][0, 0] - result[energy][0, 0]) > 1e-3
        assert np.abs(plain["forces"] - result["forces"]).max() > 1e-4
    print(f"\nenergy/ccsdt vs torchani's ANI-1ccx construction, max relative errors: {errors}")


def test_ccsdt_variant_in_the_ase_calculator(ccsdt_path, ccsdt_oracle, ani1x_path):
    atoms = water_box(32, 7)
    atoms.calc = AtomplugCalculator(ccsdt_path, variant="ccsdt", additional_outputs=["energy_uncertainty"])
    reference_energy, reference_forces, reference_virial, reference_members = reference(ccsdt_oracle, atoms)
    assert relative(atoms.get_potential_energy(), reference_energy) < VARIANT_TOLERANCE
    assert relative(atoms.get_forces(), reference_forces) < VARIANT_TOLERANCE
    stress = atoms.get_stress(voigt=False)
    assert relative(-stress * atoms.get_volume(), reference_virial) < VARIANT_TOLERANCE
    # energy_uncertainty has a ccsdt variant: the calculator takes energy_uncertainty/ccsdt
    assert relative(atoms.calc.results["energy_uncertainty"], np.std(reference_members, ddof=1)) < VARIANT_TOLERANCE
    # without a variant the same file is ANI-1x, exactly as the file exported without ccsdt
    plain = atoms.copy()
    plain.calc = AtomplugCalculator(ccsdt_path)
    alone = atoms.copy()
    alone.calc = AtomplugCalculator(ani1x_path)
    np.testing.assert_allclose(plain.get_potential_energy(), alone.get_potential_energy(), rtol=1e-14)
    np.testing.assert_allclose(plain.get_forces(), alone.get_forces(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"no variant 'dft' of 'energy' \(available: ccsdt\)"):
        AtomplugCalculator(ccsdt_path, variant="dft")
    with pytest.raises(ValueError, match="no variant 'ccsdt' of 'energy' \\(available: none\\)"):
        AtomplugCalculator(ani1x_path, variant="ccsdt")


def test_ccsdt_per_atom_and_selected_atoms(ccsdt_runner, ccsdt_oracle):
    structures = [g2["CH3CH2OH"], water_box(32, seed=8)]
    energy = ccsdt_runner.output_name("energy", "ccsdt")
    per_atom = ccsdt_runner.output_name("energy/per_atom", "ccsdt")
    assert per_atom == "energy/ccsdt/per_atom"
    result = ccsdt_runner.run(structures, [energy, per_atom])
    sizes = [len(s) for s in structures]
    per_structure = np.add.reduceat(result[per_atom][:, 0], [0, sizes[0]])
    np.testing.assert_allclose(per_structure, result[energy][:, 0], rtol=1e-13)
    atoms = structures[0]
    numbers = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
    positions = torch.tensor(atoms.positions, dtype=torch.float64).unsqueeze(0)
    with torch.no_grad():
        atomic = ccsdt_oracle.atomic_energies((numbers, positions)).energies.numpy().reshape(-1) * Hartree
    assert relative(result[per_atom][: len(atoms), 0], atomic) < VARIANT_TOLERANCE
    selected = ccsdt_runner.run([atoms], [energy], selected_atoms=[0, 2, 5], use_cache=False)
    np.testing.assert_allclose(selected[energy][0, 0], atomic[[0, 2, 5]].sum(), rtol=1e-12)


class CountingHead(torch.nn.Module):
    """Wraps an ensemble head and counts its calls (eager Python only)."""

    def __init__(self, head):
        super().__init__()
        self.head = head
        self.calls = 0

    def forward(self, species, atoms_of_species, aevs_of_species):
        self.calls += 1
        return self.head(species, atoms_of_species, aevs_of_species)


def test_only_the_requested_ensemble_runs(ccsdt_directory):
    """Asking for energy runs ANI-1x's networks only, energy/ccsdt ANI-1ccx's only (the AEVs once)."""
    from atomplug.core import ModelOutput

    module = ani1x.build_ani1x(ccsdt_directory)
    assert module.suffixes == ["", "/ccsdt"]
    heads = [CountingHead(head) for head in module.heads]
    module.heads = torch.nn.ModuleList(heads)
    atoms = g2["CH3CH2OH"]
    positions = torch.tensor(atoms.positions, dtype=torch.float64)
    options = NeighborListOptions(module.cutoff, False, True)
    pairs, shifts = compute_pairs(atoms.positions, np.zeros((3, 3)), np.zeros(3, dtype=bool), module.cutoff, False)
    pairs = torch.from_numpy(pairs)
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]]
    system = System(
        torch.tensor(atoms.numbers, dtype=torch.int32),
        positions,
        torch.zeros((3, 3), dtype=torch.float64),
        torch.zeros(3, dtype=torch.bool),
    )
    system.add_neighbor_list(NeighborList(options, pairs, torch.from_numpy(shifts), vectors))
    expected = {
        ("energy",): [1, 0],
        ("energy/ccsdt",): [0, 1],
        ("energy_uncertainty/ccsdt", "energy_ensemble/ccsdt"): [0, 1],
        ("energy", "energy/ccsdt", "energy_uncertainty"): [1, 1],
    }
    for names, calls in expected.items():
        for head in heads:
            head.calls = 0
        outputs = {name: ModelOutput("energy", "Hartree", False) for name in names}
        result = module([system], outputs, None)
        assert sorted(result) == sorted(names)
        assert [head.calls for head in heads] == calls, names


def test_ccsdt_header_and_variants(ccsdt_path, ani1x_path):
    header = read_header(ccsdt_path)
    outputs = header["capabilities"]["outputs"]
    assert outputs["energy/ccsdt"] == {"quantity": "energy", "unit": "Hartree", "per_atom": True, "properties": []}
    assert outputs["energy_ensemble/ccsdt"]["properties"] == [f"member_{i}" for i in range(8)]
    assert not outputs["energy_uncertainty/ccsdt"]["per_atom"]
    assert header["metadata"]["name"] == "ANI-1x + ANI-1ccx"
    assert any("s41467-019-10827-4" in reference for reference in header["metadata"]["references"])
    model = load_model(ccsdt_path)
    assert model.capabilities.variants() == {
        "energy": ["ccsdt"],
        "energy_ensemble": ["ccsdt"],
        "energy_uncertainty": ["ccsdt"],
    }
    # the file exported without ccsdt is what it was: ANI-1x alone, no variants
    plain = load_model(ani1x_path)
    assert plain.capabilities.variants() == {}
    assert sorted(plain.capabilities.outputs) == ["energy", "energy_ensemble", "energy_uncertainty"]
    assert plain.metadata.name == "ANI-1x"


def test_incomplete_ani1ccx_files_are_refused(tmp_path):
    """torchani 2.2.4's own ani-1ccx_8x (empty placeholders) and a directory lacking files are
    refused naming the files and the fix; `--ccsdt auto` finds nothing or torchani's complete copy."""
    import torchani

    placeholders = os.path.join(os.path.dirname(torchani.__file__), "resources", ani1x.ANI1CCX_RESOURCE_DIRECTORY)
    empty = tmp_path / "empty"
    shutil.copytree(placeholders, empty)
    for root, _, files in os.walk(empty):
        for name in files:
            open(os.path.join(root, name), "w").close()
    with pytest.raises(FileNotFoundError) as error:
        export_ani1x(str(tmp_path / "never.pt"), ccsdt=str(empty))
    message = str(error.value)
    assert f"the ANI-1ccx resource files in {empty} are missing or empty" in message
    assert ani1x.CONSTANTS_FILE in message and "atomplug never downloads" in message
    with pytest.raises(FileNotFoundError, match="missing or empty"):
        export_ani1x(str(tmp_path / "never.pt"), ccsdt=str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="missing or empty"):
        main([str(tmp_path / "never.pt"), "--ccsdt", str(empty)])
    assert not (tmp_path / "never.pt").exists()
    if ani1x.find_ani1ccx_resources() is None:
        with pytest.raises(SystemExit, match="no complete ANI-1ccx files in"):
            main([str(tmp_path / "never.pt"), "--ccsdt", "auto"])


def test_ani1ccx_with_other_aev_constants_is_refused(tmp_path):
    directory = make_stand_in_ani1ccx(tmp_path)
    constants = os.path.join(directory, ani1x.CONSTANTS_FILE)
    with open(constants) as handle:
        text = handle.read()
    with open(constants, "w") as handle:
        handle.write(text.replace("Rcr = 5.2000e+00", "Rcr = 5.1000e+00"))
    with pytest.raises(ValueError, match=r"other AEV constants than ANI-1x \(Rcr differ\)"):
        ani1x.build_ani1x(directory)


def test_ani1x_compiles_and_its_package_equals_torchscript(ani1x_path, tmp_path):
    """Issue 18: the bundled ANI-1x captures at export and compiles (AOTInductor, ~1 min); its
    package gives TorchScript's energies, forces and stress on ethanol and on a water box."""
    from atomplug.core.compiled import compile_model

    assert read_header(ani1x_path)["program"]["captured"] is True
    package = compile_model(ani1x_path, str(tmp_path / "ani1x.pt2"), log=lambda *_: None)
    for atoms in (molecule("CH3CH2OH"), water_box(16, seed=4)):
        results = {}
        for path in (ani1x_path, package):
            copy = atoms.copy()
            copy.calc = AtomplugCalculator(path)
            results[path] = (copy.get_potential_energy(), copy.get_forces())
            if atoms.pbc.all():
                results[path] += (copy.get_stress(),)
        assert copy.calc.runner.model.compiled.calls_run > 0
        for expected, got in zip(results[ani1x_path], results[package]):
            assert np.max(np.abs(got - expected)) <= 1e-10 * max(np.max(np.abs(expected)), 1.0)
