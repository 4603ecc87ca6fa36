"""Start-up and small systems (issue 16): what a short job pays before the steady state, and the
per-call floor for a 20-atom structure.

- Cold start, ASE: a fresh Python process loads the calculator and computes the first 3 calls;
  atomplug vs metatomic-ase (864 Ar LJ, energy + forces + stress) and vs torchani's own ASE
  calculator (ANI-1x, ethanol, energy + forces). Processes of both kinds alternate; medians.
- Cold start, LAMMPS: wall time of `lmp` on the 2048-Ar LJ input with `run 0`, pair_style atomplug
  vs lj/cut, and the same input stopped after pair_coeff (no run): the difference splits into
  loading the model and the first force call.
- Small system per call, ASE: 20 Ar atoms (isolated cluster, LJ rc 8.5 A), forces after every
  move; atomplug vs metatomic-ase vs the bare model's forward + backward (floor).

    python benchmarks/bench_startup.py [--processes 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from report import Aim, BenchRow  # noqa: E402

BIN = os.path.dirname(sys.executable)
EPSILON, SIGMA, CUTOFF = 0.0104, 3.40, 8.5
COLD_CALLS = 3
LOAD_AIM_MS = 50.0

# ---- one cold start, in its own process ---------------------------------------------------------


def _cold_child(kind: str, model: str) -> Dict[str, object]:
    """Load `kind`'s calculator and time its first calls (run in a fresh process)."""
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from ase.build import bulk, molecule

    imported_torch = time.perf_counter()
    if kind.startswith("atomplug"):
        from atomplug.ase_calculator import AtomplugCalculator as Calculator
    elif kind == "metatomic":
        from metatomic_ase import MetatomicCalculator as Calculator
    else:
        from atomplug.examples.ani1x import torchani_reference
    imported = time.perf_counter()
    if kind == "torchani":
        # torchani.models.ANI1x() itself, on the wheel's own files (it would download them otherwise)
        calculator = torchani_reference().ase()
    else:
        calculator = Calculator(model)
    loaded = time.perf_counter()
    if kind in ("atomplug-ani", "torchani"):
        atoms = molecule("CH3CH2OH")
        properties = ("energy", "forces")
    else:
        atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((6, 6, 6))
        properties = ("energy", "forces", "stress")
    base = atoms.positions.copy()
    rng = np.random.default_rng(1)
    atoms.calc = calculator
    calls = []
    for _ in range(COLD_CALLS):
        atoms.positions = base + rng.uniform(-0.05, 0.05, size=base.shape)
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        if "stress" in properties:
            atoms.get_stress()
        calls.append(time.perf_counter() - start)
    return {
        "torch_import_ms": 1e3 * (imported_torch - started),
        "engine_import_ms": 1e3 * (imported - imported_torch),
        "load_ms": 1e3 * (loaded - imported),
        "calls_ms": [1e3 * c for c in calls],
    }


def cold_start(kind: str, model: str) -> Dict[str, object]:
    command = [sys.executable, os.path.abspath(__file__), "--child", kind, model]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=HERE)
    if result.returncode != 0:
        raise RuntimeError(f"cold start of {kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def cold_starts(kinds: Dict[str, str], processes: int) -> Dict[str, Dict[str, float]]:
    """Medians over `processes` fresh processes per kind, the kinds alternating."""
    samples: Dict[str, List[Dict[str, object]]] = {kind: [] for kind in kinds}
    for _ in range(processes):
        for kind, model in kinds.items():
            samples[kind].append(cold_start(kind, model))
    medians: Dict[str, Dict[str, float]] = {}
    for kind, runs in samples.items():
        entry = {key: statistics.median(float(run[key]) for run in runs) for key in runs[0] if key != "calls_ms"}
        for index in range(COLD_CALLS):
            entry[f"call {index + 1} ms"] = statistics.median(float(run["calls_ms"][index]) for run in runs)
        entry["first calls ms"] = statistics.median(sum(run["calls_ms"]) for run in runs)
        entry["load + first calls ms"] = statistics.median(float(run["load_ms"]) + sum(run["calls_ms"]) for run in runs)
        medians[kind] = entry
    return medians


def cold_row(system: str, ours: Dict[str, float], theirs: Optional[Dict[str, float]], peer: str, what: str):
    total = ours["load + first calls ms"]
    peer_total = theirs["load + first calls ms"] if theirs else None
    details = {f"atomplug {key}": value for key, value in ours.items()}
    if theirs:
        details.update({f"{peer} {key}": value for key, value in theirs.items()})
    return BenchRow(
        engine="ASE",
        system=system,
        timed=f"cold start: load + first {COLD_CALLS} calls ({what}), fresh process",
        atomplug_ms=total,
        peer=peer,
        peer_ms=peer_total,
        aims=[
            Aim(16, "cold start atomplug / peer", total / peer_total if peer_total else float("nan"), 1.0),
            Aim(16, "load alone", ours["load_ms"], LOAD_AIM_MS, unit="ms"),
        ],
        details=details,
        note="medians over fresh processes; imports (torch, ase, the calculator's package) not included",
    )


# ---- LAMMPS: `lmp` with run 0 -------------------------------------------------------------------

LAMMPS_INPUT = """
units metal
atom_style atomic
read_data {data}
{pair}
{run}
"""


def lmp_wall(workdir: str, text: str) -> float:
    path = os.path.join(workdir, "in.startup")
    with open(path, "w") as handle:
        handle.write(text)
    env = dict(os.environ, OMP_NUM_THREADS="1", ATOMPLUG_QUIET="1")
    start = time.perf_counter()
    result = subprocess.run(
        [os.path.join(BIN, "lmp"), "-in", path, "-log", "none", "-screen", "none"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"LAMMPS failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return 1e3 * wall


def lammps_cold(workdir: str, processes: int) -> Dict[str, float]:
    import ase.io
    from ase.build import bulk

    from atomplug.examples.lj import export_lj
    from atomplug.lammps_plugin.build import build

    build(verbose=False)
    model = os.path.join(workdir, "lj-lammps.pt")
    export_lj(model, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)
    argon = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((8, 8, 8))
    argon.positions += np.random.default_rng(0).uniform(-0.1, 0.1, size=argon.positions.shape)
    argon.wrap()
    data = os.path.join(workdir, "argon.data")
    ase.io.write(data, argon, format="lammps-data", masses=True)
    ours = f"pair_style atomplug {model}\npair_coeff * * Ar"
    native = f"pair_style lj/cut {CUTOFF}\npair_coeff * * {EPSILON} {SIGMA}\npair_modify shift yes"
    inputs = {
        "lj/cut, run 0": LAMMPS_INPUT.format(data=data, pair=native, run="run 0"),
        "atomplug, no run": LAMMPS_INPUT.format(data=data, pair=ours, run=""),
        "atomplug, run 0": LAMMPS_INPUT.format(data=data, pair=ours, run="run 0"),
    }
    walls: Dict[str, List[float]] = {name: [] for name in inputs}
    for _ in range(processes):
        for name, text in inputs.items():
            walls[name].append(lmp_wall(workdir, text))
    return {f"{name} ms": statistics.median(values) for name, values in walls.items()} | {"atoms": len(argon)}


def lammps_cold_row(r: Dict[str, float]) -> BenchRow:
    native, no_run, ours = r["lj/cut, run 0 ms"], r["atomplug, no run ms"], r["atomplug, run 0 ms"]
    return BenchRow(
        engine="LAMMPS",
        system=f"LJ, {int(r['atoms'])} Ar, rc 8.5 A",
        timed="cold start: wall time of `lmp` with `run 0`, 1 rank",
        atomplug_ms=ours,
        peer="lj/cut",
        peer_ms=native,
        details={
            "lmp with lj/cut, run 0 ms": native,
            "lmp with atomplug, stopped after pair_coeff ms": no_run,
            "difference: model load (pair_style atomplug) ms": no_run - native,
            "difference: run 0 (init, neighbor list, first force call) ms": ours - no_run,
        },
        note="medians over fresh `lmp` processes; both load the atomplug plugin (LAMMPS_PLUGIN_PATH), so "
        "the difference is the model's own start-up",
    )


# ---- 20 atoms per call --------------------------------------------------------------------------


def cluster(n_atoms: int, seed: int = 3):
    """`n_atoms` Ar in an isolated cluster, no two closer than 3.4 A."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    positions: List[np.ndarray] = []
    while len(positions) < n_atoms:
        trial = rng.uniform(-6.0, 6.0, size=3)
        if all(np.linalg.norm(trial - p) > 3.4 for p in positions):
            positions.append(trial)
    return Atoms(f"Ar{n_atoms}", positions=np.array(positions))


def small_system(workdir: str, calls: int) -> Dict[str, float]:
    import torch
    from run import make_lj_floor

    from atomplug.ase_calculator import AtomplugCalculator
    from atomplug.examples.lj import export_lj

    torch.set_num_threads(1)
    atoms = cluster(20)
    model = os.path.join(workdir, "lj-small.pt")
    export_lj(model, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)
    floor = make_lj_floor(atoms.numbers, np.zeros((3, 3)), [False] * 3, EPSILON, SIGMA, CUTOFF)
    candidates: Dict[str, Callable] = {"floor": lambda: floor(atoms.positions.copy())}
    ours = atoms.copy()
    ours.calc = AtomplugCalculator(model)
    candidates["atomplug"] = lambda: ours.get_forces()
    targets = {"floor": atoms, "atomplug": ours}
    try:
        from bench_ase import export_metatomic
        from metatomic_ase import MetatomicCalculator

        metatomic_path, _ = export_metatomic(workdir)
        theirs = atoms.copy()
        theirs.calc = MetatomicCalculator(metatomic_path)
        candidates["metatomic"] = lambda: theirs.get_forces()
        targets["metatomic"] = theirs
    except ImportError:
        pass
    base = atoms.positions.copy()
    rng = np.random.default_rng(5)
    samples: Dict[str, List[float]] = {name: [] for name in candidates}
    for step in range(calls + 40):
        moved = base + rng.uniform(-0.02, 0.02, size=base.shape)
        for name, function in candidates.items():
            targets[name].positions = moved
            start = time.perf_counter()
            function()
            if step >= 40:  # past the first calls, and past the switch to TorchScript's optimised forward
                samples[name].append(time.perf_counter() - start)
    return {f"{name} ms": 1e3 * statistics.median(values) for name, values in samples.items()}


def small_row(r: Dict[str, float]) -> BenchRow:
    ours, floor = r["atomplug ms"], r["floor ms"]
    return BenchRow(
        engine="ASE",
        system="LJ, 20 Ar (isolated cluster), rc 8.5 A",
        timed="forces per call (all atoms moved), steady state",
        atomplug_ms=ours,
        floor_ms=floor,
        floor="vesin list + bare TorchScript forward + backward",
        peer="metatomic-ase",
        peer_ms=r.get("metatomic ms"),
        aims=[Aim(16, "atomplug / floor", ours / floor, 1.3)],
        details=dict(r),
    )


def main(argv: Optional[List[str]] = None) -> List[BenchRow]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=5, help="fresh processes per cold-start kind")
    parser.add_argument("--calls", type=int, default=400, help="timed calls of the 20-atom row")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_cold_child(*args.child)))
        return []

    from atomplug.examples.ani1x import export_ani1x
    from atomplug.examples.lj import export_lj

    rows: List[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="atomplug-bench-startup-") as workdir:
        lj = os.path.join(workdir, "lj.pt")
        export_lj(lj, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)
        ani = os.path.join(workdir, "ani1x.pt")
        export_ani1x(ani)
        kinds = {"atomplug": lj}
        try:
            from bench_ase import export_metatomic

            metatomic_path, why = export_metatomic(workdir)
        except ImportError as error:
            metatomic_path, why = None, str(error)
        if metatomic_path:
            kinds["metatomic"] = metatomic_path
        lj_cold = cold_starts(kinds, args.processes)
        print_cold("864 Ar LJ, E + F + stress", lj_cold)
        rows.append(
            cold_row(
                "LJ, 864 Ar, rc 8.5 A", lj_cold["atomplug"], lj_cold.get("metatomic"), "metatomic-ase", "E + F + stress"
            )
        )
        if not metatomic_path:
            rows[-1].note += f"; metatomic skipped: {why}"
        ani_cold = cold_starts({"atomplug-ani": ani, "torchani": ""}, args.processes)
        print_cold("ANI-1x ethanol, E + F", ani_cold)
        rows.append(
            cold_row(
                "ANI-1x, ethanol (9 atoms)",
                ani_cold["atomplug-ani"],
                ani_cold["torchani"],
                "torchani's ASE calculator",
                "E + F",
            )
        )

        lammps = lammps_cold(workdir, args.processes)
        print("\nLAMMPS, 2048 Ar LJ, wall time of lmp (median ms):")
        for key, value in lammps.items():
            print(f"  {key:40s} {value:8.1f}")
        rows.append(lammps_cold_row(lammps))

        small = small_system(workdir, args.calls)
        print("\nASE, 20 Ar, forces per call (median ms):")
        for key, value in small.items():
            print(f"  {key:20s} {value:8.3f}")
        rows.append(small_row(small))
    return rows


def print_cold(title: str, medians: Dict[str, Dict[str, float]]) -> None:
    print(f"\ncold start, {title} (median ms over fresh processes):")
    for kind, entry in medians.items():
        parts = ", ".join(f"{key} {value:.1f}" for key, value in entry.items())
        print(f"  {kind:14s} {parts}")


if __name__ == "__main__":
    main()
