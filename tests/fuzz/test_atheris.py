"""A short atheris run of each byte-level reader (the campaign is `make fuzz`): the harness works,
libFuzzer reaches atomplug's code (coverage grows past the seeds' first branches), nothing crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "atheris_fuzz.py")
RUNS = 400


@pytest.mark.parametrize("target", ["units", "header", "ipi_protocol"])
def test_short_atheris_run(tmp_path, target):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--runs",
            str(RUNS),
            "--target",
            target,
            "--artifacts",
            str(tmp_path / "atheris"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    counts = json.loads(report.read_text())[target]
    assert counts["runs"] >= RUNS
    assert counts["coverage_edges"] > 50, counts  # inside the reader, not only its first check
    assert not [name for name in os.listdir(tmp_path / "atheris") if name.startswith(target + "-crash")]
