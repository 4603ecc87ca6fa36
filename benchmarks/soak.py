"""Soak test (`make soak`, not in CI): a long ASE MD run must not leak memory or drift.

100,000 velocity-Verlet (NVE) steps of 108-atom fcc argon with the float64 Lennard-Jones example
model through `AtomplugCalculator`. The resident set size (VmRSS from /proc/self/status) is sampled
every `--sample-every` steps; after a warm-up (allocator pools, TorchScript specialisation, the
neighbor-list cache reach their steady state within a few thousand steps) it must not grow by more
than `--max-growth` (5 %) to the end. Also reported: the total-energy drift (change of a linear fit
over the run, per atom), the largest excursion of the total energy, and steps per second.

Run: python benchmarks/soak.py [--steps N] [--sample-every N] [--warmup N]; exit status 1 when
RSS grew too much or the energy drifted by more than `--max-drift` eV/atom.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import List, Tuple

import numpy as np

EPSILON, SIGMA, CUTOFF = 0.0104, 3.40, 8.5  # argon, eV and Angstrom
LATTICE = 5.26  # Angstrom, fcc


def resident_set_kib() -> int:
    """VmRSS of this process in KiB (Linux), the memory that actually stays in RAM."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS line in /proc/self/status: the soak test needs Linux")


def linear_drift(values: np.ndarray) -> float:
    """|slope of a least-squares line| x number of samples: the change over the run with the
    fluctuations averaged out."""
    slope = np.polyfit(np.arange(len(values)), values, 1)[0]
    return float(abs(slope) * len(values))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sample-every", type=int, default=1_000, help="RSS sample interval (steps)")
    parser.add_argument("--warmup", type=int, default=5_000, help="steps before the RSS baseline")
    parser.add_argument("--timestep-fs", type=float, default=2.0)
    parser.add_argument("--temperature", type=float, default=50.0, help="initial temperature (K)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up (fraction)")
    parser.add_argument("--max-drift", type=float, default=1e-4, help="allowed energy drift (eV/atom over the run)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be shorter than --steps")
    import torch
    from ase import units
    from ase.build import bulk
    from ase.md import velocitydistribution
    from ase.md.velocitydistribution import Stationary
    from ase.md.verlet import VelocityVerlet

    from atomplug.ase_calculator import AtomplugCalculator
    from atomplug.examples.lj import export_lj

    torch.set_num_threads(1)
    directory = tempfile.mkdtemp(prefix="atomplug-soak-")
    model = os.path.join(directory, "lj.pt")
    export_lj(model, epsilon=EPSILON, sigma=SIGMA, cutoff=CUTOFF, types=[18])

    atoms = bulk("Ar", "fcc", a=LATTICE, cubic=True).repeat((3, 3, 3))
    thermalize = (
        getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    )
    thermalize(atoms, temperature_K=args.temperature, rng=np.random.default_rng(3))
    Stationary(atoms)
    atoms.calc = AtomplugCalculator(model, skin=1.0)
    dynamics = VelocityVerlet(atoms, timestep=args.timestep_fs * units.fs)

    energies: List[float] = []
    samples: List[Tuple[int, int]] = [(0, resident_set_kib())]
    dynamics.attach(lambda: energies.append(atoms.get_total_energy() / len(atoms)), interval=10)

    print(
        f"soak: {args.steps} NVE steps of {len(atoms)} Ar atoms, {args.timestep_fs} fs, T0 {args.temperature} K, "
        f"RSS every {args.sample_every} steps (baseline after {args.warmup})",
        flush=True,
    )
    start = time.perf_counter()
    done = 0
    while done < args.steps:
        chunk = min(args.sample_every, args.steps - done)
        dynamics.run(chunk)
        done += chunk
        samples.append((done, resident_set_kib()))
        if done % (10 * args.sample_every) == 0 or done == args.steps:
            elapsed = time.perf_counter() - start
            print(f"  step {done:>7}: RSS {samples[-1][1] / 1024:.1f} MiB, {done / elapsed:.0f} steps/s", flush=True)
    elapsed = time.perf_counter() - start

    baseline_step, baseline = next((s, r) for s, r in samples if s >= args.warmup)
    final = samples[-1][1]
    peak = max(r for s, r in samples if s >= args.warmup)
    growth = (final - baseline) / baseline
    values = np.array(energies)
    drift = linear_drift(values)
    excursion = float(values.max() - values.min())
    builds = atoms.calc.runner.cache.n_builds
    print(
        f"soak: RSS at start {samples[0][1] / 1024:.1f} MiB, at step {baseline_step} {baseline / 1024:.1f} MiB, "
        f"at the end {final / 1024:.1f} MiB (peak after warm-up {peak / 1024:.1f} MiB): growth {100 * growth:+.2f} %\n"
        f"soak: {args.steps / elapsed:.0f} steps/s ({elapsed:.0f} s), {builds} neighbor-list builds\n"
        f"soak: total energy drift {drift:.2e} eV/atom over the run (linear fit), max-min {excursion:.2e} eV/atom, "
        f"final temperature {atoms.get_temperature():.1f} K",
        flush=True,
    )
    failures = []
    if growth >= args.max_growth:
        failures.append(f"RSS grew by {100 * growth:.2f} % after warm-up (limit {100 * args.max_growth:.0f} %)")
    if not drift < args.max_drift:
        failures.append(f"energy drifted by {drift:.2e} eV/atom (limit {args.max_drift:.0e})")
    for failure in failures:
        print(f"soak: FAILED: {failure}", file=sys.stderr, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
