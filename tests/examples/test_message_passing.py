"""The example message-passing model (examples/message_passing.py) through the ASE calculator and
the ModelRunner: derivatives against finite differences, per-atom energies, selected atoms,
periodic images against replicas, and proof that messages travel L x r_c, no less and no more.

Oracles: finite differences of the energy (forces, stress, forces of a subset's energy), sums
(per-atom energies and virials), symmetry (a small periodic box equals its replica), locality.
"""

import numpy as np
import pytest
from ase import Atoms
from structures import hco_cluster, hco_liquid, hco_slab, hco_tiny_box, triclinic_hco_liquid

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import ModelRunner, load_model
from atomplug.examples.message_passing import (
    DEFAULT_CUTOFF,
    DEFAULT_LAYERS,
    MessagePassingModel,
    main,
)

CUTOFF = DEFAULT_CUTOFF  # 2.5 A
RANGE = DEFAULT_LAYERS * DEFAULT_CUTOFF  # 7.5 A
STEP = 1e-4  # A (and strain) for five-point central differences: truncation ~STEP^4
FD_TOLERANCE = 1e-6  # relative to the largest component


STRUCTURES = {
    "periodic": hco_liquid,
    "triclinic": triclinic_hco_liquid,
    "slab": hco_slab,
    "isolated": hco_cluster,
}


@pytest.fixture(scope="module")
def calculator(message_passing_path):
    return AtomplugCalculator(message_passing_path, skin=0.0)


@pytest.fixture(scope="module")
def runner(message_passing_path):
    return ModelRunner(message_passing_path)


def energy_of(calculator, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy()


def derivative(function, step: float = STEP) -> float:
    """d/dx function(x) at 0, five-point central difference (error ~ step^4 f^(5))."""
    return (-function(2 * step) + 8 * function(step) - 8 * function(-step) + function(-2 * step)) / (12 * step)


def relative(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max()) / max(float(np.abs(expected).max()), 1e-12)


# ---- the model as declared --------------------------------------------------------------------


def test_declares_interaction_range_of_layers_times_cutoff(message_passing_path):
    model = load_model(message_passing_path)
    assert model.capabilities.interaction_range == pytest.approx(RANGE)
    assert model.neighbor_requests("Angstrom") == [(CUTOFF, True, True)]
    assert model.capabilities.outputs["energy"].per_atom
    assert model.capabilities.atomic_types == [1, 6, 8]
    assert model.capabilities.dtype == "float64"


def test_weights_are_seeded():
    import torch

    first, second = MessagePassingModel(), MessagePassingModel()
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
        assert not a.is_floating_point() or a.dtype == torch.float64, name
    other = MessagePassingModel(seed=1)
    assert not torch.equal(other.embedding.weight, first.embedding.weight)


def test_main_exports_other_hyperparameters(tmp_path):
    path = tmp_path / "mp.pt"
    main([str(path), "--types", "1", "18", "--cutoff", "2.0", "--layers", "4", "--features", "8"])
    model = load_model(str(path))
    assert model.capabilities.interaction_range == pytest.approx(8.0)
    assert model.capabilities.atomic_types == [1, 18]
    argon = Atoms("Ar2H", positions=[[0, 0, 0], [1.6, 0, 0], [0.8, 1.2, 0]])
    result = ModelRunner(model).run([argon], ["energy", "energy/per_atom"])
    assert np.isclose(result["energy"][0, 0], result["energy/per_atom"][:, 0].sum(), rtol=1e-14)


# ---- derivatives --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_forces_are_minus_the_energy_gradient(calculator, kind):
    atoms = STRUCTURES[kind]()
    atoms.calc = calculator
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # the model is not trivially flat here
    rng = np.random.default_rng(5)
    checked = rng.choice(len(atoms), size=4, replace=False)
    numeric = np.zeros((len(checked), 3))
    for row, atom in enumerate(checked):
        for axis in range(3):

            def moved_energy(delta, atom=atom, axis=axis):
                moved = atoms.copy()
                moved.positions[atom, axis] += delta
                return energy_of(calculator, moved)

            numeric[row, axis] = -derivative(moved_energy)
    assert relative(forces[checked], numeric) < FD_TOLERANCE


VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


@pytest.mark.parametrize("kind", ["periodic", "triclinic"])
def test_stress_is_the_strain_derivative(calculator, kind):
    atoms = STRUCTURES[kind]()
    atoms.calc = calculator
    stress = atoms.get_stress()
    volume = atoms.get_volume()
    numeric = np.zeros(6)
    for index, (a, b) in enumerate(VOIGT):

        def strained_energy(delta, a=a, b=b):
            strain = np.zeros((3, 3))
            strain[a, b] += 0.5 * delta
            strain[b, a] += 0.5 * delta
            deformed = atoms.copy()
            deformed.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            return energy_of(calculator, deformed)

        numeric[index] = derivative(strained_energy) / volume
    assert relative(stress, numeric) < FD_TOLERANCE


@pytest.mark.parametrize("kind", sorted(STRUCTURES))
def test_per_atom_energies_and_virials_sum_to_totals(calculator, kind):
    atoms = STRUCTURES[kind]()
    atoms.calc = calculator
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert np.isclose(energies.sum(), atoms.get_potential_energy(), rtol=1e-13, atol=0.0)
    assert np.ptp(energies) > 1e-3  # atoms of one species differ with their environments
    if atoms.pbc.all():
        assert np.allclose(atoms.get_stresses().sum(axis=0), atoms.get_stress(), rtol=1e-10, atol=1e-12)


# ---- selected atoms (what LAMMPS asks: local atoms among ghosts) --------------------------------


@pytest.mark.parametrize("kind", ["triclinic", "slab", "isolated"])
def test_selected_atoms_give_the_sum_of_their_energies(runner, kind):
    atoms = STRUCTURES[kind]()
    full = runner.run([atoms], ["energy", "energy/per_atom"], use_cache=False)
    per_atom = full["energy/per_atom"][:, 0]
    rng = np.random.default_rng(2)
    selected = np.sort(rng.choice(len(atoms), size=len(atoms) // 3, replace=False))
    subset = runner.run([atoms], ["energy", "energy/per_atom"], selected_atoms=selected, forces=True, use_cache=False)
    assert subset["energy/per_atom"].shape == (len(selected), 1)
    assert np.allclose(subset["energy/per_atom"][:, 0], per_atom[selected], rtol=1e-13, atol=0.0)
    assert np.isclose(subset["energy"][0, 0], per_atom[selected].sum(), rtol=1e-13, atol=0.0)

    # forces are -d(energy of the subset)/dr on every atom, the unselected ones included
    unselected = np.setdiff1d(np.arange(len(atoms)), selected)
    for atom in (int(selected[0]), int(unselected[0])):
        numeric = np.zeros(3)
        for axis in range(3):

            def subset_energy(delta, atom=atom, axis=axis):
                moved = atoms.copy()
                moved.positions[atom, axis] += delta
                values = runner.run([moved], ["energy/per_atom"], use_cache=False)["energy/per_atom"][:, 0]
                return values[selected].sum()

            numeric[axis] = -derivative(subset_energy)
        scale = max(np.abs(subset["forces"]).max(), 1e-3)
        assert np.abs(subset["forces"][atom] - numeric).max() / scale < FD_TOLERANCE


# ---- periodic images -----------------------------------------------------------------------


def test_box_smaller_than_the_range_equals_its_replica(runner):
    small = hco_tiny_box()
    heights = small.cell.volume / np.linalg.norm(np.cross(small.cell[[1, 2, 0]], small.cell[[2, 0, 1]]), axis=1)
    assert heights.max() < CUTOFF + 0.6 and heights.max() < RANGE / 2
    repeat = (3, 3, 3)
    big = small.repeat(repeat)
    copies = int(np.prod(repeat))
    outputs = ["energy", "energy/per_atom"]
    a = runner.run([small], outputs, forces=True, virial=True, use_cache=False)
    b = runner.run([big], outputs, forces=True, virial=True, use_cache=False)
    # ase's repeat lays the copies out one after another, each in the original order
    assert relative(b["energy/per_atom"][:, 0], np.tile(a["energy/per_atom"][:, 0], copies)) < 1e-12
    assert relative(b["forces"], np.tile(a["forces"], (copies, 1))) < 1e-10
    assert relative(b["energy"][0, 0], copies * a["energy"][0, 0]) < 1e-12
    assert relative(b["virial"][0], copies * a["virial"][0]) < 1e-10
    assert np.abs(a["forces"]).max() > 1e-3


# ---- how far messages travel ------------------------------------------------------------------


def chain() -> Atoms:
    """Atoms 2.0 A apart on a slightly bent line: each sees only its neighbors (r_c = 2.5 A)."""
    x = 2.0 * np.arange(6)
    positions = np.stack([x, 0.05 * (-1.0) ** np.arange(6), np.zeros(6)], axis=1)
    return Atoms("COHCOH", positions=positions)


def test_messages_travel_layers_times_cutoff_and_no_further(runner):
    atoms = chain()
    distances = np.linalg.norm(atoms.positions - atoms.positions[0], axis=1)
    reference = runner.run([atoms], ["energy/per_atom"], use_cache=False)["energy/per_atom"][0, 0]
    changes = {}
    for removed in range(1, len(atoms)):
        kept = atoms[[i for i in range(len(atoms)) if i != removed]]
        changes[removed] = runner.run([kept], ["energy/per_atom"], use_cache=False)["energy/per_atom"][0, 0] - reference
    for removed, change in changes.items():
        if CUTOFF < distances[removed] < RANGE:
            # beyond one cutoff, within L cutoffs: only messages can carry this
            assert abs(change) > 1e-5, (removed, distances[removed])
        if distances[removed] > RANGE:
            # nothing reaches this far (rounding of a different summation order aside)
            assert abs(change) < 1e-12, (removed, distances[removed])
    assert any(CUTOFF < d < RANGE for d in distances) and any(d > RANGE for d in distances)


def test_cutoff_is_smooth():
    """Value and slope are continuous where a pair leaves the list: a dimer across r_c."""
    import torch

    from atomplug.core import ModelOutput, NeighborListOptions
    from atomplug.core.system import NeighborList, System

    model = MessagePassingModel()

    def energy_and_force(distance: float):
        vectors = torch.tensor([[distance, 0.0, 0.0], [-distance, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
        system = System(
            torch.tensor([6, 8], dtype=torch.int32),
            torch.zeros((2, 3), dtype=torch.float64),
            torch.zeros((3, 3), dtype=torch.float64),
            torch.zeros(3, dtype=torch.bool),
        )
        pairs = torch.tensor([[0, 1], [1, 0]])
        keep = torch.linalg.vector_norm(vectors, dim=1) < CUTOFF
        options = NeighborListOptions(CUTOFF, True, True)
        system.add_neighbor_list(
            NeighborList(options, pairs[keep], torch.zeros((int(keep.sum()), 3), dtype=torch.int32), vectors[keep])
        )
        energy = model([system], {"energy": ModelOutput("energy", "eV", False)}, None)["energy"].sum()
        (gradient,) = torch.autograd.grad(energy, [vectors], allow_unused=True)
        slope = 0.0 if gradient is None else float(gradient[0, 0] - gradient[1, 0])
        return float(energy.detach()), slope

    inside = energy_and_force(CUTOFF - 1e-4)
    outside = energy_and_force(CUTOFF + 1e-4)
    near = energy_and_force(CUTOFF - 0.3)
    assert abs(near[1]) > 1e-6  # the pair does interact
    assert abs(inside[0] - outside[0]) < 1e-10
    assert abs(inside[1]) < 1e-7 and outside[1] == 0.0
