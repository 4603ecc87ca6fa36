"""`make demo` end to end, with a tenth of the MD steps: every engine section runs and the
crosscheck verdict is PASS. (The physics of each engine is tested in its own directory.)"""

import os
import subprocess
import sys


def test_quick_demo_runs_every_engine_and_agrees(tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "atomplug.examples.demo", "--quick"],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    for section in ("== ASE:", "== i-PI:", "== PLUMED:", "== LAMMPS:", "== atomplug crosscheck"):
        assert section in run.stdout, section
    assert "verdict: PASS: 4 engine run(s) agree with ASE within 1e-10" in run.stdout
    for picture in ("energies.png", "crosscheck.png"):
        assert os.path.getsize(tmp_path / "build" / "demo" / picture) > 10_000
