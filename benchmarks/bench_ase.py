"""ASE benchmark (issue 3): LJ, 864 Ar, rc 8.5 A, energy + forces + stress per MD-like step.

Every step moves all atoms a little (a fixed, seeded trajectory: each atom vibrates about
0.1 A around its site and moves ~0.02 A per step, like a solid in MD), then asks the calculator
for forces, stress and energy the way ASE integrators do: `atoms.get_forces()` (integrator),
`atoms.get_stress()` (barostat), `atoms.get_potential_energy()` (logger). Compared on the same trajectory, in one run:

  floor          vesin list + bare TorchScript forward + one backward to the pair vectors
                 (the least work that yields energy, forces and virial; as in run.py)
  atomplug       AtomplugCalculator, default skin (0.5 A) and skin=0
  atomplug, one calculate()   the same calculator asked for all three properties in one
                 `calc.calculate(atoms, ["energy", "forces", "stress"], ...)` (diagnostic: the
                 adapter's cost without ASE's one-property-at-a-time requests)
  ase LJ         ase.calculators.lj.LennardJones(smooth=False)
  metatomic-ase  the same LJ exported as a metatomic model (benchmarks/metatomic_lj.py), default
                 MetatomicCalculator (neighbor skin 2 A)

Timings are medians of per-step times; the calculators take turns a few steps at a time so that
machine noise hits all alike. torch runs on 1 thread (vesin uses its default threads everywhere).
Run: python benchmarks/bench_ase.py [--rounds N]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from report import Aim, BenchRow  # benchmarks/report.py: the rows run.py writes to results.md

from atomplug.core.archive import UNOPTIMIZED_CALLS

INSTALL_METATOMIC = "pip install metatomic-torch==0.1.19 metatomic-ase==0.1.4"
EPSILON, SIGMA, CUTOFF = 0.0104, 3.40, 8.5
# past the first calls and the switch to TorchScript's optimised forward (core/archive.py UNOPTIMIZED_CALLS)
WARMUP_STEPS = UNOPTIMIZED_CALLS + 5


def trajectory(base: np.ndarray, n_frames: int, seed: int = 7) -> np.ndarray:
    """MD-like positions: u <- a u + sqrt(1 - a^2) * amplitude * noise about the initial sites
    (stationary, ~0.1 A per component around each site, ~0.014 A per component per step)."""
    rng = np.random.default_rng(seed)
    amplitude, a = 0.1, 0.99
    u = amplitude * rng.standard_normal(base.shape)
    frames = np.empty((n_frames,) + base.shape)
    for k in range(n_frames):
        u = a * u + np.sqrt(1.0 - a * a) * amplitude * rng.standard_normal(base.shape)
        frames[k] = base + u
    return frames


def make_floor(atoms) -> Callable[[np.ndarray], Tuple[float, np.ndarray, np.ndarray]]:
    """run.py's floor for given positions; returns energy, forces and ASE stress (Voigt)."""
    from run import make_lj_floor

    floor = make_lj_floor(atoms.numbers, atoms.cell.array, atoms.pbc, EPSILON, SIGMA, CUTOFF)
    volume = abs(float(np.linalg.det(atoms.cell.array)))

    def floor_with_stress(positions_np: np.ndarray):
        energy, forces, virial = floor(positions_np)
        stress = -virial / volume
        voigt = np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])
        return energy, forces, voigt

    return floor_with_stress


def ase_step(atoms) -> Callable[[np.ndarray], Tuple[float, np.ndarray, np.ndarray]]:
    """What an ASE integrator does each step: forces (integrator), stress (barostat), energy (logger)."""

    def step(positions: np.ndarray):
        atoms.positions = positions
        forces = atoms.get_forces()
        stress = atoms.get_stress()
        return atoms.get_potential_energy(), forces, stress

    return step


def one_calculate_step(atoms) -> Callable[[np.ndarray], Tuple[float, np.ndarray, np.ndarray]]:
    from ase.calculators.calculator import all_changes

    calc = atoms.calc

    def step(positions: np.ndarray):
        atoms.positions = positions
        calc.calculate(atoms, ["energy", "forces", "stress"], all_changes)
        return calc.results["energy"], calc.results["forces"], calc.results["stress"]

    return step


def relative_difference(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300))


def agreement(reference, others: Dict[str, Callable], positions: np.ndarray) -> str:
    """max |x - x_atomplug| / max |x_atomplug| for energy, forces, stress on one displaced box."""
    expected = reference(positions)
    parts = []
    worst = 0.0
    for name, step in others.items():
        got = step(positions)
        diffs = [relative_difference(e, g) for e, g in zip(expected, got)]
        worst = max([worst] + diffs)
        parts.append(f"{name} E {diffs[0]:.1e} F {diffs[1]:.1e} S {diffs[2]:.1e}")
    verdict = "OK" if worst <= 1e-10 else "MISMATCH"
    return f"agreement: vs atomplug on displaced 864 Ar (max rel. diff): {'; '.join(parts)} -> {verdict} (<= 1e-10)"


def export_metatomic(directory: str) -> Tuple[Optional[str], str]:
    """(path of the exported metatomic LJ, "") or (None, why) when metatomic is not installed."""
    try:
        import metatomic_ase  # noqa: F401
        from metatomic_lj import export_metatomic_lj
    except ImportError as error:
        return None, f"metatomic not installed ({error}); install it with: {INSTALL_METATOMIC}"
    path = os.path.join(directory, "lj-metatomic.pt")
    export_metatomic_lj(path, EPSILON, SIGMA, CUTOFF, (18,))
    return path, ""


def main(argv: Optional[List[str]] = None) -> List[BenchRow]:
    """Prints the comparison and returns the report's rows (benchmarks/report.py)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="rounds of interleaved steps (default 100)")
    parser.add_argument("--steps", type=int, default=2, help="steps per calculator per round (default 2)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    directory = tempfile.mkdtemp(prefix="atomplug-bench-ase-")
    try:
        return ase_rows(bench_ase(args, directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


FLOOR = "floor: vesin + bare fwd + bwd"
ATOMPLUG_DEFAULT = "atomplug (skin 0.5, default)"
ATOMPLUG_SKIN0 = "atomplug (skin 0)"
ATOMPLUG_ONE = "atomplug, one calculate() (skin 0.5)"
ATOMPLUG_ONE_SKIN0 = "atomplug, one calculate() (skin 0)"
ASE_LJ = "ase.calculators.lj (smooth=False)"
METATOMIC = "metatomic-ase (skin 2.0, default)"


def ase_rows(measured: Dict[str, object]) -> List[BenchRow]:
    """Issue 3's aims: atomplug <= 1.15x the floor, metatomic-ase >= 1.5x slower than atomplug."""
    medians: Dict[str, float] = measured["medians"]  # type: ignore[assignment]
    system = "LJ, 864 Ar, rc 8.5 A"
    floor_text = "vesin list + bare TorchScript forward + backward, every step (run.py's floor)"
    ours, floor = medians[ATOMPLUG_DEFAULT], medians[FLOOR]
    theirs = medians.get(METATOMIC)
    missing = measured["metatomic_missing"]
    default_row = BenchRow(
        engine="ASE",
        system=system,
        timed="MD-like step, E + F + stress, default skin 0.5 A",
        atomplug_ms=ours,
        floor_ms=floor,
        floor=floor_text,
        peer="metatomic-ase (skin 2 A)",
        peer_ms=theirs,
        aims=[
            Aim(3, "atomplug / floor", ours / floor, 1.15),
            Aim(3, "metatomic-ase / atomplug", theirs / ours if theirs else float("nan"), 1.5, at_most=False),
        ],
        details={f"{name} ms": value for name, value in medians.items()},
        note=f"{measured['calls']} model call(s) per step; the skin-0.5 list was rebuilt {measured['builds']} "
        f"times in {measured['steps']} steps" + (f"; metatomic skipped: {missing}" if missing else ""),
    )
    skin0_row = BenchRow(
        engine="ASE",
        system=system,
        timed="same step, skin 0 (list rebuilt every step)",
        atomplug_ms=medians[ATOMPLUG_SKIN0],
        floor_ms=floor,
        floor=floor_text,
        peer="ase.calculators.lj",
        peer_ms=medians[ASE_LJ],
    )
    return [default_row, skin0_row]


def bench_ase(args: argparse.Namespace, directory: str) -> Dict[str, object]:
    import torch
    import vesin
    from ase.calculators.lj import LennardJones
    from run import argon_864

    from atomplug.ase_calculator.calculator import AtomplugCalculator
    from atomplug.core import load_model
    from atomplug.examples.lj import export_lj

    atomplug_path = os.path.join(directory, "lj-atomplug.pt")
    export_lj(atomplug_path, EPSILON, SIGMA, CUTOFF, (18,))
    model = load_model(atomplug_path)  # one loaded model: its TorchScript warm-up is paid once

    base = argon_864()
    n_frames = WARMUP_STEPS + args.rounds * args.steps + 1
    frames = trajectory(base.positions, n_frames)

    def attached(calc):
        atoms = base.copy()
        atoms.calc = calc
        return atoms

    atomplug_default = attached(AtomplugCalculator(model))
    atomplug_skin0 = attached(AtomplugCalculator(model, skin=0.0))
    atomplug_one = attached(AtomplugCalculator(model))
    atomplug_one_skin0 = attached(AtomplugCalculator(model, skin=0.0))
    ase_lj = attached(LennardJones(epsilon=EPSILON, sigma=SIGMA, rc=CUTOFF, smooth=False))
    methods: Dict[str, Callable] = {
        FLOOR: make_floor(base),
        ATOMPLUG_DEFAULT: ase_step(atomplug_default),
        ATOMPLUG_SKIN0: ase_step(atomplug_skin0),
        ATOMPLUG_ONE: one_calculate_step(atomplug_one),
        ATOMPLUG_ONE_SKIN0: one_calculate_step(atomplug_one_skin0),
        ASE_LJ: ase_step(ase_lj),
    }
    metatomic_path, missing = export_metatomic(directory)
    if metatomic_path is not None:
        import metatomic.torch as metatomic_torch
        from metatomic_ase import MetatomicCalculator

        methods[METATOMIC] = ase_step(attached(MetatomicCalculator(metatomic_path)))

    print(f"torch {torch.__version__} ({torch.get_num_threads()} thread), vesin {vesin.__version__}", end="")
    if metatomic_path is not None:
        print(f", metatomic-torch {metatomic_torch.__version__}", end="")
    print()
    print(f"LJ, {len(base)} Ar (fcc 6x6x6, a=5.26 A), rc {CUTOFF} A: energy + forces + stress per MD-like step")

    checker = base.copy()
    checker.calc = AtomplugCalculator(model, skin=0.0)
    others = {
        "floor": methods[FLOOR],
        "ase LJ": ase_step(attached(LennardJones(epsilon=EPSILON, sigma=SIGMA, rc=CUTOFF, smooth=False))),
    }
    if metatomic_path is not None:
        others["metatomic-ase"] = ase_step(attached(MetatomicCalculator(metatomic_path)))
    print(agreement(one_calculate_step(checker), others, frames[-1]))

    # warm-up (TorchScript specialisation, vesin buffers), then interleaved rounds
    cursor = {name: 0 for name in methods}
    samples: Dict[str, List[float]] = {name: [] for name in methods}
    for name, step in methods.items():
        for _ in range(WARMUP_STEPS):
            step(frames[cursor[name]])
            cursor[name] += 1
    names = list(methods)
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            step = methods[name]
            for _ in range(args.steps):
                positions = frames[cursor[name]]
                cursor[name] += 1
                start = time.perf_counter()
                step(positions)
                samples[name].append(time.perf_counter() - start)

    medians = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    minimums = {name: 1e3 * min(values) for name, values in samples.items()}
    floor_ms = medians[FLOOR]
    width = max(len(name) for name in names) + 2
    print(
        f"\n  {'per step, ' + str(args.rounds * args.steps) + ' steps each':<{width}}{'median ms':>10}{'/ floor':>9}{'min ms':>9}"
    )
    for name in names:
        print(f"  {name:<{width}}{medians[name]:10.2f}{medians[name] / floor_ms:9.2f}{minimums[name]:9.2f}")
    if metatomic_path is None:
        print(f"  {'metatomic-ase':<{width}}skipped: {missing}")

    builds, steps = atomplug_default.calc.runner.cache.n_builds, cursor[ATOMPLUG_DEFAULT]
    calls = model_calls_per_step(atomplug_default, frames[0])
    print(
        f"\n  atomplug via get_*: {calls} model call{'s' if calls != 1 else ''} per step; skin 0.5 rebuilt its list "
        f"{builds} times in {steps} steps"
    )
    ours = medians[ATOMPLUG_DEFAULT]
    one = medians[ATOMPLUG_ONE]
    print(f"  ratio atomplug / floor          {ours / floor_ms:6.2f}   (aim <= 1.15)")
    if metatomic_path is not None:
        theirs = medians[METATOMIC]
        print(f"  ratio metatomic-ase / atomplug  {theirs / ours:6.2f}   (aim >= 1.5)")
        print(
            f"  with one calculate() per step:  atomplug / floor {one / floor_ms:.2f}, "
            f"metatomic-ase / atomplug {theirs / one:.2f}"
        )
    else:
        print(f"  with one calculate() per step:  atomplug / floor {one / floor_ms:.2f}")
    return {
        "medians": medians,
        "minimums": minimums,
        "builds": builds,
        "steps": steps,
        "calls": calls,
        "metatomic_missing": missing,
    }


def model_calls_per_step(atoms, positions: np.ndarray) -> int:
    """How many times one ASE step (energy, forces, stress) runs the atomplug model."""
    runner = atoms.calc.runner
    original = runner.run
    count = [0]

    def counting(*args, **kwargs):
        count[0] += 1
        return original(*args, **kwargs)

    runner.run = counting
    try:
        ase_step(atoms)(positions)
    finally:
        del runner.run
    return count[0]


if __name__ == "__main__":
    main()
