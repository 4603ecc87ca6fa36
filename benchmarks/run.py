"""`make bench`: every engine's speed against the floor and the peers -> benchmarks/results.md.

Runs the core benchmark (here) and each engine's bench_<engine>.py, collects the rows their main()
returns, and writes benchmarks/results.md (atomically) and benchmarks/results-*.png. Every ratio is
measured within one run on the same structures. Timings are medians of repeated calls after
warm-up (TorchScript optimises during the first calls).

    python benchmarks/run.py            # the full run (`make bench`, ~20 min on 2 cores)
    python benchmarks/run.py --quick    # fewer repeats and smaller systems: a smoke test
    python benchmarks/run.py --only core ase --output /tmp/results.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from report import Aim, BenchRow, EngineFailure, load_average, plot_aims, plot_times, run_context, write_report  # noqa: E402

from atomplug.core.archive import UNOPTIMIZED_CALLS  # noqa: E402


def median_time(function: Callable[[], object], repeat: int, warmup: int) -> float:
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def argon_864():
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((6, 6, 6))
    atoms.positions += np.random.default_rng(0).uniform(-0.1, 0.1, size=atoms.positions.shape)
    return atoms


def make_lj_floor(types, cell, pbc, epsilon: float, sigma: float, cutoff: float) -> Callable:
    """The least work that yields LJ energy, forces and virial for given positions: a vesin list,
    the bare scripted model, one backward pass to the pair vectors, forces scattered from the pair
    gradients and the virial summed as -r (x) dE/dr. Returns floor(positions) -> (E, F, W)."""
    from atomplug.core import ModelOutput, NeighborList, NeighborListOptions, System
    from atomplug.core.neighbors import compute_pairs
    from atomplug.examples.lj import LennardJones

    bare = torch.jit.script(LennardJones(epsilon, sigma, cutoff))
    options = NeighborListOptions(cutoff, False, True)
    cell_np = np.ascontiguousarray(cell, dtype=np.float64)
    pbc_np = np.array(pbc, dtype=bool)
    types_t = torch.from_numpy(np.ascontiguousarray(types, dtype=np.int32))
    cell_t = torch.from_numpy(cell_np)
    pbc_t = torch.from_numpy(pbc_np)
    outputs = {"energy": ModelOutput("energy", "eV", False)}

    def floor(positions_np: np.ndarray):
        pairs, shifts = compute_pairs(positions_np, cell_np, pbc_np, cutoff, False)
        positions = torch.from_numpy(positions_np)
        pairs_t = torch.from_numpy(pairs)
        shifts_t = torch.from_numpy(shifts)
        vectors = positions[pairs_t[:, 1]] - positions[pairs_t[:, 0]] + shifts_t.to(torch.float64) @ cell_t
        vectors.requires_grad_(True)
        system = System(types_t, positions, cell_t, pbc_t)
        system.add_neighbor_list(NeighborList(options, pairs_t, shifts_t, vectors))
        energy = bare([system], outputs, None)["energy"].sum()
        (gradient,) = torch.autograd.grad(energy, vectors)
        forces = (
            torch.zeros_like(positions).index_add_(0, pairs_t[:, 1], -gradient).index_add_(0, pairs_t[:, 0], gradient)
        )
        virial = -vectors.detach().T @ gradient
        return float(energy.detach()), forces.numpy(), virial.numpy()

    return floor


def bench_core_lj(repeat: int, warmup: int) -> Dict[str, float]:
    """Issue 2: the entry point (with neighbor list) over vesin + bare forward + backward."""
    from atomplug.core import ModelRunner, Structure
    from atomplug.core.neighbors import compute_pairs
    from atomplug.examples.lj import export_lj

    atoms = argon_864()
    structure = Structure.from_atoms(atoms)
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "lj.pt")
    export_lj(path, cutoff=8.5)
    runner = ModelRunner(path)

    def atomplug_call():
        runner.run([structure], ["energy"], forces=True, virial=True, use_cache=False)

    lj_floor = make_lj_floor(structure.types, structure.cell, structure.pbc, 0.0104, 3.40, 8.5)

    def floor_call():
        lj_floor(structure.positions)

    def neighbors_only():
        compute_pairs(structure.positions, structure.cell, structure.pbc, 8.5, False)

    results = {}
    # interleave the two measurements so that machine noise hits both alike
    floors, ours = [], []
    for _ in range(3):
        floors.append(median_time(floor_call, repeat, warmup))
        ours.append(median_time(atomplug_call, repeat, warmup))
    results["floor_ms"] = 1e3 * min(floors)
    results["atomplug_ms"] = 1e3 * min(ours)
    results["neighbors_ms"] = 1e3 * median_time(neighbors_only, repeat, warmup)
    results["ratio"] = results["atomplug_ms"] / results["floor_ms"]
    return results


def core_rows(core: Dict[str, float]) -> List[BenchRow]:
    """Issue 2's aim: the entry point (with its neighbor list) within 1.1x the floor."""
    return [
        BenchRow(
            engine="core",
            system="LJ, 864 Ar, rc 8.5 A",
            timed="entry point + neighbor list, E + F + virial",
            atomplug_ms=core["atomplug_ms"],
            floor_ms=core["floor_ms"],
            floor="vesin list + bare TorchScript forward + one backward to the pair vectors, in-process",
            aims=[Aim(2, "atomplug / floor", core["ratio"], 1.1)],
            details={"neighbor list alone (vesin) ms": core["neighbors_ms"]},
        )
    ]


def run_core(argv: List[str]) -> List[BenchRow]:
    """The core benchmark (issue 2): prints as before, returns its row."""
    parser = argparse.ArgumentParser(description="core: entry point vs floor")
    parser.add_argument("--repeat", type=int, default=20)
    # past UNOPTIMIZED_CALLS: the steady state is the optimised forward (core/archive.py)
    parser.add_argument("--warmup", type=int, default=UNOPTIMIZED_CALLS + 5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("\ncore: LJ, 864 Ar (fcc 6x6x6, a=5.26 A, displaced), rc 8.5 A, energy + forces + virial")
    core = bench_core_lj(args.repeat, args.warmup)
    print(f"  neighbor list (vesin)             {core['neighbors_ms']:8.2f} ms")
    print(f"  floor: vesin + bare fwd + bwd     {core['floor_ms']:8.2f} ms")
    print(f"  atomplug entry point + list       {core['atomplug_ms']:8.2f} ms")
    print(f"  ratio atomplug / floor            {core['ratio']:8.3f}   (aim <= 1.1)")
    return core_rows(core)


# name -> (module, arguments of the full run, arguments of --quick); run in this order
BENCHMARKS: Dict[str, Tuple[Optional[str], List[str], List[str]]] = {
    "core": (None, [], ["--repeat", "5"]),
    "ase": ("bench_ase", [], ["--rounds", "8"]),
    "ipi": ("bench_ipi", [], ["--sizes", "108", "1000", "--steps", "80", "--warmup", "30", "--rounds", "1"]),
    "lammps": (
        "bench_lammps",
        ["--repeat", "3"],
        ["--steps", "10", "--repeat", "1", "--water-per-side", "4", "--mp-molecules", "300"],
    ),
    "plumed": ("bench_plumed", [], ["--frames-small", "1000", "--frames-large", "60"]),
    "startup": ("bench_startup", [], ["--processes", "2", "--calls", "100"]),
    "compiled": (
        "bench_compiled",
        [],
        ["--calls", "60", "--processes", "1", "--plumed-frames", "400", "--lammps-steps", "10", "--repeat", "1"],
    ),
}

# how to read each engine's rows; written under the table
LEGEND = [
    "- **core** (issue 2): one call of the exported model's entry point with its neighbor list "
    "(`ModelRunner.run`, no cache) vs the floor: a vesin list, the bare scripted module, one backward "
    "pass to the pair vectors giving forces and virial.",
    "- **ASE** (issue 3): one MD-like step (all atoms moved, then `get_forces`, `get_stress`, "
    "`get_potential_energy` as integrators, barostats and loggers ask) with `AtomplugCalculator`, vs the "
    "core floor on the same positions, vs metatomic-ase running the same LJ exported as a metatomic model, "
    "and vs `ase.calculators.lj` (skin-0 row). With its default skin atomplug reuses the neighbor list, "
    "which the floor rebuilds every step, so it can beat the floor.",
    "- **i-PI** (issue 5): ms per NVT step of a real i-PI server with one `atomplug-ipi` client; floor = "
    "the same i-PI run with i-PI's own driver returning zeros (its loop + socket) plus the model called "
    "in-process; peer = i-PI's `-m metatomic` driver on the same physics. The clients take turns for 3 "
    "rounds and each keeps its fastest. The zeros driver is i-PI's Python driver, whose own message "
    "handling can cost more than atomplug's client, so atomplug / floor may fall below 1. The aim is the "
    "client's own CPU time per step (message handling, excluding the model), measured inside the client.",
    "- **LAMMPS** (issue 4): `pair_style atomplug`, each number the minimum over 3 repeats. 1-rank rows: the Pair time per step vs the bare "
    "model's forward + backward on the same atoms and pairs (floor), and native `lj/cut`'s Pair time; the "
    "aim is judged on the split measured inside the one LAMMPS process: the plugin's C++ time (atom "
    "mapping, pair filtering, tensors) over the model's time (Pair time minus that C++ time); the "
    "atomplug / floor column compares two processes and moves by +-15% with the machine's load. "
    "2-rank rows: whole MD step on 2 MPI ranks; floor = perfect scaling (1-rank step / 2), peer = "
    "`lj/cut` on 2 ranks; the aim is the speedup over 1 rank. Message-passing rows (issue 14): the "
    "example model and a random MACE on one H C O liquid; 1 rank (periodic images, no extra ghosts) vs "
    "the same model in `AtomplugCalculator` (floor; aim <= 1.05x); 2 ranks with ghosts out to the "
    "interaction range, the ghost atoms per rank given with the speedup they explain (the example timed "
    "after 25 warm-up calls, past the switch to the optimised graph; MACE, ~8 s per step, after 7, before "
    "it). Ghost-exchange row (issue 17): the same example with `ghost_exchange=True` (same weights) on 2 "
    "ranks, ghosts out to one cutoff; floor = its own 1-rank step / 2, peer = the widened-ghost row; the same "
    "for MACE run layer by layer (`export_mace(ghost_exchange=True)`, no aim); the projection of ghosts per "
    "rank for 8-512 ranks is printed by bench_lammps.py.",
    "- **PLUMED** (issue 6): the CV action's own time per step under `plumed driver` (PLUMED's "
    "DETAILED_TIMERS; steady-state mean from the difference of a long and a short trajectory, so that "
    "loading the model and TorchScript's profiling of the first calls cancel out), vs the model's entry "
    "point called from Python on the same structure (floor), vs native `COORDINATION` with the same "
    "switching function. The mean includes preemptions on a loaded machine; the minimum is given too.",
    "- **cold start** (issue 16): a fresh Python process creates the ASE calculator (load) and makes its "
    "first 3 calls; medians over 5 processes per kind, the kinds alternating; imports of torch, ASE and "
    "the calculator's package are reported in the details, not counted. atomplug vs metatomic-ase (864 Ar "
    "LJ) and vs torchani's own ASE calculator (ANI-1x, ethanol; torchani builds the ensemble from the "
    "same wheel files). LAMMPS: wall time of `lmp` with `run 0` on the 2048-Ar input, `pair_style "
    "atomplug` vs `lj/cut`, and the same input stopped after pair_coeff, which splits the difference "
    "into loading the model and the run. 20-atom row: forces after every move of an isolated 20-Ar "
    "cluster, after the first 40 calls, vs the bare model's forward + backward (floor) and metatomic-ase.",
    "- **compiled** (issue 18): the same model as AOTInductor package (`atomplug compile`, .pt2; the atomplug "
    "column) and as TorchScript archive (.pt; the peer column), on the same structures in one run, 1 thread. "
    "ASE rows: the two calculators take turns call by call, medians after 40 calls; PLUMED: the action's steady "
    "time per step (as above); LAMMPS: the Pair time per step, best of the runs; cold start: load + first 3 "
    "calls in a fresh process, medians. Aims: >= 2x faster for the small systems, no slower for the large ones.",
]


def run_benchmarks(names: List[str], quick: bool) -> Tuple[List[BenchRow], List[EngineFailure]]:
    """Run each named benchmark; one that raises is reported as a failure, the others still run."""
    import importlib

    rows: List[BenchRow] = []
    failures: List[EngineFailure] = []
    for name in names:
        module_name, full_argv, quick_argv = BENCHMARKS[name]
        argv = quick_argv if quick else full_argv
        print(f"\n==== {name} {' '.join(argv)} " + "=" * max(4, 60 - len(name) - len(" ".join(argv))), flush=True)
        started = time.perf_counter()
        try:
            if module_name is None:
                produced = run_core(argv)
            else:
                produced = importlib.import_module(module_name).main(argv)
            rows.extend(produced or [])
        except Exception as error:  # noqa: BLE001 - keep the other engines' results
            traceback.print_exc()
            failures.append(EngineFailure(name, f"{type(error).__name__}: {error}".splitlines()[0][:300]))
        print(f"  ({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return rows, failures


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller systems (smoke test)")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS), help="run only these benchmarks"
    )
    parser.add_argument(
        "--output",
        default=os.path.join(HERE, "results.md"),
        help="the report; plots go beside it as results-*.png (default benchmarks/results.md)",
    )
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    started_at = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = load_average()
    started = time.perf_counter()
    rows, failures = run_benchmarks(args.only, args.quick)
    elapsed = time.perf_counter() - started

    command = " ".join(["benchmarks/run.py"] + (sys.argv[1:] if argv is None else list(argv)))
    context = run_context(started_at, elapsed, command, args.quick, load_at_start)
    plots = [] if args.no_plots else write_plots(rows, args.output, context)
    write_report(args.output, rows, context, failures, plots, LEGEND)
    print(f"\nwrote {args.output}" + "".join(f", {name}" for name in plots) + f" ({elapsed / 60:.1f} min)")
    for failure in failures:
        print(f"FAILED: {failure.engine}: {failure.error}", file=sys.stderr)
    return 1 if failures else 0


def write_plots(rows: List[BenchRow], output: str, context: Dict[str, str]) -> List[str]:
    """results-times.png and results-aims.png beside the report; names relative to it."""
    if not rows:
        return []
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        print(f"  plots skipped: {error} (pip install matplotlib)")
        return []
    stem = os.path.splitext(output)[0]
    names = []
    subtitle = f"{context['date']}, {context['machine'].split(',')[0]}; ratios within one run are what matter"
    for suffix, plot in (("times", plot_times), ("aims", plot_aims)):
        path = f"{stem}-{suffix}.png"
        title = {"times": "atomplug, floor and peer, ms per step or call", "aims": "issue aims"}[suffix]
        plot(rows, path, f"{title}\n{subtitle}")
        names.append(os.path.basename(path))
    return names


if __name__ == "__main__":
    sys.exit(main())
