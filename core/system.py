"""The structures a model sees: `System` and its `NeighborList`s (TorchScript classes).

The engine entry point builds these from plain tensors; model authors only read them.
"""

from __future__ import annotations

from typing import Dict, List

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
