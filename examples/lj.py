"""A float64 Lennard-Jones model in the atomplug contract, shifted to zero at the cutoff.

The reference physics for every engine test: LAMMPS `lj/cut` with `pair_modify shift yes`,
ASE's `LennardJones(smooth=False)` and a plain numpy implementation all compute the same thing.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export


class LennardJones(torch.nn.Module):
    """E = sum over pairs r < rc of 4 eps ((sigma/r)^12 - (sigma/r)^6) - E(rc), one species set.

    Also offers closed-form pair forces and stress as the `non_conservative_forces` and
    `non_conservative_stress` outputs: for LJ they equal the autograd ones, which makes the
    direct-force path of every engine testable against the conservative one.
    """

    def __init__(self, epsilon: float, sigma: float, cutoff: float, full_list: bool = False):
        super().__init__()
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)
        self.cutoff = float(cutoff)
        # A full list holds each pair twice, (i, j) and (j, i): every pair term then weighs 1/2.
        self.full_list = bool(full_list)
        self.pair_weight = 0.5 if full_list else 1.0
        ratio6 = (self.sigma / self.cutoff) ** 6
        self.shift = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, self.full_list, True)]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.cutoff, self.full_list, True)
        per_atom = "energy" in outputs and outputs["energy"].per_atom
        energies: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            squared = (neighbors.vectors * neighbors.vectors).sum(dim=1)
            ratio6 = (self.sigma * self.sigma / squared) ** 3
            pair_energy = 4.0 * self.epsilon * (ratio6 * ratio6 - ratio6) - self.shift
            if per_atom:
                atomic = torch.zeros(
                    system.positions.shape[0], dtype=system.positions.dtype, device=system.positions.device
                )
                # atom i gets half of each of its pair energies (from (i, j), and (j, i) if listed)
                atomic = atomic.index_add(0, neighbors.pairs[:, 0], 0.5 * pair_energy)
                if not self.full_list:
                    atomic = atomic.index_add(0, neighbors.pairs[:, 1], 0.5 * pair_energy)
                energies.append(atomic)
            else:
                energies.append((self.pair_weight * pair_energy).sum().reshape(1))
        results: Dict[str, Tensor] = {}
        if "energy" in outputs:
            results["energy"] = torch.cat(energies).reshape(-1, 1)
        if "non_conservative_forces" in outputs or "non_conservative_stress" in outputs:
            forces, stresses = self._pair_forces_and_stress(systems, options)
            results["non_conservative_forces"] = forces
            results["non_conservative_stress"] = stresses
        return results

    def _pair_forces_and_stress(self, systems: List[System], options: NeighborListOptions):
        """f_j = -phi'(r) r_ij / r on j (and the opposite on i); stress = sum phi'(r) r_ij r_ij / (r V)."""
        forces: List[Tensor] = []
        stresses: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            vectors = neighbors.vectors.detach()
            squared = (vectors * vectors).sum(dim=1)
            ratio6 = (self.sigma * self.sigma / squared) ** 3
            # phi'(r) / r
            derivative = self.pair_weight * 4.0 * self.epsilon * (-12.0 * ratio6 * ratio6 + 6.0 * ratio6) / squared
            pair_force = -derivative.unsqueeze(1) * vectors
            atomic = torch.zeros_like(system.positions)
            atomic = atomic.index_add(0, neighbors.pairs[:, 1], pair_force)
            atomic = atomic.index_add(0, neighbors.pairs[:, 0], -pair_force)
            forces.append(atomic)
            volume = torch.abs(torch.linalg.det(system.cell))
            if bool(volume > 0.0):
                stress = (derivative.unsqueeze(1) * vectors).T @ vectors / volume
            else:
                stress = torch.full((3, 3), float("nan"), dtype=vectors.dtype, device=vectors.device)
            stresses.append(stress.reshape(1, 9))
        return torch.cat(forces), torch.cat(stresses)


def export_lj(
    path: str,
    epsilon: float = 0.0104,
    sigma: float = 3.40,
    cutoff: float = 8.5,
    types: Sequence[int] = (18,),
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    full_list: bool = False,
) -> None:
    """Export a Lennard-Jones model (defaults: argon, eV and Angstrom) to `path`; `full_list`
    asks engines for a full neighbor list instead of a half one (same physics)."""
    force_unit = f"{energy_unit}/{length_unit}"
    capabilities = ModelCapabilities(
        outputs={
            "energy": ModelOutput(quantity="energy", unit=energy_unit, per_atom=True),
            "non_conservative_forces": ModelOutput(
                quantity="force", unit=force_unit, per_atom=True, properties=["x", "y", "z"]
            ),
            "non_conservative_stress": ModelOutput(
                quantity="pressure",
                unit=f"{energy_unit}/{length_unit}^3",
                per_atom=False,
                properties=["xx", "xy", "xz", "yx", "yy", "yz", "zx", "zy", "zz"],
            ),
        },
        atomic_types=list(types),
        interaction_range=cutoff,
        length_unit=length_unit,
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )
    metadata = ModelMetadata(
        name="lennard-jones",
        description=f"Lennard-Jones, epsilon={epsilon} {energy_unit}, sigma={sigma} {length_unit}, "
        f"cutoff={cutoff} {length_unit}, shifted to zero at the cutoff",
        authors=["atomplug developers"],
        references=["J. E. Jones, Proc. R. Soc. Lond. A 106, 463 (1924)"],
    )
    export(LennardJones(epsilon, sigma, cutoff, full_list), path, capabilities, metadata)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--epsilon", type=float, default=0.0104)
    parser.add_argument("--sigma", type=float, default=3.40)
    parser.add_argument("--cutoff", type=float, default=8.5)
    parser.add_argument("--types", type=int, nargs="+", default=[18])
    args = parser.parse_args(argv)
    export_lj(args.path, args.epsilon, args.sigma, args.cutoff, args.types)


if __name__ == "__main__":
    main()
