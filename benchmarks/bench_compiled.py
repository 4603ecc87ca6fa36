"""Compiled packages (issue 18): the same model as TorchScript archive (.pt) and as AOTInductor
package (.pt2, `atomplug compile`), on the same structures, in one run.

- ASE per call: 20-Ar LJ cluster (forces after every move), 864-Ar LJ (E + F + stress, every atom
  moved), ANI-1x ethanol (E + F) when the ANI-1x archive holds a program; the two calculators take
  turns call by call, medians after 40 calls (past TorchScript's switch to its optimised graph).
- PLUMED: the ATOMPLUG action's steady time per step on the 20-atom coordination example.
- LAMMPS: the Pair time per step of the 2048-Ar LJ input, 1 rank, best of `--repeat`.
- compile time per model, and cold start: a fresh process loads the ASE calculator and makes its
  first 3 calls (864 Ar LJ), .pt vs .pt2, medians over `--processes` processes.

Aims (issue 18): >= 2x faster per call for the small systems (20 Ar, ethanol, PLUMED 20 atoms), no
slower for the large ones (864 Ar, LAMMPS 2048 Ar).

    python benchmarks/bench_compiled.py [--calls 400] [--processes 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from report import Aim, BenchRow  # noqa: E402

EPSILON, SIGMA, CUTOFF = 0.0104, 3.40, 8.5
SMALL_AIM, LARGE_AIM = 2.0, 1.0  # speedup of the package over TorchScript


def compile_timed(model: str) -> tuple:
    """(package path, seconds) of `atomplug compile`, or (None, why) when the model has no program."""
    from atomplug.core.archive import read_header
    from atomplug.core.compiled import compile_model

    program = read_header(model).get("program", {})
    if not program.get("captured"):
        return None, program.get("reason", "no program")
    start = time.perf_counter()
    package = compile_model(model, log=lambda *_: None)
    return package, time.perf_counter() - start


def alternating(candidates: Dict[str, Callable[[np.ndarray], None]], base: np.ndarray, calls: int, amplitude: float):
    """Median ms per call of each candidate, the candidates taking turns on the same moves."""
    rng = np.random.default_rng(5)
    samples: Dict[str, List[float]] = {name: [] for name in candidates}
    for step in range(calls + 40):
        moved = base + rng.uniform(-amplitude, amplitude, size=base.shape)
        for name, function in candidates.items():
            start = time.perf_counter()
            function(moved)
            if step >= 40:
                samples[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(values) for name, values in samples.items()}


def ase_calls(model: str, package: str, atoms, calls: int, stress: bool) -> Dict[str, float]:
    from atomplug.ase_calculator import AtomplugCalculator

    calculators = {}
    for name, path in (("torchscript", model), ("compiled", package)):
        copy = atoms.copy()
        copy.calc = AtomplugCalculator(path)
        calculators[name] = copy

    def step(copy):
        def run(positions):
            copy.positions = positions
            copy.get_forces()
            copy.get_potential_energy()
            if stress:
                copy.get_stress()

        return run

    measured = alternating({name: step(copy) for name, copy in calculators.items()}, atoms.positions, calls, 0.02)
    compiled = calculators["compiled"].calc.runner.model.compiled
    if compiled.calls_run == 0:
        raise RuntimeError(f"the package {package} never answered: its program did not run")
    return measured


def speed_row(system: str, timed: str, measured: Dict[str, float], aim: float, details=None) -> BenchRow:
    speedup = measured["torchscript"] / measured["compiled"]
    what = "small system: >= 2x" if aim > 1 else "large system: no slower"
    return BenchRow(
        engine="compiled",
        system=system,
        timed=timed,
        atomplug_ms=measured["compiled"],
        peer="TorchScript (.pt)",
        peer_ms=measured["torchscript"],
        aims=[Aim(18, f"speedup over TorchScript ({what})", speedup, aim, at_most=False)],
        details=dict(details or {}),
        note="atomplug column: the compiled package (.pt2); peer: the same model's TorchScript archive",
    )


def cluster(n_atoms: int, seed: int = 3):
    from bench_startup import cluster as startup_cluster

    return startup_cluster(n_atoms, seed)


def plumed_rows(workdir: str, frames: int) -> List[BenchRow]:
    import bench_plumed

    from atomplug.examples.coordination import export_coordination
    from atomplug.plumed_cv import plugin_path

    model = os.path.join(workdir, "coordination.pt")
    export_coordination(model)
    package, seconds = compile_timed(model)
    if package is None:
        print(f"  PLUMED coordination: not compiled ({seconds})")
        return []
    plugin = plugin_path()
    box, positions = bench_plumed.frames(20, frames)
    long_trajectory = os.path.join(workdir, "long.xyz")
    short_trajectory = os.path.join(workdir, "short.xyz")
    bench_plumed.write_trajectory(long_trajectory, box, positions)
    short = max(frames // 10, 5)
    bench_plumed.write_trajectory(short_trajectory, box, positions[:short])
    groups = "1-6", "7-20"
    measured: Dict[str, float] = {}
    minimum: Dict[str, float] = {}
    for name, path in (("torchscript", model), ("compiled", package)):
        text = (
            f"DEBUG DETAILED_TIMERS\nLOAD FILE={plugin}\nref: ATOMPLUG MODEL={path} SPECIES1={groups[0]} "
            f"SPECIES2={groups[1]} SPECIES_TO_TYPES=8,1\nRESTRAINT ARG=ref AT=1.0 KAPPA=1.0\n"
        )
        _, long_log = bench_plumed.run_driver(workdir, text, long_trajectory)
        _, short_log = bench_plumed.run_driver(workdir, text, short_trajectory)
        steady, fastest = bench_plumed.steady_action_time(long_log, short_log, "ref")
        measured[name], minimum[name] = 1e3 * steady, 1e3 * fastest
    print(
        f"  PLUMED 20-atom coordination, action per step: TorchScript {measured['torchscript']:.3f} ms, compiled "
        f"{measured['compiled']:.3f} ms (compiled in {seconds:.0f} s)"
    )
    details = {"compile s": seconds} | {f"{name} fastest call ms": value for name, value in minimum.items()}
    return [speed_row("PLUMED coordination, 20 atoms", "ATOMPLUG action per step", measured, SMALL_AIM, details)]


def lammps_rows(workdir: str, package: str, model: str, steps: int, repeat: int) -> List[BenchRow]:
    import ase.io
    from ase.build import bulk
    from bench_lammps import LJ_INPUT, run_lammps

    argon = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((8, 8, 8))
    argon.positions += np.random.default_rng(0).uniform(-0.1, 0.1, size=argon.positions.shape)
    argon.wrap()
    data = os.path.join(workdir, "argon.data")
    ase.io.write(data, argon, format="lammps-data", masses=True)
    runs: Dict[str, List[float]] = {"torchscript": [], "compiled": []}
    for _ in range(repeat):
        for name, path in (("torchscript", model), ("compiled", package)):
            pair = f"pair_style atomplug {path}\npair_coeff * * Ar"
            runs[name].append(
                run_lammps(workdir, LJ_INPUT.format(data=data, pair=pair, steps=steps), 1, steps)["pair_ms"]
            )
    measured = {name: min(values) for name, values in runs.items()}
    print(
        f"  LAMMPS LJ {len(argon)} Ar, Pair time per step (best of {repeat}): TorchScript "
        f"{measured['torchscript']:.2f} ms, compiled {measured['compiled']:.2f} ms"
    )
    return [speed_row(f"LAMMPS LJ, {len(argon)} Ar, rc 8.5 A", "Pair time per step, 1 rank", measured, LARGE_AIM)]


def cold_row(model: str, package: str, processes: int) -> BenchRow:
    from bench_startup import cold_starts

    medians = cold_starts({"atomplug": model, "atomplug-compiled": package}, processes)
    ours, theirs = medians["atomplug-compiled"], medians["atomplug"]
    print(
        f"  cold start, 864 Ar LJ (load + 3 calls): TorchScript {theirs['load + first calls ms']:.0f} ms, "
        f"compiled {ours['load + first calls ms']:.0f} ms"
    )
    return BenchRow(
        engine="compiled",
        system="LJ, 864 Ar, rc 8.5 A",
        timed="cold start: load + first 3 calls (E+F+S), fresh process",
        atomplug_ms=ours["load + first calls ms"],
        peer="TorchScript (.pt)",
        peer_ms=theirs["load + first calls ms"],
        details={f"compiled {key}": value for key, value in ours.items()}
        | {f"TorchScript {key}": value for key, value in theirs.items()},
        note=f"medians over {processes} processes per kind, the kinds alternating",
    )


def main(argv: Optional[List[str]] = None) -> List[BenchRow]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400, help="timed calls per small ASE row (large: calls / 10)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per cold-start kind")
    parser.add_argument("--plumed-frames", type=int, default=4000)
    parser.add_argument("--lammps-steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2, help="LAMMPS runs per kind")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from ase.build import molecule
    from run import argon_864

    from atomplug.examples.ani1x import export_ani1x
    from atomplug.examples.lj import export_lj

    rows: List[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="atomplug-bench-compiled-") as workdir:
        lj = os.path.join(workdir, "lj.pt")
        export_lj(lj, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF)
        lj_package, lj_seconds = compile_timed(lj)
        print(f"  compile LJ: {lj_seconds:.0f} s")
        small = ase_calls(lj, lj_package, cluster(20), args.calls, stress=False)
        print(f"  ASE 20 Ar: TorchScript {small['torchscript']:.3f} ms, compiled {small['compiled']:.3f} ms")
        rows.append(
            speed_row(
                "ASE LJ, 20 Ar (isolated cluster)", "E + forces per call", small, SMALL_AIM, {"compile s": lj_seconds}
            )
        )
        large = ase_calls(lj, lj_package, argon_864(), max(20, args.calls // 10), stress=True)
        print(f"  ASE 864 Ar: TorchScript {large['torchscript']:.2f} ms, compiled {large['compiled']:.2f} ms")
        rows.append(speed_row("ASE LJ, 864 Ar, rc 8.5 A", "E + forces + stress per call", large, LARGE_AIM))

        ani = os.path.join(workdir, "ani1x.pt")
        export_ani1x(ani)
        ani_package, ani_seconds = compile_timed(ani)
        if ani_package is None:
            print(f"  ANI-1x: not compiled ({ani_seconds})")
        else:
            print(f"  compile ANI-1x: {ani_seconds:.0f} s")
            ethanol = ase_calls(ani, ani_package, molecule("CH3CH2OH"), args.calls, stress=False)
            print(f"  ASE ethanol: TorchScript {ethanol['torchscript']:.3f} ms, compiled {ethanol['compiled']:.3f} ms")
            details = {"compile s": ani_seconds}
            rows.append(speed_row("ASE ANI-1x, ethanol (9 atoms)", "E + forces per call", ethanol, SMALL_AIM, details))

        rows += plumed_rows(workdir, args.plumed_frames)
        rows += lammps_rows(workdir, lj_package, lj, args.lammps_steps, args.repeat)
        rows.append(cold_row(lj, lj_package, args.processes))
    return rows


if __name__ == "__main__":
    main()
