"""The model file: format constants, reading and checking an archive's metadata, loading it.

Only `torch.jit.load`, and only after the metadata checks out: no pickle from a user file is
ever unpickled.
"""

import io
import itertools
import json
import os
import re
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

import torch

from .contract import ModelCapabilities, ModelMetadata
from .errors import first_line

FORMAT_NAME = "atomplug"
FORMAT_VERSION = 1
METADATA_FILE = "atomplug-metadata.json"
MAX_METADATA_BYTES = 16 << 20  # real metadata is a few kB; this bounds what a hostile file can make us read

# TorchScript's graph executor optimises a method on its first calls: it profiles one call, then
# runs its passes over the whole inlined graph. That costs 0.1-0.4 s once (more for large models)
# and makes later calls 0-15% faster (ANI-1x on 192 atoms: ~15%; 864 Ar LJ: within noise). Short
# jobs (single points, `run 0`, crosschecks, analyses of a few frames) never earn it back. So every
# engine runs a model's forward unoptimised for its first UNOPTIMIZED_CALLS calls and optimised from
# then on; setup methods (called a few times each) are never optimised. A count, not a timer: the
# switch happens at the same call on every run, so results are reproducible.
#
# The optimised calls run on a second copy of the module, loaded from the same bytes at the
# switch (~0.1 s): optimising a module whose forward already ran unoptimised goes wrong in torch
# 2.13. The executor then compiles the constructors of TorchScript classes on their own, and its
# constant propagation folds empty list and dict literals there into constants shared by every
# object: a model class that appends to a list made in its __init__ would see earlier calls' items.
# (atomplug's own System no longer mutates such containers; model code may still.) A fresh module
# optimised from its first call is TorchScript's ordinary path, which inlines those constructors.
UNOPTIMIZED_CALLS = 20
# On a CUDA device forward stays unoptimised. There the optimising executor also fuses kernels,
# compiled at run time for the shapes it has seen: as the number of pairs changes from step to
# step it compiles again, up to a dozen times (an H100, ANI-1x, 192 atoms: the first ~10 optimised
# steps took 1.0, 0.7, 0.6, 0.43, 0.58, 0.17 s, ~3.5 s in all, against ~14 ms steady), which a
# switch after 20 calls only postpones. Unoptimised, a GPU run is steady from its second step.
# `make gpu-check` measures both schedules (benchmarks/results-gpu.md).
NEVER = -1  # forward stays unoptimised
DEVICE_UNOPTIMIZED_CALLS = {"cuda": NEVER}  # devices not listed: UNOPTIMIZED_CALLS
# the environment variable that sets the count for every device: N >= 0, or "never"
OPTIMIZE_AFTER_VARIABLE = "ATOMPLUG_OPTIMIZE_AFTER"
OPTIMIZE_AFTER_MESSAGE = (
    "{variable}={value} is not a number of calls: give N >= 0 (the model's forward runs unoptimised for its "
    "first N calls, then optimised by TorchScript; 0 optimises from the first call) or never (always "
    "unoptimised), or unset it (the default: {default} on the CPU, never on a GPU)"
)


def unoptimized_calls(device: Optional[str]) -> int:
    """How many forward calls run unoptimised on `device` before TorchScript optimises them
    (NEVER: all), from OPTIMIZE_AFTER_VARIABLE when it is set, else the device's default."""
    setting = os.environ.get(OPTIMIZE_AFTER_VARIABLE, "").strip()
    if setting:
        if setting == "never":
            return NEVER
        if re.fullmatch(r"[0-9]{1,17}", setting):  # (the C++ plugins read at most 17 digits too)
            return int(setting)
        raise ValueError(
            OPTIMIZE_AFTER_MESSAGE.format(variable=OPTIMIZE_AFTER_VARIABLE, value=setting, default=UNOPTIMIZED_CALLS)
        )
    return DEVICE_UNOPTIMIZED_CALLS.get(torch.device(device or "cpu").type, UNOPTIMIZED_CALLS)


class LoadedModel:
    """An exported model ready to run: the TorchScript entry point plus its declarations."""

    def __init__(
        self, module: torch.jit.ScriptModule, header: Dict, path: str, archive: Optional[bytes] = None, device=None
    ):
        self.module = module
        self.path = path
        self._archive = archive  # the file's bytes, for the optimised copy (see UNOPTIMIZED_CALLS)
        self._device = device
        self.format_version = int(header["format_version"])
        self.capabilities = ModelCapabilities.from_dict(header["capabilities"])
        self.metadata = ModelMetadata.from_dict(header["metadata"])
        self.exported_with_torch = str(header.get("torch_version", "unknown"))
        self.forward_calls = 0
        # forward calls run unoptimised before the switch (NEVER: all); 0: optimised from the first,
        # on this module (no forward has run unoptimised on it)
        self.unoptimized_calls = unoptimized_calls(device)
        self.optimized = (
            self.unoptimized_calls == 0
        )  # whether forward runs optimised (on the second copy after a switch)
        if self.optimized:
            self._archive = None
        # a compiled package's native program (core.package.CompiledProgram) and its record
        self.compiled = None
        self.package: Optional[Dict] = None
        self.program = header.get("program") or {"captured": False, "reason": "exported before programs existed"}

    def forward(self, *arguments) -> Dict[str, torch.Tensor]:
        """One call of the entry point: through a package's compiled program where it answers,
        otherwise TorchScript's, unoptimised for the first `unoptimized_calls` calls (UNOPTIMIZED_CALLS
        on the CPU, all of them on a GPU), then by TorchScript's optimising executor on a fresh copy
        of the module."""
        if self.compiled is not None:
            results = self.compiled(self, arguments)
            if results is not None:
                return results
        self.forward_calls += 1
        if (
            self.unoptimized_calls != NEVER
            and self.forward_calls > self.unoptimized_calls
            and self._archive is not None
        ):
            archive, self._archive = self._archive, None
            module = torch.jit.load(io.BytesIO(archive), map_location=self._device)
            module.eval()
            self.module = module
            self.optimized = True
        with torch.jit.optimized_execution(self.optimized):
            return self.module(*arguments)

    def neighbor_requests(self, length_unit: str) -> List[Tuple[float, bool, bool]]:
        """(cutoff in `length_unit`, full_list, strict) for each neighbor list the model needs."""
        with torch.jit.optimized_execution(False):
            return [tuple(r) for r in self.module.neighbor_requests(length_unit)]

    def unit_conversion(self, from_unit: str, to_unit: str) -> float:
        with torch.jit.optimized_execution(False):
            return float(self.module.unit_conversion(from_unit, to_unit))

    @property
    def input_names(self) -> List[str]:
        """The inputs the model requested (masses, velocities, charges, total_charge, spin_multiplicity)."""
        return list(self.capabilities.inputs)

    def variant_output(self, request: str, variant: str) -> str:
        """The output to ask for when the user picks `variant` ("" for none): the archive's own
        rule (AtomisticModel.variant_output); archives exported before variants take none."""
        if hasattr(self.module, "variant_output"):
            try:
                with torch.jit.optimized_execution(False):
                    return str(self.module.variant_output(request, variant))
            except torch.jit.Error as error:
                from .errors import describe_model_error

                raise ValueError(describe_model_error(error)) from None
        if variant:
            raise ValueError(
                f"{self.path!r} was exported before atomplug had variants: export it again to choose variant "
                f"{variant!r}"
            )
        return request

    def __repr__(self) -> str:
        outputs = ", ".join(self.capabilities.outputs)
        return f"LoadedModel({self.metadata.name or self.path!r}, outputs: {outputs})"


# What read_header and load_model say about a file that is not a usable model: str.format templates,
# {path} being the path as Python's repr() writes it (model_file_message). The C++ plugins say the
# same words: atomplug.core.native_header writes this table into the header both include.
MODEL_FILE_MESSAGES: Dict[str, str] = {
    "missing": (
        "model file {path} does not exist: export one with atomplug.core.export() or "
        "`atomplug export-example lj model.pt`"
    ),
    "directory": "model path {path} is a directory, not an exported atomplug model file: give the .pt file",
    "unreadable": "cannot read the model file {path} ({reason}): check its permissions",
    "empty": (
        "{path} is empty (0 bytes), not an atomplug model: an export or a copy did not finish; export the model again"
    ),
    "truncated": (
        "{path} is a corrupt or truncated archive (an unfinished export, download or copy?): "
        "export or copy the model again"
    ),
    "not_archive": (
        "{path} is not an atomplug model: it is not a TorchScript archive, so it could not be loaded by "
        "TorchScript (export models with atomplug.core.export())"
    ),
    "corrupt": "{path} is a corrupt or truncated archive ({reason}): export the model again",
    "no_metadata": (
        "{path} is a zip or TorchScript archive without atomplug metadata, not an atomplug model: wrap "
        "and export the module with atomplug.core.export()"
    ),
    "metadata_too_large": (
        "{path} has {size} bytes of atomplug metadata, more than any export writes ({limit}): "
        "not an atomplug model; export the model again"
    ),
    "unreadable_metadata": "{path} has unreadable atomplug metadata ({reason}): export the model again",
    "not_atomplug": "{path} has metadata that is not atomplug's: export the model with atomplug.core.export()",
    "no_version": "{path} has no valid format version in its metadata: export the model again",
    "newer_version": (
        "{path} was written in atomplug model format {version}, newer than this atomplug "
        "understands ({supported}): upgrade atomplug"
    ),
    "lacks": "{path} metadata lacks {key}: export the model again",
    "malformed": "{path} has malformed atomplug metadata ({reason}): export the model again",
    "not_loadable": "{path} could not be loaded by TorchScript ({reason}): export the model again",
    "no_entry_point": "{path} lacks the atomplug entry point ({method}): export the model again",
    "version_disagrees": "{path}: archive code and metadata disagree on the format version: export the model again",
    "capabilities_disagree": (
        "{path}: its metadata declares other outputs, units or types than its code (the file "
        "was edited or assembled by hand): export the model again with atomplug.core.export()"
    ),
}

# JSON nested deeper than this is refused as unreadable ("nested too deeply"), by Python's json
# (its recursion limit) and by the plugins (this bound)
MAX_METADATA_DEPTH = 500

# The methods of the exported entry point (AtomisticModel) that the engines call
ENTRY_POINT_METHODS = (
    "forward",
    "format_version",
    "neighbor_requests",
    "unit_conversion",
    "atomic_types",
    "capabilities_json",
    "metadata_json",
)


def model_file_message(fault: str, path: str, **values) -> str:
    """The words for `fault` (a MODEL_FILE_MESSAGES key) about the model file `path`."""
    return MODEL_FILE_MESSAGES[fault].format(path=repr(path), **values)


def _refuse(fault: str, path: str, **values) -> ValueError:
    return ValueError(model_file_message(fault, path, **values))


def read_header(path: str) -> Dict:
    """Read and check an archive's atomplug metadata without loading any of its code."""
    if not os.path.exists(path):
        raise FileNotFoundError(model_file_message("missing", path))
    if os.path.isdir(path):
        raise _refuse("directory", path)
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise _refuse("unreadable", path, reason=error.strerror) from None
    if not magic:
        raise _refuse("empty", path)
    try:
        is_zip = zipfile.is_zipfile(path)
    except Exception:  # zipfile.is_zipfile raises BadZipFile itself for some end records (multi-disk)
        is_zip = False
    if not is_zip:
        # a zip archive without its end: cut short
        raise _refuse("truncated" if magic == b"PK\x03\x04" else "not_archive", path)
    candidates: List[str] = []
    declared = 0
    raw = b""
    try:
        with zipfile.ZipFile(path) as archive:
            candidates = [n for n in archive.namelist() if n.endswith("/extra/" + METADATA_FILE)]
            if candidates:
                declared = archive.getinfo(candidates[0]).file_size
                if declared <= MAX_METADATA_BYTES:  # a zip bomb is refused from its declared size
                    with archive.open(candidates[0]) as handle:
                        raw = handle.read(MAX_METADATA_BYTES + 1)
    except Exception as error:  # zipfile raises many kinds for damaged archives: BadZipFile,
        # NotImplementedError (compression, version), RuntimeError (encrypted), zlib/lzma errors, EOFError...
        raise _refuse("corrupt", path, reason=f"{type(error).__name__}: {error}") from None
    if not candidates:
        raise _refuse("no_metadata", path)
    if declared > MAX_METADATA_BYTES or len(raw) > MAX_METADATA_BYTES:
        raise _refuse("metadata_too_large", path, size=declared, limit=MAX_METADATA_BYTES)
    header = _parse_metadata(raw, path)
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise _refuse("not_atomplug", path)
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _refuse("no_version", path)
    if version > FORMAT_VERSION:
        raise _refuse("newer_version", path, version=version, supported=FORMAT_VERSION)
    for key in ("capabilities", "metadata"):
        if not isinstance(header.get(key), dict):
            raise _refuse("lacks", path, key=repr(key))
    # Everything that reads the header later (load_model, LoadedModel, `atomplug info`, PLUMED's
    # helpers) may then trust its shape: checked here, as export() checked it when writing.
    try:
        ModelCapabilities.from_dict(header["capabilities"]).validate()
        ModelMetadata.from_dict(header["metadata"])
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, RuntimeError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else first_line(error)
        raise _refuse("malformed", path, reason=reason) from None
    return header


def _parse_metadata(raw: bytes, path: str):
    try:
        text = raw.decode("utf-8")
        if _nested_too_deeply(text):
            raise RecursionError
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise _refuse("unreadable_metadata", path, reason=reason) from None


def _nested_too_deeply(text: str) -> bool:
    """Whether [ and { outside JSON strings nest deeper than MAX_METADATA_DEPTH anywhere in `text`
    (counted on the text as it is, broken JSON included: the plugins count the same way)."""
    if text.count("[") + text.count("{") <= MAX_METADATA_DEPTH:
        return False  # real metadata: a handful of brackets
    brackets = re.sub(r"[^\[\]{}]", "", re.sub(r'"(?:[^"\\]|\\.)*"?', "", text))
    depths = itertools.accumulate(1 if bracket in "[{" else -1 for bracket in brackets)
    return max(depths, default=0) > MAX_METADATA_DEPTH


def check_device(device: str, supported_devices: List[str]) -> str:
    """`device` if it is a torch device that the model supports and this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{device!r} is not a torch device: use 'cpu', 'cuda' or 'cuda:N'") from None
    if parsed.type not in supported_devices:
        raise ValueError(f"the model supports devices {supported_devices}, not {device!r}: pick one of those")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked, but torch {torch.__version__} sees no CUDA device: use device 'cpu'"
        )
    return device


def load_model(path: str, device: Optional[str] = None) -> LoadedModel:
    """Load an exported atomplug model (only `torch.jit.load`, and only after its metadata checks
    out: no pickle from a user file is ever unpickled), or a compiled package (`atomplug
    compile`: native code, see core.compiled)."""
    path = os.fspath(path)
    header = read_header(path)
    capabilities = ModelCapabilities.from_dict(header["capabilities"])
    device = check_device(device or "cpu", capabilities.supported_devices)
    if "package" in header:  # a compiled package: its archive, and its native program (core.package)
        from .package import open_package

        archive, compiled = open_package(path, header, device)
        model = load_model_bytes(archive, path, device)
        model.compiled, model.package = compiled, header["package"]
        return model
    try:
        with open(path, "rb") as handle:
            archive = handle.read()
    except OSError as error:
        raise _refuse("not_loadable", path, reason=first_line(error)) from error
    return load_model_bytes(archive, path, device, header)


def load_model_bytes(archive: bytes, path: str, device: Optional[str], header: Optional[Dict] = None) -> LoadedModel:
    """load_model for an archive's bytes (`path` names it in messages), whose metadata is
    `header` (read from the bytes when None)."""
    if header is None:
        header = _header_of_bytes(archive, path)
    device = device or "cpu"
    try:
        module = torch.jit.load(io.BytesIO(archive), map_location=device)
    except Exception as error:
        raise _refuse("not_loadable", path, reason=first_line(error)) from error
    for method in ENTRY_POINT_METHODS:
        if not hasattr(module, method):
            raise _refuse("no_entry_point", path, method=method)
    with torch.jit.optimized_execution(False):  # setup methods: see UNOPTIMIZED_CALLS
        if int(module.format_version()) != int(header["format_version"]):
            raise _refuse("version_disagrees", path)
        # The entry point converts units and checks outputs with what was compiled into the archive;
        # metadata claiming anything else (an edited or spliced file) would mislead every engine.
        if json.loads(module.capabilities_json()) != header["capabilities"]:
            raise _refuse("capabilities_disagree", path)
    module.eval()
    return LoadedModel(module, header, path, archive, device)


def _header_of_bytes(archive: bytes, path: str) -> Dict:
    """read_header's checks for an archive held in memory (the model inside a package)."""
    with tempfile.NamedTemporaryFile(suffix=".pt") as handle:
        handle.write(archive)
        handle.flush()
        try:
            return read_header(handle.name)
        except ValueError as error:  # named after the file the bytes came from, not the copy
            raise ValueError(str(error).replace(repr(handle.name), repr(path))) from None
