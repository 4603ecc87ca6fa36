"""One description of the model file: core, LAMMPS and PLUMED say the same words about the same file.

Every broken file of tests/bad_files.py goes to core (`load_model`, which reads the header first),
to LAMMPS (`pair_style atomplug`, through the lammps Python module) and to PLUMED (`ATOMPLUG` under
`plumed driver`). Core's message is the one its table `MODEL_FILE_MESSAGES` has for the file's fault;
the plugins take the same table from the header atomplug.core.native_header generates, and must
give the same message. So must the words for an error raised by the model's own code
(atomplug.core.errors, `describe_model_error`), which the plugins take from the same header.

The one place where the messages may differ (`comparable`): the text a library gives for an error,
which some messages quote as their {reason} (Python's zipfile and json vs torch's archive reader and
nlohmann's parser). Paths need no such care: the plugins quote them as Python's repr does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from bad_files import (
    FRAGILE_MESSAGE,
    MODEL_FILE_FAULTS,
    MODEL_FILE_KINDS,
    MORE_MODEL_FILE_KINDS,
    export_fragile,
    unpickled_marker,
    write_model_file,
)
from lammps_harness import argon_box, run_lmp, run_python
from test_lammps_bad_input import BATTERY_DRIVER

from atomplug.core.archive import MODEL_FILE_MESSAGES, load_model

KINDS = MODEL_FILE_KINDS + MORE_MODEL_FILE_KINDS
REASON = "{reason}"


def comparable(message: str) -> str:
    """`message` with the library's words in its {reason} replaced by "{reason}", when it is one
    of core's messages that quote a reason; any other message unchanged."""
    for template in MODEL_FILE_MESSAGES.values():
        if REASON not in template:
            continue
        before, after = template.split(REASON)
        pattern = _pattern(before) + "(.*)" + _pattern(after)
        match = re.fullmatch(pattern, message, flags=re.S)
        if match:
            return message[: match.start(len(match.groups()))] + REASON + message[match.end(len(match.groups())) :]
    return message


def _pattern(text: str) -> str:
    """A regular expression for a part of a template: its literal text, any value for its fields."""
    parts = re.split(r"(\{\w+\})", text)
    return "".join(".*?" if re.fullmatch(r"\{\w+\}", part) else re.escape(part) for part in parts)


def test_comparable_masks_only_the_reason():
    path = "'/tmp/m.pt'"
    corrupt = MODEL_FILE_MESSAGES["corrupt"]
    assert comparable(corrupt.format(path=path, reason="BadZipFile: x (y)")) == corrupt.format(path=path, reason=REASON)
    assert comparable(corrupt.format(path=path, reason="zip reader: 3")) == corrupt.format(path=path, reason=REASON)
    empty = MODEL_FILE_MESSAGES["empty"].format(path=path)
    assert comparable(empty) == empty


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, lj_model_path):
    directory = tmp_path_factory.mktemp("model-file-messages")
    return directory, {kind: write_model_file(kind, directory, lj_model_path) for kind in KINDS}


@pytest.fixture(scope="module")
def core_messages(model_files):
    messages = {}
    for kind, path in model_files[1].items():
        with pytest.raises((ValueError, FileNotFoundError)) as caught:
            load_model(path)
        messages[kind] = str(caught.value)
    return messages


LAMMPS_PREFIX = "ERROR: pair_style atomplug: "
# LAMMPS' own decoration after an error message: where it was raised, and the input line
LAMMPS_SUFFIX = re.compile(r" \(src/[\w./]+:\d+\)(\nLast input line: .*)?$", re.S)


@pytest.fixture(scope="module")
def lammps_messages(model_files, plugin):
    """What `pair_style atomplug` says about each file: LAMMPS' error without its prefix."""
    directory, paths = model_files
    cases = {kind: argon_box() + f"pair_style atomplug {path}\npair_coeff * * Ar\n" for kind, path in paths.items()}
    (directory / "cases.json").write_text(json.dumps(cases))
    run_python(directory, BATTERY_DRIVER)  # one LAMMPS per case, in one Python
    messages = {}
    for kind, text in json.loads((directory / "results.json").read_text()).items():
        assert text is not None and text.startswith(LAMMPS_PREFIX), (kind, text)
        messages[kind] = LAMMPS_SUFFIX.sub("", text[len(LAMMPS_PREFIX) :].strip())
    return messages


PLUMED_PREFIX = "ERROR in input to action ATOMPLUG with label cv : "


@pytest.fixture(scope="module")
def plumed_messages(model_files):
    """What `plumed driver` says about each file with `cv: ATOMPLUG MODEL=<file> ...`."""
    from atomplug.plumed_cv import plugin_path, plumed_environment, plumed_program

    plugin = plugin_path()
    directory, paths = model_files
    (directory / "one-atom.xyz").write_text("1\n0 0 0\nX 0 0 0\n")
    messages = {}
    for kind, path in paths.items():
        (directory / "plumed.dat").write_text(
            f"LOAD FILE={plugin}\ncv: ATOMPLUG MODEL={path} SPECIES1=1 SPECIES_TO_TYPES=18 OUTPUT=energy\n"
        )
        result = subprocess.run(
            [plumed_program(), "driver", "--plumed", "plumed.dat", "--ixyz", "one-atom.xyz"],
            cwd=directory, env=plumed_environment(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = [line for line in result.stderr.splitlines() if line.startswith(PLUMED_PREFIX)]
        assert result.returncode != 0 and lines, (kind, result.stdout[-2000:], result.stderr[-2000:])
        messages[kind] = lines[-1][len(PLUMED_PREFIX) :].strip()
    return messages


@pytest.mark.parametrize("kind", KINDS)
def test_core_says_the_message_of_the_fault(kind, model_files, core_messages):
    """Core's message is its table's entry for the file's fault, with the path as repr() writes it."""
    parts = MODEL_FILE_MESSAGES[MODEL_FILE_FAULTS[kind]].split("{path}")
    pattern = re.escape(repr(model_files[1][kind])).join(_pattern(part) for part in parts)
    assert re.fullmatch(pattern, core_messages[kind]), core_messages[kind]


@pytest.mark.parametrize("kind", KINDS)
def test_lammps_says_what_core_says(kind, model_files, core_messages, lammps_messages):
    assert comparable(lammps_messages[kind]) == comparable(core_messages[kind])
    assert not os.path.exists(unpickled_marker(model_files[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_plumed_says_what_core_says(kind, model_files, core_messages, plumed_messages):
    assert comparable(plumed_messages[kind]) == comparable(core_messages[kind])
    assert not os.path.exists(unpickled_marker(model_files[0]))


# ---- an error raised by the model's own code: the same clean-up (atomplug.core.errors) ----------


@pytest.fixture(scope="module")
def fragile_messages(tmp_path_factory, plugin):
    """What core, LAMMPS and PLUMED say when the model raises inside TorchScript (more than 8 atoms)."""
    import numpy as np
    from ase import Atoms

    from atomplug.core import ModelRunner
    from atomplug.plumed_cv import plugin_path, plumed_environment, plumed_program

    directory = tmp_path_factory.mktemp("fragile-messages")
    model = export_fragile(str(directory / "fragile.pt"))
    atoms = Atoms("Ar9", positions=[[1.5 * k, 0.0, 0.0] for k in range(9)])
    with pytest.raises(ValueError) as caught:
        ModelRunner(model).run([atoms], forces=True)
    messages = {"core": str(caught.value)}

    result = run_lmp(directory, argon_box() + f"pair_style atomplug {model}\npair_coeff * * Ar\nrun 0\n", check=False)
    found = re.search(r"pair_style atomplug on rank 0 at step 0: (.*?) \(src/", " ".join(result.stdout.split()))
    messages["lammps"] = found.group(1) if found else result.stdout[-2000:]

    xyz = "9\n0 0 0\n" + "".join(f"X {0.15 * k} 0 0\n" for k in range(9))
    (directory / "chain.xyz").write_text(xyz)
    (directory / "plumed.dat").write_text(
        f"LOAD FILE={plugin_path()}\ncv: ATOMPLUG MODEL={model} SPECIES1=1-9 SPECIES_TO_TYPES=18 OUTPUT=energy\n"
        "PRINT ARG=cv FILE=COLVAR\n"
    )
    result = subprocess.run(
        [plumed_program(), "driver", "--plumed", "plumed.dat", "--ixyz", "chain.xyz"],
        cwd=directory, env=plumed_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = [line for line in result.stderr.splitlines() if line.startswith("ATOMPLUG cv: ")]
    messages["plumed"] = found[-1][len("ATOMPLUG cv: ") :].strip() if found else result.stderr[-2000:]
    assert np.all([FRAGILE_MESSAGE in text for text in messages.values()]), messages
    return messages


@pytest.mark.parametrize("engine", ["lammps", "plumed"])
def test_a_model_error_is_worded_as_core_words_it(engine, fragile_messages):
    assert fragile_messages[engine] == fragile_messages["core"]
