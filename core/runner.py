"""Running an exported model from a Python engine (ASE, i-PI, the command line).

`ModelRunner` turns structures into the entry point's tensors: it builds the neighbor lists the
model asks for (in the engine's length unit, reusing them across MD steps through a Verlet skin)
and hands back numpy arrays in the engine's units. All physics stays in the entry point.

Where the lists are built (`neighbor_backend`): "numpy", on the host (vesin, core/neighbors.py),
the path of every CPU run; "torch", as tensors on the model's device (vesin-torch), with the
Verlet-skin check and the strict lists' filter there too, so that a GPU step copies the positions
to the device once and the results back once, and no per-pair array crosses the bus; "auto" (the
default) takes "torch" for a CUDA device and "numpy" otherwise. The environment variable
ATOMPLUG_NEIGHBOR_BACKEND sets the choice for runners that do not name one (e.g. to run a whole
test suite on the torch path on a CPU).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from .archive import LoadedModel, check_device, load_model
from .errors import describe_model_error, first_line
from .neighbors import (
    VESIN_TORCH_MISSING,
    DeviceNeighborListCache,
    DeviceTrajectoryCaches,
    NeighborListCache,
    TrajectoryCaches,
    _TorchBuilder,
    _vesin_torch,
    compute_pairs,
    vesin_torch_available,
)
from .units import engine_quantity_units


@dataclasses.dataclass
class Structure:
    """Plain arrays of one structure: atomic numbers (or model types), positions, cell rows, pbc."""

    types: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    # the model's requested inputs, in the engine's units: {"charges": [n] or [n, P], "total_charge": scalar}
    inputs: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        types = np.asarray(self.types).reshape(-1)
        if types.size and not np.all(types == np.clip(np.round(types), -(2**31), 2**31 - 1)):
            bad = types[types != np.clip(np.round(types), -(2**31), 2**31 - 1)][0]
            raise ValueError(
                f"atom type {bad!r} is not a 32-bit integer: types are atomic numbers (or the model's "
                "integer type labels)"
            )  # checked before the cast to int32, which would wrap 2**32 + 18 into argon
        self.types = np.ascontiguousarray(types, dtype=np.int32)
        self.positions = np.ascontiguousarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.ascontiguousarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.array(np.broadcast_to(self.pbc, (3,)), dtype=bool)
        if self.types.shape[0] != self.positions.shape[0]:
            raise ValueError(
                f"{self.types.shape[0]} types for {self.positions.shape[0]} positions: give one type per atom"
            )

    @classmethod
    def from_atoms(cls, atoms: Any, input_names: Sequence[str] = ()) -> "Structure":
        """From an `ase.Atoms` (atomic numbers are the types), with the inputs named (ASE's units;
        see inputs_from_atoms)."""
        inputs = inputs_from_atoms(atoms, input_names) if input_names else {}
        return cls(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, inputs)

    def __len__(self) -> int:
        return self.positions.shape[0]


# Where an ase.Atoms keeps each input (ASE's units: amu, Angstrom/ASE time, e). Total charge and
# spin multiplicity live in atoms.info under the names fairchem and MACE users already use.
ATOMS_INPUTS = {
    "masses": "atoms.set_masses(...)",
    "velocities": "atoms.set_velocities(...) (or MaxwellBoltzmannDistribution)",
    "charges": "atoms.set_initial_charges(...) (or an extxyz 'initial_charges' column)",
    "total_charge": 'atoms.info["charge"]',
    "spin_multiplicity": 'atoms.info["spin"] (the spin multiplicity 2S+1: 1 for a singlet)',
}


def inputs_from_atoms(atoms: Any, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The named inputs of an ase.Atoms, in ASE's units. A missing total charge or spin is an
    error naming where to put it: no default would be right for every structure."""
    inputs: Dict[str, np.ndarray] = {}
    for name in names:
        if name == "masses":
            inputs[name] = np.asarray(atoms.get_masses(), dtype=np.float64)
        elif name == "velocities":
            inputs[name] = np.asarray(atoms.get_velocities(), dtype=np.float64)
        elif name == "charges":
            if not atoms.has("initial_charges"):
                raise ValueError(
                    f"the model needs per-atom charges and these atoms have none: set them with {ATOMS_INPUTS[name]}"
                )
            inputs[name] = np.asarray(atoms.get_initial_charges(), dtype=np.float64)
        elif name in ("total_charge", "spin_multiplicity"):
            key = "charge" if name == "total_charge" else "spin"
            if key not in atoms.info:
                raise ValueError(
                    f"the model needs the {name.replace('_', ' ')} and atoms.info has no {key!r}: set "
                    f"{ATOMS_INPUTS[name]}"
                )
            try:
                value = float(atoms.info[key])
            except (TypeError, ValueError):
                raise ValueError(
                    f'atoms.info["{key}"] = {atoms.info[key]!r} is not a number: set {ATOMS_INPUTS[name]} to a number'
                ) from None
            inputs[name] = np.array([value], dtype=np.float64)
        else:
            raise ValueError(f"unknown input {name!r}")
    return inputs


def describe_types(types: Sequence[int]) -> str:
    """'H (1), O (8)': atomic numbers with their element symbols, for error messages."""
    from ase.data import chemical_symbols

    labels = []
    for atomic_type in types:
        atomic_type = int(atomic_type)
        if 0 < atomic_type < len(chemical_symbols):
            labels.append(f"{chemical_symbols[atomic_type]} ({atomic_type})")
        else:
            labels.append(str(atomic_type))
    return ", ".join(labels)


NEIGHBOR_BACKENDS = ("auto", "numpy", "torch")
NEIGHBOR_BACKEND_VARIABLE = "ATOMPLUG_NEIGHBOR_BACKEND"


def choose_neighbor_backend(requested: Optional[str], device: torch.device) -> str:
    """Where the lists are built for `requested` ("auto", "numpy" or "torch"; None: the
    environment variable ATOMPLUG_NEIGHBOR_BACKEND, else "auto") on `device`: "numpy" or "torch"."""
    where = "neighbor_backend"
    if requested is None:
        requested = os.environ.get(NEIGHBOR_BACKEND_VARIABLE, "") or "auto"
        where = NEIGHBOR_BACKEND_VARIABLE
    if requested not in NEIGHBOR_BACKENDS:
        raise ValueError(f"{where} must be one of {', '.join(NEIGHBOR_BACKENDS)}, got {requested!r}")
    if requested == "auto":
        if device.type != "cuda":
            return "numpy"
        if vesin_torch_available():
            return "torch"
        warnings.warn(
            f"{VESIN_TORCH_MISSING}: until then the neighbor lists of this {device} model are built on the CPU "
            "and copied to the device at every step",
            RuntimeWarning,
            stacklevel=3,
        )
        return "numpy"
    if requested == "torch":
        _vesin_torch()  # an ImportError naming the fix, now rather than at the first step
    return requested


def as_structure(item: Any, input_names: Sequence[str] = ()) -> Structure:
    if isinstance(item, Structure):
        return item
    if hasattr(item, "get_atomic_numbers") and hasattr(item, "cell"):
        return Structure.from_atoms(item, input_names)
    raise TypeError(f"expected an ase.Atoms or atomplug Structure, got {type(item).__name__}")


class ModelRunner:
    """Evaluate a model on structures given in an engine's units (default: ASE's eV and Angstrom)."""

    def __init__(
        self,
        model: Union[str, os.PathLike, LoadedModel],
        *,
        length_unit: str = "Angstrom",
        energy_unit: str = "eV",
        skin: float = 0.0,
        device: Optional[str] = None,
        quantity_units: Optional[Dict[str, str]] = None,
        neighbor_backend: Optional[str] = None,
    ):
        self.model = model if isinstance(model, LoadedModel) else load_model(os.fspath(model), device)
        self.device = torch.device(check_device(device or "cpu", self.model.capabilities.supported_devices))
        self.length_unit = length_unit
        self.energy_unit = energy_unit
        try:
            self.requests = self.model.neighbor_requests(length_unit)
            self.model.unit_conversion("eV", energy_unit)
        except Exception as error:
            raise ValueError(
                f"engine units (length {length_unit!r}, energy {energy_unit!r}): {first_line(error)}: give a "
                "length unit as length_unit and an energy unit as energy_unit"
            ) from error
        self.neighbor_backend = choose_neighbor_backend(neighbor_backend, self.device)
        if self.neighbor_backend == "torch":
            self.cache = DeviceNeighborListCache(self.requests, skin=skin)
            self._device_builders = [_TorchBuilder(cutoff, full) for cutoff, full, _strict in self.requests]
            self._device_copies: Dict[str, tuple] = {}  # what stays on the device between steps: see _held
        else:
            self.cache = NeighborListCache(self.requests, skin=skin)
        schema = self.model.module.forward.schema
        arguments = {argument.name for argument in schema.arguments}
        self._takes_non_conservative = "non_conservative" in arguments
        # given only to a model that has inputs or outputs in those units (a model without them is
        # called exactly as before; archives exported before inputs existed take neither argument)
        needs_units = bool(self.model.input_names) or any(
            output.quantity in ("mass", "velocity", "charge", "dipole")
            for output in self.model.capabilities.outputs.values()
        )
        self._takes_inputs = "quantity_units" in arguments and needs_units
        self.quantity_units = dict(quantity_units) if quantity_units is not None else engine_quantity_units("ase")
        self.input_names = self.model.input_names
        self.known_types = np.array(sorted(self.model.capabilities.atomic_types), dtype=np.int32)
        # known[t] for the types up to 4096 (atomic numbers, LAMMPS types): check_types' fast path
        small = self.known_types[(self.known_types >= 0) & (self.known_types < 4096)]
        self._type_known = np.zeros(int(small.max(initial=-1)) + 1, dtype=bool)
        self._type_known[small] = True

    def check_output_request(self, request: str) -> str:
        """A declared output name, or "name/per_atom" for an output the model has per atom."""
        from .contract import PER_ATOM_SUFFIX

        per_atom = request.endswith(PER_ATOM_SUFFIX)
        name = request[: -len(PER_ATOM_SUFFIX)] if per_atom else request
        declared = self.model.capabilities.outputs
        if name not in declared:
            raise ValueError(
                f"output {name!r} is not declared by model {self.model.metadata.name!r}; it declares: "
                f"{', '.join(declared)} (add '{PER_ATOM_SUFFIX}' for per-atom values)"
            )
        if per_atom and not declared[name].per_atom:
            raise ValueError(f"model output {name!r} is per structure only: ask for {name!r}, not {request!r}")
        return request

    def check_types(self, structure: Structure, index: Optional[int] = None) -> None:
        """Unknown elements are named with the elements the model knows, before any work
        (`index`: the structure's place in a batch, named in the message)."""
        types = structure.types
        if types.size and 0 <= types.min() and types.max() < self._type_known.size and self._type_known[types].all():
            return  # the usual case, without np.setdiff1d's sort (~30 us for a small molecule)
        unknown = np.setdiff1d(types, self.known_types)
        if unknown.size:
            where = f"structure {index}: " if index is not None else ""
            raise ValueError(
                f"{where}element(s) {describe_types(unknown)} unknown to this model, which knows "
                f"{describe_types(self.known_types)}: remove those atoms or use a model trained for them"
            )

    def output_name(self, request: str, variant: str = "") -> str:
        """The output to ask for under `variant` (the archive's rule; "" for none)."""
        return self.model.variant_output(request, variant)

    def _input_tensors(self, batch: Sequence[Structure]) -> Dict[str, torch.Tensor]:
        """The requested inputs of a batch, per atom concatenated, per structure stacked."""
        tensors: Dict[str, torch.Tensor] = {}
        for name in self.input_names:
            per_atom = self.model.capabilities.inputs[name].per_atom
            parts = []
            for index, structure in enumerate(batch):
                if name not in structure.inputs:
                    where = f"structure {index}" if len(batch) > 1 else "the structure"
                    raise ValueError(f"the model needs the input {name!r}, which {where} does not have")
                value = np.asarray(structure.inputs[name], dtype=np.float64)
                rows = len(structure) if per_atom else 1
                width = len(self.model.capabilities.inputs[name].properties)
                if value.size != rows * width:
                    where = f"structure {index}" if len(batch) > 1 else "the structure"
                    counted = f"{len(structure)} atoms" if per_atom else "1 structure"
                    raise ValueError(
                        f"the input {name!r} of {where} has {value.size} values for {counted}, expected "
                        f"{rows * width} ({width} per {'atom' if per_atom else 'structure'})"
                    )
                if per_atom:
                    value = value.reshape(len(structure), -1)
                    parts.append(value)
                else:
                    parts.append(value.reshape(1, -1))
            tensors[name] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts))).to(self.device)
        return tensors

    def trajectory_caches(self, max_caches: int = 16):
        """A cache per trajectory (TrajectoryCaches), for an engine that interleaves several
        (i-PI's beads): on the device when the lists are (`neighbor_backend`). Assign it to
        `self.cache`."""
        kind = DeviceTrajectoryCaches if self.neighbor_backend == "torch" else TrajectoryCaches
        return kind(self.requests, skin=self.cache.skin, max_caches=max_caches)

    def neighbor_lists(self, structure: Structure, use_cache: bool) -> List[tuple]:
        if use_cache:
            return self.cache.get(structure.positions, structure.cell, structure.pbc)
        return [
            compute_pairs(structure.positions, structure.cell, structure.pbc, cutoff, full_list)
            for cutoff, full_list, _strict in self.requests
        ]

    def run(
        self,
        structures: Sequence[Any],
        outputs: Sequence[str] = ("energy",),
        *,
        forces: bool = False,
        virial: bool = False,
        atomic_virial: bool = False,
        non_conservative: bool = False,
        gradient_output: str = "energy",
        selected_atoms: Optional[Sequence[int]] = None,
        use_cache: Optional[bool] = None,
    ) -> Dict[str, np.ndarray]:
        """One call of the entry point on a batch of structures.

        Returns numpy arrays: each requested output ([n_structures, n] or, for "name/per_atom",
        [n_atoms, n]), "forces" [n_atoms, 3], "virial" [n_structures, 3, 3], "atomic_virial"
        [n_atoms, 3, 3], and "system_sizes". With `non_conservative`, "forces" and "virial" come
        from the model's non_conservative_forces / non_conservative_stress by the entry point's
        rule (AtomisticModel._virial_source). The neighbor-list cache is used for a single
        structure (MD) unless `use_cache` says otherwise.
        """
        batch = [as_structure(s, self.input_names) for s in structures]
        if not batch:
            raise ValueError("no structures to evaluate")
        for index, structure in enumerate(batch):
            where = f"structure {index}" if len(batch) > 1 else "the structure"
            if len(structure) == 0:
                raise ValueError(f"{where} has no atoms: every structure needs at least one atom")
            self.check_types(structure, index if len(batch) > 1 else None)
        if use_cache is None:
            use_cache = len(batch) == 1
        on_device = self.neighbor_backend == "torch"
        if on_device:
            positions, types, cells, pbcs, sizes, pair_tensors, shift_tensors = self._device_tensors(batch, use_cache)
        else:
            pairs: List[List[np.ndarray]] = [[] for _ in self.requests]
            shifts: List[List[np.ndarray]] = [[] for _ in self.requests]
            offset = 0
            for structure in batch:
                for index, (p, s) in enumerate(self.neighbor_lists(structure, use_cache)):
                    pairs[index].append(p + offset if offset else p)
                    shifts[index].append(s)
                offset += len(structure)

            def tensor(array: np.ndarray) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

            if len(batch) == 1:
                structure = batch[0]
                positions = tensor(structure.positions)
                types = tensor(structure.types)
                cells = tensor(structure.cell[None])
                pbcs = tensor(structure.pbc[None])
                pair_tensors = [tensor(p[0]) for p in pairs]
                shift_tensors = [tensor(s[0]) for s in shifts]
            else:
                positions = tensor(np.concatenate([s.positions for s in batch]))
                types = tensor(np.concatenate([s.types for s in batch]))
                cells = tensor(np.stack([s.cell for s in batch]))
                pbcs = tensor(np.stack([s.pbc for s in batch]))
                pair_tensors = [tensor(np.concatenate(p)) for p in pairs]
                shift_tensors = [tensor(np.concatenate(s)) for s in shifts]
            sizes = torch.tensor([len(s) for s in batch], dtype=torch.int64, device=self.device)
        selected = None
        if selected_atoms is not None:
            selected = torch.as_tensor(np.asarray(selected_atoms, dtype=np.int64), device=self.device)
        arguments = [
            positions,
            types,
            cells,
            pbcs,
            sizes,
            pair_tensors,
            shift_tensors,
            list(outputs),
            selected,
            gradient_output,
            forces,
            virial,
            atomic_virial,
            self.length_unit,
            self.energy_unit,
        ]
        if non_conservative and not self._takes_non_conservative:
            raise ValueError(
                f"non-conservative forces: {self.model.path!r} was exported before the entry point took "
                "non_conservative; export it again with this atomplug"
            )
        if self._takes_inputs:  # left out otherwise: archives exported before them still run
            arguments += [non_conservative, self._input_tensors(batch), self.quantity_units]
        elif non_conservative:
            arguments.append(True)
        try:
            raw = self.model.forward(*arguments)
        except torch.jit.Error as error:
            raise ValueError(describe_model_error(error)) from None
        if on_device:
            result = _to_host(raw)
            result["system_sizes"] = np.array([len(s) for s in batch], dtype=np.int64)
            return result
        result = {key: value.cpu().numpy() for key, value in raw.items()}
        result["system_sizes"] = sizes.cpu().numpy()
        return result

    # -- the lists on the model's device (neighbor_backend "torch") ---------------------------
    def _held(self, key: str, array: np.ndarray) -> torch.Tensor:
        """The device copy of `array`, copied again only when its bytes changed: types, cells,
        pbc and sizes stay on the device across MD steps (the positions alone travel)."""
        held = self._device_copies.get(key)
        if held is not None:
            host, tensor = held
            if (
                host.shape == array.shape
                and host.dtype == array.dtype
                and np.array_equal(host.view(np.uint8), array.view(np.uint8))
            ):
                return tensor
        host = np.array(array, copy=True, order="C")
        tensor = torch.from_numpy(host.copy()).to(self.device)
        self._device_copies[key] = (host, tensor)
        return tensor

    def _device_tensors(self, batch: Sequence[Structure], use_cache: bool):
        """The entry point's tensors with the neighbor lists built on the model's device: the
        positions are copied there once; the lists, the skin check and the filter run there."""
        if len(batch) == 1:
            structure = batch[0]
            host_positions, host_types = structure.positions, structure.types
            host_cells, host_pbcs = structure.cell[None], structure.pbc[None]
        else:
            host_positions = np.concatenate([s.positions for s in batch])
            host_types = np.concatenate([s.types for s in batch])
            host_cells = np.stack([s.cell for s in batch])
            host_pbcs = np.stack([s.pbc for s in batch])
        positions = torch.from_numpy(host_positions).to(self.device)  # the one per-step copy
        types = self._held("types", host_types)
        cells = self._held("cells", host_cells)
        pbcs = self._held("pbcs", host_pbcs)
        sizes = self._held("sizes", np.array([len(s) for s in batch], dtype=np.int64))
        pairs: List[List[torch.Tensor]] = [[] for _ in self.requests]
        shifts: List[List[torch.Tensor]] = [[] for _ in self.requests]
        offset = 0
        for index, structure in enumerate(batch):
            n_atoms = len(structure)
            device_positions = positions if len(batch) == 1 else positions[offset : offset + n_atoms]
            device_cell = cells[index]
            if use_cache:
                lists = self.cache.get(
                    structure.positions, structure.cell, structure.pbc, device_positions, device_cell
                )
            else:
                lists = [
                    build(structure.positions, structure.cell, structure.pbc, device_positions, device_cell)
                    for build in self._device_builders
                ]
            for request, (p, s) in enumerate(lists):
                pairs[request].append(p + offset if offset else p)
                shifts[request].append(s)
            offset += n_atoms
        if len(batch) == 1:
            pair_tensors = [p[0] for p in pairs]
            shift_tensors = [s[0] for s in shifts]
        else:
            pair_tensors = [torch.cat(p) for p in pairs]
            shift_tensors = [torch.cat(s) for s in shifts]
        return positions, types, cells, pbcs, sizes, pair_tensors, shift_tensors


def _to_host(raw: Dict[str, torch.Tensor], together: Optional[bool] = None) -> Dict[str, np.ndarray]:
    """The entry point's results as numpy arrays, in one device-to-host copy per dtype (the
    results of a step: energy, forces, virial... come back together). `together`: whether to
    gather them first (default: for results on an accelerator; on the CPU there is no copy)."""
    groups: Dict[torch.dtype, List[str]] = {}
    for key, value in raw.items():
        groups.setdefault(value.dtype, []).append(key)
    result: Dict[str, np.ndarray] = {}
    for names in groups.values():
        values = [raw[name] for name in names]
        gather = values[0].device.type != "cpu" if together is None else together
        if len(values) == 1 or not gather:
            for name, value in zip(names, values):
                result[name] = value.detach().cpu().numpy()
            continue
        flat = torch.cat([value.detach().reshape(-1) for value in values]).cpu().numpy()
        start = 0
        for name, value in zip(names, values):
            stop = start + value.numel()
            result[name] = flat[start:stop].reshape(tuple(value.shape))
            start = stop
    return result
