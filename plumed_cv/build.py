"""Build the `ATOMPLUG` PLUMED action (`libatomplug_plumed.so`) against the installed PLUMED and torch.

PLUMED comes from the PyPI wheel `hillclimber==0.1.8` (install it with `pip install --no-deps`): its
`plumed` package bundles the PLUMED kernel and headers. Its `plumed mklib` does not work (paths of
the machine that built the wheel are baked in), so the action is compiled here with g++ directly,
with the defines PLUMED itself was compiled with (`compile_options.sh`), linked to libtorch, vesin's
C library and the PLUMED kernel, with RPATHs so that `plumed driver`, ASE and i-PI all find them.

The library goes to a directory keyed by the PLUMED, torch and vesin versions, and is rebuilt when
its source or compile command changes:

    python -m atomplug.plumed_cv.build            # build if missing or stale, print the path
    python -m atomplug.plumed_cv.build --force    # rebuild
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "atomplug_plumed.cpp")
LIBRARY_NAME = "libatomplug_plumed.so"
STAMP_NAME = "build-info.json"
BUILD_ROOT_VARIABLE = "ATOMPLUG_PLUMED_BUILD_DIR"
PLUMED_REQUIREMENT = "pip install --no-deps hillclimber==0.1.8"


class BuildError(RuntimeError):
    """The plugin cannot be built here: the message says what is missing and how to get it."""


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
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        raise BuildError(f"torch is not installed ({error})") from None
    library_dirs = cpp_extension.library_paths()
    return {
        "version": torch.__version__,
        "include": cpp_extension.include_paths(),
        "lib": library_dirs[0],
        "cxx11_abi": int(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
    }


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


def compiler() -> str:
    candidate = os.environ.get("CXX", "g++")
    found = shutil.which(candidate)
    if found is None:
        raise BuildError(
            f"no C++ compiler found ({candidate!r} is not on PATH): the ATOMPLUG PLUMED action is compiled "
            "on first use; install one (Debian/Ubuntu: apt-get install g++) or set CXX"
        )
    return found


# ---- where it goes --------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def build_key() -> str:
    plumed = plumed_installation()
    torch = torch_installation()
    vesin = vesin_installation()
    return f"plumed-{_slug(plumed['version'])}_torch-{_slug(str(torch['version']))}_vesin-{_slug(vesin['version'])}"


def _writable(directory: str) -> bool:
    probe = directory
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return False
        probe = parent
    return os.access(probe, os.W_OK)


def build_root() -> str:
    """$ATOMPLUG_PLUMED_BUILD_DIR, else plumed_cv/_build next to this file (an editable install or a
    writable site-packages), else the user cache directory."""
    override = os.environ.get(BUILD_ROOT_VARIABLE)
    if override:
        return os.path.abspath(override)
    local = os.path.join(HERE, "_build")
    if _writable(local):
        return local
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "atomplug", "plumed")


def build_directory() -> str:
    return os.path.join(build_root(), build_key())


# ---- the build ---------------------------------------------------------------------------------


def _rpath_flags(directories: List[str], output_directory: str) -> List[str]:
    """Both $ORIGIN-relative and absolute RPATHs: relocatable, and robust to a moved build tree."""
    flags = []
    for directory in directories:
        relative = os.path.relpath(directory, output_directory)
        flags.append("-Wl,-rpath,$ORIGIN/" + relative)
        flags.append("-Wl,-rpath," + directory)
    return flags


def compile_command(output: str) -> List[str]:
    plumed = plumed_installation()
    torch = torch_installation()
    vesin = vesin_installation()
    output_directory = os.path.dirname(os.path.abspath(output))
    kernel_directory = os.path.dirname(plumed["kernel"])
    command = [compiler(), "-std=c++17", "-O2", "-fPIC", "-shared", "-fno-gnu-unique", "-w"]
    command += plumed_defines(plumed["compile_options"])
    command += [f"-D_GLIBCXX_USE_CXX11_ABI={torch['cxx11_abi']}"]
    # vesin is opened at run time with RTLD_LOCAL (the PLUMED kernel exports an older vesin_neighbors)
    command += ['-DATOMPLUG_VESIN_LIBRARY="' + os.path.join(vesin["lib"], "libvesin.so") + '"']
    command += ["-I" + plumed["include"], "-I" + vesin["include"]]
    for directory in torch["include"]:
        command += ["-isystem", directory]
    command += [SOURCE, "-o", output]
    command += ["-L" + str(torch["lib"]), "-L" + vesin["lib"], "-L" + kernel_directory]
    command += ["-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10", "-lplumedKernel", "-ldl"]
    command += _rpath_flags([str(torch["lib"]), vesin["lib"], kernel_directory], output_directory)
    return command


def _fingerprint(command: List[str]) -> str:
    digest = hashlib.sha256()
    with open(SOURCE, "rb") as handle:
        digest.update(handle.read())
    # the output path is a temporary name: leave it out
    stable = [token for token in command if not token.endswith(".so.tmp")]
    digest.update("\0".join(stable).encode())
    return digest.hexdigest()


def _is_fresh(directory: str, fingerprint: str) -> bool:
    library = os.path.join(directory, LIBRARY_NAME)
    stamp = os.path.join(directory, STAMP_NAME)
    if not (os.path.exists(library) and os.path.exists(stamp)):
        return False
    try:
        with open(stamp) as handle:
            return json.load(handle).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _lock(directory: str):
    import fcntl

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(force: bool = False, quiet: bool = False) -> str:
    """Compile the plugin if it is missing or stale (or `force`); return the library's path."""
    directory = build_directory()
    library = os.path.join(directory, LIBRARY_NAME)
    temporary = library + ".tmp"
    command = compile_command(temporary)
    fingerprint = _fingerprint(command)
    if not force and _is_fresh(directory, fingerprint):
        return library
    with _lock(directory):
        if not force and _is_fresh(directory, fingerprint):
            return library  # another process built it while we waited
        if not quiet:
            print(f"atomplug: compiling the PLUMED action ATOMPLUG into {directory} (~30 s, once)", file=sys.stderr)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise BuildError(
                "compiling the ATOMPLUG PLUMED action failed:\n  " + " ".join(shlex.quote(t) for t in command)
                + "\n" + (result.stderr or result.stdout)[-6000:]
            )
        os.replace(temporary, library)
        info = {
            "fingerprint": fingerprint,
            "command": command,
            "plumed": plumed_installation()["version"],
            "torch": str(torch_installation()["version"]),
        }
        with open(os.path.join(directory, STAMP_NAME), "w") as handle:
            json.dump(info, handle, indent=2)
    return library


def is_up_to_date() -> bool:
    """Whether the built plugin matches the installed torch, PLUMED, vesin and the source."""
    directory = build_directory()
    library = os.path.join(directory, LIBRARY_NAME)
    return _is_fresh(directory, _fingerprint(compile_command(library + ".tmp")))


def plugin_path(build_if_needed: bool = True) -> str:
    """Path of the ATOMPLUG plugin for PLUMED's `LOAD FILE=...`, building it when missing or stale."""
    if build_if_needed:
        return build()
    return os.path.join(build_directory(), LIBRARY_NAME)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the ATOMPLUG PLUMED action and print its path.")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--print-command", action="store_true", help="print the compile command and exit")
    args = parser.parse_args(argv)
    try:
        if args.print_command:
            print(" ".join(shlex.quote(t) for t in compile_command(os.path.join(build_directory(), LIBRARY_NAME))))
            return 0
        print(build(force=args.force))
    except BuildError as error:
        print(f"atomplug: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
