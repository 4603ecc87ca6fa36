"""When TorchScript optimises a loaded model (core/archive.py UNOPTIMIZED_CALLS): forward runs
unoptimised for the first calls, then optimised on a fresh copy of the module, with the same
results; setup methods never are."""

import numpy as np
import pytest
import torch

from atomplug.core import ModelRunner, load_model
from atomplug.core.archive import NEVER, OPTIMIZE_AFTER_VARIABLE, UNOPTIMIZED_CALLS, LoadedModel, unoptimized_calls

AROUND_THE_SWITCH = UNOPTIMIZED_CALLS + 4


def structures(atoms, count: int):
    """`count` slightly different copies of `atoms`."""
    moved = []
    for step in range(count):
        copy = atoms.copy()
        copy.positions += 0.01 * np.sin(np.arange(copy.positions.size) + step).reshape(-1, 3)
        moved.append(copy)
    return moved


def run_each(runner: ModelRunner, frames, stay_unoptimised: bool = False):
    results, flags = [], []
    for frame in frames:
        if stay_unoptimised:
            runner.model.forward_calls = 0
        results.append(runner.run([frame], ["energy"], forces=True, virial=True))
        flags.append(runner.model.optimized)
    return results, flags


def test_forward_switches_to_an_optimised_copy_after_the_unoptimised_calls(lj_model_path, argon_box):
    frames = structures(argon_box, AROUND_THE_SWITCH)
    runner = ModelRunner(lj_model_path)
    first_module = runner.model.module
    results, flags = run_each(runner, frames)
    assert flags == [False] * UNOPTIMIZED_CALLS + [True] * (AROUND_THE_SWITCH - UNOPTIMIZED_CALLS)
    assert runner.model.module is not first_module, "the optimised calls must run on a fresh copy"
    expected, never = run_each(ModelRunner(lj_model_path), frames, stay_unoptimised=True)
    assert not any(never)
    for step, (got, want) in enumerate(zip(results, expected)):
        for key in ("energy", "forces", "virial"):
            scale = max(float(np.abs(want[key]).max()), 1e-300)
            assert float(np.abs(got[key] - want[key]).max()) / scale < 1e-12, (step, key)


def test_setup_methods_still_work_after_the_switch(lj_model_path, argon_box):
    fresh = load_model(lj_model_path)
    runner = ModelRunner(lj_model_path)
    run_each(runner, structures(argon_box, AROUND_THE_SWITCH))
    assert runner.model.optimized
    assert runner.model.unit_conversion("eV", "kcal/mol") == fresh.unit_conversion("eV", "kcal/mol")
    assert runner.model.neighbor_requests("nm") == fresh.neighbor_requests("nm")
    assert torch._C._get_graph_executor_optimize() is True  # the flag is restored after every call


def test_a_model_without_its_bytes_never_switches(lj_model_path, argon_box):
    """LoadedModel built around a module alone (no archive bytes to load a fresh copy from) stays
    unoptimised: optimising the module whose forward already ran unoptimised is what goes wrong."""
    loaded = load_model(lj_model_path)
    header = {"format_version": 1, "capabilities": loaded.capabilities.to_dict(), "metadata": loaded.metadata.to_dict()}
    bare = LoadedModel(loaded.module, header, lj_model_path)
    run_each(ModelRunner(bare), structures(argon_box, AROUND_THE_SWITCH))
    assert not bare.optimized and bare.module is loaded.module


def test_systems_share_no_containers_when_the_module_is_optimised_after_unoptimised_calls(tmp_path):
    """The same module run unoptimised and then optimised (a user calling `.module` directly after
    ModelRunner): TorchScript then compiles System.__init__ on its own and folds its empty lists
    and dict into constants shared by every System. System never mutates them, so each structure
    of a batch keeps its own neighbor list and inputs."""
    from ase.build import molecule

    from atomplug.examples.inputs import export_charge_spin

    path = str(tmp_path / "charge-spin.pt")
    export_charge_spin(path)
    frames = []
    for charge, spin in ((0.0, 1.0), (1.0, 2.0), (-1.0, 3.0)):
        atoms = molecule("CH3CH2OH")
        atoms.info.update(charge=charge, spin=spin)
        frames.append(atoms)
    separately = ModelRunner(path)
    expected = [separately.run([atoms], ["energy"], forces=True)["energy"][0, 0] for atoms in frames]
    runner = ModelRunner(path)
    runner.run(frames, ["energy"], forces=True)  # unoptimised (the first calls)
    runner.model.forward_calls = 0
    runner.model._archive = None  # no fresh copy: this module itself is optimised below
    with torch.jit.optimized_execution(True):
        for _ in range(4):  # profiling run, optimisation, then the optimised plan
            runner.model.optimized = True
            got = runner.run(frames, ["energy"], forces=True)["energy"][:, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ---- the schedule per device, and ATOMPLUG_OPTIMIZE_AFTER -----------------------------------------


def test_the_cpu_switches_after_the_calls_and_a_gpu_never(monkeypatch):
    """Without the variable: UNOPTIMIZED_CALLS on the CPU; on CUDA forward stays unoptimised (its
    optimising executor compiles fused kernels again for each new number of pairs)."""
    monkeypatch.delenv(OPTIMIZE_AFTER_VARIABLE, raising=False)
    assert unoptimized_calls("cpu") == unoptimized_calls(None) == UNOPTIMIZED_CALLS
    assert unoptimized_calls("cuda") == unoptimized_calls("cuda:1") == NEVER


@pytest.mark.parametrize("setting, expected", [("3", 3), ("never", NEVER), (" 0 ", 0)])
def test_the_variable_sets_the_count_for_every_device(monkeypatch, setting, expected):
    monkeypatch.setenv(OPTIMIZE_AFTER_VARIABLE, setting)
    assert unoptimized_calls("cpu") == unoptimized_calls("cuda") == expected


def test_optimize_after_three_calls(monkeypatch, lj_model_path, argon_box):
    monkeypatch.setenv(OPTIMIZE_AFTER_VARIABLE, "3")
    frames = structures(argon_box, 6)
    results, flags = run_each(ModelRunner(lj_model_path), frames)
    assert flags == [False] * 3 + [True] * 3
    monkeypatch.delenv(OPTIMIZE_AFTER_VARIABLE)
    expected, _ = run_each(ModelRunner(lj_model_path), frames)
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got["forces"], want["forces"], rtol=1e-12, atol=0.0)


def test_optimize_from_the_first_call_on_the_loaded_module(monkeypatch, lj_model_path, argon_box):
    """0: optimised from the first call, on the module as loaded (its forward never ran
    unoptimised, so no fresh copy is needed)."""
    monkeypatch.setenv(OPTIMIZE_AFTER_VARIABLE, "0")
    runner = ModelRunner(lj_model_path)
    first_module = runner.model.module
    _, flags = run_each(runner, structures(argon_box, 4))
    assert flags == [True] * 4 and runner.model.module is first_module


def test_never_stays_unoptimised(monkeypatch, lj_model_path, argon_box):
    monkeypatch.setenv(OPTIMIZE_AFTER_VARIABLE, "never")
    runner = ModelRunner(lj_model_path)
    _, flags = run_each(runner, structures(argon_box, AROUND_THE_SWITCH))
    assert not any(flags) and runner.model.forward_calls == AROUND_THE_SWITCH


@pytest.mark.parametrize("setting", ["soon", "-1", "2.5", "123456789012345678"])
def test_a_bad_setting_is_refused_with_the_choices(monkeypatch, lj_model_path, setting):
    monkeypatch.setenv(OPTIMIZE_AFTER_VARIABLE, setting)
    with pytest.raises(ValueError) as caught:
        load_model(lj_model_path)
    message = str(caught.value)
    assert f"ATOMPLUG_OPTIMIZE_AFTER={setting} is not a number of calls" in message
    assert "N >= 0" in message and "never" in message and f"{UNOPTIMIZED_CALLS} on the CPU" in message
