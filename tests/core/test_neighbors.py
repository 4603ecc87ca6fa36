"""Neighbor lists against ASE's own primitive_neighbor_list (an independent implementation)."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.neighborlist import primitive_neighbor_list

from atomplug.core.neighbors import NeighborListCache, TrajectoryCaches, compute_pairs, pair_distances


def ase_pairs(positions, cell, pbc, cutoff):
    """ASE's full list as a set of (i, j, s0, s1, s2)."""
    i, j, S = primitive_neighbor_list("ijS", pbc, cell, positions, cutoff, self_interaction=False)
    return {(a, b, *s) for a, b, s in zip(i.tolist(), j.tolist(), S.tolist())}


def as_set(pairs, shifts):
    return {(a, b, *s) for (a, b), s in zip(pairs.tolist(), shifts.tolist())}


def full_from_half(pairs, shifts):
    forward = as_set(pairs, shifts)
    backward = {(b, a, -s0, -s1, -s2) for a, b, s0, s1, s2 in forward}
    return forward, backward


def random_system(n, cell, pbc, seed):
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    box = np.where(np.linalg.norm(cell, axis=1) > 0, 1.0, 0.0)
    fractional = rng.random((n, 3)) * box
    positions = fractional @ cell + rng.normal(scale=3.0, size=(n, 3)) * (1 - box)
    return positions, cell, np.asarray(pbc, dtype=bool)


TRICLINIC = [[7.0, 0.0, 0.0], [1.5, 6.5, 0.0], [-1.0, 0.8, 8.0]]
CASES = {
    "periodic-triclinic": (40, TRICLINIC, [True, True, True], 5.0),
    "slab": (30, [[7.0, 0, 0], [1.0, 6.0, 0], [0, 0, 0]], [True, True, False], 4.5),
    "wire": (25, [[5.5, 0, 0], [0, 0, 0], [0, 0, 0]], [True, False, False], 4.0),
    "cell-smaller-than-cutoff": (3, [[2.1, 0, 0], [0.3, 2.4, 0], [0.2, -0.4, 2.2]], [True] * 3, 6.0),
    "non-periodic": (30, np.zeros((3, 3)), [False] * 3, 4.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_full_and_half_lists_match_ase(name):
    n, cell, pbc, cutoff = CASES[name]
    positions, cell, pbc = random_system(n, cell, pbc, seed=len(name))
    expected = ase_pairs(positions, cell, pbc, cutoff)
    assert len(expected) > 0

    pairs, shifts = compute_pairs(positions, cell, pbc, cutoff, full_list=True)
    assert pairs.dtype == np.int64 and shifts.dtype == np.int32
    assert pairs.shape == (len(expected), 2) and shifts.shape == (len(expected), 3)
    assert as_set(pairs, shifts) == expected
    assert np.all(np.diff(pairs[:, 0]) >= 0), "pairs are grouped by their first atom"

    half_pairs, half_shifts = compute_pairs(positions, cell, pbc, cutoff, full_list=False)
    forward, backward = full_from_half(half_pairs, half_shifts)
    assert len(half_pairs) * 2 == len(expected)
    assert forward.isdisjoint(backward), "a half list holds each pair once"
    assert forward | backward == expected
    # Every shift is zero along non-periodic directions.
    assert np.all(shifts[:, ~pbc] == 0)
    assert np.all(pair_distances(positions, cell, pairs, shifts) < cutoff)


def test_small_fcc_cell_counts_every_image():
    # One-atom fcc cell with a cutoff of 1.7 lattice constants: the shells at a*sqrt(n/2),
    # n = 1..5, hold 12 + 6 + 24 + 12 + 24 = 78 neighbours, all images of the atom itself
    # (the sixth shell is at 1.732 a).
    atoms = bulk("Cu", "fcc", a=3.6)
    pairs, shifts = compute_pairs(atoms.positions, atoms.cell.array, atoms.pbc, 1.7 * 3.6, full_list=True)
    assert len(pairs) == 78
    assert np.all(pairs == 0)
    half, _ = compute_pairs(atoms.positions, atoms.cell.array, atoms.pbc, 1.7 * 3.6, full_list=False)
    assert len(half) == 39


def test_zero_and_one_atom():
    for n in (0, 1):
        pairs, shifts = compute_pairs(np.zeros((n, 3)), np.zeros((3, 3)), False, 5.0, True)
        assert pairs.shape == (0, 2) and shifts.shape == (0, 3)
        assert pairs.dtype == np.int64 and shifts.dtype == np.int32


@pytest.mark.parametrize(
    "positions, cell, pbc, cutoff, message",
    [
        ([[0, 0, 0], [np.nan, 0, 0]], np.eye(3) * 5, True, 3.0, "NaN"),
        ([[0, 0, 0], [1, 0, 0]], np.eye(3) * 5, True, 0.0, "positive"),
        ([[0, 0, 0], [1, 0, 0]], np.eye(3) * 5, True, np.inf, "positive"),
        ([[0, 0, 0], [1, 0, 0]], np.diag([5.0, 5.0, 0.0]), True, 3.0, "cell vector 2 is zero"),
        ([[0, 0, 0], [1, 0, 0]], [[5, 0, 0], [10, 0, 0], [0, 0, 5]], True, 3.0, "linearly dependent"),
    ],
)
def test_bad_input_is_named(positions, cell, pbc, cutoff, message):
    with pytest.raises(ValueError, match=message):
        compute_pairs(np.array(positions, dtype=float), np.array(cell, dtype=float), pbc, cutoff, True)


def test_verlet_cache_rebuilds_only_when_needed_and_stays_exact():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3)
    cutoff, skin = 6.0, 1.0
    cache = NeighborListCache([(cutoff, False, True), (cutoff, True, False)], skin=skin)
    rng = np.random.default_rng(3)
    positions = atoms.positions.copy()
    cell = atoms.cell.array
    reference = positions.copy()
    expected_builds = 0
    for step in range(40):
        positions = positions + rng.normal(scale=0.04, size=positions.shape)
        moved = np.max(np.linalg.norm(positions - reference, axis=1))
        if step == 0 or moved > skin / 2:
            expected_builds += 1
            reference = positions.copy()
        (strict_pairs, strict_shifts), (loose_pairs, loose_shifts) = cache.get(positions, cell, True)
        assert cache.n_builds == expected_builds
        exact = compute_pairs(positions, cell, True, cutoff, full_list=False)
        # Strict list: exactly the pairs inside the cutoff now.
        assert as_set(strict_pairs, strict_shifts) == as_set(*exact)
        # Non-strict list: a superset of the full list, within cutoff + skin.
        assert ase_pairs(positions, cell, [True] * 3, cutoff) <= as_set(loose_pairs, loose_shifts)
    assert 1 < cache.n_builds < 40, "the skin saved rebuilds but was exceeded at least once"


def test_verlet_cache_rebuilds_on_cell_pbc_or_size_change():
    atoms = molecule("CH3CH2OH")
    atoms.cell = np.eye(3) * 10
    cache = NeighborListCache([(3.0, True, True)], skin=0.5)
    cache.get(atoms.positions, atoms.cell.array, False)
    cache.get(atoms.positions, atoms.cell.array, False)
    assert cache.n_builds == 1
    cache.get(atoms.positions, atoms.cell.array * 1.01, False)
    assert cache.n_builds == 2
    cache.get(atoms.positions, atoms.cell.array * 1.01, True)
    assert cache.n_builds == 3
    cache.get(atoms.positions[:-1], atoms.cell.array * 1.01, True)
    assert cache.n_builds == 4
    cache.reset()
    cache.get(atoms.positions[:-1], atoms.cell.array * 1.01, True)
    assert cache.n_builds == 5


def test_verlet_cache_without_skin_rebuilds_every_call():
    atoms = molecule("H2O")
    cache = NeighborListCache([(3.0, False, True)], skin=0.0)
    for _ in range(3):
        cache.get(atoms.positions, np.zeros((3, 3)), False)
    assert cache.n_builds == 3


def test_verlet_cache_catches_nan_between_rebuilds():
    atoms = molecule("H2O")
    cache = NeighborListCache([(3.0, False, True)], skin=1.0)
    cache.get(atoms.positions, np.zeros((3, 3)), False)
    broken = atoms.positions.copy()
    broken[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cache.get(broken, np.zeros((3, 3)), False)


def test_verlet_cache_survives_atoms_wrapped_back_into_the_box():
    # i-PI and LAMMPS wrap atoms into the box: a jump by a lattice vector is not a move.
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3)
    cell = atoms.cell.array @ (np.eye(3) + np.array([[0, 0.05, 0], [0, 0, -0.04], [0.03, 0, 0]]))
    rng = np.random.default_rng(5)
    positions = atoms.get_scaled_positions() @ cell
    cutoff = 6.0
    cache = NeighborListCache([(cutoff, False, True), (cutoff, True, True)], skin=1.0)
    cache.get(positions, cell, True)
    for _ in range(5):
        positions = positions + rng.normal(scale=0.02, size=positions.shape)
        wrapped = (np.mod(positions @ np.linalg.inv(cell), 1.0)) @ cell
        assert np.abs(wrapped - positions).max() > 1.0, "some atoms were wrapped"
        lists = cache.get(wrapped, cell, True)
        assert cache.distance_squared(wrapped, cell, True) < 0.25
        for (pairs, shifts), full in zip(lists, (False, True)):
            assert as_set(pairs, shifts) == as_set(*compute_pairs(wrapped, cell, True, cutoff, full_list=full))
    assert cache.n_builds == 1
    assert cache.distance_squared(wrapped, cell * 1.01, True) == np.inf


def test_trajectory_caches_serve_interleaved_beads_with_one_check_each(monkeypatch):
    # i-PI's beads, wrapped into the box and served in turn: one cache per bead, exact lists, and
    # between rebuilds a single displacement check per structure (the cache that came next last time)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3)
    cell, cutoff = atoms.cell.array, 6.0
    rng = np.random.default_rng(7)
    beads = [atoms.positions + rng.normal(scale=0.3, size=atoms.positions.shape) for _ in range(3)]
    velocities = rng.normal(scale=0.01, size=atoms.positions.shape)
    caches = TrajectoryCaches([(cutoff, False, True), (cutoff, True, False)], skin=1.0)
    checks = []
    moved = NeighborListCache._moved
    monkeypatch.setattr(NeighborListCache, "_moved", lambda self, *a, **k: checks.append(1) or moved(self, *a, **k))
    for step in range(30):
        for bead in range(3):
            beads[bead] = beads[bead] + velocities
            wrapped = np.mod(beads[bead] @ np.linalg.inv(cell), 1.0) @ cell
            builds, checks[:] = caches.n_builds, []
            (strict_pairs, strict_shifts), (loose_pairs, loose_shifts) = caches.get(wrapped, cell, True)
            assert as_set(strict_pairs, strict_shifts) == as_set(*compute_pairs(wrapped, cell, True, cutoff, False))
            assert ase_pairs(wrapped, cell, [True] * 3, cutoff) <= as_set(loose_pairs, loose_shifts)
            if step > 1 and caches.n_builds == builds:  # (the second round learns the order)
                assert len(checks) == 1
    assert len(caches.caches) == 3
    assert caches.n_builds < 3 * 10


def test_trajectory_caches_take_over_the_least_recently_used():
    atoms = molecule("CH3CH2OH")
    caches = TrajectoryCaches([(3.0, True, True)], skin=0.5, max_caches=2)
    for shift in (0.0, 10.0, 20.0, 0.0):  # three trajectories far apart; the first one comes back
        caches.get(atoms.positions + shift, np.zeros((3, 3)), False)
    assert len(caches.caches) == 2 and caches.n_builds == 4
    assert TrajectoryCaches([(3.0, True, True)], skin=0.0).max_caches == 1  # no skin: rebuilt every call
