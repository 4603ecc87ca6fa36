"""`atomplug doctor` on this installation, and on one with a missing PLUMED plugin build."""

import os
import shutil
import subprocess
import sys


def doctor(env=None):
    script = shutil.which("atomplug", path=os.path.dirname(sys.executable))
    return subprocess.run([script, "doctor"], capture_output=True, text=True, timeout=300, env=env)


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
