"""The engine entry point: `AtomisticModel`, compiled into every exported archive.

Every engine (ASE, i-PI from Python; LAMMPS, PLUMED from C++ libtorch) calls its one method with
tensors only: it checks the input, converts units, builds `System`s, runs the author's module and
differentiates it (forces, virial) inside TorchScript. Engines never differentiate by themselves.
"""

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .archive import FORMAT_VERSION
from .contract import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    NeighborListOptions,
    check_inputs_declaration,
)
from .entry_checks import check_inputs, non_finite_message, non_finite_output
from .system import GhostExchange, NeighborList, System
from .units import conversion_factor_with_table, unit_table
from .virial import atomic_virial_from_pairs, pair_vectors, strained


@torch.jit.interface
class UnitConverterInterface(torch.nn.Module):
    def forward(self, from_unit: str, to_unit: str) -> float:
        pass


class UnitConverter(torch.nn.Module):
    """The archive's unit parser and table, called by the entry point through a module interface.

    TorchScript inlines every function a method calls into that method's graph, and the graph
    executor optimises the whole inlined graph on the first calls. The parser is ~1,800 nodes and
    forward needs up to 8 conversions: inlined, they made forward's graph ~14,000 nodes and its
    first call ~1 s. A call through an interface cannot be inlined, so the parser is compiled once
    and forward only looks factors up (AtomisticModel.unit_conversion caches them)."""

    _table: Dict[str, List[float]]

    def __init__(self):
        super().__init__()
        self._table = unit_table()

    def forward(self, from_unit: str, to_unit: str) -> float:
        return conversion_factor_with_table(from_unit, to_unit, self._table)


class AtomisticModel(torch.nn.Module):
    """Wraps a model author's module with its capabilities; `forward` is the engine entry point.

    forward(positions [N,3] float, types [N] int32, cells [S,3,3], pbcs [S,3] bool,
            system_sizes [S] int64, neighbor_pairs: one [P,2] int64 per requested list (global
            atom indices), neighbor_shifts: one [P,3] int32 per list, outputs: names, a name
            ending in "/per_atom" asks for per-atom values, selected_atoms: optional global
            indices, gradient_output: the per-structure output to differentiate (usually
            "energy"), compute_forces, compute_virial, compute_atomic_virial,
            length_unit, energy_unit: the engine's units, non_conservative: forces and virial from
            the model's non_conservative_forces / non_conservative_stress, see _virial_source,
            inputs: the model's requested inputs {name: [N, P] per atom or [S, P] per structure}
            in the engine's units, quantity_units: the engine's units of mass, velocity and charge
            {"mass": "amu", ...}, for inputs and for outputs of those quantities), ghost_exchange:
            the engine's exchange for a single structure with ghost atoms (System.exchange_ghosts;
            LAMMPS on several ranks), None without ghosts)
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
    _converter: UnitConverterInterface
    _factor_cache: Dict[str, float]
    _capabilities_json: str
    _metadata_json: str
    _format_version: int
    _pressure_outputs: List[str]
    _input_names: List[str]
    _input_quantities: List[str]
    _input_units: List[str]
    _input_per_atom: List[bool]
    _input_widths: List[int]

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
        self._converter = UnitConverter()
        self._factor_cache = {}
        self._capabilities_json = json.dumps(capabilities.to_dict(), sort_keys=True)
        self._metadata_json = json.dumps(metadata.to_dict(), sort_keys=True)
        self._format_version = FORMAT_VERSION
        self._pressure_outputs = [n for n in names if capabilities.outputs[n].quantity == "pressure"]
        inputs = capabilities.inputs
        self._input_names = list(inputs.keys())
        self._input_quantities = [inputs[n].quantity for n in self._input_names]
        self._input_units = [inputs[n].unit for n in self._input_names]
        self._input_per_atom = [bool(inputs[n].per_atom) for n in self._input_names]
        self._input_widths = [len(inputs[n].properties) for n in self._input_names]
        dtype = torch.float64 if capabilities.dtype == "float64" else torch.float32
        self.register_buffer("_dtype_probe", torch.zeros(0, dtype=dtype), persistent=True)
        self.register_buffer("_known_types", torch.tensor(self._atomic_types, dtype=torch.int32), persistent=True)

    # ---- small methods engines call once, at setup ------------------------------------------

    @torch.jit.export
    def format_version(self) -> int:
        return self._format_version

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
    def input_names(self) -> List[str]:
        """The inputs the model requested (engines supply exactly these)."""
        return self._input_names

    @torch.jit.export
    def variant_output(self, request: str, variant: str) -> str:
        """The output an engine asks for when its user picks `variant`: `request` + "/" + variant
        where the model declares it (e.g. "energy/ccsdt", "energy_uncertainty/ccsdt/per_atom"),
        else `request` itself. The energy (and any output with variants but no plain form) must
        have the variant: an unknown variant is an error listing the available ones."""
        name, per_atom = _split_request(request)
        suffix = "/per_atom" if per_atom else ""
        variants: List[str] = []
        plain = False
        for known in self._output_names:
            if known == name:
                plain = True
            elif known.startswith(f"{name}/"):
                variants.append(known[len(name) + 1 :])
        if not plain and len(variants) == 0:
            return request  # not an output of this model: the caller's own check names it
        if variant == "":
            if plain:
                return request
            raise ValueError(
                f"the model has no plain '{name}', only its variants {', '.join(variants)}: choose one (variant=...)"
            )
        if variant in variants:
            return f"{name}/{variant}{suffix}"
        if plain and name != "energy":
            return request  # outputs without this variant are the same for every variant
        available = "none" if len(variants) == 0 else ", ".join(variants)
        raise ValueError(
            f"the model has no variant '{variant}' of '{name}' (available: {available}): "
            "choose one of those, or no variant"
        )

    @torch.jit.export
    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        """Factor converting a value in `from_unit` to `to_unit`, from the archive's unit table."""
        key = f"{from_unit}\n{to_unit}"
        if key in self._factor_cache:
            return self._factor_cache[key]
        factor = self._converter.forward(from_unit, to_unit)
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

    @torch.jit.export
    def output_factors(
        self, length_unit: str, energy_unit: str, quantity_units: Optional[Dict[str, str]] = None
    ) -> List[float]:
        """The factor from the model's unit to the engine's of every declared output (1 for
        outputs without a quantity), by the rule `forward` follows: a compiled program's inputs."""
        factors: List[float] = []
        for index in range(len(self._output_names)):
            factors.append(self._output_factor(index, length_unit, energy_unit, quantity_units))
        return factors

    def _output_index(self, name: str) -> int:
        for index, known in enumerate(self._output_names):
            if known == name:
                return index
        raise ValueError(
            f"the model has no output '{name}' (it declares: {', '.join(self._output_names)}); ask for one of those"
        )

    def _output_factor(
        self, index: int, length_unit: str, energy_unit: str, quantity_units: Optional[Dict[str, str]]
    ) -> float:
        quantity = self._output_quantities[index]
        unit = self._output_units[index]
        if quantity in ["mass", "velocity", "charge", "dipole"]:
            key = "charge" if quantity == "dipole" else quantity
            if quantity_units is None or key not in quantity_units:
                raise ValueError(
                    f"the engine gave no unit of {key} (quantity_units) for the output '{self._output_names[index]}'"
                )
            target = quantity_units[key]
            if quantity == "dipole":
                target = f"({target})*({length_unit})"
            return self.unit_conversion(unit, target)
        if quantity == "energy":
            return self.unit_conversion(unit, energy_unit)
        if quantity == "length":
            return self.unit_conversion(unit, length_unit)
        if quantity == "force":
            return self.unit_conversion(unit, f"({energy_unit})/({length_unit})")
        if quantity == "pressure":
            return self.unit_conversion(unit, f"({energy_unit})/({length_unit})^3")
        return 1.0

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
        non_conservative: bool = False,
        inputs: Optional[Dict[str, Tensor]] = None,
        quantity_units: Optional[Dict[str, str]] = None,
        ghost_exchange: Optional[GhostExchange] = None,
    ) -> Dict[str, Tensor]:
        check_inputs(
            positions,
            types,
            cells,
            pbcs,
            system_sizes,
            neighbor_pairs,
            neighbor_shifts,
            self._known_types,
            self._atomic_types,
            len(self._cutoffs),
            ghost_exchange is not None,
        )
        n_atoms = positions.shape[0]
        n_systems = system_sizes.shape[0]
        device = positions.device
        system_of_atom = torch.repeat_interleave(torch.arange(n_systems, device=device), system_sizes.to(device))
        selected = self._selection(selected_atoms, n_atoms)

        # Where forces and virial come from: the energy's derivatives, or (non-conservative) the
        # model's direct outputs, by the one rule every engine follows (see _virial_source).
        virial_source = "gradient"
        if non_conservative:
            virial_source = self._virial_source(compute_forces, compute_virial, pbcs, selected)
        gradient_forces = compute_forces and not non_conservative
        gradient_virial = compute_virial and virial_source == "gradient"
        need_gradients = gradient_forces or gradient_virial or compute_atomic_virial

        requests: List[str] = []
        for request in outputs:
            requests.append(request)
        if need_gradients and gradient_output not in requests:
            requests.append(gradient_output)
        returned: List[str] = []  # what the engine gets back besides forces and virials
        for request in requests:
            returned.append(request)
        if non_conservative and compute_forces and "non_conservative_forces/per_atom" not in requests:
            requests.append("non_conservative_forces/per_atom")
        if virial_source == "stress" and "non_conservative_stress" not in requests:
            requests.append("non_conservative_stress")
        model_outputs = self._model_outputs(requests, selected)

        # Engine units -> model units; strain for the virial; everything differentiable.
        length_factor = self.unit_conversion(length_unit, self._length_unit)
        engine_positions = positions.detach()
        if gradient_forces:
            engine_positions = engine_positions.clone().requires_grad_(True)
        dtype = self._dtype_probe.dtype
        model_positions = engine_positions.to(dtype)
        model_cells = cells.detach().to(dtype=dtype, device=device)
        if length_factor != 1.0:
            model_positions = model_positions * length_factor
            model_cells = model_cells * length_factor
        strain = torch.zeros((n_systems, 3, 3), dtype=dtype, device=device)
        if gradient_virial:
            strain.requires_grad_(True)
            model_positions, model_cells = strained(model_positions, model_cells, strain, system_of_atom, n_systems)
        vectors = self._pair_vectors(
            model_positions,
            model_cells,
            neighbor_pairs,
            neighbor_shifts,
            system_of_atom,
            n_systems,
            compute_atomic_virial,
        )

        model_inputs = self._model_inputs(inputs, quantity_units, n_atoms, n_systems, dtype, device)
        systems = self._build_systems(
            model_inputs,
            types,
            model_positions,
            model_cells,
            pbcs,
            system_sizes,
            neighbor_pairs,
            neighbor_shifts,
            vectors,
            system_of_atom,
            n_systems,
        )
        if ghost_exchange is not None:
            if n_systems != 1:
                raise ValueError(f"a ghost exchange needs a single structure, got {n_systems}")
            systems[0].set_ghost_exchange(ghost_exchange)
        raw = self.module(systems, model_outputs, selected)
        results = self._collect_outputs(
            raw,
            model_outputs,
            requests,
            selected,
            system_of_atom,
            n_atoms,
            n_systems,
            length_unit,
            energy_unit,
            quantity_units,
        )
        if need_gradients:
            self._add_derivatives(
                results,
                results[gradient_output],
                gradient_output,
                engine_positions,
                strain,
                neighbor_pairs,
                vectors,
                gradient_forces,
                gradient_virial,
                compute_atomic_virial,
                n_atoms,
                n_systems,
            )
        if non_conservative:
            self._add_non_conservative(
                results,
                virial_source,
                compute_forces,
                positions,
                cells,
                selected,
                system_of_atom,
                n_atoms,
                n_systems,
            )

        final: Dict[str, Tensor] = {}
        for key, value in results.items():
            if key in returned or key in ["forces", "virial", "atomic_virial"]:
                final[key] = value.detach().to(torch.float64)
        non_finite = non_finite_output(final, positions.device)
        if non_finite is not None:
            raise ValueError(
                non_finite_message(
                    non_finite,
                    final[non_finite],
                    positions,
                    pbcs,
                    neighbor_pairs,
                    vectors,
                    system_sizes,
                    system_of_atom,
                    selected,
                    length_factor,
                    length_unit,
                    self._cutoffs,
                    self._pressure_outputs,
                )
            )
        return final

    # ---- the entry point's steps ---------------------------------------------------------------

    def _selection(self, selected_atoms: Optional[Tensor], n_atoms: int) -> Optional[Tensor]:
        """The selected atoms, sorted and unique, checked against the number of atoms."""
        if selected_atoms is None:
            return None
        selected = torch.unique(selected_atoms.to(torch.int64))
        if selected.shape[0] > 0 and (int(selected[0]) < 0 or int(selected[-1]) >= n_atoms):
            raise ValueError(f"selected_atoms has indices outside [0, {n_atoms})")
        return selected

    def _virial_source(
        self, compute_forces: bool, compute_virial: bool, pbcs: Tensor, selected: Optional[Tensor]
    ) -> str:
        """The non-conservative rule, for every engine: forces are the model's
        `non_conservative_forces`; the virial is -sigma V from its `non_conservative_stress` for
        3D periodic structures, sum_i r_i (x) f_i of those forces for isolated ones, and the energy's
        strain derivative otherwise (no stress output, slabs, or a subset of atoms such as LAMMPS
        local atoms among ghosts, where a per-structure stress cannot be split among ranks)."""
        if compute_forces:
            index = self._declared_index("non_conservative_forces")
            if index < 0 or not self._output_per_atom[index]:
                raise ValueError(
                    "non-conservative forces need a per-atom 'non_conservative_forces' output, which this model "
                    f"does not declare (it declares: {', '.join(self._output_names)}): take forces from the "
                    "energy gradient instead"
                )
        if not compute_virial or selected is not None:
            return "gradient"
        if bool(pbcs.all()) and self._declared_index("non_conservative_stress") >= 0:
            return "stress"
        if compute_forces and not bool(pbcs.any()):
            return "forces"
        return "gradient"

    def _declared_index(self, name: str) -> int:
        for index, known in enumerate(self._output_names):
            if known == name:
                return index
        return -1

    def _model_outputs(self, requests: List[str], selected: Optional[Tensor]) -> Dict[str, ModelOutput]:
        """What to ask the model for, and how: per atom where asked, or where a subset of atoms
        is selected and the output can be summed over it."""
        model_outputs: Dict[str, ModelOutput] = {}
        for request in requests:
            name, per_atom = _split_request(request)
            index = self._output_index(name)
            capable = self._output_per_atom[index]
            if per_atom and not capable:
                raise ValueError(
                    f"the model cannot compute '{name}' per atom (it declares it per structure only): "
                    f"ask for '{name}' without '/per_atom'"
                )
            if selected is not None and not per_atom and not capable and self._output_quantities[index] == "energy":
                raise ValueError(
                    "this engine evaluates a subset of atoms (e.g. LAMMPS local atoms among ghosts), "
                    f"which needs per-atom '{name}'; the model declares it per structure only: "
                    "export it with ModelOutput(per_atom=True)"
                )
            ask_per_atom = per_atom or (capable and selected is not None)
            if name in model_outputs:
                ask_per_atom = ask_per_atom or model_outputs[name].per_atom
            model_outputs[name] = ModelOutput(
                self._output_quantities[index], self._output_units[index], ask_per_atom, self._output_properties[index]
            )
        return model_outputs

    def _pair_vectors(
        self,
        positions: Tensor,
        cells: Tensor,
        neighbor_pairs: List[Tensor],
        neighbor_shifts: List[Tensor],
        system_of_atom: Tensor,
        n_systems: int,
        compute_atomic_virial: bool,
    ) -> List[Tensor]:
        """r_j - r_i + shift @ cell for every list; leaves of the graph for the per-atom virial."""
        device = positions.device
        vectors: List[Tensor] = []
        for index in range(len(neighbor_pairs)):
            pair_vector = pair_vectors(
                positions,
                cells,
                neighbor_pairs[index].to(device),
                neighbor_shifts[index].to(device),
                system_of_atom,
                n_systems,
            )
            if compute_atomic_virial and not pair_vector.requires_grad:
                pair_vector.requires_grad_(True)
            vectors.append(pair_vector)
        return vectors

    def _collect_outputs(
        self,
        raw: Dict[str, Tensor],
        model_outputs: Dict[str, ModelOutput],
        requests: List[str],
        selected: Optional[Tensor],
        system_of_atom: Tensor,
        n_atoms: int,
        n_systems: int,
        length_unit: str,
        energy_unit: str,
        quantity_units: Optional[Dict[str, str]],
    ) -> Dict[str, Tensor]:
        """The model's outputs checked against its declaration, in engine units, per atom (selected
        atoms) or per structure (sums over the selected atoms) as requested."""
        results: Dict[str, Tensor] = {}
        for name, requested in model_outputs.items():
            if name not in raw:
                raise ValueError(f"the model did not return the output '{name}' it was asked for: fix its forward()")
            index = self._output_index(name)
            values = raw[name]
            n_properties = len(self._output_properties[index])
            if values.dim() != 2 or (n_properties > 0 and values.shape[1] != n_properties):
                columns = str(n_properties) if n_properties > 0 else "n_properties"
                raise ValueError(
                    f"the model returned '{name}' with shape {values.shape}, expected [rows, {columns}]: "
                    "fix its forward()"
                )
            if not values.is_floating_point():
                raise ValueError(f"the model returned '{name}' as a non-floating point tensor")
            factor = self._output_factor(index, length_unit, energy_unit, quantity_units)
            if factor != 1.0:
                values = values * factor
            if not requested.per_atom:
                if values.shape[0] != n_systems:
                    raise ValueError(
                        f"the model returned '{name}' with {values.shape[0]} rows for {n_systems} systems: "
                        "fix its forward()"
                    )
                results[name] = values
                continue
            if selected is not None and values.shape[0] == n_atoms:
                values = values.index_select(0, selected)
            elif values.shape[0] != (n_atoms if selected is None else selected.shape[0]):
                raise ValueError(
                    f"the model returned per-atom '{name}' with {values.shape[0]} rows for {n_atoms} atoms: "
                    "fix its forward()"
                )
            per_atom_name = f"{name}/per_atom"
            if per_atom_name in requests:
                results[per_atom_name] = values
            if name in requests:
                owners = system_of_atom if selected is None else system_of_atom.index_select(0, selected)
                summed = torch.zeros((n_systems, values.shape[1]), dtype=values.dtype, device=values.device)
                results[name] = summed.index_add(0, owners, values)
        return results

    def _add_derivatives(
        self,
        results: Dict[str, Tensor],
        target: Tensor,
        gradient_output: str,
        positions: Tensor,
        strain: Tensor,
        neighbor_pairs: List[Tensor],
        vectors: List[Tensor],
        compute_forces: bool,
        compute_virial: bool,
        compute_atomic_virial: bool,
        n_atoms: int,
        n_systems: int,
    ):
        """forces = -dY/dr, virial = -dY/d(strain), per-atom virial from the pair vectors: one
        backward pass per property of Y (a single one for an energy). A single-valued output gives
        forces [N, 3] and virial [S, 3, 3]; one with P > 1 properties [P, N, 3] and [P, S, 3, 3]."""
        n_targets = target.shape[1]
        if n_targets != 1 and compute_atomic_virial:
            raise ValueError(
                f"the per-atom virial needs a single-valued output, '{gradient_output}' has {n_targets} properties"
            )
        inputs: List[Tensor] = []
        if compute_forces:
            inputs.append(positions)
        if compute_virial:
            inputs.append(strain)
        if compute_atomic_virial:
            for vector in vectors:
                inputs.append(vector)
        device = positions.device
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
            if compute_forces:
                gradient = gradients[0]
                if gradient is None:
                    forces.append(torch.zeros((n_atoms, 3), dtype=torch.float64, device=device))
                else:
                    forces.append(-gradient.to(torch.float64))
            if compute_virial:
                gradient = gradients[1 if compute_forces else 0]
                if gradient is None:
                    virials.append(torch.zeros((n_systems, 3, 3), dtype=torch.float64, device=device))
                else:
                    virials.append(-gradient.to(torch.float64))
        if compute_forces:
            results["forces"] = forces[0] if n_targets == 1 else torch.stack(forces)
        if compute_virial:
            results["virial"] = virials[0] if n_targets == 1 else torch.stack(virials)
        if compute_atomic_virial:
            results["atomic_virial"] = atomic_virial_from_pairs(
                n_atoms, neighbor_pairs, vectors, gradients[len(inputs) - len(vectors) :], torch.float64
            )

    def _add_non_conservative(
        self,
        results: Dict[str, Tensor],
        virial_source: str,
        compute_forces: bool,
        positions: Tensor,
        cells: Tensor,
        selected: Optional[Tensor],
        system_of_atom: Tensor,
        n_atoms: int,
        n_systems: int,
    ):
        """ "forces" and "virial" from the model's direct outputs (see _virial_source); forces of
        atoms outside the selection are zero."""
        if compute_forces:
            direct = results["non_conservative_forces/per_atom"].to(torch.float64)
            if selected is None:
                results["forces"] = direct
            else:
                forces = torch.zeros((n_atoms, 3), dtype=torch.float64, device=direct.device)
                results["forces"] = forces.index_copy(0, selected, direct)
        if virial_source == "stress":
            stress = results["non_conservative_stress"].to(torch.float64).reshape(n_systems, 3, 3)
            volumes = torch.abs(torch.linalg.det(cells.to(dtype=torch.float64, device=stress.device)))
            results["virial"] = -stress * volumes.reshape(n_systems, 1, 1)
        elif virial_source == "forces":
            outer = positions.detach().to(torch.float64).unsqueeze(2) * results["forces"].unsqueeze(1)
            virial = torch.zeros((n_systems, 3, 3), dtype=torch.float64, device=outer.device)
            results["virial"] = virial.index_add(0, system_of_atom, outer)

    def _model_inputs(
        self,
        inputs: Optional[Dict[str, Tensor]],
        quantity_units: Optional[Dict[str, str]],
        n_atoms: int,
        n_systems: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> Dict[str, Tensor]:
        """The requested inputs, checked (given, right shape, finite) and converted from the
        engine's units to the model's: [n_atoms, P] per atom, [n_systems, P] per structure."""
        converted: Dict[str, Tensor] = {}
        for index, name in enumerate(self._input_names):
            if inputs is None or name not in inputs:
                raise ValueError(
                    f"the model needs the input '{name}', which the engine did not give: "
                    "see the engine's documentation for how to supply it"
                )
            values = inputs[name].detach()
            per_atom = self._input_per_atom[index]
            rows = n_atoms if per_atom else n_systems
            width = self._input_widths[index]
            if values.dim() == 1 and width == 1:
                values = values.reshape(-1, 1)
            if values.dim() != 2 or values.shape[0] != rows or values.shape[1] != width:
                layout = "per atom" if per_atom else "per structure"
                raise ValueError(f"the input '{name}' has shape {values.shape}, expected [{rows}, {width}] ({layout})")
            values = values.to(dtype=dtype, device=device)
            if not bool(torch.isfinite(values).all()):
                raise ValueError(f"the input '{name}' holds NaN or infinite values: give finite values")
            quantity = self._input_quantities[index]
            if quantity != "":
                if quantity_units is None or quantity not in quantity_units:
                    raise ValueError(f"the engine gave no unit of {quantity} (quantity_units) for the input '{name}'")
                factor = self.unit_conversion(quantity_units[quantity], self._input_units[index])
                if factor != 1.0:
                    values = values * factor
            converted[name] = values
        return converted

    def _build_systems(
        self,
        model_inputs: Dict[str, Tensor],
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
            options.append(
                NeighborListOptions(self._cutoffs[index], self._full_lists[index], self._strict_lists[index])
            )
        systems: List[System] = []
        if n_systems == 1:
            system = System(types, positions, cells[0], pbcs[0])
            for index in range(len(options)):
                system.add_neighbor_list(
                    NeighborList(options[index], neighbor_pairs[index], neighbor_shifts[index], vectors[index])
                )
            for name, values in model_inputs.items():
                system.add_input(name, values)
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
            for index, name in enumerate(self._input_names):
                values = model_inputs[name]
                system.add_input(name, values[start:stop] if self._input_per_atom[index] else values[s : s + 1])
            systems.append(system)
        return systems


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
                    f"requested_neighbor_lists() must return NeighborListOptions objects, got {type(request).__name__}"
                )
    return requests


def with_requested_inputs(module: torch.nn.Module, capabilities: ModelCapabilities) -> ModelCapabilities:
    """`capabilities` with the inputs the module requests (its optional requested_inputs()),
    checked against the vocabulary. Declaring them in ModelCapabilities.inputs instead is the same,
    but the two must then agree."""
    if not hasattr(module, "requested_inputs"):
        if not capabilities.inputs:
            return capabilities
        return dataclasses.replace(capabilities, inputs=check_inputs_declaration(capabilities.inputs))
    try:
        requested = dict(module.requested_inputs())
    except Exception as error:
        raise ValueError(f"the module's requested_inputs() failed: {error}") from error
    inputs = check_inputs_declaration(requested)
    if capabilities.inputs:
        declared = check_inputs_declaration(capabilities.inputs)
        described = {k: (v.quantity, v.unit) for k, v in declared.items()}
        requested_described = {k: (v.quantity, v.unit) for k, v in inputs.items()}
        if described != requested_described:
            raise ValueError(
                f"ModelCapabilities.inputs {described} and the module's requested_inputs() {requested_described} "
                "disagree: declare the inputs in one place"
            )
    return dataclasses.replace(capabilities, inputs=inputs)


# ---- export -----------------------------------------------------------------------------------
