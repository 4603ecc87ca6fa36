"""Faults in the core and the `atomplug` command: a disk that fills up mid-write, a model that
raises inside TorchScript.

A full disk is simulated with RLIMIT_FSIZE in a child process (SIGXFSZ ignored, so a write past
the limit fails with EFBIG, as on a full disk it fails with ENOSPC): the child must report one
clear line, exit non-zero, leave the target as it was (absent, or the previous intact file) and
leave no temporary file behind.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap

import ase.io
import pytest
from ase import Atoms
from bad_files import FRAGILE_MESSAGE, export_fragile
from structures import displaced_triclinic_argon

FILE_SIZE_LIMIT = 16 * 1024  # bytes: below a model archive (~70 kB) and the eval output (~60 kB)
PREVIOUS = b"the previous, intact file\n"


def limit_file_size() -> None:
    """In the child, before exec: writes past FILE_SIZE_LIMIT raise EFBIG instead of killing it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def run_with_full_disk(command):
    return subprocess.run(command, capture_output=True, text=True, timeout=180, preexec_fn=limit_file_size)


def console_script(name: str) -> str:
    script = shutil.which(name, path=os.path.dirname(sys.executable))
    assert script, f"the {name!r} console script is installed next to the interpreter"
    return script


def prepare_target(directory, name: str, previous: bool) -> str:
    target = os.path.join(str(directory), name)
    if previous:
        with open(target, "wb") as handle:
            handle.write(PREVIOUS)
    return target


def assert_untouched(directory, target: str, previous: bool, expected_files) -> None:
    if previous:
        with open(target, "rb") as handle:
            assert handle.read() == PREVIOUS, "the previous file was damaged"
    else:
        assert not os.path.exists(target), "a half-written file was left behind"
    assert sorted(os.listdir(str(directory))) == sorted(expected_files), "a temporary file was left behind"


WRITE_PROBLEM = r"\(File too large\): free disk space, raise the file size limit \(ulimit -f\) or write elsewhere; '.*' was left as it was"


@pytest.mark.parametrize("previous", [False, True], ids=["no-previous-file", "previous-file"])
def test_export_on_a_full_disk(tmp_path, previous):
    target = prepare_target(tmp_path, "lj.pt", previous)
    script = textwrap.dedent(f"""
        import sys
        from atomplug.core.files import OutputError
        from atomplug.examples.lj import export_lj
        try:
            export_lj({target!r})
        except OutputError as error:
            print(error, file=sys.stderr)
            sys.exit(3)
    """)
    run = run_with_full_disk([sys.executable, "-c", script])
    assert run.returncode == 3, run.stderr[-3000:]  # not a crash: torch's own writer would abort here
    assert re.fullmatch(r"could not write the model to '.*lj\.pt' " + WRITE_PROBLEM + r"\n", run.stderr), run.stderr
    assert_untouched(tmp_path, target, previous, ["lj.pt"] if previous else [])


def test_export_example_command_on_a_full_disk(tmp_path):
    previous = True  # the same writer as export() above, tested without a previous file there
    target = prepare_target(tmp_path, "lj.pt", previous)
    run = run_with_full_disk([console_script("atomplug"), "export-example", "lj", target])
    assert run.returncode == 2, run.stderr[-3000:]
    assert re.fullmatch(r"atomplug: error: could not write the model to '.*' " + WRITE_PROBLEM + r"\n", run.stderr), (
        run.stderr
    )
    assert_untouched(tmp_path, target, previous, ["lj.pt"] if previous else [])


@pytest.mark.parametrize("previous", [False, True], ids=["no-previous-file", "previous-file"])
def test_eval_output_on_a_full_disk(tmp_path, lj_model_path, previous):
    source = str(tmp_path / "frames.xyz")
    ase.io.write(source, [displaced_triclinic_argon(repeat=(2, 2, 2), seed=seed) for seed in range(12)])
    assert os.path.getsize(source) > FILE_SIZE_LIMIT  # so is the output, which holds more
    target = prepare_target(tmp_path, "out.xyz", previous)
    run = run_with_full_disk([console_script("atomplug"), "eval", lj_model_path, source, "-o", target, "-q"])
    assert run.returncode == 2, run.stderr[-3000:]
    assert re.fullmatch(
        r"atomplug: error: could not write the results to '.*out\.xyz' " + WRITE_PROBLEM + r"\n", run.stderr
    ), run.stderr
    assert_untouched(tmp_path, target, previous, ["frames.xyz", "out.xyz"] if previous else ["frames.xyz"])


def test_eval_of_a_model_that_raises(tmp_path, capsys):
    """The model's own RuntimeError: exit 2, one line with the model's message, no output."""
    from atomplug.cli import main

    model = export_fragile(str(tmp_path / "fragile.pt"))
    source = str(tmp_path / "in.xyz")
    small = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    large = Atoms("H2O" * 3, positions=[[2.0 * k, 0, 0] for k in range(9)])
    ase.io.write(source, [small, large])
    capsys.readouterr()
    assert main(["eval", model, source, "-o", str(tmp_path / "out.xyz"), "-q"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(
        f"atomplug: error: structure 1: the model's own code raised RuntimeError: {FRAGILE_MESSAGE} "
        "(the model refuses this input"
    ), error
    assert error.count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == ["fragile.pt", "in.xyz"]
