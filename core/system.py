"""The structures a model sees: `System` and its `NeighborList`s (TorchScript classes).

The engine entry point builds these from plain tensors; model authors only read them.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from .contract import NeighborListOptions


@torch.jit.script
class NeighborList:
    """Pairs (i, j) with integer cell shifts, and `vectors` = r_j - r_i + shifts @ cell.

    `vectors` are differentiable with respect to positions and cell: a model that computes its
    energy from them gets correct forces and virial from the entry point's autograd.
    """

    def __init__(self, options: NeighborListOptions, pairs: Tensor, shifts: Tensor, vectors: Tensor):
        self.options = options
        self.pairs = pairs
        self.shifts = shifts
        self.vectors = vectors

    def distances(self) -> Tensor:
        return torch.linalg.vector_norm(self.vectors, dim=1)


@torch.jit.interface
class GhostExchange(object):
    """What an engine with ghost atoms gives `System.exchange_ghosts` (LAMMPS on several ranks:
    its forward and reverse communication). `exchange(features)` returns `features` [n_atoms, ...]
    with every ghost atom's rows replaced by its owner's current rows; its backward adds the ghost
    rows' gradients onto their owners (and gives the ghost rows none)."""

    def exchange(self, features: Tensor) -> Tensor:
        pass


@torch.jit.script
class LocalGhostExchange:
    """A `GhostExchange` for ghosts whose owners are atoms of the same system: ghost atom g takes
    the rows of atom `sources[g]` (`sources[i] = i` for an atom that is not a ghost). The reference
    implementation of the exchange's meaning (one index_select, whose backward is the index_add
    onto owners), used by tests and by anyone who builds explicit ghost atoms in Python."""

    def __init__(self, sources: Tensor):
        self.sources = sources

    def exchange(self, features: Tensor) -> Tensor:
        return features.index_select(0, self.sources.to(features.device))


@torch.jit.script
class System:
    """One structure: `types` [n] int32, `positions` [n, 3], `cell` [3, 3] (rows are lattice
    vectors, zeros for non-periodic directions), `pbc` [3] bool, plus the requested neighbor lists
    and the requested inputs (`get_input`)."""

    def __init__(self, types: Tensor, positions: Tensor, cell: Tensor, pbc: Tensor):
        self.types = types
        self.positions = positions
        self.cell = cell
        self.pbc = pbc
        # Never mutated in place: add_* build new containers. When this __init__ runs as a
        # function of its own (not inlined into its caller), TorchScript's constant propagation
        # (torch 2.13) folds these empty literals into constants shared by every System, so an
        # append here would reach all later Systems ("a neighbor list ... was already added").
        self._neighbor_options: List[NeighborListOptions] = []
        self._neighbor_lists: List[NeighborList] = []
        self._inputs: Dict[str, Tensor] = {}
        self._ghost_exchange = torch.jit.annotate(Optional[GhostExchange], None)

    def __len__(self) -> int:
        return self.positions.shape[0]

    def add_neighbor_list(self, neighbors: NeighborList):
        for known in self._neighbor_options:
            if known.same_as(neighbors.options):
                raise ValueError(f"a neighbor list for {known.describe()} was already added")
        self._neighbor_options = self._neighbor_options + [neighbors.options]
        self._neighbor_lists = self._neighbor_lists + [neighbors]

    def get_neighbor_list(self, options: NeighborListOptions) -> NeighborList:
        for index, known in enumerate(self._neighbor_options):
            if known.same_as(options):
                return self._neighbor_lists[index]
        available: List[str] = []
        for known in self._neighbor_options:
            available.append(known.describe())
        raise ValueError(
            f"no neighbor list for {options.describe()} in this system (available: {', '.join(available)}); "
            "a model must list every neighbor list it uses in requested_neighbor_lists()"
        )

    def known_neighbor_lists(self) -> List[NeighborListOptions]:
        return self._neighbor_options

    def add_input(self, name: str, values: Tensor):
        """Set by the entry point: one requested input, in the unit the model declared."""
        inputs = self._inputs.copy()  # a new dict: see __init__
        inputs[name] = values
        self._inputs = inputs

    def get_input(self, name: str) -> Tensor:
        """A requested input in the unit the model declared: [n_atoms, P] per atom (masses,
        velocities, charges), [1, P] per structure (total_charge, spin_multiplicity)."""
        if name in self._inputs:
            return self._inputs[name]
        requested: List[str] = []
        for known in self._inputs.keys():
            requested.append(known)
        listed = ", ".join(requested) if len(requested) > 0 else "none"
        raise ValueError(
            f"the model did not request the input '{name}' (it requested: {listed}): "
            "add it to the model's requested_inputs() and export it again"
        )

    def known_inputs(self) -> List[str]:
        return list(self._inputs.keys())

    def set_ghost_exchange(self, exchange: Optional[GhostExchange]):
        """Set by the entry point, from the engine (LAMMPS on several ranks); None: no ghosts."""
        self._ghost_exchange = exchange

    def has_ghosts(self) -> bool:
        """Whether some atoms of this system are ghosts: copies of atoms owned elsewhere (another
        MPI rank) whose features only `exchange_ghosts` makes right."""
        return self._ghost_exchange is not None

    def exchange_ghosts(self, features: Tensor) -> Tensor:
        """`features` [n_atoms, ...] with every ghost atom's rows replaced by its owner's current
        values, differentiably (the backward adds the ghosts' gradients onto their owners).

        A message-passing model declaring `ModelCapabilities(ghost_exchange=True)` calls it on
        its per-atom features after each layer whose output a later layer reads; engines then need
        ghost atoms only out to the largest neighbor-list cutoff. Every rank must make the same
        calls in the same order (LAMMPS communicates inside them), whatever its number of atoms,
        even none. Without ghosts (ASE, i-PI, PLUMED, one LAMMPS rank) it returns `features`."""
        exchange = self._ghost_exchange
        if exchange is None:
            return features
        if features.shape[0] != self.positions.shape[0]:
            raise ValueError(
                f"exchange_ghosts needs one row per atom: got {features.shape[0]} rows for "
                f"{self.positions.shape[0]} atoms"
            )
        return exchange.exchange(features)
