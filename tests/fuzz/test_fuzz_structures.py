"""Fuzzing structures through the ASE calculator and the core runner with the LJ example model.

Any structure (0 to 30 atoms; NaN, infinite or huge positions; zero, flat, tiny or huge cells;
any periodicity; any atomic numbers) must give finite results or a ValueError that names the
problem: never another exception, a crash or a hang. Valid structures must also respect what the
physics guarantees (translation, permutation and periodic-image invariance, forces summing to
zero), and the neighbor lists under all of it must match ASE's independent implementation.
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.geometry import cellpar_to_cell
from ase.neighborlist import primitive_neighbor_list
from fuzzing import counted, fuzz_settings
from hypothesis import assume, example, given
from hypothesis import strategies as st
from structures import AR_CUTOFF

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import neighbors
from atomplug.core.neighbors import compute_pairs
from atomplug.core.runner import ModelRunner, Structure

NAN, INF = float("nan"), float("inf")
SKIN = 0.5


@pytest.fixture(scope="module")
def calculator(lj_model_path):
    """One calculator for all cases: its Verlet-skin cache must cope with unrelated structures."""
    return AtomplugCalculator(lj_model_path, skin=SKIN)


@pytest.fixture(scope="module")
def runner(lj_model_path):
    return ModelRunner(lj_model_path)


def estimated_pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> float:
    """Rough neighbor pairs of a structure (N^2 x cutoff sphere / volume): the test only runs
    structures far below or far above the product's limit, never the multi-GB ones in between."""
    n = len(positions)
    if n == 0 or not np.all(np.isfinite(positions)) or not np.all(np.isfinite(cell)):
        return 0.0
    with np.errstate(all="ignore"):
        lengths = []
        for axis in range(3):
            if pbc[axis]:
                others = cell[[k for k in range(3) if k != axis]]
                normal = np.cross(others[0], others[1]) if pbc.all() else None
                if normal is not None and np.linalg.norm(normal) > 0:
                    height = abs(cell[axis] @ normal) / np.linalg.norm(normal)
                else:
                    height = np.linalg.norm(cell[axis])
                lengths.append(max(height, 1e-300))
            else:
                lengths.append(max(float(np.ptp(positions[:, axis])), 2 * cutoff))
        ratio = np.prod([2 * cutoff / length for length in lengths])
    return float(n * n * ratio) if np.isfinite(ratio) else float("inf")


def check_clean_error(error: BaseException) -> None:
    message = str(error)
    assert len(message) > 20 and "Traceback" not in message, message


# ---- any structure ---------------------------------------------------------------------------------

COORDINATES = st.one_of(
    st.floats(-15.0, 15.0),
    st.floats(-15.0, 15.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1e-300, 1e300, -1e300, NAN, INF, -INF, 1e6, 1e9, 1e12, 5e10, -3e7]),
)
ATOMIC_NUMBERS = st.one_of(
    st.just(18), st.just(18), st.integers(-5, 130), st.sampled_from([0, 2**31, 2**32 + 18, -(2**32) + 18, 2**62])
)


@st.composite
def cells(draw) -> np.ndarray:
    kind = draw(st.sampled_from(["zero", "cubic", "cubic", "triclinic", "any", "flat", "scaled"]))
    if kind == "zero":
        return np.zeros((3, 3))
    if kind == "cubic":
        return np.eye(3) * draw(st.floats(4.0, 40.0))
    if kind == "triclinic":
        lengths = draw(st.lists(st.floats(4.0, 30.0), min_size=3, max_size=3))
        angles = draw(st.lists(st.floats(60.0, 120.0), min_size=3, max_size=3))
        try:
            return cellpar_to_cell(lengths + angles)
        except Exception:  # impossible angles: ASE itself refuses
            return np.eye(3) * lengths[0]
    if kind == "any":
        return np.array(draw(st.lists(COORDINATES, min_size=9, max_size=9))).reshape(3, 3)
    if kind == "flat":  # one row zero, tiny, or a copy of another row
        cell = np.eye(3) * 10.0
        row = draw(st.integers(0, 2))
        cell[row] = draw(st.sampled_from([np.zeros(3), np.full(3, 1e-12), cell[(row + 1) % 3].copy()]))
        return cell
    # the same shape at an extreme scale: tiny cells need absurd numbers of images, huge ones overflow
    return np.eye(3) * draw(st.sampled_from([1e-300, 1e-30, 1e-12, 1e-3, 1e-2, 1e3, 1e6, 1e12, 1e150, 1e300]))


@st.composite
def any_structures(draw):
    n_atoms = draw(st.one_of(st.integers(0, 6), st.integers(0, 30)))
    positions = np.array(draw(st.lists(COORDINATES, min_size=3 * n_atoms, max_size=3 * n_atoms))).reshape(n_atoms, 3)
    numbers = draw(st.lists(ATOMIC_NUMBERS, min_size=n_atoms, max_size=n_atoms))
    cell = draw(cells())
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    return numbers, positions, cell, pbc


def expected_fast(positions, cell, pbc) -> bool:
    estimate = estimated_pairs(positions, cell, pbc, AR_CUTOFF + SKIN)
    return not (1e5 < estimate < 1e10)


@fuzz_settings("structures", 0.35, short=120)
@given(structure=any_structures(), ask_stress=st.booleans())
@example(
    structure=([18, 18, 18], np.array([[0.0, 0, 0], [1e6, 0, 0], [1e6, 3, 0]]), np.zeros((3, 3)), np.zeros(3, bool)),
    ask_stress=False,
)  # vesin 0.6 divided by zero here (SIGFPE)
@example(
    structure=([18, 18], np.array([[0.0, 0, 0], [1e12 + 5, 0, 0]]), np.eye(3) * 10, np.ones(3, bool)), ask_stress=True
)
@example(structure=([18], np.zeros((1, 3)), np.eye(3) * 0.01, np.ones(3, bool)), ask_stress=True)
@example(structure=([2**32 + 18], np.zeros((1, 3)), np.eye(3) * 10, np.ones(3, bool)), ask_stress=False)
@example(structure=([18, 18], np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(3, bool)), ask_stress=False)
@example(structure=([18], np.zeros((1, 3)), np.eye(3) * 1e300, np.ones(3, bool)), ask_stress=True)
@example(structure=([18], np.zeros((1, 3)), np.eye(3) * 1e-300, np.array([False, False, True])), ask_stress=False)
@counted("structures")
def test_any_structure_gives_finite_results_or_a_clean_value_error(calculator, structure, ask_stress):
    numbers, positions, cell, pbc = structure
    assume(expected_fast(positions, cell, pbc))
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.calc = calculator
    try:
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        stress = atoms.get_stress() if ask_stress else None
    except ValueError as error:
        check_clean_error(error)
        return
    except PropertyNotImplementedError as error:  # stress without a 3D periodic cell
        assert ask_stress and not (atoms.pbc.all() and atoms.cell.rank == 3), error
        return
    assert math.isfinite(energy)
    assert forces.shape == (len(atoms), 3) and np.all(np.isfinite(forces))
    assert set(np.asarray(numbers).tolist()) == {18}, "an unknown element was accepted"
    if stress is not None:
        assert stress.shape == (6,) and np.all(np.isfinite(stress))


@fuzz_settings("structures", 0.15, short=60)
@given(
    n_atoms=st.integers(0, 5),
    types=st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.just(18)), min_size=0, max_size=6),
    positions=st.lists(st.floats(-10, 10), max_size=18),
    cell=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=10),
    pbc=st.one_of(st.booleans(), st.lists(st.booleans(), min_size=0, max_size=4)),
)
@counted("structures")
def test_runner_takes_any_arrays_or_names_the_problem(runner, n_atoms, types, positions, cell, pbc):
    """The core runner (i-PI and the command line use it) on raw arrays of any shape and range."""
    try:
        structure = Structure(np.array(types, dtype=np.int64), np.array(positions), np.array(cell), np.array(pbc))
        if expected_fast(structure.positions, structure.cell, structure.pbc):
            result = runner.run([structure], ["energy"], forces=True)
        else:
            return
    except ValueError as error:  # ours, or numpy's for arrays of the wrong size ("cannot reshape ...")
        check_clean_error(error)
        return
    assert np.all(np.isfinite(result["energy"])) and np.all(np.isfinite(result["forces"]))
    assert set(np.array(types).tolist()) == {18}, "an unknown atom type was accepted"


# ---- valid structures: invariants -------------------------------------------------------------------


@st.composite
def valid_structures(draw):
    """Argon at liquid-like or gas-like spacing (no two atoms closer than 2.6 A) in a random
    triclinic cell, with any periodicity; positions may lie outside the cell."""
    lengths = draw(st.lists(st.floats(6.0, 18.0), min_size=3, max_size=3))
    angles = draw(st.lists(st.floats(70.0, 110.0), min_size=3, max_size=3))
    try:
        cell = cellpar_to_cell(lengths + angles)
    except Exception:
        cell = np.diag(lengths)
    assume(abs(np.linalg.det(cell)) > 0.3 * np.prod(lengths))
    pbc = np.array(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    n_atoms = draw(st.integers(1, 12))
    fractional = np.array(draw(st.lists(st.floats(-1.5, 2.5), min_size=3 * n_atoms, max_size=3 * n_atoms))).reshape(
        -1, 3
    )
    atoms = Atoms("Ar" * n_atoms, scaled_positions=np.zeros((n_atoms, 3)), cell=cell, pbc=pbc)
    atoms.positions = fractional @ cell
    if n_atoms > 1:
        distances = atoms.get_all_distances(mic=True)
        assume(distances[np.triu_indices(n_atoms, 1)].min() > 2.6)
    if pbc.any():  # an atom must not meet its own image closer than 2.6 A either
        assume(min(np.linalg.norm(cell[k]) for k in range(3) if pbc[k]) > 2.6)
    return atoms


def energy_and_forces(atoms: Atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy(), atoms.get_forces()


@fuzz_settings("structures", 0.35, short=80)
@given(
    atoms=valid_structures(),
    translation=st.lists(st.floats(-30.0, 30.0), min_size=3, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
@counted("structures")
def test_valid_structures_respect_the_invariants_of_physics(calculator, atoms, translation, seed):
    energy, forces = energy_and_forces(atoms, calculator)
    assert math.isfinite(energy) and np.all(np.isfinite(forces))
    scale = max(1.0, float(np.abs(forces).sum()))
    # Newton's third law: pair forces cancel (with images too)
    assert np.abs(forces.sum(axis=0)).max() < 1e-10 * scale
    tolerance_energy = 1e-9 * max(1.0, abs(energy))
    tolerance_forces = 1e-8 * max(1.0, float(np.abs(forces).max()))

    moved = atoms.copy()
    moved.positions += np.array(translation)
    moved_energy, moved_forces = energy_and_forces(moved, calculator)
    assert abs(moved_energy - energy) < tolerance_energy
    assert np.abs(moved_forces - forces).max() < tolerance_forces

    order = np.random.default_rng(seed).permutation(len(atoms))
    permuted_energy, permuted_forces = energy_and_forces(atoms[order], calculator)
    assert abs(permuted_energy - energy) < tolerance_energy
    assert np.abs(permuted_forces - forces[order]).max() < tolerance_forces

    if atoms.pbc.any():  # another choice of periodic images: wrapped into the cell
        wrapped = atoms.copy()
        wrapped.wrap()
        wrapped_energy, wrapped_forces = energy_and_forces(wrapped, calculator)
        assert abs(wrapped_energy - energy) < tolerance_energy
        assert np.abs(wrapped_forces - forces).max() < tolerance_forces


# ---- neighbor lists against ASE's -------------------------------------------------------------------


def pair_set(pairs, shifts, distances, cutoff, margin=1e-9):
    """(i, j, S) of pairs not within `margin` of the cutoff (where rounding may decide either way)."""
    return {
        (int(a), int(b), *map(int, s)) for (a, b), s, d in zip(pairs, shifts, distances) if abs(d - cutoff) > margin
    }


def ase_full_list(positions, cell, pbc, cutoff):
    i, j, shifts, distances = primitive_neighbor_list("ijSd", pbc, cell, positions, cutoff, self_interaction=False)
    return pair_set(np.stack([i, j], axis=1), shifts, distances, cutoff)


@fuzz_settings("structures", 0.15, short=80)
@given(
    atoms=valid_structures(),
    cutoff=st.floats(1.0, 11.0),
    offsets=st.lists(st.integers(-3, 3), min_size=3, max_size=3),
    spread=st.sampled_from([1.0, 1.0, 50.0, 3000.0]),
    sweep=st.booleans(),
)
@counted("structures")
def test_neighbor_lists_match_ase(atoms, cutoff, offsets, spread, sweep):
    """Both of atomplug's searches (vesin, and the sort-and-sweep used where vesin's grid would
    break) against ASE's, with atoms moved whole cells away and non-periodic atoms spread far."""
    positions = atoms.positions.copy()
    positions[0] += np.array(offsets) @ atoms.cell.array * atoms.pbc
    positions[:, ~atoms.pbc] *= spread
    cell, pbc = atoms.cell.array, atoms.pbc
    expected = ase_full_list(positions, cell, pbc, cutoff)
    limit = 0.0 if sweep else neighbors.VESIN_MAX_CELLS
    with mock.patch.object(neighbors, "VESIN_MAX_CELLS", limit):
        full_pairs, full_shifts = compute_pairs(positions, cell, pbc, cutoff, full_list=True)
        half_pairs, half_shifts = compute_pairs(positions, cell, pbc, cutoff, full_list=False)
    full_distances = neighbors.pair_distances(positions, cell, full_pairs, full_shifts)
    assert pair_set(full_pairs, full_shifts, full_distances, cutoff) == expected
    assert np.all(full_distances < cutoff)
    half = {(int(a), int(b), *map(int, s)) for (a, b), s in zip(half_pairs, half_shifts)}
    mirrored = {(b, a, -s0, -s1, -s2) for a, b, s0, s1, s2 in half}
    full = {(int(a), int(b), *map(int, s)) for (a, b), s in zip(full_pairs, full_shifts)}
    assert half | mirrored == full and not (half & mirrored)


def test_a_molecule_a_million_angstrom_long_does_not_kill_the_process(runner):
    """Regression: vesin 0.6 divided by zero (SIGFPE, the whole process died) on this molecule."""
    structure = Structure([18, 18, 18], [[0.0, 0, 0], [1e6, 0, 0], [1e6, 3.5, 0]], np.zeros((3, 3)), False)
    result = runner.run([structure], ["energy"], forces=True)
    expected = 4 * 0.0104 * ((3.4 / 3.5) ** 12 - (3.4 / 3.5) ** 6) - 4 * 0.0104 * ((3.4 / 8.5) ** 12 - (3.4 / 8.5) ** 6)
    assert abs(result["energy"][0, 0] - expected) < 1e-12


def test_atoms_far_outside_a_periodic_cell_keep_their_pairs(runner):
    """Regression: vesin's int32 cell index (cells along z x fractional coordinate) overflowed for
    an atom 2e7 cells away and the pair was silently lost."""
    cell = np.diag([10.0, 10.0, 1000.0])
    near = runner.run([Structure([18, 18], [[0.0, 0, 0], [0.0, 0, 4.0]], cell, True)], ["energy"])
    far = runner.run([Structure([18, 18], [[0.0, 0, 0], [0.0, 0, 4.0 + 2e10]], cell, True)], ["energy"])
    assert near["energy"][0, 0] < -1e-3
    assert abs(far["energy"][0, 0] - near["energy"][0, 0]) < 1e-4 * abs(near["energy"][0, 0])


def test_atomic_numbers_beyond_int32_are_not_wrapped_into_known_ones(runner):
    """Regression: 2**32 + 18 used to be cast to int32, i.e. argon."""
    with pytest.raises(ValueError, match="4294967314"):
        runner.run([Structure(np.array([2**32 + 18]), np.zeros((1, 3)), np.eye(3) * 10, True)], ["energy"])


def test_a_cell_far_smaller_than_the_cutoff_is_refused_quickly(runner):
    structure = Structure([18], np.zeros((1, 3)), np.eye(3) * 0.01, True)
    with pytest.raises(ValueError, match="neighbor pairs"):
        runner.run([structure], ["energy"])
