"""`make bench`: speed of atomplug's paths against the floor (and peers, as engines land).

Every ratio is measured within one run on the same structure. Timings are medians of repeated
calls after warm-up (TorchScript optimises during the first calls).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))


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
        forces = torch.zeros_like(positions).index_add_(0, pairs_t[:, 1], -gradient).index_add_(0, pairs_t[:, 0], gradient)
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


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print("\ncore: LJ, 864 Ar (fcc 6x6x6, a=5.26 A, displaced), rc 8.5 A, energy + forces + virial")
    core = bench_core_lj(args.repeat, args.warmup)
    print(f"  neighbor list (vesin)             {core['neighbors_ms']:8.2f} ms")
    print(f"  floor: vesin + bare fwd + bwd     {core['floor_ms']:8.2f} ms")
    print(f"  atomplug entry point + list       {core['atomplug_ms']:8.2f} ms")
    print(f"  ratio atomplug / floor            {core['ratio']:8.3f}   (aim <= 1.1)")
    run_engine_benchmarks()


ENGINE_BENCHMARKS = ["bench_ase", "bench_ipi", "bench_lammps", "bench_plumed"]


def run_engine_benchmarks() -> None:
    """Each engine's benchmark lives in its own bench_<engine>.py with a main([])."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    for name in ENGINE_BENCHMARKS:
        if not os.path.exists(os.path.join(here, name + ".py")):
            continue
        print(f"\n==== {name} " + "=" * (60 - len(name)))
        sys.stdout.flush()
        importlib.import_module(name).main([])


if __name__ == "__main__":
    main()
