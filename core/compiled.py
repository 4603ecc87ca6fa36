"""Writing compiled packages (`.pt2`, `atomplug compile`): the archive's torch.export program
compiled by AOTInductor for one machine, torch build and device, with the archive itself inside,
checked against the TorchScript entry point before it is written.

A package is an AOTInductor package (a zip that libtorch's AOTIModelPackageLoader reads) to which
`compile_model` adds two files: the model archive it was compiled from (so the package runs on its
own, with every setup method of the TorchScript entry point) and atomplug's metadata, the archive's
plus a `package` record (torch version, device, the archive's SHA-256 and file name, the program's
layout). Running one is core.package's (load_model opens it).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import zipfile
from typing import Dict, List, Optional

import torch

from .archive import METADATA_FILE, read_header
from .files import write_atomically
from .package import PACKAGE_FOLDER, PACKAGE_MODEL_FILE, PACKAGE_SUFFIX, archive_entry
from .program import PROGRAM_FILE, ProgramLayout, load_program, warnings_quiet

# how close the package must come to the TorchScript entry point on the check structures
CHECK_TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def package_path_for(model_path: str) -> str:
    """model.pt -> model.pt2, next to it."""
    root, _ = os.path.splitext(model_path)
    return root + PACKAGE_SUFFIX


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
    program = program_on(load_program(archive_entry(model_path, PROGRAM_FILE)), device)
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


def program_on(program, device: str):
    """The captured program (captured on the CPU at export) with its weights, constants and every
    device its graph names moved to `device`, for AOTInductor to compile there. A program that
    still named another device would fail at run time, or copy across the bus at every call;
    compile_model's check against TorchScript on `device` then refuses it."""
    if torch.device(device).type == "cpu":
        return program
    from torch.export.passes import move_to_device_pass

    return move_to_device_pass(program, torch.device(device))


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
    every: List[str] = []  # every output; for a subset of atoms, the per-atom ones only (the
    subset: List[str] = []  # entry point refuses a per-structure output summed over a subset)
    for name, per_atom in zip(layout.outputs, layout.per_atom):
        every.append(name)
        if per_atom:
            every.append(name + "/per_atom")
            subset += [name, name + "/per_atom"]
    gradient_per_atom = layout.gradient != "" and layout.per_atom[layout.outputs.index(layout.gradient)]
    length_unit = reference.capabilities.length_unit
    units = dict(length_unit=length_unit, energy_unit="eV")
    for structure in check_structures(reference):
        for selected in (None, list(range(0, len(structure), 2))):
            requests = every if selected is None else subset
            gradient = layout.gradient != "" and (selected is None or gradient_per_atom)
            if not requests and not gradient:
                continue
            results = []
            for model in (reference, compiled):
                runner = ModelRunner(model, **units)
                results.append(
                    runner.run(
                        [structure],
                        requests,
                        forces=gradient,
                        virial=gradient,
                        atomic_virial=gradient and layout.atomic_virial,
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
    """The compile check's structures: one cluster of every known type, about one cutoff wide, in a
    periodic cell, in a skewed slab and isolated."""
    from .runner import Structure

    generator = torch.Generator().manual_seed(20261207)
    types = list(model.capabilities.atomic_types)
    n_atoms = max(9, 2 * len(types) + 3)
    numbers = [types[i % len(types)] for i in range(n_atoms)]
    reach = max([r[0] for r in model.neighbor_requests(model.capabilities.length_unit)] + [1.0])
    box = 1.1 * reach
    positions = (torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) * box).numpy()
    cell = torch.eye(3, dtype=torch.float64).numpy() * box
    skewed = cell.copy()
    skewed[1, 0] = 0.2 * box
    return [
        Structure(numbers, positions, cell, [True, True, True]),
        Structure(numbers, positions, skewed, [True, True, False]),
        Structure(numbers, positions, 0 * cell, [False, False, False]),
    ]
