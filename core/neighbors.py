"""Neighbor lists for engines that do not hand us one (ASE, i-PI, the command line, export checks).

The lists come from vesin, the field's fast cell-list library. LAMMPS builds its own lists and
never comes here. Conventions (DESIGN section 2): `pairs` [P, 2] int64 (i, j), `shifts` [P, 3] int32,
the cell shifts of j, so that r_ij = r_j - r_i + shifts @ cell. A half list holds each pair once,
a full list both (i, j) and (j, i); an atom meets its own periodic images when the cell is small.

`NeighborListCache` adds a Verlet skin for MD: lists are built with cutoff + skin and reused while
no atom has moved more than skin/2 and the cell, periodicity and atom count are unchanged. That is
exact for a strict list (pairs beyond the cutoff are dropped at every step from the current
distances) and gives a superset of the pairs for a non-strict one, which the model then ignores.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

try:
    import vesin
except ImportError as error:  # pragma: no cover - vesin is a hard dependency
    raise ImportError("atomplug needs the 'vesin' package for neighbor lists: pip install vesin") from error

Pairs = Tuple[np.ndarray, np.ndarray]
Request = Tuple[float, bool, bool]


def _check_inputs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float) -> None:
    if not np.isfinite(cutoff) or cutoff <= 0.0:
        raise ValueError(f"neighbor-list cutoff must be a positive finite number, got {cutoff}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape [n_atoms, 3], got {list(positions.shape)}")
    if not np.all(np.isfinite(positions)):
        bad = np.flatnonzero(~np.all(np.isfinite(positions), axis=1))
        raise ValueError(
            f"positions of atom(s) {bad[:5].tolist()} are NaN or infinite: the structure is broken "
            "(an exploded MD run or a bad input file); fix the structure before evaluating"
        )
    if not np.all(np.isfinite(cell)):
        raise ValueError("the cell contains NaN or infinite values")
    if pbc.any():
        periodic_rows = cell[pbc]
        norms = np.linalg.norm(periodic_rows, axis=1)
        if np.any(norms == 0.0):
            axis = int(np.flatnonzero(pbc)[np.argmin(norms)])
            raise ValueError(
                f"cell vector {axis} is zero but the system is periodic along it: set a cell vector "
                "or make that direction non-periodic"
            )
        gram = periodic_rows @ periodic_rows.T
        volume = np.sqrt(max(np.linalg.det(gram), 0.0))
        if volume <= 1e-10 * np.prod(norms):
            raise ValueError(
                "the periodic cell vectors are linearly dependent (the cell is flat): give a cell "
                "with a non-zero volume in its periodic directions"
            )


def _standard_cell(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """vesin wants a usable box even along non-periodic directions; a zero row there is fine
    for it, so the cell passes unchanged unless nothing is periodic."""
    if not pbc.any():
        return np.zeros((3, 3))
    return cell


class _Builder:
    """One vesin list object per (cutoff, half/full), kept alive so vesin reuses its buffers."""

    def __init__(self, cutoff: float, full_list: bool):
        self.cutoff = float(cutoff)
        self.full_list = bool(full_list)
        self._vesin = vesin.NeighborList(cutoff=self.cutoff, full_list=self.full_list, sorted=True)

    def __call__(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> Pairs:
        _check_inputs(positions, cell, pbc, self.cutoff)
        if positions.shape[0] == 0:
            return np.zeros((0, 2), dtype=np.int64), np.zeros((0, 3), dtype=np.int32)
        pairs, shifts = self._vesin.compute(
            positions, _standard_cell(cell, pbc), [bool(p) for p in pbc], quantities="PS"
        )
        return pairs.astype(np.int64, copy=False), shifts.astype(np.int32, copy=False)


def _as_arrays(positions, cell, pbc) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.array(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    return positions, cell, pbc


def compute_pairs(positions, cell, pbc, cutoff: float, full_list: bool) -> Pairs:
    """All pairs closer than `cutoff`: (pairs int64 [P, 2], shifts int32 [P, 3]), grouped by i.

    Works for any periodicity (rows of `cell` along non-periodic directions are ignored and may be
    zero) and for cells smaller than the cutoff (many images, atoms meet their own images).
    """
    positions, cell, pbc = _as_arrays(positions, cell, pbc)
    return _Builder(cutoff, full_list)(positions, cell, pbc)


def pair_distances(positions: np.ndarray, cell: np.ndarray, pairs: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    vectors = positions[pairs[:, 1]] - positions[pairs[:, 0]] + shifts @ cell
    return np.sqrt(np.einsum("ij,ij->i", vectors, vectors))


class NeighborListCache:
    """Verlet-skin cache for the lists a model requests, for MD engines that call us every step.

    `requests` are (cutoff, full_list, strict) in the engine's length unit, `skin` in the same unit.
    `get()` returns one (pairs, shifts) per request. `n_builds` counts real rebuilds.
    """

    def __init__(self, requests: Sequence[Request], skin: float = 0.0):
        if not np.isfinite(skin) or skin < 0.0:
            raise ValueError(f"neighbor-list skin must be zero or positive, got {skin}")
        self.requests = [(float(c), bool(f), bool(s)) for c, f, s in requests]
        self.skin = float(skin)
        self._builders = [_Builder(c + self.skin, f) for c, f, _ in self.requests]
        self.n_builds = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stored lists: the next `get()` rebuilds."""
        self._reference_positions = None
        self._cell = None
        self._pbc = None
        self._inverse = None
        self._last_positions = None
        self._lists: List[Pairs] = []

    def _same_box(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        return (
            self._reference_positions is not None
            and positions.shape == self._reference_positions.shape
            and np.array_equal(pbc, self._pbc)
            and np.array_equal(cell, self._cell)
        )

    def _moved(self, positions: np.ndarray, since: "np.ndarray | None" = None) -> Tuple[float, "np.ndarray | None"]:
        """Largest squared displacement since the build (or since `since`), not counting whole
        lattice vectors along periodic directions (engines such as i-PI and LAMMPS wrap atoms back
        into the box), and those integer jumps per atom (None when no atom jumped)."""
        displacement = positions - (self._reference_positions if since is None else since)
        largest = float(np.max(np.einsum("ij,ij->i", displacement, displacement), initial=0.0))
        if not largest > (0.5 * self.skin) ** 2 or self._inverse is None:
            return largest, None
        jumps = np.rint(displacement @ self._inverse) * self._pbc
        if not jumps.any():
            return largest, None
        displacement = displacement - jumps @ self._cell
        largest = float(np.max(np.einsum("ij,ij->i", displacement, displacement), initial=0.0))
        return largest, jumps.astype(np.int32)

    def distance_squared(self, positions, cell, pbc) -> float:
        """How far (squared, lattice jumps excepted) `positions` are from the configuration this
        cache was last asked about; infinite when the box or atom count differs. Lets an engine
        that interleaves several trajectories (i-PI beads) keep one cache per trajectory."""
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        if not self._same_box(positions, cell, pbc):
            return float("inf")
        return self._moved(positions, since=self._last_positions)[0]

    def _build(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> None:
        self._lists = [build(positions, cell, pbc) for build in self._builders]
        self._reference_positions = positions.copy()
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        self._inverse = None
        if pbc.any() and abs(np.linalg.det(cell)) > 0.0:
            inverse = np.linalg.inv(cell)
            heights = 1.0 / np.linalg.norm(inverse, axis=0)
            # a jump is recognised unambiguously only if no real move reaches half a cell height
            if np.all(heights[pbc] > self.skin):
                self._inverse = inverse
        self.n_builds += 1

    def get(self, positions, cell, pbc) -> List[Pairs]:
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        jumps = None
        rebuild = self.skin == 0.0 or not self._same_box(positions, cell, pbc)
        if not rebuild:
            largest, jumps = self._moved(positions)
            if not np.isfinite(largest):
                _check_inputs(positions, cell, pbc, 1.0)
            rebuild = largest > (0.5 * self.skin) ** 2
        if rebuild:
            self._build(positions, cell, pbc)
            jumps = None
        self._last_positions = positions.copy()
        if self.skin == 0.0:
            return list(self._lists)
        result = []
        for (cutoff, _full, strict), (pairs, shifts) in zip(self.requests, self._lists):
            if jumps is not None:
                # r_j - r_i + S @ cell is unchanged when i and j jumped by n_i and n_j lattice
                # vectors if S becomes S + n_i - n_j
                shifts = shifts + jumps[pairs[:, 0]] - jumps[pairs[:, 1]]
            if strict:
                # an integer take is ~6x faster than a boolean mask on [P, 2] and [P, 3] arrays
                keep = np.flatnonzero(pair_distances(positions, cell, pairs, shifts) < cutoff)
                pairs, shifts = pairs.take(keep, axis=0), shifts.take(keep, axis=0)
            result.append((pairs, shifts))
        return result
