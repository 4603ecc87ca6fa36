"""The exported model: `AtomisticModel` (the engine entry point), `export()` and `load_model()`.

One TorchScript archive holds the author's module, its declared capabilities and metadata (JSON,
in the archive's extra files), the unit table, and the one method every engine calls, from
Python or from C++ libtorch, with tensors only. Engines never differentiate by themselves.
"""


import errno
import io
import json
import math
import os
import re
import secrets
import zipfile
from typing import IO, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .evaluate import atomic_virial_from_pairs, pair_vectors, strained
from .options import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions
from .system import NeighborList, System
from .units import conversion_factor_with_table, unit_table

FORMAT_NAME = "atomplug"
FORMAT_VERSION = 1
METADATA_FILE = "atomplug-metadata.json"
MAX_METADATA_BYTES = 16 << 20  # real metadata is a few kB; this bounds what a hostile file can make us read
PER_ATOM_SUFFIX = "/per_atom"


class AtomisticModel(torch.nn.Module):
    """Wraps a model author's module with its capabilities; `forward` is the engine entry point.

    forward(positions [N,3] float, types [N] int32, cells [S,3,3], pbcs [S,3] bool,
            system_sizes [S] int64, neighbor_pairs: one [P,2] int64 per requested list (global
            atom indices), neighbor_shifts: one [P,3] int32 per list, outputs: names, a name
            ending in "/per_atom" asks for per-atom values, selected_atoms: optional global
            indices, gradient_output: the per-structure output to differentiate (usually
            "energy"), compute_forces, compute_virial, compute_atomic_virial,
            length_unit, energy_unit: the engine's units)
      -> {name: values, "forces": [N,3], "virial": [S,3,3], "atomic_virial": [N,3,3]}
    (forces [P,N,3] and virial [P,S,3,3] when gradient_output has P > 1 properties: one
    derivative per property, e.g. for PLUMED collective variables with several components)

    Positions, cells and neighbor lists are in the engine's length unit, results in the engine's
    units (quantity energy -> energy_unit, length -> length_unit, force -> energy/length,
    pressure -> energy/length^3; outputs without a quantity are returned as the model gives them).
    With selected_atoms, per-atom results hold the selected atoms only and per-structure results
    of per-atom-capable outputs are sums over the selected atoms (LAMMPS: local among ghosts).
    """

    # TorchScript reads attribute types from these class-level annotations.
    _cutoffs: List[float]
    _full_lists: List[bool]
    _strict_lists: List[bool]
    _output_names: List[str]
    _output_quantities: List[str]
    _output_units: List[str]
    _output_per_atom: List[bool]
    _output_properties: List[List[str]]
    _atomic_types: List[int]
    _length_unit: str
    _unit_table: Dict[str, List[float]]
    _factor_cache: Dict[str, float]
    _capabilities_json: str
    _metadata_json: str

    def __init__(
        self,
        module: torch.nn.Module,
        capabilities: ModelCapabilities,
        metadata: ModelMetadata,
        requests: Optional[List[NeighborListOptions]] = None,
    ):
        super().__init__()
        capabilities.validate()
        if requests is None:
            requests = _requested_neighbor_lists(module)
        for request in requests:
            if request.cutoff > capabilities.interaction_range:
                raise ValueError(
                    f"the model requests a neighbor list with cutoff {request.cutoff} larger than "
                    f"its declared interaction_range {capabilities.interaction_range}: raise "
                    "interaction_range in ModelCapabilities"
                )
        self.module = module
        self._cutoffs = [float(r.cutoff) for r in requests]
        self._full_lists = [bool(r.full_list) for r in requests]
        self._strict_lists = [bool(r.strict) for r in requests]

        names = list(capabilities.outputs.keys())
        self._output_names = names
        self._output_quantities = [capabilities.outputs[n].quantity for n in names]
        self._output_units = [capabilities.outputs[n].unit for n in names]
        self._output_per_atom = [bool(capabilities.outputs[n].per_atom) for n in names]
        self._output_properties = [list(capabilities.outputs[n].properties) for n in names]
        self._atomic_types = [int(t) for t in capabilities.atomic_types]
        self._length_unit = capabilities.length_unit
        self._unit_table = unit_table()
        self._factor_cache = {}
        self._capabilities_json = json.dumps(capabilities.to_dict(), sort_keys=True)
        self._metadata_json = json.dumps(metadata.to_dict(), sort_keys=True)
        dtype = torch.float64 if capabilities.dtype == "float64" else torch.float32
        self.register_buffer("_dtype_probe", torch.zeros(0, dtype=dtype), persistent=True)
        self.register_buffer(
            "_known_types", torch.tensor(self._atomic_types, dtype=torch.int32), persistent=True
        )

    # ---- small methods engines call once, at setup ------------------------------------------

    @torch.jit.export
    def format_version(self) -> int:
        return 1

    @torch.jit.export
    def capabilities_json(self) -> str:
        return self._capabilities_json

    @torch.jit.export
    def metadata_json(self) -> str:
        return self._metadata_json

    @torch.jit.export
    def atomic_types(self) -> List[int]:
        return self._atomic_types

    @torch.jit.export
    def output_names(self) -> List[str]:
        return self._output_names

    @torch.jit.export
    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        """Factor converting a value in `from_unit` to `to_unit`, from the archive's unit table."""
        key = from_unit + "\n" + to_unit
        if key in self._factor_cache:
            return self._factor_cache[key]
        factor = conversion_factor_with_table(from_unit, to_unit, self._unit_table)
        self._factor_cache[key] = factor
        return factor

    @torch.jit.export
    def neighbor_requests(self, length_unit: str) -> List[Tuple[float, bool, bool]]:
        """(cutoff in `length_unit`, full_list, strict) for each list the model needs, in order."""
        factor = self.unit_conversion(self._length_unit, length_unit)
        requests: List[Tuple[float, bool, bool]] = []
        for index in range(len(self._cutoffs)):
            requests.append((self._cutoffs[index] * factor, self._full_lists[index], self._strict_lists[index]))
        return requests

    @torch.jit.export
    def interaction_range(self, length_unit: str) -> float:
        capabilities_range = self._cutoffs[0] if len(self._cutoffs) > 0 else 0.0
        for cutoff in self._cutoffs:
            capabilities_range = max(capabilities_range, cutoff)
        return capabilities_range * self.unit_conversion(self._length_unit, length_unit)

    # ---- the engine entry point ----------------------------------------------------------------

    def _output_index(self, name: str) -> int:
        for index, known in enumerate(self._output_names):
            if known == name:
                return index
        raise ValueError(
            "the model has no output '" + name + "' (it declares: " + ", ".join(self._output_names)
            + "); ask for one of those"
        )

    def _output_factor(self, index: int, length_unit: str, energy_unit: str) -> float:
        quantity = self._output_quantities[index]
        unit = self._output_units[index]
        if quantity == "energy":
            return self.unit_conversion(unit, energy_unit)
        if quantity == "length":
            return self.unit_conversion(unit, length_unit)
        if quantity == "force":
            return self.unit_conversion(unit, "(" + energy_unit + ")/(" + length_unit + ")")
        if quantity == "pressure":
            return self.unit_conversion(unit, "(" + energy_unit + ")/(" + length_unit + ")^3")
        return 1.0

    def _check_inputs(
        self,
        positions: Tensor,
        types: Tensor,
        cells: Tensor,
        pbcs: Tensor,
        system_sizes: Tensor,
        neighbor_pairs: List[Tensor],
        neighbor_shifts: List[Tensor],
    ):
        n_atoms = positions.shape[0]
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError("positions must have shape [n_atoms, 3], got " + str(positions.shape))
        if not positions.is_floating_point():
            raise ValueError("positions must be floating point")
        if types.shape != (n_atoms,):
            raise ValueError("types must have shape [n_atoms] = [" + str(n_atoms) + "], got " + str(types.shape))
        n_systems = system_sizes.shape[0]
        if n_systems == 0:
            raise ValueError("no systems to evaluate")
        if cells.shape != (n_systems, 3, 3) or pbcs.shape != (n_systems, 3):
            raise ValueError(
                "cells must be [n_systems, 3, 3] and pbcs [n_systems, 3] for " + str(n_systems)
                + " systems, got " + str(cells.shape) + " and " + str(pbcs.shape)
            )
        if int(system_sizes.sum()) != n_atoms:
            raise ValueError("system_sizes add up to " + str(int(system_sizes.sum())) + " atoms, but there are " + str(n_atoms))
        if bool((system_sizes <= 0).any()):
            raise ValueError("a system has no atoms: every structure needs at least one atom")
        finite = torch.isfinite(positions).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ValueError(
                "positions of " + str(bad.shape[0]) + " atom(s) are NaN or infinite (first: atom "
                + str(int(bad[0])) + "): the structure is broken, check the engine's input or a "
                "diverging simulation (time step too large?)"
            )
        if not bool(torch.isfinite(cells).all()):
            raise ValueError("the cell contains NaN or infinite values: check the engine's cell (box) input")
        if bool(pbcs.any()):
            self._check_periodic_cells(cells, pbcs.to(torch.bool))
        known = torch.isin(types.to(torch.int32), self._known_types)
        if not bool(known.all()):
            unknown: List[int] = torch.unique(types[~known]).to(torch.int64).tolist()
            raise ValueError(
                "atom types " + str(unknown) + " are unknown to this model, which knows "
                + str(self._atomic_types) + ": remove those atoms or use a model trained for them"
            )
        if len(neighbor_pairs) != len(self._cutoffs) or len(neighbor_shifts) != len(self._cutoffs):
            raise ValueError(
                "the model needs " + str(len(self._cutoffs)) + " neighbor list(s), got "
                + str(len(neighbor_pairs)) + " pair and " + str(len(neighbor_shifts)) + " shift tensors"
            )
        for index in range(len(neighbor_pairs)):
            pairs = neighbor_pairs[index]
            shifts = neighbor_shifts[index]
            if pairs.dim() != 2 or pairs.shape[1] != 2 or shifts.shape != (pairs.shape[0], 3):
                raise ValueError(
                    "neighbor list " + str(index) + ": pairs must be [P, 2] and shifts [P, 3], got "
                    + str(pairs.shape) + " and " + str(shifts.shape)
                )
            if pairs.shape[0] > 0:
                if int(pairs.min()) < 0 or int(pairs.max()) >= n_atoms:
                    raise ValueError("neighbor list " + str(index) + " has atom indices outside [0, " + str(n_atoms) + ")")

    def _check_periodic_cells(self, cells: Tensor, pbcs: Tensor):
        """Every periodic direction needs a non-zero cell vector, and the periodic vectors together
        a non-zero volume (area): a flat cell has no images to speak of. Plain float arithmetic:
        ~6 us, where tensor operations on 3x3 matrices cost ~50 us per call."""
        values: List[List[List[float]]] = cells.to(torch.float64).tolist()
        flags: List[List[bool]] = pbcs.tolist()
        n_systems = len(values)
        for system in range(n_systems):
            vectors: List[List[float]] = []
            norms: List[float] = []
            for axis in range(3):
                if flags[system][axis]:
                    vector = values[system][axis]
                    # scaled to its largest component (area and volume are compared relative to the
                    # norms, so nothing changes) so that the products below cannot overflow for huge cells
                    largest = max(abs(vector[0]), max(abs(vector[1]), abs(vector[2])))
                    if largest > 0.0:
                        vector = [vector[0] / largest, vector[1] / largest, vector[2] / largest]
                    norm = math.sqrt(vector[0] * vector[0] + vector[1] * vector[1] + vector[2] * vector[2])
                    if norm == 0.0:
                        raise ValueError(
                            _structure_prefix(system, n_systems) + "cell vector " + str(axis) + " is zero but the "
                            "system is periodic along it: set a cell vector or make that direction non-periodic"
                        )
                    vectors.append(vector)
                    norms.append(norm)
            measure = 1.0  # the area or volume the periodic vectors span, relative to `scale`
            scale = 1.0
            if len(vectors) == 2:
                a = vectors[0]
                b = vectors[1]
                cross = [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
                measure = math.sqrt(cross[0] * cross[0] + cross[1] * cross[1] + cross[2] * cross[2])
                scale = norms[0] * norms[1]
            elif len(vectors) == 3:
                a = vectors[0]
                b = vectors[1]
                c = vectors[2]
                measure = abs(
                    a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                    + a[2] * (b[0] * c[1] - b[1] * c[0])
                )
                scale = norms[0] * norms[1] * norms[2]
            if measure <= 1e-10 * scale:
                raise ValueError(
                    _structure_prefix(system, n_systems) + "the periodic cell vectors are linearly dependent (the "
                    "cell is flat): give a cell with a non-zero volume in its periodic directions"
                )

    def forward(
        self,
        positions: Tensor,
        types: Tensor,
        cells: Tensor,
        pbcs: Tensor,
        system_sizes: Tensor,
        neighbor_pairs: List[Tensor],
        neighbor_shifts: List[Tensor],
        outputs: List[str],
        selected_atoms: Optional[Tensor],
        gradient_output: str,
        compute_forces: bool,
        compute_virial: bool,
        compute_atomic_virial: bool,
        length_unit: str,
        energy_unit: str,
    ) -> Dict[str, Tensor]:
        self._check_inputs(positions, types, cells, pbcs, system_sizes, neighbor_pairs, neighbor_shifts)
        n_atoms = positions.shape[0]
        n_systems = system_sizes.shape[0]
        dtype = self._dtype_probe.dtype
        device = positions.device
        system_of_atom = torch.repeat_interleave(
            torch.arange(n_systems, device=device), system_sizes.to(device)
        )

        selected: Optional[Tensor] = None
        if selected_atoms is not None:
            selected = torch.unique(selected_atoms.to(torch.int64))
            if selected.shape[0] > 0 and (int(selected[0]) < 0 or int(selected[-1]) >= n_atoms):
                raise ValueError("selected_atoms has indices outside [0, " + str(n_atoms) + ")")

        # Which outputs to ask the model for, and how (per atom or per structure).
        need_gradients = compute_forces or compute_virial or compute_atomic_virial
        requests: List[str] = []
        for request in outputs:
            requests.append(request)
        if need_gradients and gradient_output not in requests:
            requests.append(gradient_output)
        model_outputs: Dict[str, ModelOutput] = {}
        for request in requests:
            name, per_atom = _split_request(request)
            index = self._output_index(name)
            capable = self._output_per_atom[index]
            if per_atom and not capable:
                raise ValueError(
                    "the model cannot compute '" + name + "' per atom (it declares it per structure only): ask for '"
                    + name + "' without '/per_atom'"
                )
            if selected is not None and not per_atom and not capable and self._output_quantities[index] == "energy":
                raise ValueError(
                    "this engine evaluates a subset of atoms (e.g. LAMMPS local atoms among ghosts), "
                    "which needs per-atom '" + name + "'; the model declares it per structure only: "
                    "export it with ModelOutput(per_atom=True)"
                )
            ask_per_atom = per_atom or (capable and selected is not None)
            if name in model_outputs:
                ask_per_atom = ask_per_atom or model_outputs[name].per_atom
            model_outputs[name] = ModelOutput(
                self._output_quantities[index], self._output_units[index], ask_per_atom, self._output_properties[index]
            )

        # Engine units -> model units; strain for the virial; everything differentiable.
        length_factor = self.unit_conversion(length_unit, self._length_unit)
        engine_positions = positions.detach()
        if compute_forces:
            engine_positions = engine_positions.clone().requires_grad_(True)
        model_positions = engine_positions.to(dtype)
        model_cells = cells.detach().to(dtype=dtype, device=device)
        if length_factor != 1.0:
            model_positions = model_positions * length_factor
            model_cells = model_cells * length_factor
        strain = torch.zeros((n_systems, 3, 3), dtype=dtype, device=device)
        if compute_virial:
            strain.requires_grad_(True)
            model_positions, model_cells = strained(model_positions, model_cells, strain, system_of_atom, n_systems)

        vectors: List[Tensor] = []
        for index in range(len(neighbor_pairs)):
            pair_vector = pair_vectors(
                model_positions, model_cells, neighbor_pairs[index].to(device), neighbor_shifts[index].to(device),
                system_of_atom, n_systems,
            )
            if compute_atomic_virial and not pair_vector.requires_grad:
                pair_vector.requires_grad_(True)
            vectors.append(pair_vector)

        systems = self._build_systems(
            types, model_positions, model_cells, pbcs, system_sizes, neighbor_pairs, neighbor_shifts, vectors,
            system_of_atom, n_systems,
        )
        raw = self.module(systems, model_outputs, selected)

        results: Dict[str, Tensor] = {}
        for name, requested in model_outputs.items():
            if name not in raw:
                raise ValueError(
                    "the model did not return the output '" + name + "' it was asked for: fix its forward()"
                )
            index = self._output_index(name)
            values = raw[name]
            n_properties = len(self._output_properties[index])
            if values.dim() != 2 or (n_properties > 0 and values.shape[1] != n_properties):
                raise ValueError(
                    "the model returned '" + name + "' with shape " + str(values.shape)
                    + ", expected [rows, " + (str(n_properties) if n_properties > 0 else "n_properties")
                    + "]: fix its forward()"
                )
            if not values.is_floating_point():
                raise ValueError("the model returned '" + name + "' as a non-floating point tensor")
            factor = self._output_factor(index, length_unit, energy_unit)
            if factor != 1.0:
                values = values * factor
            if requested.per_atom:
                if selected is not None and values.shape[0] == n_atoms:
                    values = values.index_select(0, selected)
                elif values.shape[0] != (n_atoms if selected is None else selected.shape[0]):
                    raise ValueError(
                        "the model returned per-atom '" + name + "' with " + str(values.shape[0])
                        + " rows for " + str(n_atoms) + " atoms: fix its forward()"
                    )
                if name + "/per_atom" in requests:
                    results[name + "/per_atom"] = values
                if name in requests:
                    owners = system_of_atom if selected is None else system_of_atom.index_select(0, selected)
                    summed = torch.zeros((n_systems, values.shape[1]), dtype=values.dtype, device=device)
                    results[name] = summed.index_add(0, owners, values)
            else:
                if values.shape[0] != n_systems:
                    raise ValueError(
                        "the model returned '" + name + "' with " + str(values.shape[0]) + " rows for "
                        + str(n_systems) + " systems: fix its forward()"
                    )
                results[name] = values

        if need_gradients:
            target = results[gradient_output]
            n_targets = target.shape[1]
            if n_targets != 1 and compute_atomic_virial:
                raise ValueError(
                    "the per-atom virial needs a single-valued output, '" + gradient_output + "' has "
                    + str(n_targets) + " properties"
                )
            inputs: List[Tensor] = []
            if compute_forces:
                inputs.append(engine_positions)
            if compute_virial:
                inputs.append(strain)
            if compute_atomic_virial:
                for vector in vectors:
                    inputs.append(vector)
            # One backward pass per property of the output (a single one for an energy).
            forces: List[Tensor] = []
            virials: List[Tensor] = []
            gradients: List[Optional[Tensor]] = []
            for k in range(n_targets):
                gradients = []
                if target.requires_grad:
                    column = target if n_targets == 1 else target[:, k]
                    gradients = torch.autograd.grad(
                        [column.sum()], inputs, retain_graph=k + 1 < n_targets, allow_unused=True
                    )
                else:
                    for _ in inputs:
                        gradients.append(None)
                position = 0
                if compute_forces:
                    gradient = gradients[position]
                    position += 1
                    if gradient is None:
                        forces.append(torch.zeros_like(positions, dtype=torch.float64))
                    else:
                        forces.append(-gradient.to(torch.float64))
                if compute_virial:
                    gradient = gradients[position]
                    position += 1
                    if gradient is None:
                        virials.append(torch.zeros((n_systems, 3, 3), dtype=torch.float64, device=device))
                    else:
                        virials.append(-gradient.to(torch.float64))
            # A single-valued output gives forces [N, 3] and virial [S, 3, 3]; an output with
            # P > 1 properties gives forces [P, N, 3] and virial [P, S, 3, 3].
            if compute_forces:
                results["forces"] = forces[0] if n_targets == 1 else torch.stack(forces)
            if compute_virial:
                results["virial"] = virials[0] if n_targets == 1 else torch.stack(virials)
            if compute_atomic_virial:
                results["atomic_virial"] = atomic_virial_from_pairs(
                    n_atoms, neighbor_pairs, vectors, gradients[len(inputs) - len(vectors):], torch.float64
                )

        final: Dict[str, Tensor] = {}
        for key, value in results.items():
            if key in requests or key == "forces" or key == "virial" or key == "atomic_virial":
                final[key] = value.detach().to(torch.float64)
        # NaN or infinite results are never physics: stop here rather than feed them to an MD run.
        # One sum per output and one synchronisation (~20 us); NaN and infinities survive a sum.
        total = torch.zeros((), dtype=torch.float64, device=device)
        for value in final.values():
            total = total + value.sum()
        if not bool(torch.isfinite(total)):
            for key, value in final.items():
                if not bool(torch.isfinite(value).all()):
                    raise ValueError(
                        self._non_finite_message(
                            key, value, positions, pbcs, neighbor_pairs, vectors, system_sizes, system_of_atom,
                            selected, length_factor, length_unit,
                        )
                    )
            raise ValueError(
                "the model returned values too large to add up (above 1e308): the structure is outside what "
                "the model can handle, or the model is broken; check the structure"
            )
        return final

    def _non_finite_message(
        self,
        name: str,
        values: Tensor,
        positions: Tensor,
        pbcs: Tensor,
        neighbor_pairs: List[Tensor],
        vectors: List[Tensor],
        system_sizes: Tensor,
        system_of_atom: Tensor,
        selected: Optional[Tensor],
        length_factor: float,
        length_unit: str,
    ) -> str:
        """Name the atoms behind NaN or infinite results: two atoms (almost) on top of each other
        are the usual cause, otherwise the atoms whose values are not finite."""
        n_atoms = positions.shape[0]
        n_systems = system_sizes.shape[0]
        offsets = torch.cumsum(system_sizes, 0) - system_sizes
        text = "the model returned NaN or infinite values in '" + name + "'"
        if name in self._output_names and self._output_quantities[self._output_index(name)] == "pressure":
            if not bool(pbcs.to(torch.bool).all()):
                return (
                    text + ", a pressure, which has no meaning without a cell periodic in all three "
                    "directions: ask for it on 3D periodic structures only"
                )
        closest = -1.0
        first = -1
        second = -1
        relative = 1.0
        for index in range(len(vectors)):
            if vectors[index].shape[0] > 0:
                distances = torch.linalg.vector_norm(vectors[index].detach().to(torch.float64), dim=1)
                k = int(torch.argmin(distances))
                distance = float(distances[k])
                if first < 0 or distance < closest:
                    closest = distance
                    first = int(neighbor_pairs[index][k, 0])
                    second = int(neighbor_pairs[index][k, 1])
                    relative = distance / self._cutoffs[index]
        if first >= 0 and relative < 0.01:
            system = int(system_of_atom[first])
            offset = int(offsets[system])
            return (
                text + ": " + _structure_prefix(system, n_systems) + "atoms " + str(first - offset) + " and "
                + str(second - offset) + " are only " + _number_text(closest / length_factor) + " " + length_unit
                + " apart (overlapping atoms, at " + _position_text(positions, first) + " " + length_unit
                + "): remove the duplicate atom or move the atoms apart"
            )
        fix = (
            ": the model cannot handle this structure (atoms too close, or far from its training data?) "
            + "or is broken; check the structure"
        )
        atoms = torch.zeros(0, dtype=torch.int64)
        if name == "forces":  # [N, 3], or [P, N, 3] for several properties
            atoms = torch.nonzero((~torch.isfinite(values.reshape(-1, n_atoms, 3))).any(dim=2).any(dim=0)).flatten()
        elif name == "atomic_virial":
            atoms = torch.nonzero((~torch.isfinite(values.reshape(n_atoms, 9))).any(dim=1)).flatten()
        elif name.endswith("/per_atom"):
            rows = torch.nonzero((~torch.isfinite(values)).any(dim=1)).flatten()
            atoms = rows if selected is None else selected.index_select(0, rows)
        if atoms.shape[0] > 0:
            atom = int(atoms[0])
            system = int(system_of_atom[atom])
            return (
                text + " for " + str(atoms.shape[0]) + " atom(s), first " + _structure_prefix(system, n_systems)
                + "atom " + str(atom - int(offsets[system])) + " at " + _position_text(positions, atom) + " "
                + length_unit + fix
            )
        # a per-structure value ([S, p], or the virial [S, 3, 3] / [P, S, 3, 3])
        if name == "virial":
            bad = (~torch.isfinite(values.reshape(-1, n_systems, 9))).any(dim=2).any(dim=0)
        else:
            bad = (~torch.isfinite(values.reshape(n_systems, -1))).any(dim=1)
        systems = torch.nonzero(bad).flatten()
        if n_systems > 1 and systems.shape[0] > 0:
            return text + " for structure " + str(int(systems[0])) + fix
        return text + fix

    def _build_systems(
        self,
        types: Tensor,
        positions: Tensor,
        cells: Tensor,
        pbcs: Tensor,
        system_sizes: Tensor,
        neighbor_pairs: List[Tensor],
        neighbor_shifts: List[Tensor],
        vectors: List[Tensor],
        system_of_atom: Tensor,
        n_systems: int,
    ) -> List[System]:
        types = types.to(torch.int32)
        pbcs = pbcs.to(torch.bool)
        options: List[NeighborListOptions] = []
        for index in range(len(self._cutoffs)):
            options.append(NeighborListOptions(self._cutoffs[index], self._full_lists[index], self._strict_lists[index]))
        systems: List[System] = []
        if n_systems == 1:
            system = System(types, positions, cells[0], pbcs[0])
            for index in range(len(options)):
                system.add_neighbor_list(
                    NeighborList(options[index], neighbor_pairs[index], neighbor_shifts[index], vectors[index])
                )
            systems.append(system)
            return systems
        offsets = torch.cumsum(system_sizes, 0) - system_sizes
        sizes: List[int] = system_sizes.tolist()
        starts: List[int] = offsets.tolist()
        pair_systems: List[Tensor] = []
        for index in range(len(options)):
            pair_systems.append(system_of_atom.index_select(0, neighbor_pairs[index][:, 0]))
        for s in range(n_systems):
            start = starts[s]
            stop = start + sizes[s]
            system = System(types[start:stop], positions[start:stop], cells[s], pbcs[s])
            for index in range(len(options)):
                mask = pair_systems[index] == s
                system.add_neighbor_list(
                    NeighborList(
                        options[index],
                        neighbor_pairs[index][mask] - start,
                        neighbor_shifts[index][mask],
                        vectors[index][mask],
                    )
                )
            systems.append(system)
        return systems


def _structure_prefix(system: int, n_systems: int) -> str:
    """'structure 3: ' in a batch of several structures, nothing for a single one."""
    if n_systems > 1:
        return "structure " + str(system) + ": "
    return ""


def _position_text(positions: Tensor, atom: int) -> str:
    values: List[float] = positions[atom].detach().to(torch.float64).tolist()
    return "(" + ", ".join([_number_text(value) for value in values]) + ")"


def _number_text(value: float) -> str:
    """A number for an error message: 4 decimals (TorchScript's str() prints all 17 digits)."""
    if not math.isfinite(value) or abs(value) >= 1e12 or (value != 0.0 and abs(value) < 1e-4):
        return str(value)
    scaled = int(round(abs(value) * 10000.0))
    text = ("-" if value < 0.0 and scaled > 0 else "") + str(scaled // 10000)
    fraction = scaled % 10000
    if fraction > 0:
        text = text + "." + ("000" + str(fraction))[-4:].rstrip("0")
    return text


def _split_request(request: str) -> Tuple[str, bool]:
    """'energy/per_atom' -> ('energy', True); 'energy' -> ('energy', False)."""
    if request.endswith("/per_atom"):
        return request[: len(request) - len("/per_atom")], True
    return request, False


def _requested_neighbor_lists(module: torch.nn.Module) -> List[NeighborListOptions]:
    if not hasattr(module, "requested_neighbor_lists"):
        raise ValueError(
            "the module has no requested_neighbor_lists() method: add one returning a list of "
            "NeighborListOptions (an empty list if it needs none)"
        )
    requests = list(module.requested_neighbor_lists())
    for request in requests:
        for attribute in ("cutoff", "full_list", "strict"):
            if not hasattr(request, attribute):
                raise ValueError(
                    "requested_neighbor_lists() must return NeighborListOptions objects, got "
                    f"{type(request).__name__}"
                )
    return requests


# ---- export -----------------------------------------------------------------------------------


def export(
    module: torch.nn.Module,
    path: str,
    capabilities: ModelCapabilities,
    metadata: Optional[ModelMetadata] = None,
) -> None:
    """Script `module`, wrap it with its capabilities and metadata, check it, save one archive.

    The file is written to a temporary name and renamed at the end, so a failed export never
    leaves a half-written model behind.
    """
    metadata = metadata if metadata is not None else ModelMetadata()
    _check_parameter_dtype(module, capabilities.dtype)
    try:
        scripted_module = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
    except Exception as error:  # TorchScript's own error text says where
        raise ValueError(f"TorchScript could not compile the model module: {error}") from error
    requests = _requested_neighbor_lists(module)
    scripted = torch.jit.script(AtomisticModel(scripted_module, capabilities, metadata, requests))
    scripted.eval()
    _smoke_test(scripted, capabilities)

    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "capabilities": capabilities.to_dict(),
        "metadata": metadata.to_dict(),
        "torch_version": torch.__version__,
    }
    # Serialized in memory first: torch aborts the whole process (an exception thrown in a
    # destructor) when its own file writer hits a full disk; Python's writes raise OSError instead.
    archive = io.BytesIO()
    torch.jit.save(scripted, archive, _extra_files={METADATA_FILE: json.dumps(header, sort_keys=True)})
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"cannot create the directory {directory!r} for the model ({error.strerror or error}): choose a "
            "directory you may write to", error.errno,
        ) from error
    write_atomically(path, lambda handle: handle.write(archive.getbuffer()), tag="export", what="the model")


class OutputError(OSError):
    """A file atomplug writes could not be written; the message names the file and the fix."""

    def __init__(self, message: str, code: Optional[int] = None):
        super().__init__(message)
        self.errno = code


_FIXES = {
    errno.ENOSPC: "free disk space or write elsewhere",
    errno.EFBIG: "free disk space, raise the file size limit (ulimit -f) or write elsewhere",
    errno.EDQUOT: "free space within your disk quota or write elsewhere",
    errno.EACCES: "choose a directory you may write to",
    errno.EPERM: "choose a directory you may write to",
    errno.EROFS: "choose a writable file system",
}


def write_atomically(path: str, write: Callable[[IO], object], *, tag: str, what: str, binary: bool = True) -> None:
    """Write `path` through `write(handle)` into a temporary file in the same directory, renamed
    over `path` only once complete: a failure (disk full, quota, a killed process) leaves `path`
    as it was, never half-written, and removes the temporary file. Raises OutputError."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OutputError(
            f"cannot write {what} to {path!r}: the directory {directory!r} does not exist: create it first",
            errno.ENOENT,
        )
    temporary: Optional[str] = None
    try:
        for _attempt in range(100):
            candidate = os.path.join(directory, f".atomplug-{tag}-{secrets.token_hex(6)}.tmp")
            try:
                # mode 0o666 minus the umask: the permissions any new file gets (mkstemp's 0o600 would not)
                descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            temporary = candidate
            break
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary file name")
        with os.fdopen(descriptor, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        temporary = None
    except OSError as error:
        reason = error.strerror or str(error)
        fix = _FIXES.get(error.errno, "write elsewhere")
        raise OutputError(
            f"could not write {what} to {path!r} ({reason}): {fix}; {path!r} was left as it was", error.errno
        ) from error
    finally:
        if temporary is not None:
            try:
                os.unlink(temporary)
            except OSError:
                pass


def _check_parameter_dtype(module: torch.nn.Module, dtype: str) -> None:
    expected = torch.float64 if dtype == "float64" else torch.float32
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if tensor.is_floating_point() and tensor.dtype != expected:
            raise ValueError(
                f"parameter/buffer {name!r} is {tensor.dtype} but the capabilities declare dtype "
                f"{dtype!r}: call module.to(torch.{dtype}) before export, or declare dtype="
                f"{str(tensor.dtype).replace('torch.', '')!r}"
            )


def _smoke_test_lists(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, requests) -> Tuple[List, List]:
    """The pairs and shifts of every requested neighbor list, as the entry point takes them."""
    from .neighbors import compute_pairs

    pairs, shifts = [], []
    for cutoff, full_list, _strict in requests:
        p, s = compute_pairs(positions.numpy(), cell.numpy(), pbc.numpy(), cutoff, full_list)
        pairs.append(torch.from_numpy(p))
        shifts.append(torch.from_numpy(s))
    return pairs, shifts


def _smoke_test(scripted: torch.jit.ScriptModule, capabilities: ModelCapabilities) -> None:
    """Run the entry point once on a small cluster with every declared output (and forces and
    virial when there is an energy), so that a model whose outputs do not match its
    declaration fails at export rather than in a user's simulation."""
    generator = torch.Generator().manual_seed(20261124)
    types = list(capabilities.atomic_types)
    while len(types) < 4:
        types = types + list(capabilities.atomic_types)
    n_atoms = len(types)
    requests = scripted.neighbor_requests(capabilities.length_unit)
    box = max([r[0] for r in requests] + [1.0])
    positions = (torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) * box).contiguous()
    cell = torch.zeros((3, 3), dtype=torch.float64)
    pbc = torch.zeros(3, dtype=torch.bool)
    pairs, shifts = _smoke_test_lists(positions, cell, pbc, requests)
    outputs = []
    for name, output in capabilities.outputs.items():
        outputs.append(name)
        if output.per_atom:
            outputs.append(name + PER_ATOM_SUFFIX)
    # a pressure (stress) is only defined in a 3D periodic cell: checked in one, below
    pressures = [name for name in outputs if capabilities.outputs[_split_request(name)[0]].quantity == "pressure"]
    outputs = [name for name in outputs if name not in pressures]
    has_energy = "energy" in capabilities.outputs
    try:
        scripted(
            positions, torch.tensor(types, dtype=torch.int32), cell.unsqueeze(0), pbc.unsqueeze(0),
            torch.tensor([n_atoms]), pairs, shifts, outputs, None, "energy",
            has_energy, has_energy, False, capabilities.length_unit, "eV",
        )
        # energies per structure only (what ASE and i-PI ask): a per-atom-capable model must honour that too
        per_structure = [
            name for name, output in capabilities.outputs.items() if output.per_atom and output.quantity == "energy"
        ]
        if per_structure:
            scripted(
                positions, torch.tensor(types, dtype=torch.int32), cell.unsqueeze(0), pbc.unsqueeze(0),
                torch.tensor([n_atoms]), pairs, shifts, per_structure, None, "energy",
                has_energy, False, False, capabilities.length_unit, "eV",
            )
        if pressures:
            periodic_cell = torch.eye(3, dtype=torch.float64) * (1.5 * box)
            periodic = torch.ones(3, dtype=torch.bool)
            pairs, shifts = _smoke_test_lists(positions, periodic_cell, periodic, requests)
            scripted(
                positions, torch.tensor(types, dtype=torch.int32), periodic_cell.unsqueeze(0),
                periodic.unsqueeze(0), torch.tensor([n_atoms]), pairs, shifts, pressures, None, "energy",
                False, False, False, capabilities.length_unit, "eV",
            )
    except Exception as error:
        raise ValueError(
            f"the model does not match its declared capabilities: {describe_model_error(error)}"
        ) from error


def _first_line(error: BaseException) -> str:
    """TorchScript errors carry a traceback; users need the message."""
    text = str(error)
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("builtins.ValueError:", "ValueError:")):
            return stripped.split(":", 1)[1].strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


_RAISED = re.compile(r"^\s*builtins\.(\w+): ?(.*)$")


def describe_model_error(error: BaseException) -> str:
    """One line for an error raised while the entry point ran: atomplug's own checks raise
    ValueError with a message that names the fix, given as is; anything else (a model's own
    `raise RuntimeError(...)`, a failing torch operation) is the model's, and said to be."""
    text = str(error)
    lines = text.splitlines()
    for position in range(len(lines) - 1, -1, -1):
        match = _RAISED.match(lines[position])
        if match:
            kind = match.group(1)
            message = " ".join([match.group(2)] + [line.strip() for line in lines[position + 1 :] if line.strip()])
            if kind == "ValueError":
                return message
            return (
                f"the model's own code raised {kind}: {message} (the model refuses this input: see its "
                "documentation for what it supports, or ask its authors)"
            )
    message = _first_line(error)
    return f"the model failed: {message} (an error inside the model: check its input, or ask its authors)"


# ---- load -------------------------------------------------------------------------------------


class LoadedModel:
    """An exported model ready to run: the TorchScript entry point plus its declarations."""

    def __init__(self, module: torch.jit.ScriptModule, header: Dict, path: str):
        self.module = module
        self.path = path
        self.format_version = int(header["format_version"])
        self.capabilities = ModelCapabilities.from_dict(header["capabilities"])
        self.metadata = ModelMetadata.from_dict(header["metadata"])
        self.exported_with_torch = str(header.get("torch_version", "unknown"))

    def neighbor_requests(self, length_unit: str) -> List[Tuple[float, bool, bool]]:
        """(cutoff in `length_unit`, full_list, strict) for each neighbor list the model needs."""
        return [tuple(r) for r in self.module.neighbor_requests(length_unit)]

    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        return float(self.module.unit_conversion(from_unit, to_unit))

    def __repr__(self) -> str:
        outputs = ", ".join(self.capabilities.outputs)
        return f"LoadedModel({self.metadata.name or self.path!r}, outputs: {outputs})"


def read_header(path: str) -> Dict:
    """Read and check an archive's atomplug metadata without loading any of its code."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model file {path!r} does not exist: export one with atomplug.core.export() or "
            "`atomplug export-example lj model.pt`"
        )
    if os.path.isdir(path):
        raise ValueError(
            f"model path {path!r} is a directory, not an exported atomplug model file: give the .pt file"
        )
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise ValueError(f"cannot read the model file {path!r} ({error.strerror}): check its permissions") from None
    if not magic:
        raise ValueError(
            f"{path!r} is empty (0 bytes), not an atomplug model: an export or a copy did not finish; "
            "export the model again"
        )
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # zipfile.is_zipfile raises BadZipFile itself for some end records (multi-disk)
        is_zip = False
    if not is_zip:
        if magic == b"PK\x03\x04":  # a zip archive without its end: cut short
            raise ValueError(
                f"{path!r} is a corrupt or truncated archive (an unfinished export, download or copy?): "
                "export or copy the model again"
            )
        raise ValueError(
            f"{path!r} is not an atomplug model: it is not a TorchScript archive (export models "
            "with atomplug.core.export())"
        )
    candidates: List[str] = []
    is_torchscript = False
    declared = 0
    raw = b""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            candidates = [n for n in names if n.endswith("/extra/" + METADATA_FILE)]
            is_torchscript = any("/code/" in n for n in names)
            if candidates:
                declared = archive.getinfo(candidates[0]).file_size
                if declared <= MAX_METADATA_BYTES:  # a zip bomb is refused from its declared size
                    with archive.open(candidates[0]) as handle:
                        raw = handle.read(MAX_METADATA_BYTES + 1)
    except Exception as error:  # zipfile raises many kinds for damaged archives: BadZipFile,
        # NotImplementedError (compression, version), RuntimeError (encrypted), zlib/lzma errors, EOFError...
        raise ValueError(
            f"{path!r} is a corrupt or truncated archive ({type(error).__name__}: {error}): export the model again"
        ) from None
    if not candidates:
        kind = "a TorchScript archive" if is_torchscript else "a zip file (perhaps a torch.save pickle)"
        raise ValueError(
            f"{path!r} is {kind} without atomplug metadata, not an atomplug model: wrap and "
            "export the module with atomplug.core.export()"
        )
    if declared > MAX_METADATA_BYTES or len(raw) > MAX_METADATA_BYTES:
        raise ValueError(
            f"{path!r} has {declared} bytes of atomplug metadata, more than any export writes "
            f"({MAX_METADATA_BYTES}): not an atomplug model; export the model again"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValueError(f"{path!r} has unreadable atomplug metadata ({reason}): export the model again") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"{path!r} has metadata that is not atomplug's: export the model with atomplug.core.export()")
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path!r} has no valid format version in its metadata: export the model again")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written in atomplug model format {version}, newer than this atomplug "
            f"understands ({FORMAT_VERSION}): upgrade atomplug"
        )
    for key in ("capabilities", "metadata"):
        if not isinstance(header.get(key), dict):
            raise ValueError(f"{path!r} metadata lacks {key!r}: export the model again")
    # Everything that reads the header later (load_model, LoadedModel, `atomplug info`, PLUMED's
    # helpers) may then trust its shape: checked here, as export() checked it when writing.
    try:
        ModelCapabilities.from_dict(header["capabilities"]).validate()
        ModelMetadata.from_dict(header["metadata"])
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RuntimeError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else _first_line(error)
        raise ValueError(f"{path!r} has malformed atomplug metadata ({reason}): export the model again") from None
    return header


def check_device(device: str, supported_devices: List[str]) -> str:
    """`device` if it is a torch device that the model supports and this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type not in supported_devices:
        raise ValueError(
            f"the model supports devices {supported_devices}, not {device!r}: pick one of those"
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked, but torch {torch.__version__} sees no CUDA device: use device 'cpu'"
        )
    return device


def load_model(path: str, device: Optional[str] = None) -> LoadedModel:
    """Load an exported atomplug model (only `torch.jit.load`, and only after its metadata checks
    out: no pickle from a user file is ever unpickled)."""
    path = os.fspath(path)
    header = read_header(path)
    capabilities = ModelCapabilities.from_dict(header["capabilities"])
    device = check_device(device or "cpu", capabilities.supported_devices)
    try:
        module = torch.jit.load(path, map_location=device)
    except Exception as error:
        raise ValueError(f"{path!r} could not be loaded by TorchScript ({_first_line(error)}): export the model again") from error
    for method in ("format_version", "neighbor_requests", "unit_conversion", "capabilities_json"):
        if not hasattr(module, method):
            raise ValueError(f"{path!r} lacks the atomplug entry point ({method}): export the model again")
    if int(module.format_version()) != int(header["format_version"]):
        raise ValueError(f"{path!r}: archive code and metadata disagree on the format version: export the model again")
    # The entry point converts units and checks outputs with what was compiled into the archive;
    # metadata claiming anything else (an edited or spliced file) would mislead every engine.
    if json.loads(module.capabilities_json()) != header["capabilities"]:
        raise ValueError(
            f"{path!r}: its metadata declares other outputs, units or types than its code (the file "
            "was edited or assembled by hand): export the model again with atomplug.core.export()"
        )
    module.eval()
    return LoadedModel(module, header, path)
