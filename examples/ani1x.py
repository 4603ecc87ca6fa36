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

ANI-1ccx (CCSD(T)*/CBS by transfer learning from ANI-1x; same AEV constants, species order and
network shapes) can ride in the same file as the variant "ccsdt": outputs energy/ccsdt,
energy_ensemble/ccsdt and energy_uncertainty/ccsdt, its 8 networks on the AEVs computed once for
both (only the ensembles whose outputs are asked for run). Its weights are NOT in the torchani
2.2.4 wheel (empty placeholder files; torchani.models.ANI1ccx() downloads them at first use) and
atomplug never downloads, so give the directory of its NeuroChem files:

    python -m atomplug.examples.ani1x ani1x.pt --ccsdt ~/.local/torchani/ani-1ccx_8x   # or --ccsdt auto

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
from atomplug.core.program import capturing

TORCHANI_REQUIREMENT = "export_ani1x needs torchani==2.2.4 (pip install 'torchani==2.2.4' 'setuptools<81')"

RESOURCE_DIRECTORY = "ani-1x_8x"
CONSTANTS_FILE = "rHCNO-5.2R_16-3.5A_a4-8.params"
SAE_FILE = "sae_linfit.dat"
ENSEMBLE_PREFIX = "train"
ENSEMBLE_SIZE = 8
# ANI-1ccx (CCSD(T)*/CBS), the variant "ccsdt": same file layout and AEV constants as ANI-1x. The
# torchani 2.2.4 wheel ships its files empty; torchani.models.ANI1ccx() downloads them at first use.
ANI1CCX_RESOURCE_DIRECTORY = "ani-1ccx_8x"
CCSDT_VARIANT = "ccsdt"
ANI1CCX_HINT = (
    "torchani 2.2.4's wheel ships only empty placeholders for ANI-1ccx (torchani.models.ANI1ccx() "
    "downloads the files from github.com/aiqm/ani-model-zoo into torchani/resources or "
    "~/.local/torchani at first use); atomplug never downloads: give the directory of a complete "
    f"{ANI1CCX_RESOURCE_DIRECTORY} copy ({CONSTANTS_FILE}, {SAE_FILE}, {ENSEMBLE_PREFIX}0..{ENSEMBLE_PREFIX}7/networks)"
)
ANI1CCX_REFERENCE = (
    "J. S. Smith, B. T. Nebgen, R. Zubatyuk, N. Lubbers, C. Devereux, K. Barros, S. Tretiak, O. Isayev, "
    "A. E. Roitberg, Approaching coupled cluster accuracy with a general-purpose neural network potential "
    "through transfer learning, Nat. Commun. 10, 2903 (2019), doi:10.1038/s41467-019-10827-4"
)

REFERENCES = [
    "J. S. Smith, B. Nebgen, N. Lubbers, O. Isayev, A. E. Roitberg, Less is more: Sampling chemical "
    "space with active learning, J. Chem. Phys. 148, 241733 (2018), doi:10.1063/1.5023802",
    "X. Gao, F. Ramezanghorbani, O. Isayev, J. S. Smith, A. E. Roitberg, TorchANI: A Free and Open "
    "Source PyTorch-Based Deep Learning Implementation of the ANI Neural Network Potentials, "
    "J. Chem. Inf. Model. 60, 3408 (2020), doi:10.1021/acs.jcim.0c00451",
]


def _cosine_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    return 0.5 * torch.cos(distances * (math.pi / cutoff)) + 0.5


def _sum_by_system(values: Tensor, owners: Tensor, n_systems: int) -> Tensor:
    """values [n_atoms, k] summed over the atoms of each system -> [n_systems, k]."""
    total = torch.zeros((n_systems, values.shape[1]), dtype=values.dtype, device=values.device)
    if capturing():
        # AOTInductor's CPU code generator (torch 2.13) fails on an index_add whose index it knows
        # (AssertionError in cpp.py's vectorized store), as the captured program's are: one
        # structure, owners all 0. scatter_add compiles; TorchScript keeps index_add.
        return total.scatter_add(0, owners.unsqueeze(1).expand(-1, values.shape[1]), values)
    return total.index_add(0, owners, values)


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


class ANIHead(torch.nn.Module):
    """One ensemble (one level of theory): per-species networks of every member plus the
    self-atomic energies, applied to AEVs computed once and shared by every head.

    forward(species [n], atoms_of_species, aevs_of_species) -> [n_members, n] atomic energies
    (Hartree, self energies included).
    """

    def __init__(self, members: List[List[torch.nn.Module]], self_energies: Sequence[float], num_species: int):
        super().__init__()
        if len(self_energies) != num_species:
            raise ValueError("need one self energy per AEV species")
        for member in members:
            if len(member) != num_species:
                raise ValueError("every ensemble member needs one network per species")
        self.members = torch.nn.ModuleList([torch.nn.ModuleList(list(member)) for member in members])
        self.n_members = len(members)
        self.register_buffer("self_energies", torch.tensor(list(self_energies), dtype=torch.float64))

    def forward(self, species: Tensor, atoms_of_species: List[Tensor], aevs_of_species: List[Tensor]) -> Tensor:
        # A species without atoms skips its networks in TorchScript; a captured program (whose
        # numbers of atoms per species are unknown until it runs) applies them to empty inputs.
        everything = capturing()
        present: List[bool] = []
        for atoms in atoms_of_species:
            present.append(everything or atoms.shape[0] > 0)
        per_member: List[Tensor] = []
        for member in self.members:
            energies = self.self_energies.index_select(0, species)
            for s, network in enumerate(member):
                if present[s]:
                    energies = energies.index_add(0, atoms_of_species[s], network(aevs_of_species[s]).flatten())
            per_member.append(energies)
        return torch.stack(per_member)


class ANIEnsemble(torch.nn.Module):
    """AEVs from the engine's neighbor list -> per-species networks of every member -> energies.

    Outputs (Hartree), for the main ensemble (ANI-1x) and, with the suffix "/<variant>", for each
    variant ensemble on the same AEVs (ANI-1ccx as "ccsdt": energy/ccsdt, ...):
      energy              ensemble mean of the atomic energies (self-atomic energies included),
                          per atom [n_atoms, 1] or per structure [n_systems, 1];
      energy_ensemble     per-structure energy of every member, self energies included [n_systems, M];
      energy_uncertainty  standard deviation of the member energies of each structure, with
                          Bessel's correction (unbiased, divides by M - 1) [n_systems, 1].
    Only the ensembles whose outputs are asked for run (the AEVs are computed once). With
    `selected_atoms` (e.g. LAMMPS' local atoms among ghosts), the networks run for those atoms
    only and per-atom rows come back for them only, in increasing index order; AEVs still see
    every atom as a neighbor.
    """

    def __init__(
        self,
        aev: NeighborListAEV,
        members: List[List[torch.nn.Module]],
        self_energies: Sequence[float],
        atomic_numbers: Sequence[int],
        variants: Optional[Dict[str, Tuple[List[List[torch.nn.Module]], Sequence[float]]]] = None,
    ):
        super().__init__()
        if len(atomic_numbers) != aev.num_species:
            raise ValueError("need one atomic number per AEV species")
        variants = dict(variants or {})
        self.aev = aev
        heads = [ANIHead(members, self_energies, aev.num_species)]
        heads += [ANIHead(m, e, aev.num_species) for m, e in variants.values()]
        self.heads = torch.nn.ModuleList(heads)
        # the output-name suffix of each head: "" for the main ensemble, "/ccsdt" for a variant
        self.suffixes: List[str] = [""] + ["/" + name for name in variants]
        self.n_members = len(members)
        self.cutoff = float(aev.Rcr)
        table = torch.full((max(atomic_numbers) + 1,), -1, dtype=torch.long)
        for index, number in enumerate(atomic_numbers):
            table[int(number)] = index
        self.register_buffer("species_of_number", table)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def _features(
        self, systems: List[System], selected_atoms: Optional[Tensor]
    ) -> Tuple[Tensor, Tensor, List[Tensor], List[Tensor]]:
        """(species, system index, atoms of each species, their AEVs), for the selected atoms
        only when `selected_atoms` (sorted global indices) is given."""
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
        return species, owners, atoms_of_species, aevs_of_species

    def member_atomic_energies(
        self, systems: List[System], selected_atoms: Optional[Tensor] = None, variant: str = ""
    ) -> Tuple[Tensor, Tensor]:
        """([n_members, n_atoms] atomic energies incl. self energies, [n_atoms] system index) of
        the main ensemble or of `variant`, for the selected atoms only when `selected_atoms`
        (sorted global indices) is given."""
        suffix = f"/{variant}" if variant != "" else ""
        species, owners, atoms_of_species, aevs_of_species = self._features(systems, selected_atoms)
        for index, head in enumerate(self.heads):
            if self.suffixes[index] == suffix:
                return head(species, atoms_of_species, aevs_of_species), owners
        raise ValueError(f"no ensemble for the variant '{variant}'")

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        species, owners, atoms_of_species, aevs_of_species = self._features(systems, selected_atoms)
        n_systems = len(systems)
        results: Dict[str, Tensor] = {}
        for index, head in enumerate(self.heads):
            suffix = self.suffixes[index]
            energy = f"energy{suffix}"
            ensemble = f"energy_ensemble{suffix}"
            uncertainty = f"energy_uncertainty{suffix}"
            if energy in outputs or ensemble in outputs or uncertainty in outputs:  # else this ensemble does not run
                member_energies = head(species, atoms_of_species, aevs_of_species)
                if energy in outputs:
                    atomic = member_energies.mean(dim=0).reshape(-1, 1)
                    if outputs[energy].per_atom:
                        results[energy] = atomic
                    else:
                        results[energy] = _sum_by_system(atomic, owners, n_systems)
                if ensemble in outputs or uncertainty in outputs:
                    structure_members = _sum_by_system(member_energies.t(), owners, n_systems)
                    if ensemble in outputs:
                        results[ensemble] = structure_members
                    if uncertainty in outputs:
                        results[uncertainty] = torch.std(structure_members, dim=[1], unbiased=True, keepdim=True)
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


def _torchani_resources(torchani) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(torchani.__file__)), "resources")


def ani1ccx_resource_candidates() -> List[str]:
    """Where torchani itself keeps the ANI-1ccx files once it has them: its own resources
    directory (torchani 2.2.4's wheel holds only empty placeholders there) and ~/.local/torchani
    (where torchani.models.ANI1ccx() puts what it downloads when site-packages is read-only)."""
    torchani = _import_torchani()
    return [
        os.path.join(_torchani_resources(torchani), ANI1CCX_RESOURCE_DIRECTORY),
        os.path.join(os.path.expanduser("~/.local/torchani"), ANI1CCX_RESOURCE_DIRECTORY),
    ]


def _incomplete_files(directory: str) -> List[str]:
    """The NeuroChem files of `directory` that are missing or empty (an empty list: complete)."""
    needed = [CONSTANTS_FILE, SAE_FILE]
    for i in range(ENSEMBLE_SIZE):
        networks = os.path.join(f"{ENSEMBLE_PREFIX}{i}", "networks")
        found = (
            sorted(os.listdir(os.path.join(directory, networks)))
            if os.path.isdir(os.path.join(directory, networks))
            else []
        )
        nnf = [os.path.join(networks, name) for name in found if name.endswith(".nnf")]
        needed += nnf or [os.path.join(networks, "ANN-*.nnf")]
    return [
        name
        for name in needed
        if not os.path.isfile(os.path.join(directory, name)) or os.path.getsize(os.path.join(directory, name)) == 0
    ]


def find_ani1ccx_resources() -> Optional[str]:
    """The first complete ANI-1ccx directory among ani1ccx_resource_candidates(), or None.
    Nothing is downloaded."""
    for directory in ani1ccx_resource_candidates():
        if os.path.isdir(directory) and not _incomplete_files(directory):
            return directory
    return None


def _resources(directory: Optional[str] = None, what: str = "ANI-1x") -> Tuple[object, str]:
    """(torchani module, directory of the resource files): ANI-1x's, shipped in torchani's wheel,
    unless `directory` names another NeuroChem directory (ANI-1ccx's)."""
    torchani = _import_torchani()
    if directory is None:
        directory = os.path.join(_torchani_resources(torchani), RESOURCE_DIRECTORY)
        hint = "reinstall torchani==2.2.4, whose wheel ships them"
    else:
        directory = os.path.abspath(os.fspath(directory))
        hint = ANI1CCX_HINT
    missing = _incomplete_files(directory)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise FileNotFoundError(f"the {what} resource files in {directory} are missing or empty ({shown}): {hint}")
    return torchani, directory


def _load_parts(directory: Optional[str] = None, what: str = "ANI-1x"):
    """(torchani, constants, EnergyShifter, {symbol: self energy}, Ensemble), all from local files."""
    torchani, directory = _resources(directory, what)
    from torchani import neurochem

    constants = neurochem.Constants(os.path.join(directory, CONSTANTS_FILE))
    shifter, sae_by_symbol = neurochem.load_sae(os.path.join(directory, SAE_FILE), return_dict=True)
    ensemble = neurochem.load_model_ensemble(constants.species, os.path.join(directory, ENSEMBLE_PREFIX), ENSEMBLE_SIZE)
    return torchani, constants, shifter, sae_by_symbol, ensemble


def _atomic_number(symbol: str) -> int:
    from torchani.utils import PERIODIC_TABLE

    return PERIODIC_TABLE.index(symbol)


def _same_featurizer(first, second) -> List[str]:
    """The AEV constants (and species order) in which two NeuroChem constant sets differ."""
    differ = [] if list(first.species) == list(second.species) else ["species"]
    for key in first.keys():
        a, b = first[key], second[key]
        same = torch.equal(a, b) if isinstance(a, Tensor) and isinstance(b, Tensor) else a == b
        if not same:
            differ.append(key)
    return differ


def build_ani1x(ccsdt: Optional[str] = None) -> ANIEnsemble:
    """The float64 atomplug ANI-1x module (needs torchani for the weights); with `ccsdt` (the
    directory of the ANI-1ccx NeuroChem files), also the ANI-1ccx ensemble as the variant
    "ccsdt" on the same AEVs."""
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
    variants = {}
    if ccsdt is not None:
        _, ccsdt_constants, _, ccsdt_sae, ccsdt_ensemble = _load_parts(ccsdt, "ANI-1ccx")
        differ = _same_featurizer(constants, ccsdt_constants)
        if differ:
            raise ValueError(
                f"the ANI-1ccx files in {ccsdt} have other AEV constants than ANI-1x ({', '.join(differ)} "
                "differ): the variant shares ANI-1x's featurizer, so give the ANI-1ccx directory of torchani "
                "(whose ANI-1ccx uses ANI-1x's AEV constants)"
            )
        variants[CCSDT_VARIANT] = (
            [[member[symbol] for symbol in constants.species] for member in ccsdt_ensemble],
            [ccsdt_sae[symbol] for symbol in constants.species],
        )
    # Each member is an ANIModel (a ModuleDict keyed by symbol) of plain Linear/CELU Sequentials.
    members = [[member[symbol] for symbol in constants.species] for member in ensemble]
    module = ANIEnsemble(
        aev,
        members,
        [sae_by_symbol[symbol] for symbol in constants.species],
        [_atomic_number(symbol) for symbol in constants.species],
        variants,
    )
    return module.to(torch.float64).eval()


def torchani_reference(directory: Optional[str] = None):
    """torchani's own float64 ensemble from the same resource files (atomic numbers in): ANI-1x,
    or the ensemble of the NeuroChem `directory` (ANI-1ccx's), built as torchani.models builds
    its BuiltinEnsemble (`_from_neurochem_resources`).

    Call as model((numbers [1, n], positions [1, n, 3]), cell=..., pbc=...).energies (Hartree);
    also has members_energies(), energies_qbcs() and atomic_energies().
    """
    torchani, constants, shifter, sae_by_symbol, ensemble = _load_parts(
        directory, "ANI-1x" if directory is None else "ANI-1ccx"
    )
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


def ani1x_capabilities(cutoff: float = 5.2, variants: Sequence[str] = ()) -> ModelCapabilities:
    members = [f"member_{i}" for i in range(ENSEMBLE_SIZE)]
    outputs = {}
    for suffix in [""] + ["/" + variant for variant in variants]:
        outputs["energy" + suffix] = ModelOutput(quantity="energy", unit="Hartree", per_atom=True)
        outputs["energy_ensemble" + suffix] = ModelOutput(
            quantity="energy", unit="Hartree", per_atom=False, properties=members
        )
        outputs["energy_uncertainty" + suffix] = ModelOutput(quantity="energy", unit="Hartree", per_atom=False)
    return ModelCapabilities(
        outputs=outputs,
        atomic_types=[1, 6, 7, 8],
        interaction_range=cutoff,
        length_unit="Angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )


def export_ani1x(path: str, ccsdt: Optional[str] = None) -> None:
    """Export the ANI-1x ensemble (float64, Hartree and Angstrom) to `path`; with `ccsdt` (the
    directory of the ANI-1ccx NeuroChem files, e.g. find_ani1ccx_resources()), ANI-1ccx too, as
    the outputs energy/ccsdt, energy_ensemble/ccsdt and energy_uncertainty/ccsdt."""
    module = build_ani1x(ccsdt)
    description = (
        "ANI-1x ensemble of 8 neural network potentials for H, C, N, O trained to "
        "wB97X/6-31G(d) (weights from torchani 2.2.4), AEVs computed from the engine's "
        "neighbor list; energy is the ensemble mean, energy_uncertainty the unbiased standard "
        "deviation of the member energies"
    )
    authors = [
        "Justin S. Smith",
        "Ben Nebgen",
        "Nicholas Lubbers",
        "Olexandr Isayev",
        "Adrian E. Roitberg",
        "Xiang Gao",
        "Farhad Ramezanghorbani",
    ]
    references = list(REFERENCES)
    if ccsdt is not None:
        description += (
            "; variant ccsdt (energy/ccsdt, energy_ensemble/ccsdt, energy_uncertainty/ccsdt): the ANI-1ccx "
            "ensemble (CCSD(T)*/CBS by transfer learning) on the same AEVs"
        )
        authors += ["Roman Zubatyuk", "Christian Devereux", "Kipton Barros", "Sergei Tretiak"]
        references.append(ANI1CCX_REFERENCE)
    metadata = ModelMetadata(
        name="ANI-1x" if ccsdt is None else "ANI-1x + ANI-1ccx",
        description=description,
        authors=authors,
        references=references,
    )
    variants = [] if ccsdt is None else [CCSDT_VARIANT]
    export(module, path, ani1x_capabilities(module.cutoff, variants), metadata)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Export the pretrained ANI-1x ensemble as an atomplug model.")
    parser.add_argument("path")
    parser.add_argument(
        "--ccsdt",
        metavar="DIRECTORY",
        help=f"also export ANI-1ccx as the variant 'ccsdt' (energy/ccsdt), from this {ANI1CCX_RESOURCE_DIRECTORY} "
        "directory of NeuroChem files ('auto': where torchani keeps them once it has downloaded them)",
    )
    args = parser.parse_args(argv)
    try:
        ccsdt = args.ccsdt
        if ccsdt == "auto":
            ccsdt = find_ani1ccx_resources()
            if ccsdt is None:
                raise FileNotFoundError(
                    "no complete ANI-1ccx files in " + " or ".join(ani1ccx_resource_candidates()) + ": " + ANI1CCX_HINT
                )
        export_ani1x(args.path, ccsdt)
    except (ImportError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    main()
