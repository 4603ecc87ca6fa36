"""Bad ATOMPLUG input is a PLUMED error with a message saying what to fix, never a crash."""

import os
import signal

import numpy as np
import pytest
import torch
from plumed_testing import random_frames, run_driver, write_xyz


def plumed_error(plugin, line, n_atoms=30):
    """The PLUMED error raised while reading `line` through PLUMED's Python API (as ASE drives it)."""
    import plumed

    engine = plumed.Plumed()
    engine.cmd("setNatoms", n_atoms)
    engine.cmd("setLogFile", os.devnull)
    engine.cmd("init")
    engine.cmd("readInputLine", f"LOAD FILE={plugin}")
    with pytest.raises(plumed.PlumedError) as caught:
        engine.cmd("readInputLine", line)
    engine.finalize()
    return str(caught.value)


def test_missing_model_file(plugin, tmp_path):
    message = plumed_error(plugin, f"cv: ATOMPLUG MODEL={tmp_path}/missing.pt SPECIES1=1-10 SPECIES2=11-30")
    assert "missing.pt' does not exist" in message


def test_not_an_atomplug_model(plugin, tmp_path):
    text_file = tmp_path / "model.pt"
    text_file.write_text("not a model")
    assert "could not be loaded by TorchScript" in plumed_error(plugin, f"cv: ATOMPLUG MODEL={text_file} SPECIES1=1-30")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
    assert "without atomplug metadata" in plumed_error(plugin, f"cv: ATOMPLUG MODEL={plain} SPECIES1=1-30")


def test_type_unknown_to_the_model(plugin, plumed_models):
    message = plumed_error(
        plugin, f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,6"
    )
    assert "SPECIES2 has type 6, which the model does not know (it knows 1, 8)" in message


def test_atoms_not_covered_by_species(plugin, plumed_models):
    message = plumed_error(
        plugin,
        f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-20 SPECIES_TO_TYPES=8,1 "
        "SELECTED_ATOMS=5,25",
    )
    assert "atom 25, which is not covered by any SPECIES keyword" in message


def test_species_input_mistakes(plugin, plumed_models):
    model = plumed_models["coordination"]
    assert "listed in more than one SPECIES" in plumed_error(
        plugin, f"cv: ATOMPLUG MODEL={model} SPECIES1=1-10 SPECIES2=10-30 SPECIES_TO_TYPES=8,1"
    )
    assert "SPECIES_TO_TYPES has 1 entries for 2 SPECIES" in plumed_error(
        plugin, f"cv: ATOMPLUG MODEL={model} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8"
    )
    assert "no atoms given" in plumed_error(plugin, f"cv: ATOMPLUG MODEL={model}")


def test_unknown_output_name(plugin, plumed_models):
    message = plumed_error(
        plugin,
        f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1 OUTPUT=energy",
    )
    assert "the model has no output 'energy' (it declares: features)" in message


def test_driver_reports_the_error_and_exits(plugin, plumed_models, tmp_path):
    """Under `plumed driver` an input error is PLUMED's error report and a failed exit, not a crash."""
    trajectory = str(tmp_path / "trajectory.xyz")
    write_xyz(trajectory, random_frames(30, 1, 2.0, seed=1), np.eye(3) * 2.0)
    text = (
        f"LOAD FILE={plugin}\n"
        f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1 OUTPUT=nope\n"
    )
    result = run_driver(str(tmp_path), text, trajectory)
    assert result.returncode != 0
    assert result.returncode not in (-signal.SIGSEGV, 128 + signal.SIGSEGV, 256 - signal.SIGSEGV)
    output = result.stdout + result.stderr
    assert "ERROR in input to action ATOMPLUG with label cv : the model has no output 'nope'" in output


def test_a_bad_optimize_after_setting_is_refused_with_the_choices(plugin, plumed_models, monkeypatch):
    """ATOMPLUG_OPTIMIZE_AFTER (core.archive.unoptimized_calls), read when the action loads the model."""
    monkeypatch.setenv("ATOMPLUG_OPTIMIZE_AFTER", "later")
    message = plumed_error(
        plugin, f"cv: ATOMPLUG MODEL={plumed_models['coordination']} SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1"
    )
    assert "ATOMPLUG_OPTIMIZE_AFTER=later is not a number of calls: give N >= 0" in message
    assert "never (always unoptimised)" in message
