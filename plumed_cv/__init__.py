"""atomplug.plumed_cv: the PLUMED action `ATOMPLUG`, an exported atomplug model as a collective variable.

    LOAD FILE=<printed by `atomplug plugin-path plumed`, or returned by plugin_path()>
    cv: ATOMPLUG MODEL=model.pt SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1
    PRINT ARG=cv FILE=COLVAR

The action is C++ (`atomplug_plumed.cpp`) compiled against the PLUMED of the PyPI wheel
`hillclimber==0.1.8` and the installed torch; `plugin_path()` compiles it on first use (see
`atomplug.plumed_cv.build`). It only moves memory: the model's engine entry point computes the
values, the derivatives and the virial.
"""

from __future__ import annotations

import warnings

from .build import BuildError, build, plugin_dir, plugin_path

# `python -m atomplug.plumed_cv.build` imports this package, which imports .build for the names
# above, so runpy warns that it runs a module already imported. Harmless here (build.py does
# nothing at import) and confusing as the first line of `make demo`: silenced for that module only.
warnings.filterwarnings(
    "ignore", message=r"'atomplug\.plumed_cv\.build' found in sys\.modules", category=RuntimeWarning
)

__all__ = ["BuildError", "build", "plugin_dir", "plugin_path", "plumed_environment", "plumed_program"]


def plumed_program() -> str:
    """The `plumed` command-line program bundled with the PLUMED kernel ATOMPLUG is built against.

    It needs `PLUMED_ROOT` and the kernel's directory on `LD_LIBRARY_PATH`: `plumed_environment()`.
    """
    from .build import plumed_installation

    return plumed_installation()["program"]


def plumed_environment(base=None) -> dict:
    """Environment for running `plumed_program()` directly (what hillclimber's `plumed` script sets)."""
    import os

    from .build import plumed_installation

    paths = plumed_installation()
    environment = dict(os.environ if base is None else base)
    environment["PLUMED_ROOT"] = os.path.join(paths["root"], "lib", "plumed")
    library_directory = os.path.dirname(paths["kernel"])
    existing = environment.get("LD_LIBRARY_PATH", "")
    environment["LD_LIBRARY_PATH"] = library_directory + (":" + existing if existing else "")
    return environment
