"""Neighbor lists on the model's device (issue 19): vesin-torch against the host lists.

The device path (`neighbor_backend="torch"`, chosen by default for a CUDA model) must give the
host path's lists, rebuild at the same steps, and make the model give the same numbers. Every
test runs on the CPU (where vesin-torch runs vesin's own C++ search, so the lists are equal in
order too) and, on a machine with a CUDA GPU, on the GPU (`make gpu-check`): its `cuda` cases skip
elsewhere, saying the accelerator is missing.
"""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from devices import DEVICES
from structures import displaced_triclinic_argon

from atomplug.core import ModelRunner, Structure
from atomplug.core import neighbors as neighbors_module
from atomplug.core.neighbors import (
    DeviceNeighborListCache,
    DeviceTrajectoryCaches,
    NeighborListCache,
    TrajectoryCaches,
    compute_pairs,
    compute_pairs_on_device,
)
from atomplug.core.runner import NEIGHBOR_BACKEND_VARIABLE, _to_host, choose_neighbor_backend


def random_system(n, cell, pbc, seed, outside=0.0):
    """`n` atoms in the periodic part of `cell` (spread ~3 A along non-periodic directions);
    `outside`: how far (in cells) atoms may lie outside the cell, as unwrapped MD leaves them."""
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, dtype=float)
    box = np.where(np.linalg.norm(cell, axis=1) > 0, 1.0, 0.0)
    fractional = (rng.random((n, 3)) * (1.0 + 2.0 * outside) - outside) * box
    positions = fractional @ cell + rng.normal(scale=3.0, size=(n, 3)) * (1 - box)
    return positions, cell, np.asarray(pbc, dtype=bool)


TRICLINIC = [[7.0, 0.0, 0.0], [1.5, 6.5, 0.0], [-1.0, 0.8, 8.0]]
BIG_TRICLINIC = [[16.0, 0.0, 0.0], [2.0, 15.0, 0.0], [-1.5, 1.0, 17.0]]
CASES = {
    "periodic-cubic": (300, np.eye(3) * 14.0, [True] * 3, 5.0, 0.0),
    "periodic-triclinic": (40, TRICLINIC, [True] * 3, 5.0, 0.0),
    # wider than two cutoffs: the CUDA kernels' own search (narrower cells are built on the host)
    "periodic-triclinic-wide": (400, BIG_TRICLINIC, [True] * 3, 5.0, 0.0),
    "periodic-atoms-outside-the-cell": (400, BIG_TRICLINIC, [True] * 3, 5.0, 1.5),
    "slab": (30, [[7.0, 0, 0], [1.0, 6.0, 0], [0, 0, 0]], [True, True, False], 4.5, 0.0),
    "wire": (25, [[5.5, 0, 0], [0, 0, 0], [0, 0, 0]], [True, False, False], 4.0, 0.0),
    "cell-smaller-than-cutoff": (3, [[2.1, 0, 0], [0.3, 2.4, 0], [0.2, -0.4, 2.2]], [True] * 3, 6.0, 0.0),
    "isolated": (30, np.zeros((3, 3)), [False] * 3, 4.0, 0.0),
}


def sorted_rows(pairs, shifts):
    """[P, 5] rows (i, j, shift) in lexicographic order: the list as a set, comparable exactly."""
    rows = np.concatenate([np.asarray(pairs, dtype=np.int64), np.asarray(shifts, dtype=np.int64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def host(tensor):
    return tensor.cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("full_list", [True, False], ids=["full", "half"])
@pytest.mark.parametrize("name", list(CASES))
def test_device_lists_equal_the_host_lists(name, full_list, device):
    n, cell, pbc, cutoff, outside = CASES[name]
    positions, cell, pbc = random_system(n, cell, pbc, seed=len(name), outside=outside)
    pairs, shifts = compute_pairs(positions, cell, pbc, cutoff, full_list)
    assert len(pairs) > 0
    device_pairs, device_shifts = compute_pairs_on_device(positions, cell, pbc, cutoff, full_list, device=device)
    assert device_pairs.device.type == device and device_shifts.device.type == device
    assert device_pairs.dtype == torch.int64 and device_shifts.dtype == torch.int32
    assert device_pairs.shape == pairs.shape and device_shifts.shape == shifts.shape
    assert np.array_equal(sorted_rows(host(device_pairs), host(device_shifts)), sorted_rows(pairs, shifts))
    assert np.all(np.diff(host(device_pairs)[:, 0]) >= 0), "pairs are grouped by their first atom"
    if device == "cpu":  # vesin's own CPU search behind both: the same order too
        assert np.array_equal(host(device_pairs), pairs) and np.array_equal(host(device_shifts), shifts)


@pytest.mark.parametrize("device", DEVICES)
def test_device_lists_of_one_and_no_atom_and_bad_input(device):
    for n in (0, 1):
        pairs, shifts = compute_pairs_on_device(np.zeros((n, 3)), np.zeros((3, 3)), False, 5.0, True, device=device)
        assert tuple(pairs.shape) == (0, 2) and tuple(shifts.shape) == (0, 3)
    with pytest.raises(ValueError, match="NaN"):
        compute_pairs_on_device(np.array([[0.0, 0, 0], [np.nan, 0, 0]]), np.eye(3) * 5, True, 3.0, True, device=device)
    with pytest.raises(ValueError, match="linearly dependent"):
        cell = np.array([[5.0, 0, 0], [10.0, 0, 0], [0, 0, 5.0]])
        compute_pairs_on_device(np.array([[0.0, 0, 0], [1.0, 0, 0]]), cell, True, 3.0, True, device=device)


def md_trajectory(atoms, steps, seed, wrap_every=0):
    """Positions of an MD-like run: a smooth random walk (velocities that drift), wrapped back into
    the cell every `wrap_every` steps (as i-PI and LAMMPS send atoms) when given."""
    rng = np.random.default_rng(seed)
    positions = atoms.positions.copy()
    velocities = rng.normal(scale=0.02, size=positions.shape)
    cell = atoms.cell.array
    frames = []
    for step in range(steps):
        velocities = 0.9 * velocities + rng.normal(scale=0.01, size=positions.shape)
        positions = positions + velocities
        frame = positions
        if wrap_every and step % wrap_every == 0:
            frame = np.mod(positions @ np.linalg.inv(cell), 1.0) @ cell
        frames.append(frame)
    return frames


REQUESTS = [(6.0, False, True), (6.0, True, True), (5.0, True, False)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrap_every", [0, 3], ids=["unwrapped", "wrapped"])
def test_device_cache_rebuilds_exactly_when_the_host_cache_does(wrap_every, device):
    atoms = displaced_triclinic_argon(repeat=(4, 4, 4))
    cell = atoms.cell.array
    skin = 1.0
    host_cache = NeighborListCache(REQUESTS, skin=skin)
    device_cache = DeviceNeighborListCache(REQUESTS, skin=skin)
    device_cell = torch.from_numpy(cell).to(device)
    rebuilds = []
    for step, positions in enumerate(md_trajectory(atoms, 60, seed=4, wrap_every=wrap_every)):
        before = host_cache.n_builds
        expected = host_cache.get(positions, cell, True)
        lists = device_cache.get(positions, cell, True, torch.from_numpy(positions).to(device), device_cell)
        assert device_cache.n_builds == host_cache.n_builds, f"step {step}"
        if host_cache.n_builds > before:
            rebuilds.append(step)
        for (pairs, shifts), (device_pairs, device_shifts) in zip(expected, lists):
            assert device_pairs.device.type == device
            assert np.array_equal(sorted_rows(host(device_pairs), host(device_shifts)), sorted_rows(pairs, shifts)), (
                f"step {step}"
            )
            if device == "cpu":
                assert np.array_equal(host(device_pairs), pairs) and np.array_equal(host(device_shifts), shifts)
        moved = host_cache.distance_squared(positions, cell, True)
        assert device_cache.distance_squared(positions, cell, True, torch.from_numpy(positions).to(device)) == moved
    assert 2 < len(rebuilds) < 40, rebuilds  # the skin saved rebuilds and was exceeded several times


@pytest.mark.parametrize("device", DEVICES)
def test_device_cache_rebuilds_on_box_change_and_catches_nan(device):
    atoms = molecule("CH3CH2OH")
    atoms.cell = np.eye(3) * 10
    cache = DeviceNeighborListCache([(3.0, True, True)], skin=0.5)
    for cell, pbc, builds in [
        (atoms.cell.array, False, 1),
        (atoms.cell.array, False, 1),
        (atoms.cell.array * 1.01, False, 2),
    ]:
        cache.get(atoms.positions, cell, pbc, device=device)
        assert cache.n_builds == builds
    cache.get(atoms.positions, atoms.cell.array * 1.01, True, device=device)
    assert cache.n_builds == 3
    broken = atoms.positions.copy()
    broken[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cache.get(broken, atoms.cell.array * 1.01, True, device=device)
    no_skin = DeviceNeighborListCache([(3.0, False, True)], skin=0.0)
    for _ in range(3):
        no_skin.get(atoms.positions, np.zeros((3, 3)), False, device=device)
    assert no_skin.n_builds == 3


@pytest.mark.parametrize("device", DEVICES)
def test_device_trajectory_caches_follow_the_host_ones(device):
    # i-PI's beads, wrapped and served in turn: the same caches, rebuilds and lists
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(3)
    cell = atoms.cell.array
    rng = np.random.default_rng(7)
    beads = [atoms.positions + rng.normal(scale=0.3, size=atoms.positions.shape) for _ in range(3)]
    velocities = rng.normal(scale=0.01, size=atoms.positions.shape)
    requests = [(6.0, False, True), (6.0, True, False)]
    host_caches = TrajectoryCaches(requests, skin=1.0)
    device_caches = DeviceTrajectoryCaches(requests, skin=1.0)
    for _step in range(20):
        for bead in range(3):
            beads[bead] = beads[bead] + velocities
            wrapped = np.mod(beads[bead] @ np.linalg.inv(cell), 1.0) @ cell
            expected = host_caches.get(wrapped, cell, True)
            lists = device_caches.get(wrapped, cell, True, device=device)
            assert device_caches.n_builds == host_caches.n_builds
            for (pairs, shifts), (device_pairs, device_shifts) in zip(expected, lists):
                assert np.array_equal(sorted_rows(host(device_pairs), host(device_shifts)), sorted_rows(pairs, shifts))
    assert len(device_caches.caches) == len(host_caches.caches) == 3
    assert all(isinstance(cache, DeviceNeighborListCache) for cache in device_caches.caches)


def relative_difference(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def compare_runners(reference, runner, frames, outputs=("energy",), tolerance=1e-12):
    worst = 0.0
    for structures in frames:
        expected = reference.run(structures, list(outputs), forces=True, virial=True)
        result = runner.run(structures, list(outputs), forces=True, virial=True)
        assert set(result) == set(expected)
        for key in expected:
            assert result[key].shape == expected[key].shape and result[key].dtype == expected[key].dtype, key
            worst = max(worst, relative_difference(result[key], expected[key]))
    assert worst <= tolerance, worst
    return worst


@pytest.mark.parametrize("device", DEVICES)
def test_model_runner_on_the_device_path_gives_the_same_numbers(lj_model_path, device):
    """LJ argon over an MD-like trajectory with a skin, a molecule, and a batch (no cache): energy,
    per-atom energies, forces and virial equal the host path's (bit for bit on the CPU)."""
    atoms = displaced_triclinic_argon(repeat=(4, 4, 4))
    reference = ModelRunner(lj_model_path, skin=0.5)
    runner = ModelRunner(lj_model_path, skin=0.5, device=device, neighbor_backend="torch")
    assert reference.neighbor_backend == "numpy" and runner.neighbor_backend == "torch"
    frames = [[Structure(atoms.numbers, p, atoms.cell.array, True)] for p in md_trajectory(atoms, 25, seed=2)]
    argon = molecule("H2O")
    argon.numbers[:] = 18
    argon.positions *= 2.5
    frames.append([Structure(argon.numbers, argon.positions, np.zeros((3, 3)), False)])
    frames.append([frames[0][0], frames[-1][0], Structure(atoms.numbers, atoms.positions, atoms.cell.array, True)])
    worst = compare_runners(reference, runner, frames, outputs=("energy", "energy/per_atom"))
    if device == "cpu":
        assert worst == 0.0
    assert runner.cache.n_builds == reference.cache.n_builds > 1


@pytest.mark.parametrize("device", DEVICES)
def test_model_runner_full_lists_and_message_passing_on_the_device_path(message_passing_path, device):
    from structures import hco_liquid

    liquid = hco_liquid(24)
    reference = ModelRunner(message_passing_path, skin=0.3)
    runner = ModelRunner(message_passing_path, skin=0.3, device=device, neighbor_backend="torch")
    frames = [[Structure(liquid.numbers, p, liquid.cell.array, True)] for p in md_trajectory(liquid, 8, seed=5)]
    worst = compare_runners(reference, runner, frames)
    if device == "cpu":
        assert worst == 0.0


def test_neighbor_backend_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(NEIGHBOR_BACKEND_VARIABLE, raising=False)
    assert choose_neighbor_backend(None, cpu) == "numpy"
    assert choose_neighbor_backend("auto", cpu) == "numpy"
    assert choose_neighbor_backend("torch", cpu) == "torch"
    assert choose_neighbor_backend("numpy", cuda) == "numpy"
    monkeypatch.setattr("atomplug.core.runner.vesin_torch_available", lambda: True)
    assert choose_neighbor_backend(None, cuda) == "torch"
    monkeypatch.setattr("atomplug.core.runner.vesin_torch_available", lambda: False)
    with pytest.warns(RuntimeWarning, match="vesin-torch.*built on the CPU"):
        assert choose_neighbor_backend("auto", cuda) == "numpy"
    with pytest.raises(ValueError, match="neighbor_backend must be one of auto, numpy, torch, got 'gpu'"):
        choose_neighbor_backend("gpu", cpu)
    monkeypatch.setenv(NEIGHBOR_BACKEND_VARIABLE, "torch")
    assert choose_neighbor_backend(None, cpu) == "torch"
    assert choose_neighbor_backend("numpy", cpu) == "numpy"  # an explicit choice wins
    monkeypatch.setenv(NEIGHBOR_BACKEND_VARIABLE, "fast")
    with pytest.raises(ValueError, match=f"{NEIGHBOR_BACKEND_VARIABLE} must be one of"):
        choose_neighbor_backend(None, cpu)


def test_missing_vesin_torch_is_named_with_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_vesin_torch(name, *args, **kwargs):
        if name == "vesin_torch":
            raise ImportError("No module named 'vesin_torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_vesin_torch)
    assert not neighbors_module.vesin_torch_available()
    with pytest.raises(ImportError, match=r"pip install 'vesin-torch>=0.6,<0.7'.*No module named 'vesin_torch'"):
        choose_neighbor_backend("torch", torch.device("cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_results_come_back_whole(device):
    raw = {
        "energy": torch.arange(2.0, dtype=torch.float64, device=device).reshape(2, 1),
        "forces": torch.arange(12.0, dtype=torch.float64, device=device).reshape(4, 3),
        "virial": torch.arange(18.0, dtype=torch.float64, device=device).reshape(2, 3, 3),
        "features": torch.arange(4.0, dtype=torch.float32, device=device).reshape(4, 1),
        "empty": torch.zeros((0, 3), dtype=torch.float64, device=device),
    }
    for together in (None, True, False):  # (gathered by default only off the CPU: forced here too)
        result = _to_host(raw, together)
        assert set(result) == set(raw)
        for key, value in raw.items():
            assert isinstance(result[key], np.ndarray) and result[key].dtype == value.cpu().numpy().dtype
            assert result[key].shape == tuple(value.shape) and np.array_equal(result[key], value.cpu().numpy()), key


def test_gpu_search_is_used_where_vesins_kernels_hold_and_falls_back_once():
    """Which structures vesin's CUDA kernels search (3D-periodic cells at least two cutoffs wide),
    decided without a GPU; a CUDA failure sends that list to the host from then on."""
    from atomplug.core.neighbors import _Geometry, _TorchBuilder

    builder = _TorchBuilder(5.0, full_list=False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")

    def decision(name, device):
        n, cell, pbc, cutoff, outside = CASES[name]
        positions, cell, pbc = random_system(n, cell, pbc, seed=1, outside=outside)
        return builder._on_device(_Geometry(positions, cell, pbc, builder.cutoff), pbc, device)

    on_gpu = {name: decision(name, cuda) for name in CASES}
    assert on_gpu == {
        "periodic-cubic": True,
        "periodic-triclinic": False,  # faces 6.4-8 A apart: narrower than two 5 A cutoffs
        "periodic-triclinic-wide": True,
        "periodic-atoms-outside-the-cell": True,
        "slab": False,
        "wire": False,
        "cell-smaller-than-cutoff": False,
        "isolated": False,
    }
    assert all(decision(name, cpu) for name in CASES), "on the CPU vesin-torch searches all of them"
    builder._cuda_failure = "The number of neighbor pairs exceeds the maximum capacity"
    assert not decision("periodic-cubic", cuda) and decision("periodic-cubic", cpu)


def test_gpu_pairs_are_put_in_a_canonical_order():
    from atomplug.core.neighbors import _sort_pairs

    n, cell, pbc, cutoff, _ = CASES["periodic-triclinic-wide"]
    positions, cell, pbc = random_system(n, cell, pbc, seed=3)
    pairs, shifts = compute_pairs_on_device(positions, cell, pbc, cutoff, True)
    shuffled = torch.randperm(pairs.shape[0], generator=torch.Generator().manual_seed(0))
    ordered_pairs, ordered_shifts = _sort_pairs(pairs[shuffled], shifts[shuffled], n)
    rows = np.concatenate([host(ordered_pairs), host(ordered_shifts)], axis=1)
    assert np.array_equal(rows, sorted_rows(host(pairs), host(shifts))), "by (i, j), each pair once"
