"""Checks of the PLUMED installation for `atomplug doctor`: the kernel (from hillclimber's wheel),
the ATOMPLUG plugin build, and whether PLUMED can LOAD it (in a child process).

`run_checks(load)` returns `atomplug.core.checks.Check`s; each failing check says how to fix it.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from typing import List

from atomplug.core.checks import Check

LOAD_SCRIPT = (
    "import os, plumed\n"
    "p = plumed.Plumed()\n"
    "p.cmd('setNatoms', 1)\n"
    "p.cmd('setLogFile', os.devnull)\n"
    "p.cmd('init')\n"
    "p.cmd('readInputLine', 'LOAD FILE={path}')\n"
)


def run_checks(load: bool = True) -> List[Check]:
    try:
        version = metadata.version("hillclimber")
    except metadata.PackageNotFoundError:
        return [
            Check(
                "PLUMED kernel",
                False,
                "hillclimber (which bundles PLUMED) is not installed",
                "pip install --no-deps hillclimber==0.1.8",
            )
        ]
    from .build import BuildError, is_up_to_date, plugin_path

    checks = [Check("PLUMED kernel", True, f"from hillclimber {version}")]
    fix = "python -m atomplug.plumed_cv.build (or: atomplug plugin-path plumed)"
    try:
        path = plugin_path(build_if_needed=False)
        fresh = is_up_to_date()
    except BuildError as error:
        return checks + [Check("PLUMED plugin", False, str(error), fix)]
    checks.append(Check("PLUMED plugin", fresh, path if fresh else f"missing or stale: {path}", fix))
    if load and fresh:
        try:
            run = subprocess.run(
                [sys.executable, "-c", LOAD_SCRIPT.format(path=path)], capture_output=True, text=True, timeout=120
            )
            ok, detail = (
                run.returncode == 0,
                "LOAD works" if run.returncode == 0 else run.stderr.strip().splitlines()[-1:],
            )
        except subprocess.TimeoutExpired:
            ok, detail = False, "loading timed out"
        checks.append(Check("PLUMED LOAD", ok, str(detail), "rebuild: python -m atomplug.plumed_cv.build --force"))
    return checks
