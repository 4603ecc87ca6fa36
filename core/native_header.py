"""The model file for C++: one header, generated from core, that both plugins include.

    python -m atomplug.core.native_header [DIRECTORY]   # print it, or write DIRECTORY/atomplug_core.h

`header_text()` is `native/atomplug_core.h` (the C++ checks and error clean-up, written to follow
`archive.read_header` / `load_model` and `errors.first_line` / `describe_model_error` step by step)
with core's tables put in place of its GENERATED marker:

- the format constants of `archive` (FORMAT_NAME, FORMAT_VERSION, METADATA_FILE, MAX_METADATA_BYTES,
  MAX_METADATA_DEPTH, ENTRY_POINT_METHODS) and UNOPTIMIZED_CALLS, the forward calls run unoptimised
  before `Model::forward` switches to an optimised fresh copy (as `archive.LoadedModel.forward`);
- the messages: `archive.MODEL_FILE_MESSAGES` as MODEL_FILE_<FAULT>, `errors.MODEL_ERROR_MESSAGES`
  as MODEL_ERROR_<NAME>, the same str.format templates, filled in by the C++ `format()`;
- the entry point's arguments: `EntryPointArguments` with one field per argument of
  `AtomisticModel.forward`, read from its signature, and `entry_point_stack()` putting them in that
  signature's order (a new argument of forward appears here, with its Python default); ARGUMENT_<NAME>,
  each argument's position on that stack;
- compiled packages (`core.package`, `core.program`): the package's file names, the torch version
  that builds the plugin (torch.__version__, which a package must have been compiled with), the
  program's smallest sizes and non-conservative outputs, and the messages of
  `package_messages.PACKAGE_MESSAGES` / `PACKAGE_REFUSALS` as PACKAGE_<KEY> / PACKAGE_REFUSAL_<KEY>.

Each plugin's build writes the header into its build directory (`write_header`), so a change in
core rebuilds both plugins.
"""

from __future__ import annotations

import inspect
import os
import sys
import typing
from typing import Dict, List, Optional, Tuple

from . import archive, errors

HEADER_FILE = "atomplug_core.h"
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "atomplug_core.h")
MARKER = "// @ATOMPLUG_GENERATED@"

# Python annotation of an entry point argument -> C++ type of its field
_CPP_TYPES = {
    "Tensor": "torch::Tensor",
    "List[Tensor]": "c10::List<at::Tensor>",
    "List[str]": "c10::List<std::string>",
    "Optional[Tensor]": "std::optional<torch::Tensor>",
    "Optional[Dict[str, Tensor]]": "std::optional<c10::Dict<std::string, at::Tensor>>",
    "Optional[Dict[str, str]]": "std::optional<c10::Dict<std::string, std::string>>",
    "Optional[GhostExchange]": "std::optional<torch::jit::IValue>",
    "str": "std::string",
    "bool": "bool",
    "float": "double",
    "int": "int64_t",
}


def cpp_string(text: str) -> str:
    """A C++ string literal (UTF-8 source) holding `text`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


def _annotation_name(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        raise TypeError("an argument of AtomisticModel.forward has no type annotation")
    origin = typing.get_origin(annotation)
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin is typing.Union and len(arguments) == 1:
        return f"Optional[{_annotation_name(arguments[0])}]"
    name = {list: "List", dict: "Dict", tuple: "Tuple"}.get(origin, getattr(origin, "__name__", str(origin)))
    return f"{name}[{', '.join(_annotation_name(a) for a in arguments)}]"


NO_DEFAULT = inspect.Parameter.empty


def entry_point_arguments() -> List[Tuple[str, str, object]]:
    """(name, Python type, default or NO_DEFAULT) of each argument of AtomisticModel.forward, in order."""
    from .entry_point import AtomisticModel

    hints = typing.get_type_hints(AtomisticModel.forward)
    arguments = []
    for name, parameter in inspect.signature(AtomisticModel.forward).parameters.items():
        if name == "self":
            continue
        default = parameter.default
        arguments.append((name, _annotation_name(hints.get(name, parameter.annotation)), default))
    return arguments


def _cpp_default(kind: str, default) -> str:
    if default is NO_DEFAULT or default is None:
        return "{}"
    if kind == "bool":
        return " = true" if default else " = false"
    if kind in ("float", "int"):
        return f" = {default!r}"
    if kind == "str":
        return f" = {cpp_string(default)}"
    raise TypeError(f"no C++ default for a {kind} argument of AtomisticModel.forward")


def _cpp_value(kind: str, default) -> str:
    return _cpp_default(kind, default)[len(" = ") :]


def _entry_point_lines() -> List[str]:
    arguments = entry_point_arguments()
    lines = ["// AtomisticModel.forward's arguments (atomplug.core.entry_point), in its order"]
    lines.append("struct EntryPointArguments {")
    for name, kind, default in arguments:
        if kind not in _CPP_TYPES:
            raise TypeError(f"AtomisticModel.forward argument {name!r} is a {kind}: add its C++ type to _CPP_TYPES")
        lines.append(f"  {_CPP_TYPES[kind]} {name}{_cpp_default(kind, default)};    // {kind}")
    lines.append("};")
    names = ", ".join(cpp_string(name) for name, _, _ in arguments)
    lines.append(f"constexpr const char *ENTRY_POINT_ARGUMENTS[] = {{{names}}};")
    for position, (name, _, _) in enumerate(arguments):
        lines.append(f"constexpr size_t ARGUMENT_{name.upper()} = {position};")
    lines.append("")
    lines.append("inline std::vector<torch::jit::IValue> entry_point_stack(const EntryPointArguments &arguments)")
    lines.append("{")
    lines.append("  std::vector<torch::jit::IValue> stack;")
    lines.append(f"  stack.reserve({len(arguments)});")
    required = [name for name, _, default in arguments if default is NO_DEFAULT]
    optional = [(name, kind, default) for name, kind, default in arguments if default is not NO_DEFAULT]
    for name in required:
        lines.append(f"  stack.emplace_back(arguments.{name});")
    if optional:
        # trailing arguments with defaults go only up to the last one that differs from its default,
        # so that archives exported before an argument existed still run where it is not used
        lines.append("  int last_given = -1;")
        for index, (name, kind, default) in enumerate(optional):
            if default is None:  # an optional argument: given when it holds a value
                lines.append(f"  if (arguments.{name}.has_value()) last_given = {index};")
            else:
                lines.append(f"  if (arguments.{name} != {_cpp_value(kind, default)}) last_given = {index};")
        for index, (name, _, _) in enumerate(optional):
            lines.append(f"  if (last_given >= {index}) stack.emplace_back(arguments.{name});")
    lines.append("  return stack;")
    lines.append("}")
    return lines


def _table_lines(prefix: str, table: Dict[str, str], source: str) -> List[str]:
    lines = [f"// {source}"]
    for key, text in table.items():
        lines.append(f"constexpr const char *{prefix}_{key.upper()} = {cpp_string(text)};")
    return lines


def _package_lines() -> List[str]:
    """What the plugins need to run a compiled package as core.package does."""
    import torch

    from . import package, package_messages, program

    non_conservative = ", ".join(cpp_string(name) for name in program.NON_CONSERVATIVE)
    record = f"{package.PACKAGE_FOLDER}/{package.PACKAGE_MODEL_FILE}"  # the model archive inside a package
    lines = [
        "// compiled packages (atomplug.core.package, atomplug.core.program)",
        f"constexpr const char *PACKAGE_MODEL_RECORD = {cpp_string(record)};",
        f"constexpr const char *BUILD_TORCH_VERSION = {cpp_string(torch.__version__)};    // torch.__version__: the plugin's torch",
        f"constexpr long long PROGRAM_MIN_ATOMS = {int(program.MIN_ATOMS)};",
        f"constexpr long long PROGRAM_MIN_PAIRS = {int(program.MIN_PAIRS)};",
        f"constexpr const char *PROGRAM_NON_CONSERVATIVE[] = {{{non_conservative}}};",
    ]
    lines += _table_lines(
        "PACKAGE", package_messages.PACKAGE_MESSAGES, "atomplug.core.package_messages.PACKAGE_MESSAGES"
    )
    lines += _table_lines(
        "PACKAGE_REFUSAL", package_messages.PACKAGE_REFUSALS, "atomplug.core.package_messages.PACKAGE_REFUSALS"
    )
    return lines


def generated_tables() -> str:
    """core's constants, messages and entry point arguments as C++ (inside namespace atomplug_core)."""
    methods = ", ".join(cpp_string(name) for name in archive.ENTRY_POINT_METHODS)
    lines = [
        "// ---- generated by atomplug.core.native_header from atomplug.core: do not edit ----",
        f"constexpr const char *FORMAT_NAME = {cpp_string(archive.FORMAT_NAME)};",
        f"constexpr long long FORMAT_VERSION = {int(archive.FORMAT_VERSION)};",
        f"constexpr const char *METADATA_FILE = {cpp_string(archive.METADATA_FILE)};",
        f"constexpr long long MAX_METADATA_BYTES = {int(archive.MAX_METADATA_BYTES)};",
        f"constexpr long MAX_METADATA_DEPTH = {int(archive.MAX_METADATA_DEPTH)};",
        f"constexpr const char *ENTRY_POINT_METHODS[] = {{{methods}}};",
        f"constexpr long long UNOPTIMIZED_CALLS = {int(archive.UNOPTIMIZED_CALLS)};",
        f"constexpr long long UNOPTIMIZED_NEVER = {int(archive.NEVER)};",
        "constexpr const char *DEVICE_UNOPTIMIZED_TYPES[] = {"
        + ", ".join(cpp_string(kind) for kind in archive.DEVICE_UNOPTIMIZED_CALLS)
        + "};",
        "constexpr long long DEVICE_UNOPTIMIZED_COUNTS[] = {"
        + ", ".join(str(int(count)) for count in archive.DEVICE_UNOPTIMIZED_CALLS.values())
        + "};",
        f"constexpr const char *OPTIMIZE_AFTER_VARIABLE = {cpp_string(archive.OPTIMIZE_AFTER_VARIABLE)};",
        f"constexpr const char *OPTIMIZE_AFTER_MESSAGE = {cpp_string(archive.OPTIMIZE_AFTER_MESSAGE)};",
        f"constexpr const char *ATOMPLUG_ERROR_KIND = {cpp_string(errors.ATOMPLUG_ERROR_KIND)};",
        "",
    ]
    lines += _table_lines("MODEL_FILE", archive.MODEL_FILE_MESSAGES, "atomplug.core.archive.MODEL_FILE_MESSAGES")
    lines.append("")
    lines += _table_lines("MODEL_ERROR", errors.MODEL_ERROR_MESSAGES, "atomplug.core.errors.MODEL_ERROR_MESSAGES")
    lines.append("")
    lines += _entry_point_lines()
    lines.append("")
    lines += _package_lines()
    lines.append("// ---- end of the generated part ----")
    return "\n".join(lines)


def header_text() -> str:
    """The whole header: native/atomplug_core.h with core's tables in place of its marker."""
    with open(TEMPLATE) as handle:
        template = handle.read()
    if template.count(MARKER) != 1:
        raise RuntimeError(f"{TEMPLATE} must hold the line {MARKER!r} exactly once")
    banner = "// generated by atomplug.core.native_header from core/native/atomplug_core.h: do not edit\n"
    return banner + template.replace(MARKER, generated_tables())


def write_header(directory: str) -> str:
    """Write the header into `directory` (left untouched when it already holds the same text)."""
    text = header_text()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, HEADER_FILE)
    try:
        with open(path) as handle:
            if handle.read() == text:
                return path
    except OSError:
        pass
    temporary = path + f".{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(write_header(argv[0]))
    else:
        sys.stdout.write(header_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
