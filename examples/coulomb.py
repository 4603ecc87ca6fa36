"""Plain cut Coulomb from per-atom charges: the reference model for the `charges` input.

E = k_e sum_{i<j, r_ij < r_c} q_i q_j / r_ij, the definition of LAMMPS `pair_style coul/cut`
(no shift, no screening), so every engine can be checked against native physics: LAMMPS
`coul/cut` with `atom_style charge`, and a numpy double sum elsewhere.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export

# 1 / (4 pi epsilon_0) in eV Angstrom / e^2 as LAMMPS `units metal` has it (force.cpp qqr2e): tests
# against coul/cut export with this value; CODATA gives 14.3996454784...
LAMMPS_METAL_COULOMB_CONSTANT = 14.399645


class CutCoulomb(torch.nn.Module):
    """E = k_e sum_{i<j, r<rc} q_i q_j / r over a half list; per-atom energies get half of each pair."""

    def __init__(self, cutoff: float, coulomb_constant: float):
        super().__init__()
        self.cutoff = float(cutoff)
        self.coulomb_constant = float(coulomb_constant)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def requested_inputs(self) -> Dict[str, ModelOutput]:
        return {"charges": ModelOutput(quantity="charge", unit="e", per_atom=True)}

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, False, True)
        per_atom = "energy" in outputs and outputs["energy"].per_atom
        energies: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            charges = system.get_input("charges").reshape(-1)
            first = neighbors.pairs[:, 0]
            second = neighbors.pairs[:, 1]
            pair_energy = self.coulomb_constant * charges[first] * charges[second] / neighbors.distances()
            if per_atom:
                atomic = torch.zeros(
                    system.positions.shape[0], dtype=system.positions.dtype, device=system.positions.device
                )
                atomic = atomic.index_add(0, first, 0.5 * pair_energy)
                energies.append(atomic.index_add(0, second, 0.5 * pair_energy))
            else:
                energies.append(pair_energy.sum().reshape(1))
        return {"energy": torch.cat(energies).reshape(-1, 1)}


def export_coulomb(
    path: str,
    cutoff: float = 6.0,
    types: Sequence[int] = (1, 8, 11, 17),
    coulomb_constant: float = LAMMPS_METAL_COULOMB_CONSTANT,
) -> None:
    """Export the cut Coulomb model (eV, Angstrom, charges in e) for the atom types `types`."""
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=list(types),
        interaction_range=cutoff,
        length_unit="Angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )
    metadata = ModelMetadata(
        name="cut-coulomb",
        description=f"plain Coulomb q_i q_j / r cut at {cutoff} Angstrom (LAMMPS coul/cut), k_e = {coulomb_constant}",
        authors=["atomplug developers"],
    )
    export(CutCoulomb(cutoff, coulomb_constant), path, capabilities, metadata)


def coulomb_reference(positions, charges, cell, pbc, cutoff: float, coulomb_constant: float):
    """(energy, forces) by a brute-force numpy sum over every periodic image within the cutoff,
    independent of any neighbor list: the oracle for engines that have no native coul/cut."""
    import itertools

    import numpy as np

    positions = np.asarray(positions, dtype=np.float64)
    charges = np.asarray(charges, dtype=np.float64).reshape(-1)
    cell = np.asarray(cell, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    reach = [0, 0, 0]
    if pbc.any():
        inverse = np.linalg.inv(cell)
        for axis in range(3):
            if pbc[axis]:  # images needed: cutoff over the distance between opposite faces
                reach[axis] = int(np.ceil(cutoff * np.linalg.norm(inverse[:, axis]))) + 1
    energy = 0.0
    forces = np.zeros_like(positions)
    for shift in itertools.product(*[range(-n, n + 1) for n in reach]):
        offset = np.asarray(shift, dtype=np.float64) @ cell
        vectors = positions[None, :, :] + offset - positions[:, None, :]  # r_j + shift - r_i
        distances = np.linalg.norm(vectors, axis=2)
        inside = (distances < cutoff) & (distances > 0.0)
        safe = np.where(inside, distances, 1.0)
        pair = np.where(inside, coulomb_constant * charges[:, None] * charges[None, :] / safe, 0.0)
        energy += 0.5 * pair.sum()  # each pair seen from both sides
        # force on i: -dE/dr_i = -sum_j pair / r^2 * (r_j - r_i) / r
        forces -= np.einsum("ij,ijk->ik", pair / safe**2, vectors)
    return float(energy), forces


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--cutoff", type=float, default=6.0)
    parser.add_argument("--types", type=int, nargs="+", default=[1, 8, 11, 17])
    args = parser.parse_args(argv)
    export_coulomb(args.path, args.cutoff, args.types)


if __name__ == "__main__":
    main()
