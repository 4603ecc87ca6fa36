"""A tiny model with output variants (energy and energy/alt, energy_uncertainty and its /alt) and
one output without variants (atomplug::n_pairs): the variant tests of every engine share it."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export

VARIANT_STRENGTHS = {"energy": 0.3, "energy/alt": 0.7, "energy_uncertainty": 0.01, "energy_uncertainty/alt": 0.02}


class VariantPairs(torch.nn.Module):
    """eps (1 - r/rc)^2 over a half list, eps by output (VARIANT_STRENGTHS); atomplug::n_pairs (no
    variant) counts the pairs."""

    def __init__(self):
        super().__init__()
        self.cutoff = 4.0

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        strengths = {"energy": 0.3, "energy/alt": 0.7, "energy_uncertainty": 0.01, "energy_uncertainty/alt": 0.02}
        results: Dict[str, Tensor] = {}
        for name, output in outputs.items():
            values: List[Tensor] = []
            for system in systems:
                neighbors = system.get_neighbor_list(options)
                if name == "atomplug::n_pairs":
                    values.append(torch.full((1,), float(neighbors.pairs.shape[0]), dtype=system.positions.dtype))
                    continue
                reduced = 1.0 - neighbors.distances() / self.cutoff
                pair = strengths[name] * reduced * reduced
                if output.per_atom:
                    atomic = torch.zeros(len(system), dtype=system.positions.dtype, device=system.positions.device)
                    atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair)
                    values.append(atomic.index_add(0, neighbors.pairs[:, 1], 0.5 * pair))
                else:
                    values.append(pair.sum().reshape(1))
            results[name] = torch.cat(values).reshape(-1, 1)
        return results


def export_variant_model(path: str, types=(1, 6, 8, 11, 17, 18)) -> None:
    """energy, energy/alt, energy_uncertainty, energy_uncertainty/alt and atomplug::n_pairs."""
    outputs = {name: ModelOutput(quantity="energy", unit="eV", per_atom=True) for name in VARIANT_STRENGTHS}
    outputs["atomplug::n_pairs"] = ModelOutput(quantity="", unit="", per_atom=False)
    capabilities = ModelCapabilities(
        outputs=outputs, atomic_types=list(types), interaction_range=4.0, supported_devices=["cpu", "cuda"]
    )
    export(VariantPairs(), path, capabilities, ModelMetadata(name="variant-pairs", description="two variants"))
