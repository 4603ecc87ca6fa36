"""`atomplug doctor` on this installation, and on one with a missing PLUMED plugin build."""

import os
import shutil
import subprocess
import sys


def doctor(env=None, *options: str):
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    return subprocess.run([script, "doctor", *options], capture_output=True, text=True, timeout=300, env=env)


def test_doctor_passes_on_this_installation():
    run = doctor()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "FAIL" not in run.stdout
    for name in ("vesin", "i-PI", "LAMMPS plugin build", "loads in LAMMPS", "PLUMED plugin", "PLUMED LOAD"):
        assert name in run.stdout, name


def test_doctor_names_the_fix_for_a_missing_plugin_build(tmp_path):
    env = dict(os.environ, ATOMPLUG_PLUMED_BUILD_DIR=str(tmp_path / "nowhere"))
    run = doctor(env)
    assert run.returncode == 2
    assert "FAIL  PLUMED plugin" in run.stdout
    assert "fix: python -m atomplug.plumed_cv.build" in run.stdout
    assert "atomplug: error: some checks failed" in run.stderr


def test_doctor_names_the_fix_when_lammps_plugin_path_points_nowhere(tmp_path):
    env = dict(os.environ, LAMMPS_PLUGIN_PATH=str(tmp_path / "nowhere"))
    run = doctor(env, "--no-load")
    assert run.returncode == 2
    assert f"FAIL  LAMMPS_PLUGIN_PATH     points nowhere: {tmp_path / 'nowhere'}" in run.stdout
    assert "fix: unset LAMMPS_PLUGIN_PATH" in run.stdout


def test_doctor_names_the_fix_for_a_plugin_built_for_another_torch(tmp_path):
    """A copy of the real build whose record says it was compiled against torch 2.5.1."""
    import json

    from atomplug.lammps_plugin import build_key, plugin_dir
    from atomplug.lammps_plugin.build import INFO_FILE

    copy = tmp_path / "builds" / build_key()
    shutil.copytree(plugin_dir(), copy)
    info = json.loads((copy / INFO_FILE).read_text())
    info["torch"] = "2.5.1"
    (copy / INFO_FILE).write_text(json.dumps(info))
    env = dict(os.environ, ATOMPLUG_LAMMPS_BUILD_DIR=str(tmp_path / "builds"), LAMMPS_PLUGIN_PATH=str(copy))
    run = doctor(env, "--no-load")
    assert run.returncode == 2
    lines = run.stdout.splitlines()
    failing = [k for k, line in enumerate(lines) if line.startswith("FAIL")]
    assert [lines[k].split()[1:4] for k in failing] == [["LAMMPS", "plugin", "build"]], run.stdout
    from importlib import metadata

    assert f"torch 2.5.1 != {metadata.version('torch')}" in lines[failing[0]]
    assert lines[failing[0] + 1].strip() == "fix: python -m atomplug.lammps_plugin.build"
