"""Fixtures for the LAMMPS tests: the plugin built for this environment, and extra test models."""

from __future__ import annotations

from typing import Dict, List, Optional

import pytest
import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export


@pytest.fixture(scope="session")
def plugin() -> str:
    """Build (or find up to date) the plugin for the installed torch and lammps; its path."""
    from atomplug.lammps_plugin.build import BuildError, build

    try:
        return build(verbose=False)
    except BuildError as error:
        pytest.fail(f"the LAMMPS plugin cannot be built here: {error}")


class FullListLennardJones(torch.nn.Module):
    """The same shifted LJ, but from a FULL neighbor list: each pair appears as (i, j) and (j, i),
    and atom i's energy is half the energy of the pairs (i, j). Exercises the full-list path."""

    def __init__(self, epsilon: float, sigma: float, cutoff: float):
        super().__init__()
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.cutoff = float(cutoff)
        ratio6 = (self.sigma / self.cutoff) ** 6
        self.shift = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, True, True)]

    def forward(self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, True, True)
        per_atom = outputs["energy"].per_atom
        energies: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            squared = (neighbors.vectors * neighbors.vectors).sum(dim=1)
            ratio6 = (self.sigma * self.sigma / squared) ** 3
            pair_energy = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6) - self.shift
            atomic = torch.zeros(len(system), dtype=system.positions.dtype)
            atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair_energy)
            energies.append(atomic if per_atom else atomic.sum().reshape(1))
        return {"energy": torch.cat(energies).reshape(-1, 1)}


def export_full_list_lj(path: str, epsilon: float, sigma: float, cutoff: float) -> None:
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[18],
        interaction_range=cutoff,
        length_unit="Angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    export(FullListLennardJones(epsilon, sigma, cutoff), path, capabilities, ModelMetadata(name="lj-full-list"))


@pytest.fixture(scope="session")
def full_list_lj_path(tmp_path_factory) -> str:
    from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA

    path = tmp_path_factory.mktemp("models") / "lj-full.pt"
    export_full_list_lj(str(path), AR_EPSILON, AR_SIGMA, AR_CUTOFF)
    return str(path)
