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
                f"neighbor list cutoff must be a positive finite number, got {cutoff}: "
                "fix the model's requested_neighbor_lists()"
            )
        self.cutoff = cutoff
        self.full_list = full_list
        self.strict = strict

    def same_as(self, other: NeighborListOptions) -> bool:
        return self.cutoff == other.cutoff and self.full_list == other.full_list and self.strict == other.strict

    def describe(self) -> str:
        kind = "full" if self.full_list else "half"
        strictness = "strict" if self.strict else "non-strict"
        return f"cutoff={self.cutoff} {kind} {strictness}"


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

# Quantities an output or input may declare ("" for none: values pass unconverted).
QUANTITIES = ("", "energy", "length", "force", "pressure", "mass", "velocity", "charge", "dipole")

# The inputs a model may request besides positions, types and cell:
# name -> (quantity, per atom, property names). The engine supplies them in its units; the entry
# point converts them to the unit the model declares.
INPUTS = {
    "masses": ("mass", True, ["mass"]),
    "velocities": ("velocity", True, ["x", "y", "z"]),
    "charges": ("charge", True, ["charge"]),
    "total_charge": ("charge", False, ["charge"]),
    "spin_multiplicity": ("", False, ["spin_multiplicity"]),
}

VARIANT_SEPARATOR = "/"  # "energy/ccsdt" is the variant "ccsdt" of "energy"
_VARIANT_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+")


def split_variant(name: str) -> tuple:
    """'energy/ccsdt' -> ('energy', 'ccsdt'); 'energy' -> ('energy', '')."""
    if VARIANT_SEPARATOR in name:
        base, variant = name.split(VARIANT_SEPARATOR, 1)
        return base, variant
    return name, ""


def _check_variant_name(name: str) -> None:
    base, variant = split_variant(name)
    problem = ""
    if not base:
        problem = "nothing before '/'"
    elif not variant:
        problem = "an empty variant after '/'"
    elif VARIANT_SEPARATOR in variant:
        problem = "more than one '/'"
    elif variant == PER_ATOM_SUFFIX[1:]:
        problem = "'per_atom' is not a variant name (engines ask for per-atom values with it)"
    elif not set(variant) <= _VARIANT_CHARACTERS:
        problem = "characters other than letters, digits and _ - . +"
    if problem:
        raise ValueError(f"output name {name!r}: {problem}; name variants '<output>/<variant>', e.g. 'energy/ccsdt'")


def _check_quantity_unit(
    what: str, quantity: str, unit: str, table, values: str = "the values the model returns"
) -> None:
    from .units import QUANTITY_DIMENSIONS, check_dimension

    if quantity not in QUANTITIES:
        raise ValueError(
            f"{what}: unknown quantity {quantity!r}; use one of "
            + ", ".join(repr(q) for q in QUANTITIES)
            + " ('' for no unit conversion)"
        )
    if quantity in ("", "force", "pressure"):
        return  # force and pressure units are composed from the energy and length units
    examples = {"energy": "eV", "length": "Angstrom", "mass": "amu", "velocity": "Angstrom/fs", "charge": "e"}
    try:
        check_dimension(unit, QUANTITY_DIMENSIONS[quantity], what, table)
    except ValueError as error:
        raise ValueError(
            f"{error}: declare the {quantity} unit of {values}, e.g. {examples.get(quantity, 'e*Angstrom')!r}"
        ) from None


def check_inputs_declaration(inputs: Dict[str, Any]) -> Dict[str, Any]:
    """The model's requested inputs, checked against the vocabulary (INPUTS) and normalised (the
    properties filled in from the vocabulary)."""
    from .units import unit_table

    table = unit_table()
    checked: Dict[str, Any] = {}
    for name, declared in inputs.items():
        if name not in INPUTS:
            raise ValueError(
                f"requested input {name!r} is unknown: models may request {', '.join(INPUTS)}; fix "
                "the model's requested_inputs()"
            )
        quantity, per_atom, properties = INPUTS[name]
        for attribute in ("quantity", "unit", "per_atom", "properties"):
            if not hasattr(declared, attribute):
                raise ValueError(
                    f"requested_inputs() must map names to ModelOutput objects, got {type(declared).__name__} "
                    f"for {name!r}"
                )
        if declared.quantity != quantity:
            raise ValueError(
                f"requested input {name!r} has quantity {quantity!r}, not {declared.quantity!r}: declare "
                f"ModelOutput(quantity={quantity!r}, unit=...)"
            )
        if bool(declared.per_atom) != per_atom:
            kind = "per atom" if per_atom else "per structure"
            raise ValueError(f"requested input {name!r} is {kind}: declare it with per_atom={per_atom}")
        if declared.properties and list(declared.properties) != properties:
            raise ValueError(
                f"requested input {name!r} has the properties {properties}, not {list(declared.properties)}: "
                "leave properties out"
            )
        unit = "" if quantity == "" else declared.unit
        _check_quantity_unit(f"requested input {name!r}", quantity, unit, table, "the values the model wants")
        checked[name] = ModelOutput(quantity, unit, per_atom, list(properties))
    return checked


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
    # what the model requests besides positions, types and cell (from its requested_inputs(),
    # filled in by export): name in INPUTS -> ModelOutput(quantity, unit the model wants, ...)
    inputs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # a message-passing model that calls system.exchange_ghosts(features) after each layer: engines
    # with ghost atoms (LAMMPS on several ranks) need them only out to the largest cutoff
    ghost_exchange: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the problem and the fix for an inconsistent declaration."""
        from .units import DIMENSIONS_LENGTH, check_dimension, unit_table

        table = unit_table()
        if not self.outputs:
            raise ValueError("ModelCapabilities.outputs is empty: declare at least one output")
        for name, output in self.outputs.items():
            base = split_variant(name)[0]
            if base not in STANDARD_OUTPUTS and "::" not in base:
                raise ValueError(
                    f"output name {name!r} is neither standard ({', '.join(STANDARD_OUTPUTS)}) "
                    "nor namespaced: call it '<vendor>::<name>' (variants: '<output>/<variant>')"
                )
            if base != name:
                _check_variant_name(name)
            if base == "energy" and output.quantity != "energy":
                raise ValueError(f"output {name!r} must have quantity 'energy', not {output.quantity!r}")
            _check_quantity_unit(f"output {name!r}", output.quantity, output.unit, table)
        check_inputs_declaration(self.inputs)
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
        if not isinstance(self.ghost_exchange, bool):
            raise ValueError(f"ghost_exchange must be True or False, got {self.ghost_exchange!r}")

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
            "inputs": {
                name: {"quantity": value.quantity, "unit": value.unit, "per_atom": bool(value.per_atom)}
                for name, value in self.inputs.items()
            },
            "ghost_exchange": bool(self.ghost_exchange),
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
            inputs={
                name: ModelOutput(
                    quantity=str(value["quantity"]),
                    unit=str(value["unit"]),
                    per_atom=bool(value["per_atom"]),
                    properties=list(INPUTS[name][2]) if name in INPUTS else [],
                )
                for name, value in data.get("inputs", {}).items()
            },
            ghost_exchange=data.get("ghost_exchange", False),  # validate() refuses a non-boolean
        )

    def variants(self) -> Dict[str, List[str]]:
        """{output: [its variants]} for the outputs that have variants ('energy': ['ccsdt'])."""
        found: Dict[str, List[str]] = {}
        for name in self.outputs:
            base, variant = split_variant(name)
            if variant:
                found.setdefault(base, []).append(variant)
        return found


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
