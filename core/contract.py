"""What a model asks of an engine and declares about itself.

`NeighborListOptions` and `ModelOutput` travel inside TorchScript (the model returns them, the
entry point passes them to the model), so they are TorchScript classes. `ModelCapabilities` and
`ModelMetadata` are plain Python: they are stored as JSON inside the exported archive, and what
the entry point needs from them is copied into the archive as plain attributes at export time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

import torch

PER_ATOM_SUFFIX = "/per_atom"  # an output name ending in it asks for per-atom values


@torch.jit.script
class NeighborListOptions:
    """A neighbor list a model needs: cutoff (model length unit), full or half, strict or not.

    A strict list holds only pairs closer than the cutoff; a non-strict list may hold more
    (e.g. a Verlet list with a skin), and the model must then apply its own cutoff.
    """

    def __init__(self, cutoff: float, full_list: bool, strict: bool = True):
        if not (cutoff > 0.0) or cutoff == float("inf"):
            raise ValueError(
                "neighbor list cutoff must be a positive finite number, got "
                + str(cutoff)
                + ": fix the model's requested_neighbor_lists()"
            )
        self.cutoff = cutoff
        self.full_list = full_list
        self.strict = strict

    def same_as(self, other: NeighborListOptions) -> bool:
        return self.cutoff == other.cutoff and self.full_list == other.full_list and self.strict == other.strict

    def describe(self) -> str:
        kind = "full" if self.full_list else "half"
        strictness = "strict" if self.strict else "non-strict"
        return "cutoff=" + str(self.cutoff) + " " + kind + " " + strictness


@torch.jit.script
class ModelOutput:
    """One output: its physical quantity (`energy`, `length`, or "" for none), the unit of the
    values the model returns, whether it is per atom, and optional names of its properties."""

    def __init__(
        self,
        quantity: str = "",
        unit: str = "",
        per_atom: bool = False,
        properties: Optional[List[str]] = None,
    ):
        self.quantity = quantity
        self.unit = unit
        self.per_atom = per_atom
        names: List[str] = []
        if properties is not None:
            names = properties
        self.properties = names


# Outputs whose meaning the engines know; anything else must be namespaced "<vendor>::<name>".
STANDARD_OUTPUTS = {
    "energy": "energy",
    "energy_uncertainty": "energy",
    "energy_ensemble": "energy",
    "non_conservative_forces": "force",
    "non_conservative_stress": "pressure",
    "features": "",
}

SUPPORTED_DTYPES = ("float64", "float32")


@dataclasses.dataclass
class ModelCapabilities:
    """What an exported model computes and in which units.

    `outputs` maps output names to `ModelOutput` (here `per_atom=True` means the model *can*
    return this output per atom; engines may still ask for it per structure).
    """

    outputs: Dict[str, Any]
    atomic_types: List[int]
    interaction_range: float
    length_unit: str = "Angstrom"
    supported_devices: List[str] = dataclasses.field(default_factory=lambda: ["cpu"])
    dtype: str = "float64"

    def validate(self) -> None:
        """Raise ValueError naming the problem and the fix for an inconsistent declaration."""
        from .units import DIMENSIONS_ENERGY, DIMENSIONS_LENGTH, check_dimension, unit_table

        table = unit_table()
        if not self.outputs:
            raise ValueError("ModelCapabilities.outputs is empty: declare at least one output")
        for name, output in self.outputs.items():
            if name not in STANDARD_OUTPUTS and "::" not in name:
                raise ValueError(
                    f"output name {name!r} is neither standard ({', '.join(STANDARD_OUTPUTS)}) "
                    "nor namespaced: call it '<vendor>::<name>'"
                )
            if name == "energy" and output.quantity != "energy":
                raise ValueError(f"output 'energy' must have quantity 'energy', not {output.quantity!r}")
            if output.quantity in ("energy", "length"):
                expected = DIMENSIONS_ENERGY if output.quantity == "energy" else DIMENSIONS_LENGTH
                try:
                    check_dimension(output.unit, expected, f"output {name!r}", table)
                except ValueError as error:
                    example = "eV" if output.quantity == "energy" else "Angstrom"
                    raise ValueError(
                        f"{error}: declare the {output.quantity} unit of the values the model returns, e.g. {example!r}"
                    ) from None
            elif output.quantity not in ("", "force", "pressure"):
                raise ValueError(
                    f"output {name!r}: unknown quantity {output.quantity!r}; use 'energy', "
                    "'length', 'force', 'pressure' or '' (no unit conversion)"
                )
        check_dimension(self.length_unit, DIMENSIONS_LENGTH, "length_unit", table)
        if not self.atomic_types:
            raise ValueError("ModelCapabilities.atomic_types is empty: list the atom types the model knows")
        if len(set(self.atomic_types)) != len(self.atomic_types):
            raise ValueError(f"ModelCapabilities.atomic_types has duplicates: {self.atomic_types}")
        if not (math.isfinite(self.interaction_range) and self.interaction_range >= 0.0):
            raise ValueError(
                f"interaction_range must be a finite number >= 0, got {self.interaction_range}: declare the "
                "largest distance at which atoms interact (the largest neighbor-list cutoff for most models)"
            )
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> Dict[str, Any]:
        return {
            "outputs": {
                name: {
                    "quantity": out.quantity,
                    "unit": out.unit,
                    "per_atom": bool(out.per_atom),
                    "properties": list(out.properties),
                }
                for name, out in self.outputs.items()
            },
            "atomic_types": [int(t) for t in self.atomic_types],
            "interaction_range": float(self.interaction_range),
            "length_unit": self.length_unit,
            "supported_devices": list(self.supported_devices),
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelCapabilities":
        outputs = {
            name: ModelOutput(
                quantity=str(out["quantity"]),
                unit=str(out["unit"]),
                per_atom=bool(out["per_atom"]),
                properties=[str(p) for p in out.get("properties", [])],
            )
            for name, out in data["outputs"].items()
        }
        return cls(
            outputs=outputs,
            atomic_types=[int(t) for t in data["atomic_types"]],
            interaction_range=float(data["interaction_range"]),
            length_unit=str(data["length_unit"]),
            supported_devices=[str(d) for d in data["supported_devices"]],
            dtype=str(data["dtype"]),
        )


@dataclasses.dataclass
class ModelMetadata:
    """Who made the model and what to cite; shown to users and printed in engine logs."""

    name: str = ""
    description: str = ""
    authors: List[str] = dataclasses.field(default_factory=list)
    references: List[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelMetadata":
        return cls(
            name=str(data.get("name", "")),
            description=str(data.get("description", "")),
            authors=[str(a) for a in data.get("authors", [])],
            references=[str(r) for r in data.get("references", [])],
        )

    def citation_text(self) -> str:
        """A short block for engine logs: the model's name and what to cite."""
        lines = [f"atomplug model: {self.name or '(unnamed)'}"]
        if self.description:
            lines.append(f"  {self.description}")
        if self.authors:
            lines.append("  authors: " + ", ".join(self.authors))
        for ref in self.references:
            lines.append(f"  please cite: {ref}")
        return "\n".join(lines)
