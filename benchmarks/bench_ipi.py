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


# ---- the same physics as a metatomic model -------------------------------------------------------


try:  # metatomic-torch is optional: without it the metatomic column is skipped
    import torch
    import metatomic.torch as mta
    from metatensor.torch import Labels, TensorBlock, TensorMap
except ImportError as _error:
    mta = None
    METATOMIC_MISSING = str(_error)

if mta is not None:

    class MetatomicLJ(torch.nn.Module):
        """Shifted LJ (as atomplug's example) in metatomic's contract, for i-PI's `-m metatomic`."""

        def __init__(self, epsilon: float, sigma: float, cutoff: float):
            super().__init__()
            self.epsilon = epsilon
            self.sigma = sigma
            self.options = mta.NeighborListOptions(cutoff=cutoff, full_list=False, strict=True)
            ratio6 = (sigma / cutoff) ** 6
            self.shift = 4.0 * epsilon * (ratio6 * ratio6 - ratio6)

        def requested_neighbor_lists(self) -> List[mta.NeighborListOptions]:
            return [self.options]

        def forward(
            self,
            systems: List[mta.System],
            outputs: Dict[str, mta.ModelOutput],
            selected_atoms: Optional[Labels] = None,
        ) -> Dict[str, TensorMap]:
            energies: List[torch.Tensor] = []
            for system in systems:
                vectors = system.get_neighbor_list(self.options).values.reshape(-1, 3)
                squared = (vectors * vectors).sum(dim=1)
                ratio6 = (self.sigma * self.sigma / squared) ** 3
                energies.append((4.0 * self.epsilon * (ratio6 * ratio6 - ratio6) - self.shift).sum().reshape(1))
            block = TensorBlock(
                values=torch.cat(energies).reshape(-1, 1),
                samples=Labels("system", torch.arange(len(systems), dtype=torch.int32).reshape(-1, 1)),
                components=[],
                properties=Labels("energy", torch.tensor([[0]], dtype=torch.int32)),
            )
            return {"energy": TensorMap(Labels("_", torch.tensor([[0]], dtype=torch.int32)), [block])}


def export_metatomic_lj(path: str) -> None:
    if mta is None:
        raise ImportError(METATOMIC_MISSING)
    capabilities = mta.ModelCapabilities(
        outputs={"energy": mta.ModelOutput(quantity="energy", unit="eV", per_atom=False)},
        atomic_types=[18],
        interaction_range=CUTOFF,
        length_unit="Angstrom",
        supported_devices=["cpu"],
        dtype="float64",
    )
    module = MetatomicLJ(EPSILON, SIGMA, CUTOFF).eval()
    mta.AtomisticModel(module, mta.ModelMetadata(name="lj-metatomic"), capabilities).save(path)


# ---- in-process floor ----------------------------------------------------------------------------


def direct_ms(model_path: str, atoms, calls: int) -> float:
    """Median ms of one `ModelRunner.run` (i-PI units, skin cache) on slowly moving positions."""
    from ase.units import Bohr

    from atomplug.core import ModelRunner, Structure

    import torch

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
        server = subprocess.Popen([shutil.which("i-pi", path=BIN), "input.xml"], cwd=workdir, stdout=ipi_log,
                                  stderr=subprocess.STDOUT, env=environment)
        if "i-pi-py_driver" in client[0]:  # it does not wait for the server
            deadline = time.monotonic() + 60
            while not os.path.exists(socket_file) and time.monotonic() < deadline:
                time.sleep(0.02)
        driver = subprocess.Popen([c.replace("@ADDRESS@", address) for c in client], cwd=workdir, stdout=log,
                                  stderr=subprocess.STDOUT, env=environment)
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


def bench_system(n_atoms: int, workdir: str, model_path: str, metatomic_path: Optional[str], warmup: int,
                 steps: int, direct_calls: int) -> Dict[str, float]:
    from ase.units import Bohr

    atoms = argon(n_atoms)
    with open(os.path.join(workdir, "init.xyz"), "w") as handle:
        h = " ".join(f"{x:.12f}" for x in (atoms.cell.array.T / Bohr).reshape(-1))
        handle.write(f"{len(atoms)}\n# CELL(H): {h} cell{{atomic_unit}} positions{{atomic_unit}}\n")
        for x, y, z in atoms.positions / Bohr:
            handle.write(f"Ar {x:.12f} {y:.12f} {z:.12f}\n")
    results: Dict[str, float] = {"direct": direct_ms(model_path, atoms, direct_calls)}

    atomplug = ipi_run(workdir, [shutil.which("atomplug-ipi", path=BIN), "--model", model_path, "--structure",
                                 "init.xyz", "--unix", "@ADDRESS@", "--threads", "1"], warmup, steps)
    results["atomplug"] = atomplug["ms_per_step"]
    # per-request averages over the run (the client warms the model up before connecting):
    results["client_model"], results["client_cpu"], results["client_wall"] = client_timings(atomplug["log"])

    py_driver = shutil.which("i-pi-py_driver", path=BIN)
    results["dummy"] = ipi_run(workdir, [py_driver, "-m", "dummy", "-u", "-a", "@ADDRESS@"], warmup, steps)["ms_per_step"]
    if metatomic_path is not None:
        results["metatomic"] = ipi_run(
            workdir, [py_driver, "-m", "metatomic", "-u", "-a", "@ADDRESS@", "-o",
                      f"template=init.xyz,model={metatomic_path},skin={SKIN}"], warmup, steps,
        )["ms_per_step"]
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
    return (f"|dE|/|E| = {abs(atoms.get_potential_energy() - energy) / abs(energy):.1e}, "
            f"max |dF| = {np.abs(atoms.get_forces() - forces).max():.1e} eV/A")


def main(argv=None) -> Dict[int, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[108, 1000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args(argv)

    from atomplug.examples.lj import export_lj

    workdir = tempfile.mkdtemp(prefix="atomplug-bench-ipi-")
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
    print("i-PI: Lennard-Jones argon, NVT, one client, OMP_NUM_THREADS=1; ms per MD step (per request inside the client)")
    print(f"  {'atoms':>6} {'direct':>8} {'i-PI+atomplug':>14} {'model':>7} {'client CPU':>11} {'client wall':>12} "
          f"{'i-PI+dummy':>11} {'i-PI+metatomic':>15} {'outside est.':>13}")
    all_results = {}
    for n_atoms in args.sizes:
        steps = args.steps if n_atoms <= 200 else max(args.steps // 2, 20)
        results = bench_system(n_atoms, workdir, model_path, metatomic_path, args.warmup, steps, direct_calls=steps)
        all_results[n_atoms] = results
        results["outside"] = results["atomplug"] - results["dummy"] - results["direct"]
        metatomic = f"{results['metatomic']:>15.2f}" if "metatomic" in results else f"{'-':>15}"
        print(f"  {n_atoms:>6} {results['direct']:>8.2f} {results['atomplug']:>14.2f} {results['client_model']:>7.2f} "
              f"{results['client_cpu']:>11.3f} {results['client_wall']:>12.3f} {results['dummy']:>11.2f} {metatomic} "
              f"{results['outside']:>13.2f}", flush=True)
    print("  direct: the core's entry point in-process, median; model / client: inside atomplug-ipi, mean per")
    print("  request; client = its time handling messages minus model time (aim <= 0.3 ms); dummy: i-PI's")
    print("  python driver returning zeros (i-PI's loop + socket); outside est. = i-PI+atomplug - dummy - direct")
    shutil.rmtree(workdir, ignore_errors=True)
    return all_results


if __name__ == "__main__":
    main()
