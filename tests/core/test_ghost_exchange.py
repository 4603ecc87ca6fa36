"""`System.exchange_ghosts` and `ModelCapabilities(ghost_exchange=True)`, in core, without LAMMPS.

A periodic structure is cut the way LAMMPS cuts it for one rank without periodic shifts: its atoms
("local") plus explicit ghost copies of every periodic image within one cutoff (+ skin) of a local
atom, no cell, pairs only within the cutoff and only with a local atom. The exchange
(`LocalGhostExchange`, the reference meaning: each ghost takes its owner's rows) must then give
the local atoms exactly their periodic energies, and forces (ghost forces folded onto owners),
virial and per-atom virial exactly the periodic ones; the same model without the exchange sees
truncated neighborhoods and must not.

Oracle: the model's own periodic evaluation (ModelRunner, cell shifts, no ghosts).
"""

from typing import List, Tuple

import numpy as np
import pytest
import torch
from structures import hco_liquid, triclinic_hco_liquid

from atomplug.core import LocalGhostExchange, ModelCapabilities, ModelOutput, ModelRunner, load_model
from atomplug.examples.message_passing import DEFAULT_CUTOFF, export_message_passing

SKIN = 0.4  # Angstrom: ghosts a little beyond the cutoff, as LAMMPS keeps them
TOLERANCE = 1e-10


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Tuple[str, str]:
    folder = tmp_path_factory.mktemp("ghost_exchange")
    plain, exchanging = str(folder / "mp.pt"), str(folder / "mp-exchange.pt")
    export_message_passing(plain)
    export_message_passing(exchanging, ghost_exchange=True)
    return plain, exchanging


def ghost_cluster(atoms, cutoff: float, skin: float):
    """(positions, types, sources, pairs): local atoms then their periodic images within
    cutoff + skin of a local atom; sources[g] = the owner of ghost g (itself for a local atom);
    full-list pairs (i local, j any) within the cutoff, then (ghost, local) for each local-ghost
    pair, as pair_style atomplug gives them on several ranks."""
    local = atoms.positions
    cell = atoms.cell.array
    n = len(atoms)
    positions: List[np.ndarray] = [local]
    sources: List[np.ndarray] = [np.arange(n)]
    shifts = np.array([[a, b, c] for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)])
    for shift in shifts:
        image = local + shift @ cell
        distances = np.linalg.norm(image[:, None, :] - local[None, :, :], axis=2)
        near = np.flatnonzero(distances.min(axis=1) < cutoff + skin)
        positions.append(image[near])
        sources.append(near)
    positions_all = np.concatenate(positions)
    vectors = positions_all[None, :, :] - local[:, None, :]
    distances = np.linalg.norm(vectors, axis=2)
    i, j = np.nonzero((distances < cutoff) & (distances > 0.0))
    pairs = np.stack([i, j], axis=1)
    reverse = pairs[pairs[:, 1] >= n][:, ::-1]
    return positions_all, np.concatenate(sources), np.concatenate([pairs, reverse])


def call_entry_point(model, positions, types, sizes, pairs, outputs, selected, gradients: bool, ghost_exchange):
    """The entry point with every argument positional, as an engine calls it; no cell (explicit ghosts)."""
    n_systems = len(sizes)
    return model.forward(
        torch.tensor(positions),
        torch.tensor(types, dtype=torch.int32),
        torch.zeros((n_systems, 3, 3), dtype=torch.float64),
        torch.zeros((n_systems, 3), dtype=torch.bool),
        torch.tensor(sizes),
        [torch.tensor(pairs, dtype=torch.int64)],
        [torch.zeros((len(pairs), 3), dtype=torch.int32)],
        outputs,
        selected,
        "energy",
        gradients,
        gradients,
        gradients,
        "Angstrom",
        "eV",
        False,
        {},
        {},
        ghost_exchange,
    )


def evaluate_cluster(path: str, atoms, exchange: bool):
    """The cluster's local energies, per-atom energies, forces folded onto owners, virial and
    per-atom virial folded onto owners."""
    model = load_model(path)
    positions, sources, pairs = ghost_cluster(atoms, DEFAULT_CUTOFF, SKIN)
    n_local = len(atoms)
    types = atoms.numbers[sources]
    ghost_exchange = LocalGhostExchange(torch.tensor(sources)) if exchange else None
    result = call_entry_point(
        model,
        positions,
        types,
        [len(positions)],
        pairs,
        ["energy", "energy/per_atom"],
        torch.arange(n_local),
        True,
        ghost_exchange,
    )
    forces = np.zeros((n_local, 3))
    np.add.at(forces, sources, result["forces"].numpy())
    atomic_virial = np.zeros((n_local, 3, 3))
    np.add.at(atomic_virial, sources, result["atomic_virial"].numpy())
    return {
        "energy": float(result["energy"][0, 0]),
        "energies": result["energy/per_atom"].numpy()[:, 0],
        "forces": forces,
        "virial": result["virial"].numpy()[0],
        "atomic_virial": atomic_virial,
        "ghosts": len(positions) - n_local,
    }


def evaluate_periodic(path: str, atoms):
    result = ModelRunner(path).run(
        [atoms], outputs=["energy", "energy/per_atom"], forces=True, virial=True, atomic_virial=True
    )
    return {
        "energy": float(result["energy"][0, 0]),
        "energies": result["energy/per_atom"][:, 0],
        "forces": result["forces"],
        "virial": result["virial"][0],
        "atomic_virial": result["atomic_virial"],
    }


def relative(actual, expected) -> float:
    return float(np.max(np.abs(np.asarray(actual) - expected)) / max(np.max(np.abs(expected)), 1e-300))


@pytest.mark.parametrize("make", [hco_liquid, triclinic_hco_liquid], ids=["periodic", "triclinic"])
def test_exchange_over_one_cutoff_of_ghosts_equals_the_periodic_model(models, make):
    plain, exchanging = models
    atoms = make()
    expected = evaluate_periodic(exchanging, atoms)
    assert expected["energy"] == pytest.approx(evaluate_periodic(plain, atoms)["energy"], rel=1e-13)
    got = evaluate_cluster(exchanging, atoms, exchange=True)
    assert got["ghosts"] > len(atoms)  # the ghosts are many, and one cutoff deep only
    assert got["energy"] == pytest.approx(expected["energy"], rel=TOLERANCE)
    for key in ("energies", "forces", "virial", "atomic_virial"):
        assert relative(got[key], expected[key]) < TOLERANCE, key


def test_without_the_exchange_one_cutoff_of_ghosts_is_not_enough(models):
    """The oracle can fail: the same weights without the exchange (or the exchanging model given
    no exchange) see ghosts whose features lack their outer neighbors."""
    plain, exchanging = models
    atoms = hco_liquid()
    expected = evaluate_periodic(plain, atoms)["energy"]
    for path in (plain, exchanging):
        got = evaluate_cluster(path, atoms, exchange=False)["energy"]
        assert abs(got - expected) > 1e-4 * abs(expected)


def test_exchange_backward_adds_ghost_gradients_onto_owners():
    sources = torch.tensor([0, 1, 2, 0, 2, 0])  # atoms 3, 4, 5 are ghosts of 0, 2, 0
    features = torch.arange(12, dtype=torch.float64).reshape(6, 2).requires_grad_(True)
    exchanged = LocalGhostExchange(sources).exchange(features)
    assert torch.equal(exchanged[3:], features.detach()[[0, 2, 0]])
    weights = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(6, 2)
    (gradient,) = torch.autograd.grad((exchanged * weights).sum(), [features])
    expected = torch.zeros((6, 2), dtype=torch.float64)
    expected[0] = weights[0] + weights[3] + weights[5]
    expected[1] = weights[1]
    expected[2] = weights[2] + weights[4]
    assert torch.equal(gradient, expected)


def test_capabilities_carry_ghost_exchange():
    declared = ModelCapabilities(
        outputs={"energy": ModelOutput("energy", "eV", True)},
        atomic_types=[1],
        interaction_range=5.0,
        ghost_exchange=True,
    )
    declared.validate()
    assert ModelCapabilities.from_dict(declared.to_dict()).ghost_exchange
    older = declared.to_dict()
    del older["ghost_exchange"]  # archives exported before the field existed
    assert not ModelCapabilities.from_dict(older).ghost_exchange
    declared.ghost_exchange = "yes"
    with pytest.raises(ValueError, match="ghost_exchange must be True or False"):
        declared.validate()


def test_a_ghost_exchange_needs_one_structure(models):
    _, exchanging = models
    model = load_model(exchanging)
    atoms = hco_liquid()
    positions, sources, pairs = ghost_cluster(atoms, DEFAULT_CUTOFF, SKIN)
    n = len(positions)
    with pytest.raises(torch.jit.Error, match="a ghost exchange needs a single structure, got 2"):
        call_entry_point(
            model,
            np.concatenate([positions, positions]),
            np.concatenate([atoms.numbers[sources]] * 2),
            [n, n],
            np.concatenate([pairs, pairs + n]),
            ["energy"],
            None,
            False,
            LocalGhostExchange(torch.tensor(np.concatenate([sources, sources + n]))),
        )
