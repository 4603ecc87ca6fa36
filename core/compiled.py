"""Compiled packages (`.pt2`): the archive's torch.export program compiled by AOTInductor for one
machine, torch build and device, with the archive itself inside.

A package is an AOTInductor package (a zip that libtorch's AOTIModelPackageLoader reads) to which
`compile_model` adds two files: the model archive it was compiled from (so the package runs on its
own, with every setup method of the TorchScript entry point) and atomplug's metadata, the archive's
plus a `package` record (torch version, device, the archive's SHA-256 and file name, the program's
layout). `CompiledProgram` runs an entry-point call through the native code and gives exactly what
the TorchScript entry point gives; calls the program does not take (batches, a single atom, a list
with fewer than two pairs) and calls whose inputs or results it flags run through the TorchScript
entry point, which gives the answer or the error. What the package was not compiled for is an error.

A package is native code: load only packages compiled on this machine (`atomplug compile`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from typing import Dict, List, Optional, Sequence

import torch

from .archive import METADATA_FILE, read_header
from .errors import first_line
from .files import write_atomically
from .program import MIN_ATOMS, MIN_PAIRS, NON_CONSERVATIVE, PROGRAM_FILE, ProgramLayout, load_program, warnings_quiet

PACKAGE_MODEL_FILE = "atomplug-model.pt"  # the archive, inside the package
PACKAGE_FOLDER = "atomplug"  # its folder (torch reads every file of extra/ as text)
PACKAGE_SUFFIX = ".pt2"
# how close the package must come to the TorchScript entry point on the check structures
CHECK_TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def package_path_for(model_path: str) -> str:
    """model.pt -> model.pt2, next to it."""
    root, _ = os.path.splitext(model_path)
    return root + PACKAGE_SUFFIX


def archive_entry(path: str, name: str, folder: str = "extra") -> Optional[bytes]:
    """The bytes of the archive's file `folder/name`, None when it has none."""
    with zipfile.ZipFile(path) as archive:
        for entry in archive.namelist():
            if entry.endswith(f"/{folder}/{name}"):
                return archive.read(entry)
    return None


def compile_model(model_path: str, output: Optional[str] = None, device: str = "cpu", log=print) -> str:
    """Compile the archive's program for this machine and `device`, check it against the
    TorchScript entry point on the archive's check structures, and write the package (only if
    they agree). Returns the package's path."""
    from .archive import check_device, load_model

    model_path = os.fspath(model_path)
    header = read_header(model_path)
    if "package" in header:
        raise ValueError(f"{model_path!r} is already a compiled package: compile the model archive (.pt) it came from")
    program_info = header.get("program") or {}
    if not program_info.get("captured"):
        reason = program_info.get("reason") or "it was exported before atomplug stored programs"
        raise ValueError(
            f"{model_path!r} has no torch.export program to compile ({reason}); it runs as TorchScript only"
        )
    capabilities = header["capabilities"]
    check_device(device, capabilities["supported_devices"])
    output = os.fspath(output) if output else package_path_for(model_path)
    if os.path.abspath(output) == os.path.abspath(model_path):
        raise ValueError("the package would overwrite the model: give another output path (-o)")
    with open(model_path, "rb") as handle:
        archive_bytes = handle.read()
    program = load_program(archive_entry(model_path, PROGRAM_FILE))
    if torch.device(device).type != "cpu":
        program = program.module().to(device)  # parameters and constants on the device
        program = torch.export.export(program, _device_inputs(program_info, device), strict=False)
    layout = ProgramLayout.from_dict(program_info["layout"])

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="atomplug-compile-") as scratch:
        compiled_path = os.path.join(scratch, "model.pt2")
        from torch._inductor import aoti_compile_and_package  # ~1 s to import: only here

        _quiet_inductor()
        with warnings_quiet():
            aoti_compile_and_package(program, package_path=compiled_path)
        elapsed = time.perf_counter() - start
        record = {
            "torch_version": torch.__version__,
            "device": torch.device(device).type,
            "model_file": os.path.basename(model_path),
            "model_sha256": hashlib.sha256(archive_bytes).hexdigest(),
            "layout": layout.to_dict(),
            "compile_seconds": round(elapsed, 1),
        }
        package_header = dict(header)
        package_header["package"] = record
        _add_files(
            compiled_path,
            {
                f"{PACKAGE_FOLDER}/{PACKAGE_MODEL_FILE}": archive_bytes,
                f"extra/{METADATA_FILE}": json.dumps(package_header),
            },
        )
        reference = load_model(model_path, device)
        compiled = load_model(compiled_path, device)
        worst = check_package(reference, compiled, CHECK_TOLERANCE[capabilities["dtype"]])
        with open(compiled_path, "rb") as handle:
            package_bytes = handle.read()
    write_atomically(output, lambda handle: handle.write(package_bytes), tag="compile", what="the package")
    log(
        f"atomplug compile: {output} ({len(package_bytes) / 1e6:.1f} MB) for {record['device']}, torch "
        f"{torch.__version__}, in {elapsed:.0f} s; agrees with TorchScript to {worst:.1e} (relative)"
    )
    return output


def _quiet_inductor() -> None:
    """Inductor's warnings (missing c-shims it works around) are not the user's business."""
    import logging

    logging.getLogger("torch._inductor").setLevel(logging.ERROR)


def _device_inputs(program_info: Dict, device: str):
    raise ValueError(f"compiling for {device!r} is not supported on this machine yet: compile for 'cpu'")


def _add_files(package: str, files: Dict[str, object]) -> None:
    """Add `files` (paths inside the package) under the package's own top folder (every reader of the zip, libtorch's
    included, expects one), stored uncompressed."""
    with zipfile.ZipFile(package, "a", compression=zipfile.ZIP_STORED) as archive:
        top = archive.namelist()[0].split("/")[0]
        for name, data in files.items():
            archive.writestr(f"{top}/{name}", data)


def check_package(reference, compiled, tolerance: float) -> float:
    """Run the archive's check structures through both paths (every output, per atom where
    declared, forces, virial, per-atom virial) and refuse unless they agree to `tolerance`
    relative (to each result's largest magnitude). Returns the largest relative difference."""
    from .runner import ModelRunner

    layout = compiled.compiled.layout
    worst = 0.0
    requests: List[str] = []
    for name, per_atom in zip(layout.outputs, layout.per_atom):
        requests.append(name)
        if per_atom:
            requests.append(name + "/per_atom")
    length_unit = reference.capabilities.length_unit
    units = dict(length_unit=length_unit, energy_unit="eV")
    for structure in check_structures(reference):
        for selected in (None, list(range(0, len(structure), 2))):
            results = []
            for model in (reference, compiled):
                runner = ModelRunner(model, **units)
                gradient = layout.gradient != ""
                results.append(
                    runner.run(
                        [structure],
                        requests,
                        forces=gradient,
                        virial=gradient,
                        atomic_virial=layout.atomic_virial,
                        gradient_output=layout.gradient or "energy",
                        selected_atoms=selected,
                        use_cache=False,
                    )
                )
            if compiled.compiled.calls_run == 0:
                raise ValueError("the compiled program did not run on the check structures")
            for key, expected in results[0].items():
                got = results[1][key]
                scale = max(float(abs(expected).max(initial=0.0)), 1e-300)
                difference = float(abs(got - expected).max(initial=0.0)) / scale
                worst = max(worst, difference)
                if not difference <= tolerance:
                    raise ValueError(
                        f"the compiled program disagrees with the TorchScript entry point on '{key}' by "
                        f"{difference:.1e} (relative; allowed {tolerance:.0e}): the package was not written"
                    )
    return worst


def check_structures(model) -> list:
    """A periodic and an isolated cluster of every known type, the sizes of the export check."""
    from .program import example_inputs  # noqa: F401  (same idea: small clusters within one cutoff)
    from .runner import Structure

    generator = torch.Generator().manual_seed(20261207)
    types = list(model.capabilities.atomic_types)
    n_atoms = max(9, 2 * len(types) + 3)
    numbers = [types[i % len(types)] for i in range(n_atoms)]
    reach = max([r[0] for r in model.neighbor_requests(model.capabilities.length_unit)] + [1.0])
    box = 1.1 * reach
    positions = (torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) * box).numpy()
    # atoms at least 0.3 of the reach apart would be physical; models only need them not to overlap
    cell = torch.eye(3, dtype=torch.float64).numpy() * box
    skewed = cell.copy()
    skewed[1, 0] = 0.2 * box
    return [
        Structure(numbers, positions, cell, [True, True, True]),
        Structure(numbers, positions, skewed, [True, True, False]),
        Structure(numbers, positions, 0 * cell, [False, False, False]),
    ]


class CompiledProgram:
    """The native program of a package, called like the TorchScript entry point."""

    def __init__(self, runner, layout: ProgramLayout, path: str):
        self.runner = runner
        self.layout = layout
        self.path = path
        self.calls_run = 0  # calls the program answered (the others went to TorchScript)
        self._factors: Dict[tuple, tuple] = {}

    def _unit_factors(self, model, length_unit: str, energy_unit: str, quantity_units) -> tuple:
        key = (length_unit, energy_unit, tuple(sorted(quantity_units.items())) if quantity_units else None)
        if key not in self._factors:
            with torch.jit.optimized_execution(False):
                factors = model.module.output_factors(length_unit, energy_unit, quantity_units)
                length = model.module.unit_conversion(length_unit, model.capabilities.length_unit)
            declared = list(model.capabilities.outputs)
            self._factors[key] = (
                torch.tensor(float(length), dtype=torch.float64),
                torch.tensor([factors[declared.index(n)] for n in self.layout.outputs], dtype=torch.float64),
            )
        return self._factors[key]

    def refusal(self, arguments: Sequence) -> Optional[str]:
        """Why the package cannot answer this call at all (what it was not compiled for), or None."""
        layout = self.layout
        outputs, gradient_output = arguments[7], arguments[9]
        compute_forces, compute_virial, compute_atomic_virial = arguments[10], arguments[11], arguments[12]
        non_conservative = len(arguments) > 15 and bool(arguments[15])
        fix = f"run the model archive ({self.path!r} was compiled from it) for that"
        if non_conservative:
            return f"a compiled package computes forces from the energy only, not non-conservative forces: {fix}"
        if len(arguments) > 18 and arguments[18] is not None:
            return f"a compiled package runs without a ghost exchange: {fix}"
        for request in outputs:
            name = request[: -len("/per_atom")] if request.endswith("/per_atom") else request
            if name in NON_CONSERVATIVE:
                return f"the package was not compiled for the output '{name}' (non-conservative): {fix}"
        if compute_forces or compute_virial or compute_atomic_virial:
            if gradient_output != layout.gradient:
                compiled = f"'{layout.gradient}'" if layout.gradient else "no output"
                return f"the package was compiled for the derivatives of {compiled}, not of '{gradient_output}': {fix}"
            if compute_atomic_virial and not layout.atomic_virial:
                return f"the package has no per-atom virial of an output with several properties: {fix}"
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
        for request in outputs:
            name = request[: -len("/per_atom")] if request.endswith("/per_atom") else request
            if name not in layout.outputs:
                return None  # an unknown output: the entry point's error names the declared ones
        quantity_units = arguments[17] if len(arguments) > 17 else None
        try:
            length_factor, output_factors = self._unit_factors(model, arguments[13], arguments[14], quantity_units)
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


def load_package(path: str, header: Dict, device: Optional[str]):
    """A package's LoadedModel: its archive loaded as any model, with the CompiledProgram."""
    from .archive import LoadedModel, load_model_bytes

    record = header["package"]
    fix = f"compile it again: `atomplug compile {record.get('model_file', 'MODEL.pt')}`"
    if record.get("torch_version") != torch.__version__:
        raise ValueError(
            f"{path!r} was compiled for torch {record.get('torch_version')}, this is torch {torch.__version__}: {fix}"
        )
    wanted = torch.device(device or "cpu").type
    if record.get("device") != wanted:
        raise ValueError(
            f"{path!r} was compiled for device {record.get('device')!r}, not {wanted!r}: {fix} --device {wanted}"
        )
    archive = archive_entry(path, PACKAGE_MODEL_FILE, PACKAGE_FOLDER)
    if archive is None or hashlib.sha256(archive).hexdigest() != record.get("model_sha256"):
        raise ValueError(f"{path!r} is a damaged compiled package (its model archive is missing or altered): {fix}")
    # stale: the model it was compiled from, still next to it, is no longer the model inside it
    sibling = os.path.join(os.path.dirname(os.path.abspath(path)), str(record.get("model_file", "")))
    if record.get("model_file") and os.path.isfile(sibling):
        with open(sibling, "rb") as handle:
            if handle.read() != archive:
                raise ValueError(
                    f"{path!r} is stale: {record['model_file']} next to it changed since it was compiled: {fix}"
                )
    model: LoadedModel = load_model_bytes(archive, path, device)
    try:
        # libtorch's loader itself (what torch._inductor.aoti_load_package wraps), without the
        # ~1 s import of torch._inductor: a package loads in a few ms
        device_index = torch.device(device or "cpu").index
        runner = torch._C._aoti.AOTIModelPackageLoader(
            path, "model", False, 1, -1 if device_index is None else device_index
        )
    except Exception as error:
        raise ValueError(f"{path!r}: libtorch could not load the compiled code ({first_line(error)}): {fix}") from error
    layout = ProgramLayout.from_dict(record["layout"])
    model.compiled = CompiledProgram(runner, layout, record.get("model_file", path))
    model.package = record
    return model
