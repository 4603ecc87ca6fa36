"""Build the `ATOMPLUG` PLUMED action (`libatomplug_plumed.so`) against the installed PLUMED and torch.

PLUMED comes from the PyPI wheel `hillclimber==0.1.8` (install it with `pip install --no-deps`): its
`plumed` package bundles the PLUMED kernel and headers. Its `plumed mklib` does not work (paths of
the machine that built the wheel are baked in), so the action is compiled here with g++ directly,
with the defines PLUMED itself was compiled with (`compile_options.sh`), linked to libtorch, vesin's
C library and the PLUMED kernel, with RPATHs so that `plumed driver`, ASE and i-PI all find them.

The library goes to a directory keyed by the PLUMED, torch and vesin versions, and is rebuilt when
its source, the headers generated from atomplug.core (atomplug_core.h: what the action knows about the
model file, shared with LAMMPS' pair style; atomplug_plumed_units.h: PLUMED's base units as core
names them) or its compile command changes:

    python -m atomplug.plumed_cv.build            # build if missing or stale, print the path
    python -m atomplug.plumed_cv.build --force    # rebuild
    python -m atomplug.plumed_cv.build --quiet    # no progress messages (on stderr)

Locking, records, build roots and compiler discovery: atomplug.core.plugin_build, shared with the
LAMMPS plugin, whose build module has the same `build()` and `plugin_path()`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import Dict, List, Optional, TextIO

from atomplug.core import native_header, plugin_build
from atomplug.core.plugin_build import BuildError

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "atomplug_plumed.cpp")
LIBRARY_NAME = "libatomplug_plumed.so"
UNITS_HEADER = "atomplug_plumed_units.h"
STAMP_NAME = plugin_build.INFO_FILE
BUILD_ROOT_VARIABLE = "ATOMPLUG_PLUMED_BUILD_DIR"
PLUMED_REQUIREMENT = "pip install --no-deps hillclimber==0.1.8"

__all__ = ["BuildError", "build", "is_up_to_date", "plugin_dir", "plugin_path", "plumed_installation"]


# ---- what we build against ----------------------------------------------------------------------


def plumed_installation() -> Dict[str, str]:
    """Paths of the PLUMED bundled in the `plumed` package of the hillclimber wheel."""
    import importlib.util

    spec = importlib.util.find_spec("plumed")
    if spec is None or spec.origin is None:
        raise BuildError(f"PLUMED is not installed: {PLUMED_REQUIREMENT} (it bundles the PLUMED kernel and headers)")
    root = os.path.join(os.path.dirname(spec.origin), "_lib")
    paths = {
        "root": root,
        "include": os.path.join(root, "include", "plumed"),
        "kernel": os.path.join(root, "lib", "libplumedKernel.so"),
        "compile_options": os.path.join(root, "lib", "plumed", "src", "config", "compile_options.sh"),
        "version_header": os.path.join(root, "include", "plumed", "config", "version.h"),
        "program": os.path.join(root, "bin", "plumed"),
    }
    for key in ("include", "kernel", "compile_options", "version_header"):
        if not os.path.exists(paths[key]):
            raise BuildError(
                f"the installed `plumed` package has no {key} ({paths[key]}): ATOMPLUG needs the PLUMED "
                f"bundled in the hillclimber wheel: {PLUMED_REQUIREMENT}"
            )
    with open(paths["version_header"]) as handle:
        match = re.search(r'PLUMED_VERSION_LONG\s+"([^"]+)"', handle.read())
    paths["version"] = match.group(1) if match else "unknown"
    return paths


def plumed_defines(compile_options: str) -> List[str]:
    """The -D flags PLUMED was compiled with (its `compile=` line), which its headers rely on."""
    with open(compile_options) as handle:
        text = handle.read()
    match = re.search(r"^compile='(.*)'\s*$", text, re.MULTILINE)
    if not match:
        raise BuildError(f"cannot read the compile command from {compile_options}")
    return [token for token in shlex.split(match.group(1)) if token.startswith("-D")]


def torch_installation() -> Dict[str, object]:
    return plugin_build.torch_installation()


def vesin_installation() -> Dict[str, str]:
    try:
        import vesin
    except ImportError:
        raise BuildError("vesin is not installed: pip install vesin") from None
    root = os.path.dirname(os.path.abspath(vesin.__file__))
    paths = {
        "include": os.path.join(root, "include"),
        "lib": os.path.join(root, "lib"),
        "version": getattr(vesin, "__version__", "unknown"),
    }
    if not os.path.exists(os.path.join(paths["include"], "vesin.h")) or not os.path.exists(
        os.path.join(paths["lib"], "libvesin.so")
    ):
        raise BuildError(f"the vesin package at {root} lacks its C library (include/vesin.h, lib/libvesin.so)")
    return paths


def units_header() -> str:
    """PLUMED's base units (its Units class gives every unit as a multiple of these), as atomplug.core
    names them (ENGINE_UNITS and ENGINE_QUANTITY_UNITS for "plumed"); the action writes PLUMED's
    units as `factor*base`, which the archive's own unit parser converts."""
    from atomplug.core.units import ENGINE_QUANTITY_UNITS, ENGINE_UNITS

    energy, length = ENGINE_UNITS["plumed"]
    quantities = ENGINE_QUANTITY_UNITS["plumed"]
    values = {
        "LENGTH": length,
        "ENERGY": energy,
        "MASS": quantities["mass"],
        "CHARGE": quantities["charge"],
        "VELOCITY": quantities["velocity"],
    }
    lines = [
        "// Generated by atomplug.plumed_cv.build from atomplug.core.units (ENGINE_UNITS and",
        '// ENGINE_QUANTITY_UNITS for "plumed"): PLUMED\'s base units. Do not edit.',
        "#pragma once",
        "namespace atomplug_plumed_units {",
    ]
    lines += [f"constexpr const char *{key} = {native_header.cpp_string(value)};" for key, value in values.items()]
    lines += ["}  // namespace atomplug_plumed_units", ""]
    return "\n".join(lines)


# ---- where it goes --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def build_key() -> str:
    plumed = plumed_installation()
    torch = torch_installation()
    vesin = vesin_installation()
    return f"plumed-{_slug(plumed['version'])}_torch-{_slug(str(torch['version']))}_vesin-{_slug(vesin['version'])}"


def build_roots() -> List[str]:
    """$ATOMPLUG_PLUMED_BUILD_DIR, else plumed_cv/_build next to this file (an editable install or a
    writable site-packages), then the user cache directory."""
    return plugin_build.build_roots(HERE, BUILD_ROOT_VARIABLE, "plumed")


def plugin_dir() -> str:
    """The directory holding (or due to hold) the plugin for the installed PLUMED, torch and vesin."""
    return plugin_build.locate(build_roots(), build_key(), LIBRARY_NAME)


build_directory = plugin_dir  # the name this module had for it


# ---- the build ---------------------------------------------------------------------------------


def compile_command(compiler: List[str], output: str, build_dir: Optional[str] = None) -> List[str]:
    """The compiler command that builds the action into `output`."""
    plumed = plumed_installation()
    torch = torch_installation()
    vesin = vesin_installation()
    build_dir = build_dir or os.path.dirname(os.path.abspath(output))
    kernel_directory = os.path.dirname(plumed["kernel"])
    command = list(compiler) + ["-std=c++17", "-O2", "-fPIC", "-shared", "-fno-gnu-unique", "-w"]
    command += plumed_defines(plumed["compile_options"])
    command += ["-D_GLIBCXX_USE_CXX11_ABI=1"]
    # vesin is opened at run time with RTLD_LOCAL (the PLUMED kernel exports an older vesin_neighbors)
    command += ['-DATOMPLUG_VESIN_LIBRARY="' + os.path.join(vesin["lib"], "libvesin.so") + '"']
    command += ["-I" + os.path.join(build_dir, plugin_build.GENERATED_DIRECTORY), "-I" + plugin_build.json_include()]
    command += ["-I" + plumed["include"], "-I" + vesin["include"]]
    for directory in torch["includes"]:
        command += ["-isystem", directory]
    command += [SOURCE, "-o", output]
    command += ["-L" + str(torch["lib"]), "-L" + vesin["lib"], "-L" + kernel_directory]
    command += ["-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-lplumedKernel", "-ldl"]
    command += plugin_build.rpath_flags([str(torch["lib"]), vesin["lib"], kernel_directory], build_dir)
    return command


def plugin() -> plugin_build.Plugin:
    """What the ATOMPLUG action is built from, for the installed PLUMED, torch and vesin."""
    plumed = plumed_installation()
    torch = torch_installation()
    vesin = vesin_installation()
    directory = plugin_dir()
    return plugin_build.Plugin(
        title="PLUMED action ATOMPLUG",
        directory=directory,
        products=[("library", LIBRARY_NAME)],
        commands=lambda compiler, outputs: {"library": compile_command(compiler, outputs["library"], directory)},
        headers={native_header.HEADER_FILE: native_header.header_text(), UNITS_HEADER: units_header()},
        record={
            "plumed": plumed["version"],
            "torch": str(torch["version"]),
            "vesin": vesin["version"],
            "sources_sha256": plugin_build.digest(files=[SOURCE]),
        },
        describe=f"for PLUMED {plumed['version']}, torch {torch['version']} and vesin {vesin['version']}",
        duration="~30 s, once",
    )


def build(force: bool = False, verbose: bool = True, stream: Optional[TextIO] = None) -> str:
    """Compile the plugin if it is missing or stale (or `force`); return the library's path.
    Progress messages go to `stream` (default stdout) when verbose; raises BuildError with the fix."""
    return plugin_build.build(plugin(), force=force, verbose=verbose, stream=stream)


def is_up_to_date() -> bool:
    """Whether the built plugin matches the installed torch, PLUMED, vesin, the source and core's header."""
    return plugin().is_up_to_date()


def plugin_path(build_if_needed: bool = True) -> str:
    """Path of the ATOMPLUG plugin for PLUMED's `LOAD FILE=...`, compiled first when missing or stale
    unless `build_if_needed` is false (messages on stderr only while compiling)."""
    if not build_if_needed:
        return os.path.join(plugin_dir(), LIBRARY_NAME)
    return plugin_build.build(plugin(), verbose=True, stream=sys.stderr, report_fresh=False)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the ATOMPLUG PLUMED action and print its path.")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--print-command", action="store_true", help="print the compile command and exit")
    parser.add_argument("--print-dir", action="store_true", help="only print the plugin directory")
    args = parser.parse_args(argv)
    try:
        if args.print_command:
            compiler = plugin_build.find_compiler()
            print(" ".join(shlex.quote(t) for t in compile_command(compiler, os.path.join(plugin_dir(), LIBRARY_NAME))))
            return 0
        if args.print_dir:
            print(plugin_dir())
            return 0
        print(
            plugin_build.build(
                plugin(), force=args.force, verbose=not args.quiet, stream=sys.stderr, report_fresh=False
            )
        )
    except BuildError as error:
        print(f"atomplug: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
