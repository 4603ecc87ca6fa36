"""A coordination number between two groups of atom types: PLUMED's COORDINATION as a model.

    C = sum over pairs (i in A, j in B, i != j, within d_max) of s(r_ij)

with PLUMED's RATIONAL switching function with NOSTRETCH semantics (the plain form, cut to zero
beyond D_MAX, not shifted):

    x = (r - d_0) / r_0,    s = 1 for x <= 0,    s = (1 - x^n) / (1 - x^m)  (m = 2n: 1 / (1 + x^n))

Group A holds the atoms whose type is in `types_a`, group B those in `types_b` (a type may be in
both, as in PLUMED, where an atom in GROUPA and GROUPB is never paired with itself). This is what

    COORDINATION GROUPA=... GROUPB=... SWITCH={RATIONAL R_0=r0 D_0=d0 NN=n MM=m D_MAX=dmax NOSTRETCH}

computes in PLUMED when the periodic box is larger than twice D_MAX (PLUMED takes the nearest
image; the model sums over every image within D_MAX, the same thing in such a box). The output
is `features` with one property, `coordination`, dimensionless. It can also be asked per atom:
atom i holds sum over j in B of s(r_ij) when i is in A (its own coordination), zero otherwise,
so that a PLUMED `SELECTED_ATOMS` subset of A gives that subset's coordination by B.

    python -m atomplug.examples.coordination coordination.pt --r0 3.0 --d-max 8.0 \
        --types-a 8 --types-b 1
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export

# Within this distance of x = 1 the rational form is 0/0: its first-order expansion is used.
NEAR_ONE = 1e-6


class Coordination(torch.nn.Module):
    """Coordination number of group A (types_a) by group B (types_b), PLUMED RATIONAL NOSTRETCH."""

    def __init__(
        self,
        r0: float,
        d_max: float,
        types_a: Sequence[int],
        types_b: Sequence[int],
        d0: float = 0.0,
        nn: int = 6,
        mm: int = 0,
        atomic_types: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        if not r0 > 0.0:
            raise ValueError(f"r0 must be positive, got {r0}")
        if not d_max > d0:
            raise ValueError(f"d_max ({d_max}) must be larger than d0 ({d0})")
        if nn <= 0 or mm < 0:
            raise ValueError(f"nn must be positive and mm zero (= 2 nn) or positive, got nn={nn}, mm={mm}")
        if not types_a or not types_b:
            raise ValueError("types_a and types_b must each name at least one atom type")
        self.r0 = float(r0)
        self.near_one = NEAR_ONE
        self.d0 = float(d0)
        self.d_max = float(d_max)
        self.nn = int(nn)
        self.mm = int(mm) if mm != 0 else 2 * int(nn)
        if self.nn == self.mm:
            raise ValueError("nn and mm must differ (the rational function is constant when they are equal)")
        every = list(types_a) + list(types_b) + (list(atomic_types) if atomic_types is not None else [])
        if min(every) < 0:
            raise ValueError(f"atom types must be zero or positive, got {sorted(set(every))}")
        largest = max(every)
        in_a = torch.zeros(largest + 1, dtype=torch.float64)
        in_b = torch.zeros(largest + 1, dtype=torch.float64)
        in_a[list(types_a)] = 1.0
        in_b[list(types_b)] = 1.0
        self.register_buffer("in_a", in_a)
        self.register_buffer("in_b", in_b)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.d_max, False, True)]

    def switching(self, distances: Tensor) -> Tensor:
        x = (distances - self.d0) / self.r0
        if self.mm == 2 * self.nn:
            # (1 - x^n) / (1 - x^2n) = 1 / (1 + x^n), no singularity at x = 1
            values = 1.0 / (1.0 + torch.pow(x, self.nn))
        else:
            near = torch.abs(x - 1.0) < self.near_one
            safe = torch.where(near, torch.zeros_like(x), x)
            direct = (1.0 - torch.pow(safe, self.nn)) / (1.0 - torch.pow(safe, self.mm))
            slope = 0.5 * self.nn * (self.nn - self.mm) / self.mm
            expansion = float(self.nn) / float(self.mm) + slope * (x - 1.0)
            values = torch.where(near, expansion, direct)
        if self.d0 > 0.0:
            values = torch.where(x <= 0.0, torch.ones_like(values), values)
        return values

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        options = NeighborListOptions(self.d_max, False, True)
        per_atom = "features" in outputs and outputs["features"].per_atom
        results: List[Tensor] = []
        for system in systems:
            neighbors = system.get_neighbor_list(options)
            pairs = neighbors.pairs
            dtype = neighbors.vectors.dtype
            switched = self.switching(torch.linalg.vector_norm(neighbors.vectors, dim=1))
            types = system.types.to(torch.int64)  # the entry point has rejected unknown types
            in_a = self.in_a.to(dtype).index_select(0, types)
            in_b = self.in_b.to(dtype).index_select(0, types)
            first = pairs[:, 0]
            second = pairs[:, 1]
            # a half list holds each pair once: count it for i in A, j in B and for j in A, i in B
            weight_first = in_a.index_select(0, first) * in_b.index_select(0, second)
            weight_second = in_a.index_select(0, second) * in_b.index_select(0, first)
            if per_atom:
                atomic = torch.zeros(len(system), dtype=dtype, device=switched.device)
                atomic = atomic.index_add(0, first, switched * weight_first)
                atomic = atomic.index_add(0, second, switched * weight_second)
                results.append(atomic)
            else:
                results.append((switched * (weight_first + weight_second)).sum().reshape(1))
        return {"features": torch.cat(results).reshape(-1, 1)}


def export_coordination(
    path: str,
    r0: float = 3.0,
    d_max: float = 8.0,
    types_a: Sequence[int] = (8,),
    types_b: Sequence[int] = (1,),
    d0: float = 0.0,
    nn: int = 6,
    mm: int = 0,
    length_unit: str = "Angstrom",
    atomic_types: Optional[Sequence[int]] = None,
) -> None:
    """Export the coordination of `types_a` by `types_b` (lengths in `length_unit`) to `path`.

    `atomic_types` lists every type the model accepts (default: the union of both groups);
    atoms of other listed types are present (e.g. for other models' sake) but never counted.
    """
    known = sorted(set(atomic_types) if atomic_types is not None else set(types_a) | set(types_b))
    missing = (set(types_a) | set(types_b)) - set(known)
    if missing:
        raise ValueError(f"atomic_types {known} must include every type of both groups (missing {sorted(missing)})")
    module = Coordination(r0, d_max, list(types_a), list(types_b), d0, nn, mm, known)
    capabilities = ModelCapabilities(
        outputs={"features": ModelOutput(quantity="", unit="", per_atom=True, properties=["coordination"])},
        atomic_types=known,
        interaction_range=float(d_max),
        length_unit=length_unit,
        supported_devices=["cpu", "cuda"],
        dtype="float64",
    )
    mm_text = module.mm
    metadata = ModelMetadata(
        name="coordination",
        description=(
            f"coordination of types {list(types_a)} by types {list(types_b)}: PLUMED RATIONAL switching "
            f"function (NOSTRETCH) R_0={r0} D_0={d0} NN={nn} MM={mm_text} D_MAX={d_max} {length_unit}"
        ),
        authors=["atomplug developers"],
        references=[
            "G. A. Tribello, M. Bonomi, D. Branduardi, C. Camilloni, G. Bussi, PLUMED 2: New feathers for an "
            "old bird, Comput. Phys. Commun. 185, 604 (2014)"
        ],
    )
    export(module, path, capabilities, metadata)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path")
    parser.add_argument("--r0", type=float, default=3.0)
    parser.add_argument("--d0", type=float, default=0.0)
    parser.add_argument("--d-max", type=float, default=8.0)
    parser.add_argument("--nn", type=int, default=6)
    parser.add_argument("--mm", type=int, default=0, help="0 means 2*nn")
    parser.add_argument("--types-a", type=int, nargs="+", default=[8])
    parser.add_argument("--types-b", type=int, nargs="+", default=[1])
    parser.add_argument("--length-unit", default="Angstrom")
    args = parser.parse_args(argv)
    export_coordination(
        args.path, args.r0, args.d_max, args.types_a, args.types_b, args.d0, args.nn, args.mm, args.length_unit
    )


if __name__ == "__main__":
    main()
