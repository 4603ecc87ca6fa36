"""`make bench`, i-PI section: what the atomplug-ipi client costs per MD step.

For Lennard-Jones argon (108 and 1000 atoms, cutoff 8.5 A) this runs, in one go and on the same
machine, single-threaded (OMP_NUM_THREADS=1, so the processes do not fight over cores):
  direct     the exported model called in-process through the core (`ModelRunner.run`, neighbor
             list with the same skin the client uses): the floor a client cannot beat
  atomplug   a real i-PI NVT run with the atomplug-ipi client; ms/step measured from i-PI's
             output, and inside the client: model time and everything else (the overhead)
  dummy      the same i-PI run with i-PI's own python driver returning zeros
             (`i-pi-py_driver -m dummy`): i-PI's loop plus the socket, without a model
  metatomic  the same run with i-PI's own `-m metatomic` driver and the same physics exported
             as a metatomic model (needs `pip install metatomic-torch`)
The client's own overhead (time handling messages, minus model time) is the number to keep
under 0.3 ms per step; (atomplug - dummy - direct) is the same thing seen from outside, noisier.
The clients take turns for --rounds rounds and each keeps its fastest (the machine may be shared).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Dict, List, Optional

import numpy as np
from report import Aim, BenchRow  # benchmarks/report.py: the rows run.py writes to results.md

EPSILON, SIGMA, CUTOFF = 0.0104, 3.40, 8.5  # eV, Angstrom
LATTICE = 5.26  # fcc argon, Angstrom
SKIN = 0.5  # Angstrom, the client's default
BIN = os.path.dirname(sys.executable)


def argon(n_atoms: int, seed: int = 0):
    from ase.build import bulk

    repeat = {108: (3, 3, 3), 1000: (5, 5, 10), 32: (2, 2, 2)}[n_atoms]
    atoms = bulk("Ar", "fcc", a=LATTICE, cubic=True).repeat(repeat)
    atoms.positions += np.random.default_rng(seed).uniform(-0.05, 0.05, size=atoms.positions.shape)
    return atoms


# ---- the same physics as a metatomic model (benchmarks/metatomic_lj.py) ----------------------------


def export_metatomic_lj(path: str) -> None:
    """The LJ of atomplug.examples.lj in metatomic's contract, for i-PI's `-m metatomic` driver;
    ImportError (with the install command) when metatomic-torch is missing."""
    from metatomic_lj import export_metatomic_lj as export

    export(path, EPSILON, SIGMA, CUTOFF, (18,))


# ---- in-process floor ----------------------------------------------------------------------------


def direct_ms(model_path: str, atoms, calls: int) -> float:
    """Median ms of one `ModelRunner.run` (i-PI units, skin cache) on slowly moving positions."""
    import torch
    from ase.units import Bohr

    from atomplug.core import ModelRunner, Structure

    torch.set_num_threads(1)
    runner = ModelRunner(model_path, length_unit="Bohr", energy_unit="Hartree", skin=SKIN / Bohr)
    rng = np.random.default_rng(1)
    positions = atoms.positions / Bohr
    cell = atoms.cell.array / Bohr
    samples = []
    for index in range(calls + 10):
        positions = positions + rng.normal(0.0, 0.002, size=positions.shape)
        structure = Structure(atoms.numbers, positions, cell, atoms.pbc)
        start = time.perf_counter()
        runner.run([structure], ["energy"], forces=True, virial=True)
        if index >= 10:
            samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


# ---- i-PI runs -----------------------------------------------------------------------------------


INPUT = """<simulation verbosity="low">
  <output prefix="sim"><properties stride="1" filename="out" flush="1">[step, potential]</properties></output>
  <total_steps>{steps}</total_steps>
  <prng><seed>7</seed></prng>
  <ffsocket name="ff" mode="unix" pbc="true"><address>{address}</address></ffsocket>
  <system>
    <initialize nbeads="1"><file mode="xyz">init.xyz</file><velocities mode="thermal" units="kelvin">40</velocities></initialize>
    <forces><force forcefield="ff"/></forces>
    <motion mode="dynamics"><dynamics mode="nvt"><timestep units="femtosecond">2</timestep>
      <thermostat mode="langevin"><tau units="femtosecond">100</tau></thermostat></dynamics></motion>
    <ensemble><temperature units="kelvin">40</temperature></ensemble>
  </system>
</simulation>
"""


def _rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with open(path) as handle:
        return sum(1 for line in handle if line.strip() and not line.startswith("#"))


def ipi_run(workdir: str, client: List[str], warmup: int, steps: int, timeout: float = 600.0) -> Dict[str, object]:
    """ms/step of i-PI over `steps` steps after `warmup`, timed from i-PI's flushed output."""
    address = f"atomplug-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    socket_file = "/tmp/ipi_" + address
    if os.path.exists(socket_file):
        os.unlink(socket_file)
    for name in ("sim.out", "RESTART"):
        if os.path.exists(os.path.join(workdir, name)):
            os.unlink(os.path.join(workdir, name))
    with open(os.path.join(workdir, "input.xml"), "w") as handle:
        handle.write(INPUT.format(steps=warmup + steps, address=address))
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    with open(os.path.join(workdir, "ipi.log"), "w") as ipi_log, open(os.path.join(workdir, "client.log"), "w") as log:
        server = subprocess.Popen(
            [shutil.which("i-pi", path=BIN), "input.xml"],
            cwd=workdir,
            stdout=ipi_log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        if "i-pi-py_driver" in client[0]:  # it does not wait for the server
            deadline = time.monotonic() + 60
            while not os.path.exists(socket_file) and time.monotonic() < deadline:
                time.sleep(0.02)
        driver = subprocess.Popen(
            [c.replace("@ADDRESS@", address) for c in client],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
        output = os.path.join(workdir, "sim.out")
        marks = {}
        deadline = time.monotonic() + timeout
        try:
            while server.poll() is None and time.monotonic() < deadline:
                rows = _rows(output)
                now = time.perf_counter()
                if rows > warmup and "start" not in marks:
                    marks["start"] = (rows, now)
                if rows >= warmup + steps + 1:
                    marks["end"] = (rows, now)
                time.sleep(0.002)
            if "end" not in marks:
                marks["end"] = (_rows(output), time.perf_counter())
            server.wait(timeout=30)
            driver.wait(timeout=30)
        finally:
            for process in (server, driver):
                if process.poll() is None:
                    process.kill()
                    process.wait()
            if os.path.exists(socket_file):
                os.unlink(socket_file)
    if "start" not in marks:
        raise RuntimeError(f"i-PI run failed; see {workdir}/ipi.log and client.log")
    (rows0, t0), (rows1, t1) = marks["start"], marks["end"]
    with open(os.path.join(workdir, "client.log")) as handle:
        client_log = handle.read()
    return {"ms_per_step": 1e3 * (t1 - t0) / max(rows1 - rows0, 1), "log": client_log}


def client_timings(log: str):
    """(model ms, client CPU ms, client wall ms) per request from atomplug-ipi's closing line."""
    import re

    match = re.search(r"model ([0-9.]+) ms, client ([0-9.]+) ms CPU / ([0-9.]+) ms wall", log)
    if not match:
        raise RuntimeError(f"no timing line in the client's log:\n{log}")
    return tuple(float(match.group(i)) for i in (1, 2, 3))


def bench_system(
    n_atoms: int,
    workdir: str,
    model_path: str,
    metatomic_path: Optional[str],
    warmup: int,
    steps: int,
    direct_calls: int,
    rounds: int = 1,
) -> Dict[str, float]:
    """ms/step of each i-PI client; the clients take turns for `rounds` rounds and each keeps its
    fastest round (on a shared machine noise only adds), so that a burst of load hits all alike."""
    from ase.units import Bohr

    atoms = argon(n_atoms)
    with open(os.path.join(workdir, "init.xyz"), "w") as handle:
        h = " ".join(f"{x:.12f}" for x in (atoms.cell.array.T / Bohr).reshape(-1))
        handle.write(f"{len(atoms)}\n# CELL(H): {h} cell{{atomic_unit}} positions{{atomic_unit}}\n")
        for x, y, z in atoms.positions / Bohr:
            handle.write(f"Ar {x:.12f} {y:.12f} {z:.12f}\n")

    py_driver = shutil.which("i-pi-py_driver", path=BIN)
    clients = {
        "atomplug": [
            shutil.which("atomplug-ipi", path=BIN),
            "--model",
            model_path,
            "--structure",
            "init.xyz",
            "--unix",
            "@ADDRESS@",
            "--threads",
            "1",
        ],
        "dummy": [py_driver, "-m", "dummy", "-u", "-a", "@ADDRESS@"],
    }
    if metatomic_path is not None:
        clients["metatomic"] = [
            py_driver,
            "-m",
            "metatomic",
            "-u",
            "-a",
            "@ADDRESS@",
            "-o",
            f"template=init.xyz,model={metatomic_path},skin={SKIN}",
        ]
    samples: Dict[str, List[float]] = {name: [] for name in list(clients) + ["direct"]}
    client_samples: List[tuple] = []
    for _ in range(rounds):
        samples["direct"].append(direct_ms(model_path, atoms, direct_calls))
        for name, command in clients.items():
            run = ipi_run(workdir, command, warmup, steps)
            samples[name].append(run["ms_per_step"])
            if name == "atomplug":
                # per-request averages over the run (the client warms the model up before connecting)
                client_samples.append(client_timings(run["log"]))
    results = {name: min(values) for name, values in samples.items()}
    results["client_model"], results["client_cpu"], results["client_wall"] = (
        min(sample[index] for sample in client_samples) for index in range(3)
    )
    return results


def same_physics(model_path: str, metatomic_path: str) -> str:
    try:
        from metatomic_ase import MetatomicCalculator
    except ImportError:
        from metatomic.torch.ase_calculator import MetatomicCalculator

    from atomplug.ase_calculator import AtomplugCalculator

    atoms = argon(108)
    atoms.calc = MetatomicCalculator(metatomic_path)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = AtomplugCalculator(model_path)
    return (
        f"|dE|/|E| = {abs(atoms.get_potential_energy() - energy) / abs(energy):.1e}, "
        f"max |dF| = {np.abs(atoms.get_forces() - forces).max():.1e} eV/A"
    )


def ipi_rows(all_results: Dict[int, Dict[str, float]]) -> List[BenchRow]:
    """Issue 5's aim, per size: the client adds <= 0.3 ms per step over the model's time."""
    rows = []
    for n_atoms, results in all_results.items():
        rows.append(
            BenchRow(
                engine="i-PI",
                system=f"LJ, {n_atoms} Ar, rc 8.5 A",
                timed="NVT step, one atomplug-ipi client",
                atomplug_ms=results["atomplug"],
                floor_ms=results["dummy"] + results["direct"],
                floor="i-PI with its zeros driver (loop + socket) + the model called in-process",
                peer="i-PI -m metatomic",
                peer_ms=results.get("metatomic"),
                aims=[Aim(5, "client's own CPU per step", results["client_cpu"], 0.3, unit="ms")],
                details={
                    "i-PI + zeros driver ms": results["dummy"],
                    "model in-process ms": results["direct"],
                    "model inside the client ms": results["client_model"],
                    "client CPU (overhead) ms": results["client_cpu"],
                    "client wall (overhead) ms": results["client_wall"],
                    "outside estimate (atomplug - zeros - in-process) ms": results["outside"],
                },
            )
        )
    return rows


def main(argv=None) -> List[BenchRow]:
    """Prints the table and returns the report's rows (benchmarks/report.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 1000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="clients take turns this many times; fastest kept")
    args = parser.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="atomplug-bench-ipi-")
    try:
        return ipi_rows(bench_sizes(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bench_sizes(args: argparse.Namespace, workdir: str) -> Dict[int, Dict[str, float]]:
    from atomplug.examples.lj import export_lj

    model_path = os.path.join(workdir, "lj.pt")
    export_lj(model_path, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)
    metatomic_path: Optional[str] = os.path.join(workdir, "lj-metatomic.pt")
    try:
        export_metatomic_lj(metatomic_path)
    except ImportError as error:
        print(f"  (metatomic comparison skipped: {error}; pip install metatomic-torch)")
        metatomic_path = None

    if metatomic_path is not None:
        print(f"  same physics: metatomic vs atomplug LJ, 108 atoms: {same_physics(model_path, metatomic_path)}")
    print(
        "i-PI: Lennard-Jones argon, NVT, one client, OMP_NUM_THREADS=1; ms per MD step (per request inside the client)"
    )
    print(
        f"  {'atoms':>6} {'direct':>8} {'i-PI+atomplug':>14} {'model':>7} {'client CPU':>11} {'client wall':>12} "
        f"{'i-PI+dummy':>11} {'i-PI+metatomic':>15} {'outside est.':>13}"
    )
    all_results = {}
    for n_atoms in args.sizes:
        steps = args.steps if n_atoms <= 200 else max(args.steps // 2, 20)
        results = bench_system(
            n_atoms, workdir, model_path, metatomic_path, args.warmup, steps, direct_calls=steps, rounds=args.rounds
        )
        all_results[n_atoms] = results
        results["outside"] = results["atomplug"] - results["dummy"] - results["direct"]
        metatomic = f"{results['metatomic']:>15.2f}" if "metatomic" in results else f"{'-':>15}"
        print(
            f"  {n_atoms:>6} {results['direct']:>8.2f} {results['atomplug']:>14.2f} {results['client_model']:>7.2f} "
            f"{results['client_cpu']:>11.3f} {results['client_wall']:>12.3f} {results['dummy']:>11.2f} {metatomic} "
            f"{results['outside']:>13.2f}",
            flush=True,
        )
    print(f"  each number: the fastest of {args.rounds} rounds in which the clients take turns")
    print("  direct: the core's entry point in-process, median; model / client: inside atomplug-ipi, mean per")
    print("  request; client = its time handling messages minus model time (aim <= 0.3 ms); dummy: i-PI's")
    print("  python driver returning zeros (i-PI's loop + socket); outside est. = i-PI+atomplug - dummy - direct")
    return all_results


if __name__ == "__main__":
    main()
