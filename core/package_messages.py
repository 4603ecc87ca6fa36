"""What atomplug says about a compiled package (`.pt2`, core.package): one table, for Python and C++.

`core.package.open_package` refuses a package (torch version, device, damaged, stale, native code
that libtorch cannot load) and `CompiledProgram.refusal` refuses a call the package was not
compiled for; the C++ plugins (LAMMPS' pair style, PLUMED's action) do the same and must say the
same words: `atomplug.core.native_header` writes these tables into the header both include, as
PACKAGE_<KEY> and PACKAGE_REFUSAL_<KEY>. str.format templates; {path} and {model} are paths as
Python's repr() writes them, {fix} the table's "fix" entry filled in.
"""

from __future__ import annotations

from typing import Dict

# open_package: {path} the package (repr), {model_file} the archive it was compiled from (its
# record's model_file, "MODEL.pt" when it has none)
PACKAGE_MESSAGES: Dict[str, str] = {
    "fix": "compile it again: `atomplug compile {model_file}`",
    "torch_version": "{path} was compiled for torch {compiled}, this is torch {running}: {fix}",
    "device": "{path} was compiled for device {compiled}, not {wanted}: {fix} --device {device}",
    "damaged": "{path} is a damaged compiled package (its model archive is missing or altered): {fix}",
    "stale": "{path} is stale: {model_file} next to it changed since it was compiled: {fix}",
    "not_loadable": "{path}: libtorch could not load the compiled code ({reason}): {fix}",
}

# CompiledProgram.refusal: {model} the archive the package was compiled from (repr)
PACKAGE_REFUSALS: Dict[str, str] = {
    "fix": "run the model archive ({model} was compiled from it) for that",
    "non_conservative": ("a compiled package computes forces from the energy only, not non-conservative forces: {fix}"),
    "ghost_exchange": "a compiled package runs without a ghost exchange: {fix}",
    "output": "the package was not compiled for the output '{name}' (non-conservative): {fix}",
    "gradient": "the package was compiled for the derivatives of {compiled}, not of '{gradient_output}': {fix}",
    "atomic_virial": "the package has no per-atom virial of an output with several properties: {fix}",
}


def package_message(fault: str, path: str, model_file: str, **values) -> str:
    """open_package's words for `fault` about the package `path` compiled from `model_file`."""
    fix = PACKAGE_MESSAGES["fix"].format(model_file=model_file)
    return PACKAGE_MESSAGES[fault].format(path=repr(path), model_file=model_file, fix=fix, **values)


def package_refusal(fault: str, model: str, **values) -> str:
    """CompiledProgram.refusal's words for `fault`, the package compiled from `model`."""
    fix = PACKAGE_REFUSALS["fix"].format(model=repr(model))
    return PACKAGE_REFUSALS[fault].format(fix=fix, **values)
