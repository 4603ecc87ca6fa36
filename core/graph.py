"""The systems of one call batched into one graph: the first step of a message-passing model.

TorchScript-scriptable; a model's `forward` calls `batch_systems` on the systems it is given.
"""

from typing import List, NamedTuple, Optional

import torch
from torch import Tensor

from .contract import NeighborListOptions
from .program import capturing
from .system import System


class BatchedSystems(NamedTuple):
    """All atoms of all systems numbered one after the other (system 0's first)."""

    species: Tensor  # [n_atoms] long: each atom's index in the model's own list of types
    pairs: Tensor  # [n_pairs, 2] long: the pairs (i, j) of every system's list, global atom indices
    vectors: Tensor  # [n_pairs, 3]: the lists' differentiable `vectors`, as they are
    owners: Tensor  # [n_atoms] long: the index of the system each atom belongs to
    offsets: List[int]  # [n_systems + 1]: each system's first global atom index, then n_atoms


def batch_systems(
    systems: List[System], options: NeighborListOptions, species_of_type: Tensor, unknown_type_message: str
) -> BatchedSystems:
    """Batch `systems` and their neighbor lists for `options` into one graph.

    `species_of_type[t]` is the model's index of atom type t, -1 for a type it does not know; an
    atom whose type is negative, beyond the table or -1 in it raises ValueError(unknown_type_message).
    The pair vectors are the neighbor lists' own tensors (concatenated), so gradients flow
    through them to positions and cell."""
    species_parts: List[Tensor] = []
    pair_parts: List[Tensor] = []
    vector_parts: List[Tensor] = []
    owner_parts: List[Tensor] = []
    sizes: List[int] = [0]
    offset = 0
    for index, system in enumerate(systems):
        numbers = system.types.to(torch.long)
        checked = not capturing()  # a captured program flags unknown types itself (core.program)
        if checked and numbers.shape[0] > 0:
            if int(numbers.min()) < 0 or int(numbers.max()) >= species_of_type.shape[0]:
                raise ValueError(unknown_type_message)
        species = species_of_type.index_select(0, numbers)
        if checked and bool((species < 0).any()):
            raise ValueError(unknown_type_message)
        neighbors = system.get_neighbor_list(options)
        species_parts.append(species)
        pair_parts.append(neighbors.pairs.to(torch.long) + offset)
        vector_parts.append(neighbors.vectors)
        owner_parts.append(torch.full((species.shape[0],), index, dtype=torch.long, device=species.device))
        offset += species.shape[0]
        sizes.append(offset)
    return BatchedSystems(
        torch.cat(species_parts), torch.cat(pair_parts), torch.cat(vector_parts), torch.cat(owner_parts), sizes
    )


def exchange_ghosts(systems: List[System], features: Tensor, offsets: Optional[List[int]] = None) -> Tensor:
    """`System.exchange_ghosts` for the features of a batch (`batch_systems`' atom order, with its
    `offsets`): each system's rows exchanged by its own system. Without ghosts (every engine but
    LAMMPS on several ranks, which always passes one system) it returns `features` as they are."""
    if len(systems) == 1:
        return systems[0].exchange_ghosts(features)
    any_ghosts = False
    for system in systems:
        any_ghosts = any_ghosts or system.has_ghosts()
    if not any_ghosts:
        return features
    if offsets is None:
        raise ValueError("exchange_ghosts over several systems with ghosts needs the batch's offsets")
    parts: List[Tensor] = []
    for index, system in enumerate(systems):
        parts.append(system.exchange_ghosts(features[offsets[index] : offsets[index + 1]]))
    return torch.cat(parts)
