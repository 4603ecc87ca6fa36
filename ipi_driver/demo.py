"""`make demo`, i-PI section: path-integral MD of methanol with ANI-1x, two clients sharing the beads.

A real i-PI server runs 4-bead path-integral NVT (PILE-L thermostat, 300 K); two `atomplug-ipi`
clients named A and B connect to the same UNIX socket and i-PI hands each of them beads. Each
client labels its results (`--name`), so i-PI's own extras output says who computed which bead.

    python -m atomplug.ipi_driver.demo ani1x.pt [workdir]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from typing import Dict, List

import numpy as np

MOLECULE = "CH3OH"
N_BEADS = 4
STEPS = 200
PRINT_EVERY = 20
TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0
BOX_BOHR = 40.0

INPUT = """<simulation verbosity="low" floatformat="%.10e">
  <output prefix="pimd">
    <properties stride="1" filename="out" flush="1">[step, time{{femtosecond}}, conserved{{electronvolt}},
      temperature{{kelvin}}, kinetic_cv{{electronvolt}}, potential{{electronvolt}}]</properties>
    <trajectory stride="1" filename="client" extra_type="client" flush="1">extras</trajectory>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>2718</seed></prng>
  <ffsocket name="ani1x" mode="unix" pbc="false"><address>{address}</address></ffsocket>
  <system>
    <initialize nbeads="{beads}">
      <file mode="xyz">init.xyz</file>
      <velocities mode="thermal" units="kelvin">{temperature}</velocities>
    </initialize>
    <forces><force forcefield="ani1x"/></forces>
    <motion mode="dynamics">
      <dynamics mode="nvt">
        <timestep units="femtosecond">{timestep}</timestep>
        <thermostat mode="pile_l"><tau units="femtosecond">50</tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units="kelvin">{temperature}</temperature></ensemble>
  </system>
</simulation>
"""


def _ipi_executable() -> str:
    path = shutil.which("i-pi", path=os.path.dirname(sys.executable)) or shutil.which("i-pi")
    if path is None:
        raise RuntimeError("the i-PI server `i-pi` is not installed: pip install 'atomplug[ipi]'")
    return path


def _write_structures(workdir: str):
    """i-PI's start file (atomic units, a box it needs but pbc="false" ignores) and the
    clients' structure (a plain xyz: a molecule)."""
    from ase.build import molecule
    from ase.units import Bohr

    atoms = molecule(MOLECULE)
    template = os.path.join(workdir, "methanol.xyz")
    atoms.write(template)
    with open(os.path.join(workdir, "init.xyz"), "w") as handle:
        box = f"{BOX_BOHR} 0 0 0 {BOX_BOHR} 0 0 0 {BOX_BOHR}"
        handle.write(f"{len(atoms)}\n# CELL(H): {box} cell{{atomic_unit}} positions{{atomic_unit}}\n")
        for symbol, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions / Bohr):
            handle.write(f"{symbol} {x:.12f} {y:.12f} {z:.12f}\n")
    return template, len(atoms)


def _read_rows(path: str) -> np.ndarray:
    rows = []
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                if line.startswith("#") or not line.strip():
                    continue
                try:
                    rows.append([float(x) for x in line.split()])
                except ValueError:
                    pass
    width = max((len(r) for r in rows), default=0)
    return np.array([r for r in rows if len(r) == width]).reshape(-1, width) if width else np.zeros((0, 6))


def _read_clients(workdir: str) -> List[List[str]]:
    """For each bead, the name of the client that computed it at each step (i-PI's extras output)."""
    served = []
    for bead in range(N_BEADS):
        names = []
        path = os.path.join(workdir, f"pimd.client_{bead}")
        if os.path.exists(path):
            with open(path) as handle:
                names = [line.strip() for line in handle if line.strip() and not line.startswith(" #")]
        served.append(names)
    return served


def _tail(path: str) -> str:
    with open(path) as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return lines[-1] if lines else "(no output)"


def _print_row(row: np.ndarray, owners: List[str]) -> None:
    by_client = "  ".join(
        f"{client}: {','.join(str(b) for b, owner in enumerate(owners) if owner == client) or '-'}"
        for client in ("A", "B")
    )
    print(f"  {int(row[0]):>5} {row[1]:>8.1f} {row[5]:>14.5f} {row[4]:>10.4f} {row[3]:>9.1f}   {by_client}", flush=True)


def run_demo(ani1x_path: str, workdir: str, *, steps: int = STEPS, timeout: float = 300.0) -> Dict[str, object]:
    """Run the PIMD with two clients, print a table, return a summary (counts, final numbers)."""
    from ase.units import kB

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    for stale in os.listdir(workdir):
        if stale.startswith("pimd.") or stale.startswith("#pimd") or stale == "RESTART":
            os.unlink(os.path.join(workdir, stale))
    template, n_atoms = _write_structures(workdir)
    address = f"atomplug-demo-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    socket_file = "/tmp/ipi_" + address
    if os.path.exists(socket_file):
        os.unlink(socket_file)
    with open(os.path.join(workdir, "input.xml"), "w") as handle:
        handle.write(
            INPUT.format(steps=steps, address=address, beads=N_BEADS, temperature=TEMPERATURE_K, timestep=TIMESTEP_FS)
        )

    threads = str(max(1, (os.cpu_count() or 2) // 2))
    environment = dict(os.environ, OMP_NUM_THREADS=threads)
    processes: Dict[str, subprocess.Popen] = {}
    logs = {}
    start = time.perf_counter()
    try:
        logs["i-PI"] = open(os.path.join(workdir, "ipi.log"), "w")
        processes["i-PI"] = subprocess.Popen(
            [_ipi_executable(), "input.xml"],
            cwd=workdir,
            stdout=logs["i-PI"],
            stderr=subprocess.STDOUT,
            env=environment,
        )
        for name in ("A", "B"):
            logs[name] = open(os.path.join(workdir, f"client-{name}.log"), "w")
            processes[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "atomplug.ipi_driver.client",
                    "--model",
                    ani1x_path,
                    "--structure",
                    template,
                    "--unix",
                    address,
                    "--name",
                    name,
                    "--threads",
                    threads,
                ],
                cwd=workdir,
                stdout=logs[name],
                stderr=subprocess.STDOUT,
                env=environment,
            )
        print(
            f"  i-PI: {N_BEADS}-bead path-integral NVT of methanol at {TEMPERATURE_K:g} K, {steps} steps of "
            f"{TIMESTEP_FS} fs; ANI-1x served by two atomplug-ipi clients (A, B) on {socket_file}"
        )
        print()
        print(f"  {'step':>5} {'time/fs':>8} {'V (eV)':>14} {'K_cv (eV)':>10} {'T_md (K)':>9}   beads by client")
        wanted = sorted(set(range(0, steps + 1, PRINT_EVERY)) | {steps})
        deadline = time.monotonic() + timeout
        while True:
            finished = processes["i-PI"].poll() is not None
            data = _read_rows(os.path.join(workdir, "pimd.out"))
            served = _read_clients(workdir)
            while wanted and wanted[0] < data.shape[0] and all(len(names) > wanted[0] for names in served):
                step = wanted.pop(0)
                _print_row(data[step], [names[step] for names in served])
            if finished:
                break
            for name in ("A", "B"):
                if processes[name].poll() not in (None, 0):
                    raise RuntimeError(f"client {name} failed: {_tail(os.path.join(workdir, f'client-{name}.log'))}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the i-PI demo did not finish within {timeout:g} s; see {workdir}/ipi.log")
            time.sleep(0.1)
        status = processes["i-PI"].wait()
        if status != 0:
            raise RuntimeError(f"i-PI failed (exit {status}): {_tail(os.path.join(workdir, 'ipi.log'))}")
        for name in ("A", "B"):
            if processes[name].wait(timeout=30) != 0:
                raise RuntimeError(f"client {name} failed: {_tail(os.path.join(workdir, f'client-{name}.log'))}")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for handle in logs.values():
            handle.close()
        if os.path.exists(socket_file):
            os.unlink(socket_file)

    elapsed = time.perf_counter() - start
    data = _read_rows(os.path.join(workdir, "pimd.out"))
    served = _read_clients(workdir)
    counts = {c: sum(names.count(c) for names in served) for c in ("A", "B")}
    half = data.shape[0] // 2
    kinetic = data[half:, 4].mean()
    classical = 1.5 * n_atoms * kB * TEMPERATURE_K
    print()
    print(
        f"  bead evaluations: A {counts['A']}, B {counts['B']} (of {sum(counts.values())}); "
        f"{elapsed:.1f} s wall, {1e3 * elapsed / max(steps, 1):.1f} ms per step including start-up"
    )
    print(
        f"  second half: <K_cv> = {kinetic:.3f} eV vs classical 3/2 N kT = {classical:.3f} eV (zero-point motion of "
        f"the H atoms; 4 beads are far from converged), <T_md> = {data[half:, 3].mean():.0f} K"
    )
    conserved = data[:, 2]
    print(
        f"  conserved quantity drift: {abs(conserved[-1] - conserved[0]) * 1e3:.2f} meV over {steps * TIMESTEP_FS:g} fs"
    )
    return {
        "counts": counts,
        "steps": int(data[-1, 0]),
        "kinetic_cv": kinetic,
        "seconds": elapsed,
        "time_fs": data[:, 1],
        "potential_ev": data[:, 5],
        "temperature_k": data[:, 3],
    }


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="exported ANI-1x (atomplug export-example ani1x ani1x.pt)")
    parser.add_argument("workdir", nargs="?", default=os.path.join("build", "demo", "ipi"))
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    run_demo(os.path.abspath(args.model), args.workdir, steps=args.steps)


if __name__ == "__main__":
    main()
