"""Neighbor lists for engines that do not hand us one (ASE, i-PI, the command line, export checks).

The lists come from vesin, the field's fast cell-list library. LAMMPS builds its own lists and
never comes here. Conventions (DESIGN section 2): `pairs` [P, 2] int64 (i, j), `shifts` [P, 3] int32,
the cell shifts of j, so that r_ij = r_j - r_i + shifts @ cell. A half list holds each pair once,
a full list both (i, j) and (j, i); an atom meets its own periodic images when the cell is small.

`NeighborListCache` adds a Verlet skin for MD: lists are built with cutoff + skin and reused while
no atom has moved more than skin/2 and the cell, periodicity and atom count are unchanged. That is
exact for a strict list (pairs beyond the cutoff are dropped at every step from the current
distances) and gives a superset of the pairs for a non-strict one, which the model then ignores.
`TrajectoryCaches` keeps one such cache per trajectory for an engine that interleaves several
(i-PI's beads).

The same lists as torch tensors on the model's device (the end of this file: `_TorchBuilder`,
`DeviceNeighborListCache`, `DeviceTrajectoryCaches`, built by vesin-torch) serve a model on a GPU:
the skin check and the strict filter run there too, so no per-pair array crosses the bus. The
host classes above are the CPU path, unchanged by them.
"""

from __future__ import annotations

import math
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import first_line

try:
    import vesin
except ImportError as error:  # pragma: no cover - vesin is a hard dependency
    raise ImportError("atomplug needs the 'vesin' package for neighbor lists: pip install vesin") from error

Pairs = Tuple[np.ndarray, np.ndarray]
Request = Tuple[float, bool, bool]

# Limits that keep vesin (and memory) safe on any input; see _Geometry.
MAX_COORDINATE_IN_CUTOFFS = 1e10  # |coordinate| / cutoff: beyond, float64 distances lose meaning
MAX_CELL_OFFSET = 1e8  # cells an atom may lie outside the periodic cell (its shifts must fit int32)
MAX_PAIRS = 2e8  # estimated neighbor pairs of one structure (~30 bytes each, ~6 GB): beyond, refused
VESIN_MAX_CELLS = 5e4  # vesin shrinks (and may break) its grid above 1e5 cells


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
        raise ValueError("the cell contains NaN or infinite values: check the structure's cell")
    if positions.shape[0] > 0:
        # float64 coordinates this large cannot resolve interatomic distances (and vesin's bounding
        # box would overflow): almost always a unit mistake or an exploded simulation
        largest = np.abs(positions).max(axis=1)
        if largest.max() > MAX_COORDINATE_IN_CUTOFFS * cutoff:
            atom = int(np.argmax(largest))
            raise ValueError(
                f"atom {atom} is at {positions[atom].tolist()}, more than {MAX_COORDINATE_IN_CUTOFFS:.0e} "
                f"cutoffs ({cutoff:g}) from the origin, too far for float64 coordinates to resolve "
                "distances: check the structure and its length unit"
            )
    if pbc.any():
        periodic_rows = cell[pbc]
        norms = np.abs(periodic_rows).max(axis=1)  # scale of each row (its norm could overflow)
        if np.any(norms == 0.0):
            axis = int(np.flatnonzero(pbc)[np.argmin(norms)])
            raise ValueError(
                f"cell vector {axis} is zero but the system is periodic along it: set a cell vector "
                "or make that direction non-periodic"
            )
        # volume spanned by unit vectors along the periodic rows: scale-free (no overflow for huge
        # cells, no underflow for tiny ones), 1 for orthogonal vectors, 0 for dependent ones
        unit_rows = periodic_rows / norms[:, None]
        unit_rows /= np.linalg.norm(unit_rows, axis=1)[:, None]
        volume = np.sqrt(max(np.linalg.det(unit_rows @ unit_rows.T), 0.0))
        if volume <= 1e-10:
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
        geometry = _Geometry(positions, cell, pbc, self.cutoff)
        if geometry.fits_vesin:
            try:
                pairs, shifts = self._vesin.compute(
                    geometry.positions, _standard_cell(cell, pbc), [bool(p) for p in pbc], quantities="PS"
                )
            except RuntimeError as error:  # vesin's own refusals (e.g. a cell it cannot invert)
                raise ValueError(f"the neighbor list cannot be built for this structure: {error}") from None
            pairs = pairs.astype(np.int64, copy=False)
            shifts = shifts.astype(np.int32, copy=False)
        else:
            pairs, shifts = _sweep_pairs(geometry, self.cutoff, self.full_list)
        if geometry.cell_offsets is not None:
            # the list is for atom i at r_i - n_i @ cell: the shift for the given positions is S + n_i - n_j,
            # and rounding in the wrapped coordinates must not decide which pairs are in
            shifts = shifts + geometry.cell_offsets[pairs[:, 0]] - geometry.cell_offsets[pairs[:, 1]]
            keep = np.flatnonzero(pair_distances(positions, cell, pairs, shifts) < self.cutoff)
            pairs, shifts = pairs.take(keep, axis=0), shifts.take(keep, axis=0)
        return pairs, shifts


class _Geometry:
    """A structure prepared for a neighbor search that is safe whatever the input.

    vesin 0.6 casts cell indices to int32 (an atom a billion cells away overflows) and, when its
    grid would exceed 1e5 cells, shrinks the grid keeping its aspect ratio, which can make a
    dimension zero and divide by zero (SIGFPE: a three-atom molecule 1e6 Angstrom long kills the
    process). So atoms are wrapped into the periodic cell here (`cell_offsets` [n, 3] int32: the
    lattice vectors taken off, or None), and `fits_vesin` says whether vesin's grid stays small;
    otherwise (few atoms spread over a huge range) `_sweep_pairs` searches instead. A structure
    that would need an absurd number of pairs (a periodic cell far smaller than the cutoff for
    its number of atoms) is refused with a ValueError first.
    """

    def __init__(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
        matrix = _vesin_matrix(cell, pbc)
        inverse = np.linalg.inv(matrix)
        heights = _face_distances(inverse)
        # pairs of a full list (images included) for evenly spread atoms: N^2 x sphere volume / volume,
        # the volume from the periodic heights and the non-periodic extents (at least 2 cutoffs)
        lengths = heights.copy()
        for axis in np.flatnonzero(~pbc):  # the rows of non-periodic axes are unit vectors
            lengths[axis] = max(float(np.ptp(positions @ matrix[axis])), 2.0 * cutoff)
        with np.errstate(divide="ignore"):  # a face distance beyond float: no pairs through it
            log_pairs = 2.0 * np.log(positions.shape[0]) + np.log(np.pi / 6.0) + np.sum(np.log(2.0 * cutoff / lengths))
        if log_pairs > np.log(MAX_PAIRS):
            periodic_heights = ", ".join(f"{h:.3g}" for h in heights[pbc])
            raise ValueError(
                f"this structure would need about {np.exp(min(log_pairs, 700.0)):.1e} neighbor pairs within the "
                f"cutoff {cutoff:g} (at most {MAX_PAIRS:.0e}): its periodic cell (heights {periodic_heights}) is "
                "far smaller than the cutoff for its number of atoms; check the cell and its length unit"
            )

        self.positions = positions
        self.cell_offsets = None
        if pbc.any():
            offsets = np.floor(positions @ inverse) * pbc
            if np.abs(offsets).max() > MAX_CELL_OFFSET:
                atom = int(np.argmax(np.abs(offsets).max(axis=1)))
                raise ValueError(
                    f"atom {atom} lies {np.abs(offsets[atom]).max():.3g} cells away from the periodic cell "
                    f"(at most {MAX_CELL_OFFSET:.0e}): wrap the positions into the cell"
                )
            if offsets.any():
                self.positions = positions - offsets @ matrix
                self.cell_offsets = offsets.astype(np.int32)

        # vesin's grid has max(1, trunc(D / cutoff)) cells along each axis, D the face distance of a
        # periodic axis or 1.01 x the coordinate range along a non-periodic one (1.01 if flat)
        ranges = np.ptp(self.positions, axis=0)
        faces = np.where(pbc, heights, np.where(ranges < 1e-6, 1.0, ranges) * 1.01)
        with np.errstate(over="ignore"):
            self.fits_vesin = bool(np.prod(np.maximum(1.0, faces / cutoff)) <= VESIN_MAX_CELLS)
        self.matrix = matrix
        self.heights = heights
        self.pbc = pbc


def _sweep_pairs(geometry: _Geometry, cutoff: float, full_list: bool) -> Pairs:
    """All pairs within `cutoff`, found by sorting atoms and their periodic images along the
    widest axis: for the geometries vesin's grid cannot hold (few atoms over a huge range), where
    the slab within one cutoff of an atom holds few others."""
    positions, matrix, pbc = geometry.positions, geometry.matrix, geometry.pbc
    n_atoms = positions.shape[0]
    reach = [int(np.ceil(cutoff / geometry.heights[k])) if pbc[k] else 0 for k in range(3)]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij")
    lattice_shifts = np.stack([grid.reshape(-1) for grid in grids], axis=1)  # [S, 3]
    with np.errstate(over="ignore", invalid="ignore"):  # images of a huge cell may overflow: never pairs
        images = (positions[None, :, :] + (lattice_shifts @ matrix)[:, None, :]).reshape(-1, 3)  # s * n + j
        axis = int(np.argmax(np.nan_to_num(np.ptp(images, axis=0), nan=np.inf)))
        order = np.argsort(images[:, axis], kind="stable")
        keys = images[order, axis]
        low = np.searchsorted(keys, positions[:, axis] - cutoff, side="left")
        counts = np.searchsorted(keys, positions[:, axis] + cutoff, side="right") - low
        first = np.repeat(np.arange(n_atoms), counts)
        within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        candidates = order[np.repeat(low, counts) + within]
        second = candidates % n_atoms
        shifts = lattice_shifts[candidates // n_atoms]
        vectors = images[candidates] - positions[first]
        keep = np.einsum("ij,ij->i", vectors, vectors) < cutoff * cutoff
    keep &= (first != second) | shifts.any(axis=1)  # not an atom with itself
    if not full_list:  # one of (i, j, S) and (j, i, -S): i < j, or i == j and S > 0 lexicographically
        positive = (shifts[:, 0] > 0) | (
            (shifts[:, 0] == 0) & ((shifts[:, 1] > 0) | ((shifts[:, 1] == 0) & (shifts[:, 2] > 0)))
        )
        keep &= (first < second) | ((first == second) & positive)
    pairs = np.stack([first[keep], second[keep]], axis=1).astype(np.int64)
    shifts = shifts[keep].astype(np.int32)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], pairs[:, 1], pairs[:, 0]))
    return pairs[order], shifts[order]


def _face_distances(inverse: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of a cell, 1 / |column of its inverse|, computed scale-free:
    for cells of 1e-300 or 1e300 the plain norm would overflow or underflow (0 or inf is returned
    only when the distance itself is beyond float)."""
    scale = np.abs(inverse).max(axis=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        heights = 1.0 / (scale * np.linalg.norm(inverse / scale, axis=0))
    return np.where(scale == 0.0, np.inf, heights)


def _vesin_matrix(cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """The cell as vesin uses it: rows along non-periodic directions replaced by unit vectors
    orthogonal to the periodic rows (the identity when nothing is periodic)."""
    periodic = int(pbc.sum())
    if periodic == 0:
        return np.eye(3)
    matrix = np.array(cell, dtype=np.float64)
    if periodic < 3:
        rows = matrix[pbc] / np.abs(matrix[pbc]).max(axis=1)[:, None]  # scaled first: the norm of a
        rows /= np.linalg.norm(rows, axis=1)[:, None]  # 1e-300 row underflows to zero, of a 1e300 row overflows
        matrix[~pbc] = np.linalg.svd(rows)[2][periodic:]  # orthonormal basis of what the rows leave out
    return matrix


def _as_arrays(positions, cell, pbc) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    if not (type(pbc) is np.ndarray and pbc.dtype == np.bool_ and pbc.shape == (3,)):  # else used as is, never written
        pbc = np.array(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    return positions, cell, pbc


def _largest_square(vectors: np.ndarray) -> float:
    """max_i |v_i|^2 over the rows of [n, 3] `vectors` (0 for none; NaN if any is NaN), in a few
    whole-array operations: the cache runs this every MD step."""
    squares = vectors * vectors
    return float((squares[:, 0] + squares[:, 1] + squares[:, 2]).max(initial=0.0))


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


def cache_settings(requests: Sequence[Request], skin: float):
    """The requests as (cutoff, full_list, strict) and the skin, checked: what every Verlet cache keeps."""
    if not np.isfinite(skin) or skin < 0.0:
        raise ValueError(f"neighbor-list skin must be zero or positive, got {skin}")
    return [(float(c), bool(f), bool(s)) for c, f, s in requests], float(skin)


class NeighborListCache:
    """Verlet-skin cache for the lists a model requests, for MD engines that call us every step.

    `requests` are (cutoff, full_list, strict) in the engine's length unit, `skin` in the same unit.
    `get()` returns one (pairs, shifts) per request. `n_builds` counts real rebuilds.
    """

    def __init__(self, requests: Sequence[Request], skin: float = 0.0):
        self.requests, self.skin = cache_settings(requests, skin)
        self._builders = [_Builder(c + self.skin, f) for c, f, _ in self.requests]
        self.n_builds = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stored lists: the next `get()` rebuilds."""
        self._reference_positions = None
        self._cell = None
        self._pbc = None
        self._box = None  # (positions.shape, cell bytes, pbc bytes) of the build
        self._inverse = None
        self._last_positions = None
        self._lists: List[Pairs] = []
        self._filters: List[Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]] = []

    def _same_box(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        # the same bytes, not just equal values: cheaper per step, and a cell that only compares
        # equal (-0.0 for 0.0) merely rebuilds
        return self._box == (positions.shape, cell.tobytes(), pbc.tobytes())

    def _moved(self, positions: np.ndarray, since: "np.ndarray | None" = None) -> Tuple[float, "np.ndarray | None"]:
        """Largest squared displacement since the build (or since `since`), not counting whole
        lattice vectors along periodic directions (engines such as i-PI and LAMMPS wrap atoms back
        into the box), and those integer jumps per atom (None when no atom jumped)."""
        displacement = positions - (self._reference_positions if since is None else since)
        largest = _largest_square(displacement)
        if not largest > (0.5 * self.skin) ** 2 or self._inverse is None or not math.isfinite(largest):
            return largest, None  # (NaN or infinite positions: the caller reports them)
        jumps = np.rint(displacement @ self._inverse) * self._pbc
        if not jumps.any():
            return largest, None
        displacement = displacement - jumps @ self._cell
        largest = _largest_square(displacement)
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
        # for the strict lists' filter at every step: contiguous i and j (a gather ~4x faster than
        # through pairs[:, k]) and shifts @ cell, fixed until the next build unless atoms jump
        self._filters = [
            (pairs[:, 0].copy(), pairs[:, 1].copy(), shifts @ cell) if strict and self.skin > 0.0 else None
            for (_cutoff, _full, strict), (pairs, shifts) in zip(self.requests, self._lists)
        ]
        self._reference_positions = positions.copy()
        self._cell = cell.copy()
        self._pbc = pbc.copy()
        self._box = (positions.shape, cell.tobytes(), pbc.tobytes())
        self._inverse = None
        with np.errstate(over="ignore", divide="ignore"):  # huge cells: det and heights beyond float
            invertible = pbc.any() and abs(np.linalg.det(cell)) > 0.0
        if invertible:
            inverse = np.linalg.inv(cell)
            heights = _face_distances(inverse)
            # a jump is recognised unambiguously only if no real move reaches half a cell height
            if np.all(heights[pbc] > self.skin):
                self._inverse = inverse
        self.n_builds += 1

    def get(self, positions, cell, pbc) -> List[Pairs]:
        """One (pairs, shifts) per request for these positions: the stored lists while they hold,
        else rebuilt."""
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        lists = self._reuse(positions, cell, pbc)
        if lists is None:
            self._build(positions, cell, pbc)
            self._last_positions = positions.copy()
            lists = list(self._lists) if self.skin == 0.0 else self._current(positions, cell, None)
        return lists

    def _reuse(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> Optional[List[Pairs]]:
        """What `get()` returns while the stored lists hold for `positions` (same box, no atom moved
        more than skin/2 since the build, lattice jumps aside); None, changing nothing, when
        `get()` would rebuild."""
        if self.skin == 0.0 or not self._same_box(positions, cell, pbc):
            return None
        largest, jumps = self._moved(positions)
        if not math.isfinite(largest):
            _check_inputs(positions, cell, pbc, 1.0)
        if largest > (0.5 * self.skin) ** 2:
            return None
        self._last_positions = positions.copy()
        return self._current(positions, cell, jumps)

    def _current(self, positions: np.ndarray, cell: np.ndarray, jumps: "np.ndarray | None") -> List[Pairs]:
        """The stored lists for `positions`: shifts corrected for lattice jumps, strict lists cut
        to the pairs now within their cutoff."""
        result = []
        for (cutoff, _full, strict), (pairs, shifts), gather in zip(self.requests, self._lists, self._filters):
            if jumps is not None:
                # r_j - r_i + S @ cell is unchanged when i and j jumped by n_i and n_j lattice
                # vectors if S becomes S + n_i - n_j
                shifts = shifts + jumps[pairs[:, 0]] - jumps[pairs[:, 1]]
            if strict:
                # pair_distances(positions, cell, pairs, shifts), the same arithmetic from the build's gathers
                first, second, shift_vectors = gather
                vectors = positions.take(second, axis=0) - positions.take(first, axis=0)
                vectors += shift_vectors if jumps is None else shifts @ cell
                keep = np.flatnonzero(np.sqrt(np.einsum("ij,ij->i", vectors, vectors)) < cutoff)
                if keep.size < pairs.shape[0]:  # an integer take is ~6x faster than a boolean mask
                    pairs, shifts = pairs.take(keep, axis=0), shifts.take(keep, axis=0)
            result.append((pairs, shifts))
        return result


class TrajectoryCaches:
    """`NeighborListCache` for an engine that interleaves several trajectories, such as the beads
    of an i-PI path integral served in turn by one client (a drop-in: `get`, `requests`, `skin`,
    `n_builds`, `reset`).

    A structure reuses the lists of the first cache that still holds for it, trying first the
    cache that came after the previous structure's cache last time (so beads served in turn, or
    one MD trajectory, need one check per step), then the others, most recently used first.
    Otherwise it continues the trajectory whose last configuration is closest (lattice jumps
    aside), whose cache rebuilds; one farther than skin/2 from all of them starts a new cache, up
    to `max_caches` (then the least recently used one is taken over).
    """

    def __init__(self, requests: Sequence[Request], skin: float = 0.0, max_caches: int = 16):
        checked = NeighborListCache(requests, skin)
        self.requests, self.skin = checked.requests, checked.skin
        self.max_caches = max(1, int(max_caches)) if self.skin > 0.0 else 1  # no skin: rebuilt every call
        self.reset()

    def reset(self) -> None:
        """Forget every trajectory."""
        self.caches: List[NeighborListCache] = []  # most recently used first
        self._after: Dict[NeighborListCache, NeighborListCache] = {}  # cache -> the one used right after it

    @property
    def n_builds(self) -> int:
        return sum(cache.n_builds for cache in self.caches)

    def get(self, positions, cell, pbc) -> List[Pairs]:
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        previous = self.caches[0] if self.caches else None
        hint = self._after.get(previous)
        for cache in ([hint] if hint is not None else []) + [c for c in self.caches if c is not hint]:
            lists = cache._reuse(positions, cell, pbc)
            if lists is not None:
                self._use(cache, previous)
                return lists
        cache = self._continued(positions, cell, pbc)
        lists = cache.get(positions, cell, pbc)
        self._use(cache, previous)
        return lists

    def _continued(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> NeighborListCache:
        """The cache of the trajectory these positions continue, or a new (or taken over) one."""
        best, best_move = None, math.inf
        for cache in self.caches:
            move = cache.distance_squared(positions, cell, pbc)
            if move < best_move:
                best, best_move = cache, move
        if best is not None and best_move <= (0.5 * self.skin) ** 2:
            return best
        if len(self.caches) < self.max_caches:
            return NeighborListCache(self.requests, self.skin)
        return self.caches[-1]

    def _use(self, cache: NeighborListCache, previous: Optional[NeighborListCache]) -> None:
        if previous is not None:
            self._after[previous] = cache
        if self.caches and self.caches[0] is cache:
            return
        if cache in self.caches:
            self.caches.remove(cache)
        self.caches.insert(0, cache)


# ---- Lists on the model's device ---------------------------------------------------------------
#
# When the model runs on a CUDA device (or when asked, `ModelRunner(neighbor_backend="torch")`, which
# also runs on the CPU so that CI tests this code), the lists are torch tensors on that device: built
# by vesin-torch (vesin's torch backend: the same cell lists, on the CPU or in CUDA kernels), and the
# Verlet-skin check and the strict lists' filter run there too. The engine's positions go to the device
# once per step; only a few scalars (the largest move, the number of pairs kept) come back, never a
# per-pair array. The checks of the structure (`_check_inputs`, `_Geometry`) are the host path's, on
# the host arrays the engine gave, at each rebuild: O(n), no pair.

TorchPairs = Tuple[torch.Tensor, torch.Tensor]

VESIN_TORCH_MISSING = (
    "neighbor lists on the model's device need vesin's torch backend, the 'vesin-torch' package (the same "
    "version as 'vesin'): pip install 'vesin-torch>=0.6,<0.7' (or atomplug's 'gpu' extra)"
)


def _vesin_torch():
    try:
        import vesin_torch
    except ImportError as error:  # missing, or built for another torch: vesin-torch's own message follows
        raise ImportError(f"{VESIN_TORCH_MISSING} ({first_line(error)})") from error
    return vesin_torch


def vesin_torch_available() -> bool:
    """Whether vesin-torch imports (and so whether the device lists can be built)."""
    try:
        _vesin_torch()
    except ImportError:
        return False
    return True


_NVRTC_LOADED = False


def _load_nvrtc() -> None:
    """vesin-torch compiles its CUDA kernels at run time with NVRTC, which it looks up by name
    (libnvrtc.so.N). torch's CUDA wheels ship NVRTC in site-packages/nvidia/.../lib, which the
    dynamic loader does not search, and torch itself loads it only when it first compiles a kernel:
    load torch's copy first (RTLD_GLOBAL), so that vesin finds the library already in the process.
    Nothing happens when it is already loaded or not found (vesin then says what is missing).
    Not yet run on a GPU machine here (issue 19): see docs/gpu.md."""
    global _NVRTC_LOADED
    if _NVRTC_LOADED:
        return
    _NVRTC_LOADED = True
    import ctypes
    import glob
    import os
    import sys

    try:
        with open("/proc/self/maps") as maps:
            if "libnvrtc" in maps.read():
                return
    except OSError:
        return
    major = str(torch.version.cuda or "").split(".")[0]
    roots = {os.path.dirname(os.path.dirname(torch.__file__))} | {p for p in sys.path if p.endswith("-packages")}
    candidates = []
    for root in sorted(roots):
        for pattern in ("nvidia/*/lib/libnvrtc.so*", "nvidia/*/*/lib/libnvrtc.so*"):
            candidates += [p for p in glob.glob(os.path.join(root, pattern)) if "builtins" not in p and "alt" not in p]
    candidates.sort(key=lambda p: (not os.path.basename(p).startswith(f"libnvrtc.so.{major}"), p))
    for path in candidates:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def _sort_pairs(pairs: torch.Tensor, shifts: torch.Tensor, n_atoms: int) -> TorchPairs:
    """Pairs in (i, j) order. vesin's CUDA kernels write pairs in whatever order their threads
    finish; the lists they build hold each (i, j) at most once (cells of at least two cutoffs), so
    this order is canonical and the model sums in the same order on every run."""
    order = torch.argsort(pairs[:, 0] * n_atoms + pairs[:, 1])
    return pairs.index_select(0, order), shifts.index_select(0, order)


def torch_pair_distances(
    positions: torch.Tensor, cell: torch.Tensor, pairs: torch.Tensor, shifts: torch.Tensor
) -> torch.Tensor:
    """pair_distances for tensors (on any device), with the host path's arithmetic."""
    vectors = positions.index_select(0, pairs[:, 1]) - positions.index_select(0, pairs[:, 0])
    vectors += shifts.to(cell.dtype) @ cell
    return torch.sqrt(_squared_norms(vectors))


def _squared_norms(vectors: torch.Tensor) -> torch.Tensor:
    """|v|^2 of the rows of [n, 3] `vectors`, summed as x^2 + y^2 + z^2 (numpy's order)."""
    squares = vectors * vectors
    return squares[:, 0] + squares[:, 1] + squares[:, 2]


class _TorchBuilder:
    """`_Builder`'s list, as tensors on the device of the positions given: (pairs int64 [P, 2],
    shifts int32 [P, 3]).

    Where the search runs:
    - on the CPU, vesin-torch searches every structure `_Builder` gives vesin (the same C++ code:
      the same pairs, shifts and order); the few it cannot hold are swept on the host;
    - on CUDA, vesin-torch's kernels search 3D-periodic cells whose faces are at least two cutoffs
      apart (they use the minimum image and refuse narrower cells); molecules, slabs, wires and
      narrow cells are built on the host (`_Builder`) and copied to the device once per build:
      small structures in practice. vesin's CUDA kernels on other geometries are not checked here
      yet (no GPU was available): `_on_device` is the one place to widen.
    A CUDA search that fails (e.g. more pairs per atom than vesin's buffers hold, see
    VESIN_CUDA_MAX_PAIRS_PER_POINT) warns once and builds on the host from then on.
    """

    def __init__(self, cutoff: float, full_list: bool):
        self.cutoff = float(cutoff)
        self.full_list = bool(full_list)
        self._host = _Builder(self.cutoff, self.full_list)
        self._vesin: Dict[str, object] = {}  # device type -> vesin_torch.NeighborList (its buffers live there)
        self._cuda_failure: Optional[str] = None

    def _on_device(self, geometry: "_Geometry", pbc: np.ndarray, device: torch.device) -> bool:
        if not geometry.fits_vesin:
            return False
        if device.type == "cpu":
            return True
        if device.type != "cuda" or self._cuda_failure is not None:
            return False
        return bool(pbc.all()) and bool(np.all(geometry.heights > 2.0 * self.cutoff * (1.0 + 1e-9)))

    def _neighbor_list(self, device: torch.device):
        search = self._vesin.get(device.type)
        if search is None:
            if device.type == "cuda":
                _load_nvrtc()
            # sorted by i on the CPU (as _Builder's); the CUDA kernels' order is sorted here (_sort_pairs)
            search = _vesin_torch().NeighborList(
                cutoff=self.cutoff, full_list=self.full_list, sorted=device.type == "cpu"
            )
            self._vesin[device.type] = search
        return search

    def __call__(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        device_positions: torch.Tensor,
        device_cell: torch.Tensor,
    ) -> TorchPairs:
        device = device_positions.device
        _check_inputs(positions, cell, pbc, self.cutoff)
        if positions.shape[0] == 0:
            return (
                torch.zeros((0, 2), dtype=torch.int64, device=device),
                torch.zeros((0, 3), dtype=torch.int32, device=device),
            )
        geometry = _Geometry(positions, cell, pbc, self.cutoff)
        if not self._on_device(geometry, pbc, device):
            return self._from_host(positions, cell, pbc, device)
        points = device_positions
        if geometry.cell_offsets is not None:  # atoms outside the cell: vesin gets them wrapped, as on the host
            points = torch.from_numpy(geometry.positions).to(device)
        box = device_cell if pbc.any() else torch.zeros((3, 3), dtype=torch.float64, device=device)
        try:
            pairs, shifts = self._neighbor_list(device).compute(
                points, box, torch.from_numpy(pbc.copy()), quantities="PS"
            )
        except RuntimeError as error:
            if device.type == "cpu":  # vesin's own refusals, as _Builder says them
                raise ValueError(f"the neighbor list cannot be built for this structure: {error}") from None
            self._cuda_failure = first_line(error)
            warnings.warn(
                f"vesin-torch could not build the neighbor list on {device} ({self._cuda_failure}); atomplug "
                "builds it on the CPU from now on (slower for large systems). If vesin ran out of pair "
                "buffers, set VESIN_CUDA_MAX_PAIRS_PER_POINT higher.",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._from_host(positions, cell, pbc, device)
        if device.type != "cpu":
            pairs, shifts = _sort_pairs(pairs, shifts, positions.shape[0])
        if geometry.cell_offsets is not None:
            # as _Builder: the shifts for the given positions, and the pairs within the cutoff from them
            offsets = torch.from_numpy(geometry.cell_offsets).to(device)
            shifts = shifts + offsets.index_select(0, pairs[:, 0]) - offsets.index_select(0, pairs[:, 1])
            keep = torch.nonzero(torch_pair_distances(device_positions, device_cell, pairs, shifts) < self.cutoff)
            keep = keep.reshape(-1)
            pairs, shifts = pairs.index_select(0, keep), shifts.index_select(0, keep)
        return pairs, shifts

    def _from_host(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, device: torch.device) -> TorchPairs:
        pairs, shifts = self._host(positions, cell, pbc)
        return torch.from_numpy(pairs).to(device), torch.from_numpy(shifts).to(device)


def _device_arrays(positions: np.ndarray, cell: np.ndarray, device_positions, device_cell, device) -> TorchPairs:
    """The device copies of `positions` and `cell` (made here when the caller has none)."""
    if device_positions is None:
        device_positions = torch.from_numpy(positions).to(device)
    if device_cell is None:
        device_cell = torch.from_numpy(cell).to(device)
    return device_positions, device_cell


def compute_pairs_on_device(
    positions, cell, pbc, cutoff: float, full_list: bool, device="cpu", device_positions=None, device_cell=None
) -> TorchPairs:
    """compute_pairs with the list as tensors on `device` (or on the device of `device_positions`,
    the device copy of `positions` when the caller has one; `device_cell` likewise)."""
    positions, cell, pbc = _as_arrays(positions, cell, pbc)
    device_positions, device_cell = _device_arrays(positions, cell, device_positions, device_cell, device)
    return _TorchBuilder(cutoff, full_list)(positions, cell, pbc, device_positions, device_cell)


class DeviceNeighborListCache:
    """`NeighborListCache` with the lists on the model's device (torch tensors), and the
    displacement check and the strict lists' filter done there: the same rebuilds (the same
    arithmetic on the same float64 numbers) and the same lists.

    `get(positions, cell, pbc, device_positions, device_cell)`: the host arrays (the engine's; used
    for the box comparison and the checks at a rebuild) and their copies on the device (made here
    when not given). Returns one (pairs, shifts) tensor pair per request.
    """

    def __init__(self, requests: Sequence[Request], skin: float = 0.0):
        self.requests, self.skin = cache_settings(requests, skin)
        self._builders = [_TorchBuilder(c + self.skin, f) for c, f, _ in self.requests]
        self.n_builds = 0
        self.reset()

    def reset(self) -> None:
        """Forget the stored lists: the next `get()` rebuilds."""
        self._reference_positions: Optional[torch.Tensor] = None
        self._cell: Optional[torch.Tensor] = None
        self._pbc: Optional[torch.Tensor] = None  # float 0/1, for the jumps
        self._box = None
        self._inverse: Optional[torch.Tensor] = None
        self._last_positions: Optional[torch.Tensor] = None
        self._lists: List[TorchPairs] = []
        self._filters: List[Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []

    def _same_box(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> bool:
        return self._box == (positions.shape, cell.tobytes(), pbc.tobytes())

    def _moved(self, positions: torch.Tensor, since: Optional[torch.Tensor] = None):
        """NeighborListCache._moved on the device: the largest squared displacement (a float, the
        one number that comes back each step) and the lattice jumps (int32 tensor or None)."""
        displacement = positions - (self._reference_positions if since is None else since)
        largest = float(_squared_norms(displacement).max()) if displacement.shape[0] else 0.0
        if not largest > (0.5 * self.skin) ** 2 or self._inverse is None or not math.isfinite(largest):
            return largest, None
        jumps = torch.round(displacement @ self._inverse) * self._pbc
        if not bool(jumps.any()):
            return largest, None
        displacement = displacement - jumps @ self._cell
        largest = float(_squared_norms(displacement).max())
        return largest, jumps.to(torch.int32)

    def distance_squared(self, positions, cell, pbc, device_positions=None, device_cell=None) -> float:
        """NeighborListCache.distance_squared (for DeviceTrajectoryCaches)."""
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        if not self._same_box(positions, cell, pbc):
            return float("inf")
        device_positions, _ = _device_arrays(positions, cell, device_positions, self._cell, self._device())
        return self._moved(device_positions, since=self._last_positions)[0]

    def _device(self) -> torch.device:
        return self._reference_positions.device if self._reference_positions is not None else torch.device("cpu")

    def _build(
        self,
        positions: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        device_positions: torch.Tensor,
        device_cell: torch.Tensor,
    ) -> None:
        self._lists = [build(positions, cell, pbc, device_positions, device_cell) for build in self._builders]
        self._filters = [
            (
                (pairs[:, 0].contiguous(), pairs[:, 1].contiguous(), shifts.to(device_cell.dtype) @ device_cell)
                if strict and self.skin > 0.0
                else None
            )
            for (_cutoff, _full, strict), (pairs, shifts) in zip(self.requests, self._lists)
        ]
        self._reference_positions = device_positions.clone()
        self._cell = device_cell.clone()
        self._pbc = torch.from_numpy(pbc.astype(np.float64)).to(device_positions.device)
        self._box = (positions.shape, cell.tobytes(), pbc.tobytes())
        self._inverse = None
        with np.errstate(over="ignore", divide="ignore"):
            invertible = pbc.any() and abs(np.linalg.det(cell)) > 0.0
        if invertible:
            inverse = np.linalg.inv(cell)
            if np.all(_face_distances(inverse)[pbc] > self.skin):
                self._inverse = torch.from_numpy(inverse).to(device_positions.device)
        self.n_builds += 1

    def get(self, positions, cell, pbc, device_positions=None, device_cell=None, device="cpu") -> List[TorchPairs]:
        """One (pairs, shifts) per request for these positions: the stored lists while they hold,
        else rebuilt. Without device copies, they are made on `device`."""
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        device_positions, device_cell = _device_arrays(positions, cell, device_positions, device_cell, device)
        lists = self._reuse(positions, cell, pbc, device_positions, device_cell)
        if lists is None:
            self._build(positions, cell, pbc, device_positions, device_cell)
            self._last_positions = device_positions.clone()
            lists = list(self._lists) if self.skin == 0.0 else self._current(device_positions, device_cell, None)
        return lists

    def _reuse(self, positions, cell, pbc, device_positions, device_cell) -> Optional[List[TorchPairs]]:
        """NeighborListCache._reuse with device copies."""
        if self.skin == 0.0 or not self._same_box(positions, cell, pbc):
            return None
        if device_positions.device != self._reference_positions.device:
            return None
        largest, jumps = self._moved(device_positions)
        if not math.isfinite(largest):
            _check_inputs(positions, cell, pbc, 1.0)
        if largest > (0.5 * self.skin) ** 2:
            return None
        self._last_positions = device_positions.clone()
        return self._current(device_positions, device_cell, jumps)

    def _current(self, positions: torch.Tensor, cell: torch.Tensor, jumps: Optional[torch.Tensor]) -> List[TorchPairs]:
        """NeighborListCache._current on the device."""
        result = []
        for (cutoff, _full, strict), (pairs, shifts), gather in zip(self.requests, self._lists, self._filters):
            if jumps is not None:
                shifts = shifts + jumps.index_select(0, pairs[:, 0]) - jumps.index_select(0, pairs[:, 1])
            if strict:
                first, second, shift_vectors = gather
                vectors = positions.index_select(0, second) - positions.index_select(0, first)
                vectors += shift_vectors if jumps is None else shifts.to(cell.dtype) @ cell
                keep = torch.nonzero(torch.sqrt(_squared_norms(vectors)) < cutoff).reshape(-1)
                if keep.shape[0] < pairs.shape[0]:
                    pairs, shifts = pairs.index_select(0, keep), shifts.index_select(0, keep)
            result.append((pairs, shifts))
        return result


class DeviceTrajectoryCaches(TrajectoryCaches):
    """`TrajectoryCaches` of `DeviceNeighborListCache`s (i-PI's beads with the model on a GPU):
    `get(positions, cell, pbc, device_positions, device_cell)`."""

    def get(self, positions, cell, pbc, device_positions=None, device_cell=None, device="cpu") -> List[TorchPairs]:
        positions, cell, pbc = _as_arrays(positions, cell, pbc)
        device_positions, device_cell = _device_arrays(positions, cell, device_positions, device_cell, device)
        previous = self.caches[0] if self.caches else None
        hint = self._after.get(previous)
        for cache in ([hint] if hint is not None else []) + [c for c in self.caches if c is not hint]:
            lists = cache._reuse(positions, cell, pbc, device_positions, device_cell)
            if lists is not None:
                self._use(cache, previous)
                return lists
        best, best_move = None, math.inf
        for cache in self.caches:
            move = cache.distance_squared(positions, cell, pbc, device_positions, device_cell)
            if move < best_move:
                best, best_move = cache, move
        if best is not None and best_move <= (0.5 * self.skin) ** 2:
            cache = best
        elif len(self.caches) < self.max_caches:
            cache = DeviceNeighborListCache(self.requests, self.skin)
        else:
            cache = self.caches[-1]
        lists = cache.get(positions, cell, pbc, device_positions, device_cell)
        self._use(cache, previous)
        return lists
