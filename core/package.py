"""Running a compiled package (`.pt2`): the checks at load and `CompiledProgram`, which answers
an entry-point call through the package's native program (AOTInductor) and gives exactly what the
TorchScript entry point gives. Calls the program does not take (batches, a single atom, a list with
fewer than two pairs) and calls whose inputs or results it flags run through the TorchScript entry
point, which gives the answer or the error; what the package was not compiled for is an error.

Below core.archive (whose load_model opens packages with `open_package`); core.compiled, which
writes packages, sits above both. A package is native code: load only packages compiled on this
machine (`atomplug compile`).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Dict, Optional, Sequence

import torch

from .errors import first_line
from .package_messages import package_message, package_refusal
from .program import MIN_ATOMS, MIN_PAIRS, NON_CONSERVATIVE, ProgramLayout

PACKAGE_MODEL_FILE = "atomplug-model.pt"  # the archive, inside the package
PACKAGE_FOLDER = "atomplug"  # its folder (torch reads every file of extra/ as text)
PACKAGE_SUFFIX = ".pt2"


def archive_entry(path: str, name: str, folder: str = "extra") -> Optional[bytes]:
    """The bytes of the archive's file `folder/name`, None when it has none."""
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            if entry.endswith(f"/{folder}/{name}"):
                return archive.read(entry)
    return None


class CompiledProgram:
    """The native program of a package, called like the TorchScript entry point."""

    def __init__(self, runner, layout: ProgramLayout, path: str):
        self.runner = runner
        self.layout = layout
        self.path = path
        self.calls_run = 0  # calls the program answered (the others went to TorchScript)
        self._factors: Dict[tuple, tuple] = {}

    def _unit_factors(self, model, length_unit: str, energy_unit: str, quantity_units, device) -> tuple:
        """(length factor, output factors) as float64 tensors on `device`, the program's inputs."""
        units = tuple(sorted(quantity_units.items())) if quantity_units else None
        key = (length_unit, energy_unit, units, str(device))
        if key not in self._factors:
            with torch.jit.optimized_execution(False):
                factors = model.module.output_factors(length_unit, energy_unit, quantity_units)
                length = model.module.unit_conversion(length_unit, model.capabilities.length_unit)
            declared = list(model.capabilities.outputs)
            self._factors[key] = (
                torch.tensor(float(length), dtype=torch.float64, device=device),
                torch.tensor(
                    [factors[declared.index(n)] for n in self.layout.outputs], dtype=torch.float64, device=device
                ),
            )
        return self._factors[key]

    @staticmethod
    def _shapes_taken(positions, types, pbcs, pairs, shifts) -> bool:
        """Whether the inputs have the shapes and types the program takes (AOTInductor does not
        check them all): positions [N,3], types [N], one pbc row, int64 pairs [P,2], shifts [P,3]."""
        n_atoms = positions.shape[0]
        if positions.dim() != 2 or positions.shape[1] != 3 or types.shape != (n_atoms,) or pbcs.shape != (1, 3):
            return False
        for index in range(len(pairs)):
            pair, shift = pairs[index], shifts[index]
            if pair.dtype != torch.int64 or pair.dim() != 2 or pair.shape[1] != 2 or shift.shape != (pair.shape[0], 3):
                return False
        return True

    def refusal(self, arguments: Sequence) -> Optional[str]:
        """Why the package cannot answer this call at all (what it was not compiled for), or None."""
        layout = self.layout
        outputs, gradient_output = arguments[7], arguments[9]
        compute_forces, compute_virial, compute_atomic_virial = arguments[10], arguments[11], arguments[12]
        non_conservative = len(arguments) > 15 and bool(arguments[15])
        if non_conservative:
            return package_refusal("non_conservative", self.path)
        if len(arguments) > 18 and arguments[18] is not None:
            return package_refusal("ghost_exchange", self.path)
        for request in outputs:
            name = request[: -len("/per_atom")] if request.endswith("/per_atom") else request
            if name in NON_CONSERVATIVE:
                return package_refusal("output", self.path, name=name)
        if compute_forces or compute_virial or compute_atomic_virial:
            if gradient_output != layout.gradient:
                compiled = f"'{layout.gradient}'" if layout.gradient else "no output"
                return package_refusal("gradient", self.path, compiled=compiled, gradient_output=gradient_output)
            if compute_atomic_virial and not layout.atomic_virial:
                return package_refusal("atomic_virial", self.path)
        return None

    def __call__(self, model, arguments: Sequence) -> Optional[Dict[str, torch.Tensor]]:
        """The entry point's result for `arguments` (AtomisticModel.forward's), or None where the
        TorchScript entry point must answer (raising ValueError for what the package cannot do)."""
        refusal = self.refusal(arguments)
        if refusal is not None:
            raise ValueError(refusal)
        positions, types, cells, pbcs, sizes, pairs, shifts, outputs, selected = arguments[:9]
        layout = self.layout
        n_atoms = positions.shape[0]
        if sizes.shape[0] != 1 or n_atoms < MIN_ATOMS or len(pairs) != layout.n_lists or cells.shape[0] != 1:
            return None
        if any(p.shape[0] < MIN_PAIRS for p in pairs) or positions.dtype != torch.float64:
            return None
        if not self._shapes_taken(positions, types, pbcs, pairs, shifts):
            return None  # shapes the program was not compiled for: the entry point names the problem
        for request in outputs:
            name = request[: -len("/per_atom")] if request.endswith("/per_atom") else request
            if name not in layout.outputs:
                return None  # an unknown output: the entry point's error names the declared ones
        quantity_units = arguments[17] if len(arguments) > 17 else None
        try:
            length_factor, output_factors = self._unit_factors(
                model, arguments[13], arguments[14], quantity_units, positions.device
            )
        except Exception:
            return None  # a unit the entry point refuses, with its message
        weights = torch.ones(n_atoms, dtype=torch.float64, device=positions.device)
        if selected is not None:
            selected = torch.unique(selected.to(torch.int64))
            if selected.shape[0] > 0 and (int(selected[0]) < 0 or int(selected[-1]) >= n_atoms):
                return None
            gradient_index = layout.outputs.index(layout.gradient) if layout.gradient else -1
            if gradient_index >= 0 and not layout.per_atom[gradient_index]:
                return None  # a subset needs a per-atom output: the entry point says so
            weights = torch.zeros(n_atoms, dtype=torch.float64, device=positions.device)
            weights[selected] = 1.0
        flat = [
            positions,
            types.to(torch.int32),
            cells[0],
            pbcs[0].to(torch.bool),
            weights,
            length_factor,
            output_factors,
        ]
        for index in range(len(pairs)):
            flat += [pairs[index], shifts[index].to(torch.int32)]
        values = self.runner.run(flat)
        if not bool(values[0]):
            return None
        finite = values[1].tolist()
        results: Dict[str, torch.Tensor] = {}
        requests = list(outputs)
        needs_gradients = bool(arguments[10] or arguments[11] or arguments[12])
        if needs_gradients and layout.gradient not in requests:
            requests.append(layout.gradient)
        for request in requests:
            per_atom = request.endswith("/per_atom")
            name = request[: -len("/per_atom")] if per_atom else request
            index = layout.outputs.index(name)
            if not finite[index]:
                return None
            if per_atom:
                value = values[layout.index(name)]
                results[request] = value if selected is None else value.index_select(0, selected)
            elif layout.per_atom[index]:
                results[request] = values[layout.sum_index(name)]
            else:
                results[request] = values[layout.index(name)]
        first = layout.derivative_index
        several = layout.gradient_width > 1
        for flag, key, offset in (
            (arguments[10], "forces", 0),
            (arguments[11], "virial", 1),
            (arguments[12], "atomic_virial", 2),
        ):
            if flag:
                if not finite[len(layout.outputs) + offset]:
                    return None
                value = values[first + offset]
                if key == "virial":
                    value = value.unsqueeze(1 if several else 0)
                results[key] = value
        self.calls_run += 1
        return results


def open_package(path: str, header: Dict, device: Optional[str]):
    """(the model archive's bytes, CompiledProgram) of a package whose metadata is `header`, after
    its checks: compiled for this torch and `device`, its archive intact, not stale (the model it
    was compiled from, still next to it, holds other bytes now)."""
    record = header["package"]
    model_file = str(record.get("model_file") or "MODEL.pt")

    def refuse(fault: str, **values) -> ValueError:
        return ValueError(package_message(fault, path, model_file, **values))

    if record.get("torch_version") != torch.__version__:
        raise refuse("torch_version", compiled=record.get("torch_version"), running=torch.__version__)
    wanted = torch.device(device or "cpu").type
    if record.get("device") != wanted:
        raise refuse("device", compiled=repr(record.get("device")), wanted=repr(wanted), device=wanted)
    archive = archive_entry(path, PACKAGE_MODEL_FILE, PACKAGE_FOLDER)
    if archive is None or hashlib.sha256(archive).hexdigest() != record.get("model_sha256"):
        raise refuse("damaged")
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), str(record.get("model_file", "")))
    if record.get("model_file") and os.path.isfile(sibling):
        with open(sibling, "rb") as handle:
            if handle.read() != archive:
                raise refuse("stale")
    try:
        # libtorch's loader itself (what torch._inductor.aoti_load_package wraps), without the
        # ~1 s import of torch._inductor: a package loads in a few ms
        device_index = torch.device(device or "cpu").index
        runner = torch._C._aoti.AOTIModelPackageLoader(
            path, "model", False, 1, -1 if device_index is None else device_index
        )
    except Exception as error:
        raise refuse("not_loadable", reason=first_line(error)) from error
    layout = ProgramLayout.from_dict(record["layout"])
    return archive, CompiledProgram(runner, layout, record.get("model_file", path))
