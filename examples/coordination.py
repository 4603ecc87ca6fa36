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
        # code of a type: 1 if in A, 2 if in B (3 if both); the count of a pair (i, j) of a half
        # list is weights[4 code_i + code_j] = [i in A][j in B] + [j in A][i in B]
        codes = torch.zeros(largest + 1, dtype=torch.int64)
        for atomic_type in types_a:
            codes[atomic_type] |= 1
        for atomic_type in types_b:
            codes[atomic_type] |= 2
        weights = torch.zeros(16, dtype=torch.float64)
        for first in range(4):
            for second in range(4):
                weights[4 * first + second] = float(bool(first & 1 and second & 2) + bool(second & 1 and first & 2))
        # per atom: atom i counts its pairs with j in B when i is in A
        own = torch.zeros(16, dtype=torch.float64)
        for first in range(4):
            for second in range(4):
                own[4 * first + second] = float(bool(first & 1 and second & 2))
        self.register_buffer("codes", codes)
        self.register_buffer("weights", weights)
        self.register_buffer("own", own)
        # PLUMED's own shortcut: with d0 = 0 and even powers, s depends on r^2 only
        self.squared = self.d0 == 0.0 and self.nn % 2 == 0 and self.mm % 2 == 0
        self.inv_r0_squared = 1.0 / (self.r0 * self.r0)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.d_max, False, True)]

    def rational(self, x: Tensor, n: int, m: int) -> Tensor:
        """(1 - x^n) / (1 - x^m) for x > 0, with its limit n/m (first order) around x = 1."""
        if m == 2 * n:
            return 1.0 / (1.0 + torch.pow(x, n))  # (1 - x^n) / (1 - x^2n), no 0/0 at x = 1
        near = torch.abs(x - 1.0) < self.near_one
        safe = torch.where(near, torch.zeros_like(x), x)
        direct = (1.0 - torch.pow(safe, n)) / (1.0 - torch.pow(safe, m))
        expansion = float(n) / float(m) + 0.5 * n * (n - m) / m * (x - 1.0)
        return torch.where(near, expansion, direct)

    def switching(self, vectors: Tensor) -> Tensor:
        """s(r) of every pair vector."""
        if self.squared:
            # x^n = (r^2 / r0^2)^(n/2): no square root, as PLUMED does for this case
            x2 = (vectors * vectors).sum(dim=1) * self.inv_r0_squared
            return self.rational(x2, self.nn // 2, self.mm // 2)
        x = (torch.linalg.vector_norm(vectors, dim=1) - self.d0) / self.r0
        values = self.rational(x, self.nn, self.mm)
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
            vectors = neighbors.vectors
            switched = self.switching(vectors)
            # the entry point has rejected types the model does not know
            codes = self.codes.index_select(0, system.types.to(torch.int64))
            first = neighbors.pairs[:, 0]
            second = neighbors.pairs[:, 1]
            pair_codes = 4 * codes.index_select(0, first) + codes.index_select(0, second)
            if per_atom:
                swapped = 4 * codes.index_select(0, second) + codes.index_select(0, first)
                own_first = self.own.to(vectors.dtype).index_select(0, pair_codes)
                own_second = self.own.to(vectors.dtype).index_select(0, swapped)
                atomic = torch.zeros(system.positions.shape[0], dtype=vectors.dtype, device=vectors.device)
                atomic = atomic.index_add(0, first, switched * own_first)
                atomic = atomic.index_add(0, second, switched * own_second)
                results.append(atomic)
            else:
                weights = self.weights.to(vectors.dtype).index_select(0, pair_codes)
                results.append((switched * weights).sum().reshape(1))
        if len(results) == 1:
            return {"features": results[0].reshape(-1, 1)}
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
