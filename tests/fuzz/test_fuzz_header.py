"""Fuzzing the model-file reader: any file gives a model or a clean ValueError, never an unpickle.

`read_header` reads the atomplug metadata inside an archive without running any of its code;
`load_model` then hands the archive to `torch.jit.load`. Whatever the file holds (random bytes,
random zip archives, garbled metadata, a real export with mutated contents), the reader must answer
with a loaded model or a ValueError (FileNotFoundError for a missing path): never another
exception, never a hang, never unbounded memory, and never a Python unpickle.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time
import warnings
import zipfile

import pytest
from fuzzing import counted, fuzz_settings
from hypothesis import example, given
from hypothesis import strategies as st

from atomplug.core.archive import METADATA_FILE, LoadedModel, load_model, read_header

TIME_LIMIT = 20.0  # seconds for one load (torch compiles the archive's code): far below a hang
METADATA_PATH = "archive/extra/" + METADATA_FILE
COMPRESSIONS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
ENTRY_NAMES = [
    METADATA_PATH,
    "archive/data.pkl",
    "archive/constants.pkl",
    "archive/version",
    "archive/byteorder",
    "archive/code/__torch__/m.py",
    "archive/data/0",
    "x/extra/" + METADATA_FILE,
    "data.pkl",
    "../evil",
    "/abs/extra/" + METADATA_FILE,
    "",
]


@pytest.fixture(scope="module")
def exported(lj_model_path):
    """The entries of a real exported LJ model: (ZipInfo, bytes), in archive order."""
    with zipfile.ZipFile(lj_model_path) as archive:
        return [(info, archive.read(info.filename)) for info in archive.infolist()]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-header")


def rezip(entries, replace=None, compression=None) -> bytes:
    """A zip archive of `entries` with `replace[name] = bytes` substituted (CRCs recomputed)."""
    replace = replace or {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.compress_type = info.compress_type if compression is None else compression
            archive.writestr(copy, replace.get(info.filename, data))
    return buffer.getvalue()


def write(directory, data: bytes, name: str = "model.pt") -> str:
    path = os.path.join(str(directory), name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def check_reader(path: str, load: bool = True):
    """read_header, then load_model: each a result or a clean ValueError, in bounded time."""
    start = time.perf_counter()
    try:
        header = read_header(path)
    except ValueError as error:
        assert str(error), "an empty error message"
        header = None
    else:
        assert isinstance(header, dict)
        assert isinstance(header["capabilities"], dict) and isinstance(header["metadata"], dict)
    model = None
    if load:
        try:
            model = load_model(path)
        except ValueError as error:
            assert str(error)
        else:
            assert header is not None, "load_model accepted a file read_header refused"
            assert isinstance(model, LoadedModel)
            assert model.capabilities.outputs and model.neighbor_requests("Angstrom") is not None
    elapsed = time.perf_counter() - start
    assert elapsed < TIME_LIMIT, f"reading {path} took {elapsed:.1f} s"
    return header, model


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@fuzz_settings("header", 0.30, short=120)
@given(data=st.one_of(st.binary(max_size=4096), st.binary(max_size=512).map(lambda b: b"PK\x03\x04" + b)))
@example(data=b"")
@example(data=b"PK\x05\x06" + b"\x00" * 18)  # an empty zip archive
@counted("header")
def test_random_bytes_are_refused(workdir, data):
    header, model = check_reader(write(workdir, data))
    assert header is None and model is None


@st.composite
def zip_archives(draw) -> bytes:
    """Random zip archives: random names (some ours), contents, compressions; then maybe cut or
    corrupted, so that zipfile's own error paths (CRC, truncation, bad headers) are reached."""
    buffer = io.BytesIO()
    entries = draw(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(ENTRY_NAMES), st.text(max_size=30)),
                st.binary(max_size=600),
                st.sampled_from(COMPRESSIONS),
            ),
            max_size=6,
        )
    )
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the fuzz
        for name, data, compression in entries:
            try:
                archive.writestr(zipfile.ZipInfo(name or "x"), data, compress_type=compression)
            except (ValueError, UnicodeEncodeError):  # zipfile refuses some names itself
                continue
    raw = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "flip"]))
    if raw and damage == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif raw and damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@fuzz_settings("header", 0.25, short=120)
@given(data=zip_archives())
@counted("header")
def test_random_zip_archives_are_refused(workdir, data):
    header, model = check_reader(write(workdir, data))
    assert model is None  # nothing here is a TorchScript archive


def garble(text: bytes, edits) -> bytes:
    raw = bytearray(text)
    for position, value, kind in edits:
        if not raw:
            break
        position %= len(raw)
        if kind == 0:
            raw[position] = value
        elif kind == 1:
            del raw[position]
        else:
            raw.insert(position, value)
    return bytes(raw)


EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255), st.integers(0, 2)), min_size=1, max_size=6)
HEADER_KEYS = ["format", "format_version", "capabilities", "metadata", "torch_version"]
CAPABILITY_KEYS = ["outputs", "atomic_types", "interaction_range", "length_unit", "supported_devices", "dtype"]


@st.composite
def metadata_texts(draw, original: dict) -> bytes:
    """Metadata that is almost right: one field of the real header replaced by any JSON value,
    the JSON text garbled byte by byte, or any JSON document at all."""
    kind = draw(st.sampled_from(["field", "capability", "output", "garbled", "any"]))
    header = json.loads(json.dumps(original))
    if kind == "field":
        key = draw(st.sampled_from(HEADER_KEYS))
        if draw(st.booleans()):
            header[key] = draw(JSON_VALUES)
        else:
            header.pop(key, None)
    elif kind == "capability":
        key = draw(st.sampled_from(CAPABILITY_KEYS))
        if draw(st.booleans()):
            header["capabilities"][key] = draw(JSON_VALUES)
        else:
            header["capabilities"].pop(key, None)
    elif kind == "output":
        output = header["capabilities"]["outputs"]["energy"]
        output[draw(st.sampled_from(["quantity", "unit", "per_atom", "properties"]))] = draw(JSON_VALUES)
    elif kind == "garbled":
        return garble(json.dumps(original).encode(), draw(EDITS))
    else:
        header = draw(JSON_VALUES)
    return json.dumps(header).encode()


@fuzz_settings("header", 0.30, short=120)
@given(data=st.data())
@counted("header")
def test_garbled_metadata_is_refused_or_harmless(exported, workdir, data):
    original = json.loads(dict((i.filename, d) for i, d in exported)[METADATA_PATH])
    text = data.draw(metadata_texts(original))
    header, model = check_reader(write(workdir, rezip(exported, {METADATA_PATH: text})))
    if model is not None:  # whatever loaded declares what the archive's code computes
        assert model.capabilities.to_dict() == json.loads(model.module.capabilities_json())


@fuzz_settings("header", 0.15, short=60)
@given(
    entry=st.integers(0, 1000),
    edits=EDITS,
    whole_file=st.booleans(),
)
@counted("header")
def test_mutated_exports_load_or_are_refused(exported, workdir, entry, edits, whole_file):
    """A real export with some bytes changed: inside one entry (CRC recomputed, so torch's own
    parsers of pickles and TorchScript code see the damage) or anywhere in the file."""
    if whole_file:
        data = garble(rezip(exported), edits)
    else:
        names = [info.filename for info, _ in exported if info.filename != METADATA_PATH]
        name = names[entry % len(names)]
        data = rezip(exported, {name: garble(dict((i.filename, d) for i, d in exported)[name], edits)})
    check_reader(write(workdir, data))


# ---- regression tests for what the fuzzers found, and the "never unpickle" promise -------------


def test_metadata_zip_bomb_is_refused_without_inflating_it(exported, workdir):
    """A 64 MB metadata entry that deflates to ~64 kB: refused from its declared size, unread."""
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w") as archive:
        for info, data in exported:
            if info.filename == METADATA_PATH:
                entry = zipfile.ZipInfo(METADATA_PATH)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(entry, "w", force_zip64=True) as handle:
                    chunk = b" " * (1 << 20)
                    for _ in range(64):
                        handle.write(chunk)
            else:
                archive.writestr(info.filename, data)
    path = write(workdir, bomb.getvalue(), "bomb.pt")
    assert os.path.getsize(path) < 1 << 20
    start = time.perf_counter()
    with pytest.raises(ValueError, match="bytes of atomplug metadata"):
        read_header(path)
    assert time.perf_counter() - start < 2.0


def test_metadata_nested_beyond_the_json_recursion_limit_is_refused(exported, workdir):
    path = write(workdir, rezip(exported, {METADATA_PATH: b"[" * 100_000 + b"]" * 100_000}), "deep.pt")
    with pytest.raises(ValueError, match="metadata"):
        read_header(path)


class _Marker:
    """Unpickling this would create a file: proof that a pickle from the archive was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("entry", ["archive/data.pkl", "archive/constants.pkl"])
def test_pickles_in_an_archive_are_never_run_by_python(exported, workdir, entry):
    """Valid metadata, but a pickle that calls `open()` in place of the archive's data: torch.jit's
    own unpickler knows no Python callables, so the file is refused and nothing runs."""
    marker = os.path.join(str(workdir), f"unpickled-{os.path.basename(entry)}")
    payload = pickle.dumps(_Marker(marker), protocol=2)
    path = write(workdir, rezip(exported, {entry: payload}), "evil.pt")
    with pytest.raises(ValueError, match="could not be loaded by TorchScript"):
        load_model(path)
    assert not os.path.exists(marker)


def test_a_torch_save_pickle_is_refused_before_loading(workdir):
    """A torch.save-style zip (data.pkl, no atomplug metadata) is refused from its names alone."""
    marker = os.path.join(str(workdir), "unpickled-torch-save")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps(_Marker(marker), protocol=2))
        archive.writestr("model/version", b"3\n")
    path = write(workdir, buffer.getvalue(), "saved.pt")
    with pytest.raises(ValueError, match="without atomplug metadata"):
        load_model(path)
    assert not os.path.exists(marker)


def test_a_multi_disk_end_record_is_refused(exported, workdir):
    """Found by atheris: a ZIP64 locator announcing two disks makes zipfile.is_zipfile itself raise
    BadZipFile (it should answer False): refused as a damaged archive."""
    import struct

    data = rezip(exported)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 2)
    path = write(workdir, data[:-22] + locator + data[-22:], "multi-disk.pt")
    with pytest.raises(ValueError, match="corrupt or truncated archive"):
        read_header(path)
