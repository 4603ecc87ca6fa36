"""Two small models that read inputs besides positions: the reference models for the engines.

- `ChargeSpinModel`: E = sum_i [a_{t_i} Q^2 + b_{t_i} (S - 1)] + soft pair repulsion, with Q the
  total charge (e) and S the spin multiplicity. The charge and spin terms are per atom (as the
  charge-dependent reference energies of universal potentials are), so the energy splits among
  LAMMPS ranks like any other.
- `KineticModel`: the same pair repulsion as its energy, plus the output
  `atomplug::kinetic_energy` = 1/2 m v^2 per atom from the `masses` and `velocities` inputs, in
  amu*Angstrom^2/fs^2: every engine's own kinetic energy (ASE `get_kinetic_energy()`, LAMMPS
  `compute ke/atom`) checks both input conversions and the output one.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export

KINETIC_ENERGY = "atomplug::kinetic_energy"


def _pair_repulsion(system: System, options: NeighborListOptions, strength: float) -> Tensor:
    """Per-atom energy of eps (1 - r/rc)^2 over a half list, half of each pair to each atom."""
    neighbors = system.get_neighbor_list(options)
    reduced = 1.0 - neighbors.distances() / options.cutoff
    pair_energy = strength * reduced * reduced
    atomic = torch.zeros(len(system), dtype=system.positions.dtype, device=system.positions.device)
    atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair_energy)
    return atomic.index_add(0, neighbors.pairs[:, 1], 0.5 * pair_energy)


class ChargeSpinModel(torch.nn.Module):
    def __init__(self, types: Sequence[int], charge_terms: Sequence[float], spin_terms: Sequence[float]):
        super().__init__()
        self.cutoff = 4.0
        self.strength = 0.3
        table_size = max(types) + 1
        charge_table = torch.zeros(table_size, dtype=torch.float64)
        spin_table = torch.zeros(table_size, dtype=torch.float64)
        for index, atomic_type in enumerate(types):
            charge_table[atomic_type] = charge_terms[index]
            spin_table[atomic_type] = spin_terms[index]
        self.register_buffer("charge_table", charge_table)
        self.register_buffer("spin_table", spin_table)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        return {
            "total_charge": ModelOutput(quantity="charge", unit="e", per_atom=False),
            "spin_multiplicity": ModelOutput(quantity="", unit="", per_atom=False),
        }

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        per_atom = outputs["energy"].per_atom
        energies: List[Tensor] = []
        for system in systems:
            charge = system.get_input("total_charge").reshape(())
            spin = system.get_input("spin_multiplicity").reshape(())
            types = system.types.to(torch.int64)
            atomic = _pair_repulsion(system, options, self.strength)
            atomic = atomic + self.charge_table[types] * charge * charge + self.spin_table[types] * (spin - 1.0)
            energies.append(atomic if per_atom else atomic.sum().reshape(1))
        return {"energy": torch.cat(energies).reshape(-1, 1)}


class KineticModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cutoff = 4.0
        self.strength = 0.3

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        return {
            "masses": ModelOutput(quantity="mass", unit="amu", per_atom=True),
            "velocities": ModelOutput(quantity="velocity", unit="Angstrom/fs", per_atom=True),
        }

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        kinetic_name = "atomplug::kinetic_energy"  # KINETIC_ENERGY (TorchScript reads no globals)
        energies: List[Tensor] = []
        kinetic: List[Tensor] = []
        for system in systems:
            atomic = _pair_repulsion(system, options, self.strength)
            velocities = system.get_input("velocities")
            moving = 0.5 * system.get_input("masses").reshape(-1) * (velocities * velocities).sum(dim=1)
            if "energy" in outputs:
                energies.append(atomic if outputs["energy"].per_atom else atomic.sum().reshape(1))
            if kinetic_name in outputs:
                kinetic.append(moving if outputs[kinetic_name].per_atom else moving.sum().reshape(1))
        results: Dict[str, Tensor] = {}
        if "energy" in outputs:
            results["energy"] = torch.cat(energies).reshape(-1, 1)
        if kinetic_name in outputs:
            results[kinetic_name] = torch.cat(kinetic).reshape(-1, 1)
        return results


def export_charge_spin(
    path: str,
    types: Sequence[int] = (1, 6, 8),
    charge_terms: Sequence[float] = (0.5, 0.25, 0.125),
    spin_terms: Sequence[float] = (0.1, 0.2, 0.4),
) -> None:
    """Export ChargeSpinModel (eV, Angstrom): a_t = charge_terms (eV/e^2), b_t = spin_terms (eV)."""
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=list(types),
        interaction_range=4.0,
        supported_devices=["cpu", "cuda"],
    )
    metadata = ModelMetadata(
        name="charge-spin-toy",
        description="sum_i a_t Q^2 + b_t (S-1) + soft pair repulsion: tests total_charge and spin_multiplicity",
        authors=["atomplug developers"],
    )
    export(ChargeSpinModel(types, charge_terms, spin_terms), path, capabilities, metadata)


def export_kinetic(path: str, types: Sequence[int] = (1, 6, 8, 18)) -> None:
    """Export KineticModel (eV, Angstrom): soft repulsion energy, and 1/2 m v^2 per atom."""
    capabilities = ModelCapabilities(
        outputs={
            "energy": ModelOutput(quantity="energy", unit="eV", per_atom=True),
            KINETIC_ENERGY: ModelOutput(quantity="energy", unit="amu*Angstrom^2/fs^2", per_atom=True),
        },
        atomic_types=list(types),
        interaction_range=4.0,
        supported_devices=["cpu", "cuda"],
    )
    metadata = ModelMetadata(
        name="kinetic-toy",
        description="soft pair repulsion, and 1/2 m v^2 per atom from the masses and velocities inputs",
        authors=["atomplug developers"],
    )
    export(KineticModel(), path, capabilities, metadata)
