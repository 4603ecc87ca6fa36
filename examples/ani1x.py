"""The pretrained ANI-1x ensemble (8 networks, H C N O, wB97X/6-31G(d)) in the atomplug contract.

Unlike torchani, which builds its own neighbor pairs from positions and cell, the model here
computes the ANI atomic environment vectors (AEVs) from the engine's neighbor list: one half,
strict list with cutoff Rcr = 5.2 Angstrom, whose differentiable pair vectors carry every
geometric dependence. The same exported file therefore runs on isolated molecules, on periodic
cells smaller than twice the cutoff (a pair may appear with several shifts, an atom may be its own
neighbor through a shift) and under LAMMPS domain decomposition (ghost atoms, zero shifts): the
energy of an atom depends only on the list entries that contain it, so the energies of local atoms
are exact as long as every pair with a local atom is listed (ghost atoms' own energies are not,
and the entry point drops them through `selected_atoms`).

torchani (2.2.4) is needed only to read the weights when exporting; the archive needs only torch:

    python -m atomplug.examples.ani1x ani1x.pt

AEV (per atom, 384 numbers, the layout of torchani.AEVComputer with the ANI-1x constants):
  radial, 4 blocks (one per neighbor species, order H C N O) of 16:
      G_R[s] = sum over neighbors j of species s, r_ij <= Rcr,
               0.25 exp(-EtaR (r_ij - ShfR)^2) fc(r_ij, Rcr)
  angular, 10 blocks (one per unordered species pair, torch.triu_indices order) of 4 x 8
  (ShfA major, ShfZ minor):
      G_A[s1 s2] = sum over unordered pairs of neighbors j, k with r_ij, r_ik <= Rca,
               2 ((1 + cos(theta_ijk - ShfZ)) / 2)^Zeta exp(-EtaA ((r_ij + r_ik)/2 - ShfA)^2)
               fc(r_ij, Rca) fc(r_ik, Rca),   theta_ijk = acos(0.95 cos(angle jik))
  with fc(r, Rc) = 0.5 cos(pi r / Rc) + 0.5.
Atomic energy of member m: its network for the atom's species applied to the AEV, plus the
self-atomic energy of that species (Hartree).

References: J. S. Smith, B. Nebgen, N. Lubbers, O. Isayev, A. E. Roitberg, "Less is more:
sampling chemical space with active learning", J. Chem. Phys. 148, 241733 (2018); X. Gao,
F. Ramezanghorbani, O. Isayev, J. S. Smith, A. E. Roitberg, "TorchANI: a free and open source
PyTorch-based deep learning implementation of the ANI neural network potentials", J. Chem. Inf.
Model. 60, 3408 (2020).
"""

from __future__ import annotations

import argparse
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.core.graph import batch_systems

TORCHANI_REQUIREMENT = "export_ani1x needs torchani==2.2.4 (pip install 'torchani==2.2.4' 'setuptools<81')"

RESOURCE_DIRECTORY = "ani-1x_8x"
CONSTANTS_FILE = "rHCNO-5.2R_16-3.5A_a4-8.params"
SAE_FILE = "sae_linfit.dat"
ENSEMBLE_PREFIX = "train"
ENSEMBLE_SIZE = 8

REFERENCES = [
    "J. S. Smith, B. Nebgen, N. Lubbers, O. Isayev, A. E. Roitberg, Less is more: Sampling chemical "
    "space with active learning, J. Chem. Phys. 148, 241733 (2018), doi:10.1063/1.5023802",
    "X. Gao, F. Ramezanghorbani, O. Isayev, J. S. Smith, A. E. Roitberg, TorchANI: A Free and Open "
    "Source PyTorch-Based Deep Learning Implementation of the ANI Neural Network Potentials, "
    "J. Chem. Inf. Model. 60, 3408 (2020), doi:10.1021/acs.jcim.0c00451",
]


def _cosine_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    return 0.5 * torch.cos(distances * (math.pi / cutoff)) + 0.5


class NeighborListAEV(torch.nn.Module):
    """ANI atomic environment vectors from a half neighbor list (pairs and their vectors).

    forward(species [n] int64 in 0..num_species-1, pairs [P, 2] int64, vectors [P, 3]) -> [n, aev_length]

    Each entry of the half list is one (atom, atom image) pair; it contributes radial terms to
    both atoms and, used in both directions, angular terms around both atoms. Entries beyond
    Rcr (a non-strict list) are ignored.
    """

    def __init__(
        self,
        Rcr: float,
        Rca: float,
        EtaR: Tensor,
        ShfR: Tensor,
        EtaA: Tensor,
        Zeta: Tensor,
        ShfA: Tensor,
        ShfZ: Tensor,
        num_species: int,
    ):
        super().__init__()
        if not Rca <= Rcr:
            raise ValueError(f"the angular cutoff ({Rca}) must not exceed the radial cutoff ({Rcr})")
        self.Rcr = float(Rcr)
        self.Rca = float(Rca)
        self.num_species = int(num_species)
        # Broadcast-ready shapes: radial (pair, EtaR, ShfR), angular (triple, EtaA, Zeta, ShfA, ShfZ).
        self.register_buffer("EtaR", EtaR.detach().clone().reshape(-1, 1))
        self.register_buffer("ShfR", ShfR.detach().clone().reshape(1, -1))
        self.register_buffer("EtaA", EtaA.detach().clone().reshape(-1, 1, 1, 1))
        self.register_buffer("Zeta", Zeta.detach().clone().reshape(1, -1, 1, 1))
        self.register_buffer("ShfA", ShfA.detach().clone().reshape(1, 1, -1, 1))
        self.register_buffer("ShfZ", ShfZ.detach().clone().reshape(1, 1, 1, -1))
        self.radial_sublength = int(EtaR.numel() * ShfR.numel())
        self.angular_sublength = int(EtaA.numel() * Zeta.numel() * ShfA.numel() * ShfZ.numel())
        self.num_species_pairs = self.num_species * (self.num_species + 1) // 2
        self.aev_length = self.num_species * self.radial_sublength + self.num_species_pairs * self.angular_sublength
        # Index of the unordered species pair (a, b), a <= b, counted row by row; symmetric.
        pair_index = torch.zeros((self.num_species, self.num_species), dtype=torch.long)
        count = 0
        for a in range(self.num_species):
            for b in range(a, self.num_species):
                pair_index[a, b] = count
                pair_index[b, a] = count
                count += 1
        self.register_buffer("species_pair_index", pair_index)

    def forward(self, species: Tensor, pairs: Tensor, vectors: Tensor) -> Tensor:
        n_atoms = species.shape[0]
        distances = torch.linalg.vector_norm(vectors, dim=1)
        inside = torch.nonzero(distances <= self.Rcr).flatten()
        first = pairs[:, 0].index_select(0, inside)
        second = pairs[:, 1].index_select(0, inside)
        vectors = vectors.index_select(0, inside)
        distances = distances.index_select(0, inside)
        radial = self._radial(species, first, second, distances, n_atoms)
        angular = self._angular(species, first, second, vectors, distances, n_atoms)
        return torch.cat([radial, angular], dim=1)

    def _radial(self, species: Tensor, first: Tensor, second: Tensor, distances: Tensor, n_atoms: int) -> Tensor:
        d = distances.reshape(-1, 1, 1)
        terms = 0.25 * torch.exp(-self.EtaR * (d - self.ShfR) ** 2) * _cosine_cutoff(d, self.Rcr)
        terms = terms.flatten(1)
        result = torch.zeros(
            (n_atoms * self.num_species, self.radial_sublength), dtype=distances.dtype, device=distances.device
        )
        # Row (atom, species of the other atom); each half-list entry feeds both of its atoms.
        result = result.index_add(0, first * self.num_species + species.index_select(0, second), terms)
        result = result.index_add(0, second * self.num_species + species.index_select(0, first), terms)
        return result.reshape(n_atoms, self.num_species * self.radial_sublength)

    def _angular(
        self, species: Tensor, first: Tensor, second: Tensor, vectors: Tensor, distances: Tensor, n_atoms: int
    ) -> Tensor:
        # Both directions of every entry within Rca: (center, neighbor, vector center -> neighbor).
        close = torch.nonzero(distances <= self.Rca).flatten()
        centers = torch.cat([first.index_select(0, close), second.index_select(0, close)])
        neighbors = torch.cat([second.index_select(0, close), first.index_select(0, close)])
        close_vectors = vectors.index_select(0, close)
        directed = torch.cat([close_vectors, -close_vectors])
        close_distances = distances.index_select(0, close)
        lengths = torch.cat([close_distances, close_distances])

        # Group the directed entries by center and enumerate each group's unordered pairs.
        sorted_centers, order = torch.sort(centers, stable=True)
        counts = torch.bincount(centers, minlength=n_atoms)
        starts = torch.cumsum(counts, 0) - counts
        n_entries = sorted_centers.shape[0]
        entry = torch.arange(n_entries, device=centers.device)
        rank = entry - starts.index_select(0, sorted_centers)
        partners = counts.index_select(0, sorted_centers) - 1 - rank
        left = torch.repeat_interleave(entry, partners)
        partner_starts = torch.cumsum(partners, 0) - partners
        within = torch.arange(left.shape[0], device=centers.device) - partner_starts.index_select(0, left)
        right = left + 1 + within
        a = order.index_select(0, left)
        b = order.index_select(0, right)

        vector_a = directed.index_select(0, a)
        vector_b = directed.index_select(0, b)
        length_a = lengths.index_select(0, a)
        length_b = lengths.index_select(0, b)
        cosines = (vector_a * vector_b).sum(dim=1) / torch.clamp(length_a * length_b, min=1e-10)
        # The 0.95 keeps acos (and its derivative) away from +-1, as in NeuroChem and torchani.
        angles = torch.acos(0.95 * cosines).reshape(-1, 1, 1, 1, 1)
        mean_lengths = (0.5 * (length_a + length_b)).reshape(-1, 1, 1, 1, 1)
        cutoffs = (_cosine_cutoff(length_a, self.Rca) * _cosine_cutoff(length_b, self.Rca)).reshape(-1, 1, 1, 1, 1)
        angle_part = ((1.0 + torch.cos(angles - self.ShfZ)) * 0.5) ** self.Zeta
        distance_part = torch.exp(-self.EtaA * (mean_lengths - self.ShfA) ** 2)
        terms = (2.0 * angle_part * distance_part * cutoffs).flatten(1)

        species_a = species.index_select(0, neighbors.index_select(0, a))
        species_b = species.index_select(0, neighbors.index_select(0, b))
        rows = centers.index_select(0, a) * self.num_species_pairs + self.species_pair_index[species_a, species_b]
        result = torch.zeros(
            (n_atoms * self.num_species_pairs, self.angular_sublength), dtype=vectors.dtype, device=vectors.device
        )
        result = result.index_add(0, rows, terms)
        return result.reshape(n_atoms, self.num_species_pairs * self.angular_sublength)


class ANIEnsemble(torch.nn.Module):
    """AEVs from the engine's neighbor list -> per-species networks of every member -> energies.

    Outputs (Hartree):
      energy              ensemble mean of the atomic energies (self-atomic energies included),
                          per atom [n_atoms, 1] or per structure [n_systems, 1];
      energy_ensemble     per-structure energy of every member, self energies included [n_systems, M];
      energy_uncertainty  standard deviation of the member energies of each structure, with
                          Bessel's correction (unbiased, divides by M - 1) [n_systems, 1].
    With `selected_atoms` (e.g. LAMMPS' local atoms among ghosts), the networks run for those
    atoms only and per-atom rows come back for them only, in increasing index order; AEVs still
    see every atom as a neighbor.
    """

    def __init__(
        self,
        aev: NeighborListAEV,
        members: List[List[torch.nn.Module]],
        self_energies: Sequence[float],
        atomic_numbers: Sequence[int],
    ):
        super().__init__()
        if len(atomic_numbers) != aev.num_species or len(self_energies) != aev.num_species:
            raise ValueError("need one atomic number and one self energy per AEV species")
        for member in members:
            if len(member) != aev.num_species:
                raise ValueError("every ensemble member needs one network per species")
        self.aev = aev
        self.members = torch.nn.ModuleList([torch.nn.ModuleList(list(member)) for member in members])
        self.n_members = len(members)
        self.cutoff = float(aev.Rcr)
        self.register_buffer("self_energies", torch.tensor(list(self_energies), dtype=torch.float64))
        table = torch.full((max(atomic_numbers) + 1,), -1, dtype=torch.long)
        for index, number in enumerate(atomic_numbers):
            table[int(number)] = index
        self.register_buffer("species_of_number", table)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def member_atomic_energies(
        self, systems: List[System], selected_atoms: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """([n_members, n_atoms] atomic energies incl. self energies, [n_atoms] system index),
        for the selected atoms only when `selected_atoms` (sorted global indices) is given."""
        species, pairs, vectors, owners, _ = batch_systems(
            systems,
            NeighborListOptions(self.cutoff, False, True),
            self.species_of_number,
            "ANI-1x knows only H, C, N and O (atomic numbers 1, 6, 7, 8)",
        )
        aevs = self.aev(species, pairs, vectors)
        if selected_atoms is not None:
            # the networks, the expensive part, run only for the atoms whose energies count
            species = species.index_select(0, selected_atoms)
            aevs = aevs.index_select(0, selected_atoms)
            owners = owners.index_select(0, selected_atoms)

        atoms_of_species: List[Tensor] = []
        aevs_of_species: List[Tensor] = []
        for s in range(self.aev.num_species):
            atoms = torch.nonzero(species == s).flatten()
            atoms_of_species.append(atoms)
            aevs_of_species.append(aevs.index_select(0, atoms))
        per_member: List[Tensor] = []
        for member in self.members:
            energies = self.self_energies.index_select(0, species).to(aevs.dtype)
            for s, network in enumerate(member):
                atoms = atoms_of_species[s]
                if atoms.shape[0] > 0:
                    energies = energies.index_add(0, atoms, network(aevs_of_species[s]).flatten())
            per_member.append(energies)
        return torch.stack(per_member), owners

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        member_energies, owners = self.member_atomic_energies(systems, selected_atoms)
        n_systems = len(systems)
        results: Dict[str, Tensor] = {}
        structure_members = torch.zeros(
            (n_systems, self.n_members), dtype=member_energies.dtype, device=member_energies.device
        )
        structure_members = structure_members.index_add(0, owners, member_energies.t())
        if "energy" in outputs:
            atomic = member_energies.mean(dim=0).reshape(-1, 1)
            if outputs["energy"].per_atom:
                results["energy"] = atomic
            else:
                total = torch.zeros((n_systems, 1), dtype=atomic.dtype, device=atomic.device)
                results["energy"] = total.index_add(0, owners, atomic)
        if "energy_ensemble" in outputs:
            results["energy_ensemble"] = structure_members
        if "energy_uncertainty" in outputs:
            results["energy_uncertainty"] = torch.std(structure_members, dim=[1], unbiased=True, keepdim=True)
        return results


# ---- building from torchani's resource files (export time only) ------------------------------


def _import_torchani():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchani  # noqa: F401
            import torchani.neurochem  # noqa: F401
    except ImportError as error:
        raise ImportError(TORCHANI_REQUIREMENT) from error
    return torchani


def _resources() -> Tuple[object, str]:
    """(torchani module, directory of the ANI-1x resource files shipped in its wheel)."""
    torchani = _import_torchani()
    directory = os.path.join(os.path.dirname(os.path.abspath(torchani.__file__)), "resources", RESOURCE_DIRECTORY)
    needed = [CONSTANTS_FILE, SAE_FILE] + [
        os.path.join(f"{ENSEMBLE_PREFIX}{i}", "networks") for i in range(ENSEMBLE_SIZE)
    ]
    missing = [name for name in needed if not os.path.exists(os.path.join(directory, name))]
    if missing:
        raise FileNotFoundError(
            f"the ANI-1x resource files are missing from {directory} ({', '.join(missing)}): "
            "reinstall torchani==2.2.4, whose wheel ships them"
        )
    return torchani, directory


def _load_parts():
    """(torchani, constants, EnergyShifter, {symbol: self energy}, Ensemble), all from local files."""
    torchani, directory = _resources()
    from torchani import neurochem

    constants = neurochem.Constants(os.path.join(directory, CONSTANTS_FILE))
    shifter, sae_by_symbol = neurochem.load_sae(os.path.join(directory, SAE_FILE), return_dict=True)
    ensemble = neurochem.load_model_ensemble(constants.species, os.path.join(directory, ENSEMBLE_PREFIX), ENSEMBLE_SIZE)
    return torchani, constants, shifter, sae_by_symbol, ensemble


def _atomic_number(symbol: str) -> int:
    from torchani.utils import PERIODIC_TABLE

    return PERIODIC_TABLE.index(symbol)


def build_ani1x() -> ANIEnsemble:
    """The float64 atomplug ANI-1x module (needs torchani for the weights)."""
    _torchani, constants, _shifter, sae_by_symbol, ensemble = _load_parts()
    aev = NeighborListAEV(
        constants.Rcr,
        constants.Rca,
        constants.EtaR,
        constants.ShfR,
        constants.EtaA,
        constants.Zeta,
        constants.ShfA,
        constants.ShfZ,
        constants.num_species,
    )
    # Each member is an ANIModel (a ModuleDict keyed by symbol) of plain Linear/CELU Sequentials.
    members = [[member[symbol] for symbol in constants.species] for member in ensemble]
    module = ANIEnsemble(
        aev,
        members,
        [sae_by_symbol[symbol] for symbol in constants.species],
        [_atomic_number(symbol) for symbol in constants.species],
    )
    return module.to(torch.float64).eval()


def torchani_reference():
    """torchani's own float64 ANI-1x ensemble from the same resource files (atomic numbers in).

    Call as model((numbers [1, n], positions [1, n, 3]), cell=..., pbc=...).energies (Hartree);
    also has members_energies(), energies_qbcs() and atomic_energies().
    """
    torchani, constants, shifter, sae_by_symbol, ensemble = _load_parts()
    from torchani.models import BuiltinEnsemble

    model = BuiltinEnsemble(
        torchani.nn.SpeciesConverter(constants.species),
        torchani.AEVComputer(**constants),
        ensemble,
        shifter,
        constants.species_to_tensor,
        constants,
        sae_by_symbol,
        True,
    )
    return model.to(torch.float64).eval()


def ani1x_capabilities(cutoff: float = 5.2) -> ModelCapabilities:
    members = [f"member_{i}" for i in range(ENSEMBLE_SIZE)]
    return ModelCapabilities(
        outputs={
            "energy": ModelOutput(quantity="energy", unit="Hartree", per_atom=True),
            "energy_ensemble": ModelOutput(quantity="energy", unit="Hartree", per_atom=False, properties=members),
            "energy_uncertainty": ModelOutput(quantity="energy", unit="Hartree", per_atom=False),
        },
        atomic_types=[1, 6, 7, 8],
        interaction_range=cutoff,
        length_unit="Angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )


def export_ani1x(path: str) -> None:
    """Export the ANI-1x ensemble (float64, Hartree and Angstrom) to `path`."""
    module = build_ani1x()
    metadata = ModelMetadata(
        name="ANI-1x",
        description="ANI-1x ensemble of 8 neural network potentials for H, C, N, O trained to "
        "wB97X/6-31G(d) (weights from torchani 2.2.4), AEVs computed from the engine's "
        "neighbor list; energy is the ensemble mean, energy_uncertainty the unbiased standard "
        "deviation of the member energies",
        authors=[
            "Justin S. Smith",
            "Ben Nebgen",
            "Nicholas Lubbers",
            "Olexandr Isayev",
            "Adrian E. Roitberg",
            "Xiang Gao",
            "Farhad Ramezanghorbani",
        ],
        references=list(REFERENCES),
    )
    export(module, path, ani1x_capabilities(module.cutoff), metadata)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Export the pretrained ANI-1x ensemble as an atomplug model.")
    parser.add_argument("path")
    args = parser.parse_args(argv)
    try:
        export_ani1x(args.path)
    except ImportError as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
