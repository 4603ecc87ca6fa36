"""The Lennard-Jones model of `atomplug.examples.lj`, written in metatomic's model contract.

Benchmarks compare atomplug against metatomic on identical physics: E = sum over pairs r < rc
of 4 eps ((sigma/r)^12 - (sigma/r)^6) - E(rc), float64, from a strict half neighbor list that
the engine builds on the model's request. Energies come back as metatensor `TensorMap`s; forces
and stress are left to the engine's autograd (metatomic's convention), as in atomplug.

Needs `metatomic-torch` (0.1.19 is what the benchmarks pin); importing this module without it
raises an ImportError that says how to install it.

    export_metatomic_lj(path, epsilon=0.0104, sigma=3.40, cutoff=8.5, types=(18,))
"""

# No `from __future__ import annotations`: metatomic checks forward()'s annotations as types.
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

try:
    from metatensor.torch import Labels, TensorBlock, TensorMap
    from metatomic.torch import (
        AtomisticModel,
        ModelCapabilities,
        ModelMetadata,
        ModelOutput,
        NeighborListOptions,
        System,
    )
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "benchmarks/metatomic_lj.py needs metatomic: pip install metatomic-torch==0.1.19 metatomic-ase==0.1.4"
    ) from error


class MetatomicLennardJones(torch.nn.Module):
    """Shifted LJ for one set of species; `energy` per system or per atom (each pair's energy
    split half and half between its two atoms), honouring `selected_atoms`."""

    def __init__(self, epsilon: float, sigma: float, cutoff: float):
        super().__init__()
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.cutoff = float(cutoff)
        ratio6 = (self.sigma / self.cutoff) ** 6
        self.shift = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6)
        self._options = NeighborListOptions(cutoff=self.cutoff, full_list=False, strict=True)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [self._options]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Labels] = None,
    ) -> Dict[str, TensorMap]:
        if "energy" not in outputs:
            return {}
        per_atom = outputs["energy"].sample_kind == "atom"
        device = systems[0].positions.device
        dtype = systems[0].positions.dtype

        per_system: List[Tensor] = []
        atomic_values: List[Tensor] = []
        atomic_samples: List[Tensor] = []
        for index, system in enumerate(systems):
            neighbors = system.get_neighbor_list(self._options)
            vectors = neighbors.values.reshape(-1, 3)
            squared = (vectors * vectors).sum(dim=1)
            ratio6 = (self.sigma * self.sigma / squared) ** 3
            pair_energy = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6) - self.shift

            if not per_atom and selected_atoms is None:
                per_system.append(pair_energy.sum().reshape(1))
                continue

            first = neighbors.samples.column("first_atom").to(torch.int64)
            second = neighbors.samples.column("second_atom").to(torch.int64)
            atomic = torch.zeros(len(system), dtype=dtype, device=device)
            atomic = atomic.index_add(0, first, 0.5 * pair_energy)
            atomic = atomic.index_add(0, second, 0.5 * pair_energy)
            atoms = torch.arange(len(system), device=device)
            if selected_atoms is not None:
                mine = selected_atoms.values[:, 0] == index
                atoms = selected_atoms.values[mine][:, 1].to(torch.int64)
                atomic = atomic.index_select(0, atoms)
            if per_atom:
                atomic_values.append(atomic)
                atomic_samples.append(torch.stack([torch.full_like(atoms, index), atoms], dim=1).to(torch.int32))
            else:
                per_system.append(atomic.sum().reshape(1))

        properties = Labels(["energy"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        if per_atom:
            values = torch.cat(atomic_values).reshape(-1, 1)
            samples = Labels(["system", "atom"], torch.cat(atomic_samples), assume_unique=True)
        else:
            values = torch.cat(per_system).reshape(-1, 1)
            samples = Labels(
                ["system"],
                torch.arange(len(systems), dtype=torch.int32, device=device).reshape(-1, 1),
                assume_unique=True,
            )
        block = TensorBlock(
            values=values,
            samples=samples,
            components=torch.jit.annotate(List[Labels], []),
            properties=properties,
        )
        keys = Labels(["_"], torch.zeros((1, 1), dtype=torch.int32, device=device))
        return {"energy": TensorMap(keys, [block])}


def metatomic_lj_model(
    epsilon: float = 0.0104,
    sigma: float = 3.40,
    cutoff: float = 8.5,
    types: Sequence[int] = (18,),
) -> AtomisticModel:
    """The wrapped (not yet saved) metatomic model, eV and Angstrom, float64, CPU."""
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(unit="eV", sample_kind="atom")},
        atomic_types=[int(t) for t in types],
        interaction_range=float(cutoff),
        length_unit="angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    metadata = ModelMetadata(
        name="lennard-jones (metatomic)",
        description=f"Lennard-Jones, epsilon={epsilon} eV, sigma={sigma} A, cutoff={cutoff} A, "
        "shifted to zero at the cutoff; same physics as atomplug.examples.lj",
        authors=["atomplug developers"],
        references={"model": ["J. E. Jones, Proc. R. Soc. Lond. A 106, 463 (1924)"]},
    )
    module = MetatomicLennardJones(epsilon, sigma, cutoff).eval()
    return AtomisticModel(module, metadata, capabilities)


def export_metatomic_lj(
    path: str,
    epsilon: float = 0.0104,
    sigma: float = 3.40,
    cutoff: float = 8.5,
    types: Sequence[int] = (18,),
) -> None:
    """Save the metatomic LJ model to `path` (load it with `metatomic_ase.MetatomicCalculator`
    or `metatomic.torch.load_atomistic_model`)."""
    metatomic_lj_model(epsilon, sigma, cutoff, types).save(str(path))
