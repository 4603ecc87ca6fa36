"""Checks of the i-PI installation for `atomplug doctor`: the pinned `ipi` version and its server.

`run_checks()` returns `atomplug.core.checks.Check`s; each failing check says how to fix it.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import List

from atomplug.core.checks import Check

IPI_VERSION = "3.3.1"


def run_checks() -> List[Check]:
    try:
        version = metadata.version("ipi")
    except metadata.PackageNotFoundError:
        return [Check("i-PI", False, "not installed", f"pip install 'atomplug[ipi]' (i-PI {IPI_VERSION})")]
    server = os.path.join(os.path.dirname(sys.executable), "i-pi")
    return [
        Check(
            "i-PI", version == IPI_VERSION, f"{version} (tested with {IPI_VERSION})", f"pip install ipi=={IPI_VERSION}"
        ),
        Check(
            "i-pi server",
            os.path.exists(server),
            server if os.path.exists(server) else "missing",
            f"pip install --force-reinstall ipi=={IPI_VERSION}",
        ),
    ]
