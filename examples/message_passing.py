"""A small message-passing network in the atomplug contract: the example for models whose
interaction range is several neighbor-list cutoffs.

Architecture (SchNet-like continuous filters, invariant, float64, seeded random weights):

    h_i^0     = embedding[species_i]                                  (F features)
    m_i^t     = sum_{j in N(i)} W^t(r_ij) * (A^t h_j^{t-1}) / avg_neighbors
    h_i^t     = h_i^{t-1} + U^t silu(V^t m_i^t)                        t = 1 .. L
    W^t(r)    = (B^t silu(C^t g(r))) fc(r)     g: Gaussian radial basis on [0, r_c]
    fc(r)     = 1 - 28 x^6 + 48 x^7 - 21 x^8, x = r / r_c, for r < r_c;  (value, first and second
                0 beyond                                                derivatives vanish at r_c)
    E_i       = energy_scale * readout(h_i^L) + E0[species_i]
                + 1/2 sum_{j in N(i)} A_rep (sigma_rep / r_ij)^12 fc(r_ij)   (a repulsive core,
                                                                        so that MD stays sane)

N(i) is one FULL, strict neighbor list with cutoff r_c: after L layers the energy of atom i
depends on every atom within L hops, so the declared interaction range is L x r_c (defaults:
3 layers x 2.5 Angstrom = 7.5 Angstrom, for types H, C, O). Every geometric quantity comes from
the list's differentiable `vectors` (never from `positions`), so forces, virial and the per-atom
virial are exact, and the model runs on any periodic, slab, isolated or ghost-atom (LAMMPS
domain-decomposition) system: an atom's energy is exact whenever every atom within L x r_c of it
is present with its pairs listed.

Per-atom energies (`energy`, per_atom=True): with `selected_atoms` (e.g. LAMMPS local atoms among
ghosts) the messages still run over all atoms, the readout only for the selected ones, and only
their rows come back (sorted as given).

With `ghost_exchange=True` (same weights, same energies) the model calls
`system.exchange_ghosts` on its features before layers 2..L and declares
`ModelCapabilities(ghost_exchange=True)`: ghost atoms (LAMMPS on several ranks) then take their
owners' features between layers, so they need to reach one cutoff only, not L x r_c.

The weights are random (seeded): this model is a test and benchmark subject with the cost and
the data flow of a real message-passing potential, not a physical potential.

    python -m atomplug.examples.message_passing mp.pt
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.core.graph import batch_systems, exchange_ghosts

DEFAULT_TYPES = (1, 6, 8)
DEFAULT_CUTOFF = 2.5  # Angstrom
DEFAULT_LAYERS = 3
DEFAULT_FEATURES = 16
DEFAULT_BASIS = 8
DEFAULT_SEED = 20260514


def smooth_cutoff(distances: Tensor, cutoff: float) -> Tensor:
    """1 - 28 x^6 + 48 x^7 - 21 x^8 (x = r/rc) inside the cutoff, exactly 0 outside.

    The polynomial envelope of DimeNet and MACE (p = 6): value, slope and curvature vanish at
    rc (C2), and it stays close to 1 over most of the cutoff sphere, so messages stay strong."""
    x = torch.clamp(distances / cutoff, max=1.0)
    x6 = x**6
    envelope = 1.0 - 28.0 * x6 + 48.0 * x6 * x - 21.0 * x6 * x * x
    return torch.where(distances < cutoff, envelope, torch.zeros_like(distances))


class InteractionLayer(torch.nn.Module):
    """One message-passing step: continuous-filter convolution over the full list, residual update."""

    def __init__(self, features: int, basis: int, inverse_neighbors: float):
        super().__init__()
        self.filter_in = torch.nn.Linear(basis, features)
        self.filter_out = torch.nn.Linear(features, features)
        self.source = torch.nn.Linear(features, features, bias=False)
        self.update_in = torch.nn.Linear(features, features)
        self.update_out = torch.nn.Linear(features, features)
        self.inverse_neighbors = float(inverse_neighbors)

    def forward(self, features: Tensor, receivers: Tensor, senders: Tensor, basis: Tensor, envelope: Tensor) -> Tensor:
        weights = self.filter_out(torch.nn.functional.silu(self.filter_in(basis))) * envelope.unsqueeze(1)
        messages = weights * self.source(features).index_select(0, senders)
        aggregated = torch.zeros_like(features).index_add(0, receivers, messages) * self.inverse_neighbors
        return features + self.update_out(torch.nn.functional.silu(self.update_in(aggregated)))


class MessagePassingModel(torch.nn.Module):
    """L interaction layers on one full neighbor list with cutoff r_c; per-atom energies."""

    def __init__(
        self,
        types: Sequence[int] = DEFAULT_TYPES,
        cutoff: float = DEFAULT_CUTOFF,
        n_layers: int = DEFAULT_LAYERS,
        features: int = DEFAULT_FEATURES,
        basis: int = DEFAULT_BASIS,
        seed: int = DEFAULT_SEED,
        energy_scale: float = 0.2,
        repulsion: float = 1.0,
        repulsion_sigma: Optional[float] = None,
        avg_neighbors: float = 2.0,
        weight_gain: float = 1.5,
        ghost_exchange: bool = False,
    ):
        super().__init__()
        types = [int(t) for t in types]
        if not types or len(set(types)) != len(types) or min(types) < 0:
            raise ValueError(f"types must be distinct non-negative atom types, got {types}")
        if not cutoff > 0.0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        self.types = types
        self.cutoff = float(cutoff)
        self.n_layers = int(n_layers)
        self.ghost_exchange = bool(ghost_exchange)
        self.energy_scale = float(energy_scale)
        self.repulsion = float(repulsion)
        self.repulsion_sigma = float(repulsion_sigma if repulsion_sigma is not None else 0.3 * cutoff)

        self.embedding = torch.nn.Embedding(len(types), features)
        self.layers = torch.nn.ModuleList(
            [InteractionLayer(features, basis, 1.0 / avg_neighbors) for _ in range(self.n_layers)]
        )
        self.readout_in = torch.nn.Linear(features, features)
        self.readout_out = torch.nn.Linear(features, 1)
        self.to(torch.float64)
        # Weights drawn here from a private generator, not by torch's initialisers: the same model
        # on every machine, every torch version and every call, whatever the global RNG state.
        # The gain keeps messages strong enough that atoms three hops away visibly matter.
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            self.embedding.weight.copy_(
                torch.randn(self.embedding.weight.shape, generator=generator, dtype=torch.float64)
            )
            for module in self.modules():
                if isinstance(module, torch.nn.Linear):
                    scale = weight_gain / module.in_features**0.5
                    module.weight.copy_(
                        torch.randn(module.weight.shape, generator=generator, dtype=torch.float64) * scale
                    )
                    if module.bias is not None:
                        module.bias.copy_(
                            0.1 * torch.randn(module.bias.shape, generator=generator, dtype=torch.float64)
                        )
        reference = -1.0 - torch.rand(len(types), generator=generator, dtype=torch.float64)
        self.register_buffer("reference_energies", reference)
        self.register_buffer("centers", torch.linspace(0.0, self.cutoff, basis, dtype=torch.float64))
        self.width = float(self.cutoff / basis)
        table = torch.full((max(types) + 1,), -1, dtype=torch.long)
        for index, number in enumerate(types):
            table[number] = index
        self.register_buffer("species_of_type", table)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, True, True)]

    def interaction_range(self) -> float:
        return self.n_layers * self.cutoff

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        if "energy" not in outputs:
            return {}
        species, pairs, vectors, owners, offsets = batch_systems(
            systems,
            NeighborListOptions(self.cutoff, True, True),
            self.species_of_type,
            f"this message-passing model knows only the atom types {self.types}",
        )

        # a non-strict list may hold pairs beyond the cutoff: they would carry a zero envelope,
        # dropping them is cheaper
        distances = torch.linalg.vector_norm(vectors, dim=1)
        inside = torch.nonzero(distances < self.cutoff).flatten()
        receivers = pairs[:, 0].index_select(0, inside)
        senders = pairs[:, 1].index_select(0, inside)
        distances = distances.index_select(0, inside)
        envelope = smooth_cutoff(distances, self.cutoff)
        basis = torch.exp(-(((distances.unsqueeze(1) - self.centers) / self.width) ** 2))

        features = self.embedding(species)
        for index, layer in enumerate(self.layers):
            if self.ghost_exchange and index > 0:
                # ghosts' rows from their owners before a layer reads them (their own sums lack
                # the neighbors beyond this rank's ghost region); the embeddings need none
                features = exchange_ghosts(systems, features, offsets)
            features = layer(features, receivers, senders, basis, envelope)

        # repulsive core, half of each (i, j) entry to i: the full list holds (j, i) too
        ratio = self.repulsion_sigma / distances
        pair_repulsion = 0.5 * self.repulsion * (ratio**12) * envelope
        repulsion = torch.zeros(species.shape[0], dtype=distances.dtype, device=distances.device)
        repulsion = repulsion.index_add(0, receivers, pair_repulsion)

        if selected_atoms is not None:
            # the readout, per atom, runs only for the atoms whose energies count
            species = species.index_select(0, selected_atoms)
            features = features.index_select(0, selected_atoms)
            owners = owners.index_select(0, selected_atoms)
            repulsion = repulsion.index_select(0, selected_atoms)
        atomic = self.readout_out(torch.nn.functional.silu(self.readout_in(features))).squeeze(1)
        atomic = self.energy_scale * atomic + self.reference_energies.index_select(0, species) + repulsion

        if outputs["energy"].per_atom:
            energy = atomic.reshape(-1, 1)
        else:
            energy = torch.zeros(len(systems), dtype=atomic.dtype, device=atomic.device)
            energy = energy.index_add(0, owners, atomic).reshape(-1, 1)
        return {"energy": energy}


def message_passing_capabilities(module: MessagePassingModel, energy_unit: str = "eV") -> ModelCapabilities:
    return ModelCapabilities(
        ghost_exchange=module.ghost_exchange,
        outputs={"energy": ModelOutput(quantity="energy", unit=energy_unit, per_atom=True)},
        atomic_types=list(module.types),
        interaction_range=module.interaction_range(),
        length_unit="Angstrom",
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )


def export_message_passing(
    path: str,
    types: Sequence[int] = DEFAULT_TYPES,
    cutoff: float = DEFAULT_CUTOFF,
    n_layers: int = DEFAULT_LAYERS,
    features: int = DEFAULT_FEATURES,
    seed: int = DEFAULT_SEED,
    ghost_exchange: bool = False,
) -> None:
    """Export the example message-passing model (eV, Angstrom, float64) to `path`; its
    interaction range is `n_layers` x `cutoff` (defaults: 3 x 2.5 = 7.5 Angstrom, types H C O).
    With `ghost_exchange` the same model (same weights, same energies) exchanges ghost features
    between layers, so LAMMPS needs ghosts only out to one cutoff on several ranks."""
    module = MessagePassingModel(types, cutoff, n_layers, features, seed=seed, ghost_exchange=ghost_exchange).eval()
    metadata = ModelMetadata(
        name="message-passing-example",
        description=f"example message-passing network with seeded random weights (not a physical "
        f"potential): {n_layers} layers x cutoff {cutoff} Angstrom = interaction range "
        f"{module.interaction_range()} Angstrom, {features} features, types {list(module.types)}"
        + (", ghost features exchanged between layers" if ghost_exchange else ""),
        authors=["atomplug developers"],
        references=[
            "K. T. Schuett, H. E. Sauceda, P.-J. Kindermans, A. Tkatchenko, K.-R. Mueller, SchNet - A deep "
            "learning architecture for molecules and materials, J. Chem. Phys. 148, 241722 (2018)"
        ],
    )
    export(module, path, message_passing_capabilities(module), metadata)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Export the example message-passing model as an atomplug model.")
    parser.add_argument("path")
    parser.add_argument("--types", type=int, nargs="+", default=list(DEFAULT_TYPES))
    parser.add_argument("--cutoff", type=float, default=DEFAULT_CUTOFF, help="Angstrom")
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS)
    parser.add_argument("--features", type=int, default=DEFAULT_FEATURES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--ghost-exchange",
        action="store_true",
        help="exchange ghost features between layers (LAMMPS on several ranks: ghosts out to one cutoff)",
    )
    args = parser.parse_args(argv)
    export_message_passing(
        args.path, args.types, args.cutoff, args.layers, args.features, args.seed, args.ghost_exchange
    )


if __name__ == "__main__":
    main()
