"""Compiled packages (`.pt2`) for the engine tests: copies that each engine must refuse, and what
core says about them (core.archive.load_model's message, which the plugins must repeat)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from typing import Callable, Dict, Optional

import pytest

from atomplug.core.archive import METADATA_FILE
from atomplug.core.package import PACKAGE_FOLDER, PACKAGE_MODEL_FILE


def rewrite_package(
    source: str, target: str, edit_record: Optional[Callable[[Dict], None]] = None, archive: Optional[bytes] = None
) -> str:
    """A copy of the package `source` at `target`, its metadata's package record edited in place by
    `edit_record` and/or its embedded model archive replaced by `archive` (every other file as it is)."""  # fmt: skip
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as copy:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith(f"/extra/{METADATA_FILE}") and edit_record is not None:
                header = json.loads(data)
                edit_record(header["package"])
                data = json.dumps(header).encode()
            elif info.filename.endswith(f"/{PACKAGE_FOLDER}/{PACKAGE_MODEL_FILE}") and archive is not None:
                data = archive
            copy.writestr(info, data)
    return target


def bad_packages(package: str, model: str, other_model: str, directory) -> Dict[str, str]:
    """{kind: path} of packages made from `package` (compiled from `model`) that load_model refuses:
    compiled for another torch, for another device, its archive altered (damaged), and stale (the
    model next to it is `other_model`, no longer the one it was compiled from)."""
    directory = str(directory)
    paths = {}
    for kind, edit in (
        ("torch_version", lambda record: record.update(torch_version="2.0.0+cpu")),
        ("device", lambda record: record.update(device="cuda")),
    ):
        os.makedirs(os.path.join(directory, kind), exist_ok=True)
        paths[kind] = rewrite_package(package, os.path.join(directory, kind, os.path.basename(package)), edit)
    with open(other_model, "rb") as handle:
        other = handle.read()
    os.makedirs(os.path.join(directory, "damaged"), exist_ok=True)
    paths["damaged"] = rewrite_package(
        package, os.path.join(directory, "damaged", os.path.basename(package)), archive=other
    )
    # stale: the package next to a model file of the same name whose bytes changed since
    stale = os.path.join(directory, "stale")
    os.makedirs(stale, exist_ok=True)
    paths["stale"] = shutil.copy(package, os.path.join(stale, os.path.basename(package)))
    shutil.copy(other_model, os.path.join(stale, os.path.basename(model)))
    assert hashlib.sha256(other).hexdigest() != hashlib.sha256(open(model, "rb").read()).hexdigest()
    return paths


BAD_PACKAGE_PROBLEMS = {
    "torch_version": "was compiled for torch 2.0.0+cpu, this is torch",
    "device": "was compiled for device 'cuda', not 'cpu'",
    "damaged": "is a damaged compiled package",
    "stale": "is stale:",
}


def core_message(path: str) -> str:
    """What core's load_model says about the package `path` (on the CPU)."""
    from atomplug.core import load_model

    with pytest.raises(ValueError) as caught:
        load_model(path)
    return str(caught.value)
