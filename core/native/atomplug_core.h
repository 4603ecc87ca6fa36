// atomplug_core.h: what the C++ plugins (LAMMPS' pair style, PLUMED's action) know about the model
// file, written once for both.
//
// `python -m atomplug.core.native_header` (called by each plugin's build) writes this file into the
// plugin's build directory with the tables of atomplug.core in place of the GENERATED marker below:
// the format constants, the messages of atomplug.core.archive and atomplug.core.errors, and the entry
// point's arguments in the order of AtomisticModel.forward. The functions here follow
// read_header / load_model (atomplug/core/archive.py) and first_line / describe_model_error
// (atomplug/core/errors.py) step by step, so that a fault gets the same words in every engine.
// `Model` runs the loaded model as archive.LoadedModel does: forward unoptimised for its first
// UNOPTIMIZED_CALLS calls, then optimised on a fresh copy; setup methods always unoptimised.
//
// A compiled package (`.pt2`, atomplug.core.package) is loaded as load_model loads one (the same
// refusals and words, the archive inside it checked like any model file) and `Model::forward` runs
// its native program (AOTInductor) where core.package.CompiledProgram would, with the same
// fallbacks to the TorchScript entry point and the same refusals: `CompiledProgram` below follows
// CompiledProgram.__call__ and refusal step by step, and holds no physics (unit factors come from
// the archive's output_factors and unit_conversion, the program's layout from the package).
//
// Errors are ModelFileError with core's message; each plugin turns it into its engine's error.

#pragma once

#include <caffe2/serialize/inline_container.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/version.h>

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace atomplug_core {

// @ATOMPLUG_GENERATED@

using Json = nlohmann::ordered_json;    // the metadata, keys in the file's order
using Fields = std::vector<std::pair<std::string, std::string>>;

class ModelFileError : public std::runtime_error {
 public:
  explicit ModelFileError(const std::string &message) : std::runtime_error(message) {}
};

// A call the package was not compiled for (core: CompiledProgram.refusal): given to the user as it
// is, as Python's ValueError is (describe_model_error passes it through)
class PackageRefusal : public std::runtime_error {
 public:
  explicit PackageRefusal(const std::string &message) : std::runtime_error(message) {}
};

// ---- words ------------------------------------------------------------------------------------

// Python's str.format for the {name} fields of core's templates ({{ and }} are braces)
inline std::string format(const std::string &pattern, const Fields &fields)
{
  std::string out;
  size_t at = 0;
  while (at < pattern.size()) {
    const char c = pattern[at];
    if ((c == '{' || c == '}') && at + 1 < pattern.size() && pattern[at + 1] == c) {
      out += c;
      at += 2;
      continue;
    }
    const size_t close = c == '{' ? pattern.find('}', at) : std::string::npos;
    if (close == std::string::npos) {
      out += c;
      ++at;
      continue;
    }
    const std::string name = pattern.substr(at + 1, close - at - 1);
    bool found = false;
    for (const auto &field : fields) {
      if (field.first == name) {
        out += field.second;
        found = true;
      }
    }
    if (!found) out += "{" + name + "}";
    at = close + 1;
  }
  return out;
}

// Python's repr() of a path: the quote it picks, and backslash escapes for \, that quote, \n, \r,
// \t and other control characters (bytes from 0x80 on are kept: UTF-8 text repr shows as it is)
inline std::string quoted(const std::string &text)
{
  const bool has_single = text.find('\'') != std::string::npos;
  const char quote = has_single && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : text) {
    const unsigned char byte = static_cast<unsigned char>(c);
    if (c == '\\' || c == quote) {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7f) {
      char escape[8];
      std::snprintf(escape, sizeof(escape), "\\x%02x", byte);
      out += escape;
    } else {
      out += c;
    }
  }
  return out + quote;
}

// core's words for `fault` (a message template of atomplug.core.archive) about the model file `path`
inline std::string model_file_message(const char *pattern, const std::string &path, Fields fields = {})
{
  fields.emplace_back("path", quoted(path));
  return format(pattern, fields);
}

[[noreturn]] inline void refuse(const char *pattern, const std::string &path, Fields fields = {})
{
  throw ModelFileError(model_file_message(pattern, path, std::move(fields)));
}

// ---- errors raised by the archive's code (atomplug.core.errors) -------------------------------

// The text of an exception as Python shows it: torch's errors without their C++ backtrace
inline std::string error_text(const std::exception &error)
{
  if (const auto *torch_error = dynamic_cast<const c10::Error *>(&error))
    return torch_error->what_without_backtrace();
  return error.what();
}

inline std::string strip(const std::string &text)
{
  const char *space = " \t\n\r\v\f";
  const size_t first = text.find_first_not_of(space);
  if (first == std::string::npos) return "";
  return text.substr(first, text.find_last_not_of(space) - first + 1);
}

// Python's str.splitlines for \n, \r\n and \r
inline std::vector<std::string> split_lines(const std::string &text)
{
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t stop = text.find_first_of("\r\n", start);
    if (stop == std::string::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, stop - start));
    start = stop + ((text[stop] == '\r' && stop + 1 < text.size() && text[stop + 1] == '\n') ? 2 : 1);
  }
  return lines;
}

inline bool starts_with(const std::string &text, const std::string &prefix)
{
  return text.compare(0, prefix.size(), prefix) == 0;
}

// TorchScript errors carry a traceback; users need the message (core: errors.first_line)
inline std::string first_line(const std::string &text)
{
  const std::string kind = ATOMPLUG_ERROR_KIND;
  for (const auto &line : split_lines(text)) {
    const std::string stripped = strip(line);
    if (starts_with(stripped, "builtins." + kind + ":") || starts_with(stripped, kind + ":"))
      return strip(stripped.substr(stripped.find(':') + 1));
  }
  std::string last;
  for (const auto &line : split_lines(text))
    if (!strip(line).empty()) last = strip(line);
  return last.empty() ? text : last;
}

// `line` as "builtins.<Kind>: <message>" (the regular expression ^\s*builtins\.(\w+): ?(.*)$)
inline bool raised_line(const std::string &line, std::string &kind, std::string &message)
{
  const std::string prefix = "builtins.";
  const size_t first = line.find_first_not_of(" \t\v\f");
  if (first == std::string::npos || line.compare(first, prefix.size(), prefix) != 0) return false;
  size_t at = first + prefix.size();
  const size_t name_start = at;
  while (at < line.size() && (std::isalnum(static_cast<unsigned char>(line[at])) || line[at] == '_')) ++at;
  if (at == name_start || at >= line.size() || line[at] != ':') return false;
  kind = line.substr(name_start, at - name_start);
  ++at;
  if (at < line.size() && line[at] == ' ') ++at;
  message = line.substr(at);
  return true;
}

// One line for an error raised while the entry point ran (core: errors.describe_model_error):
// atomplug's own checks name the fix and are given as they are; anything else is the model's
inline std::string describe_model_error(const std::string &text)
{
  const std::vector<std::string> lines = split_lines(text);
  for (size_t position = lines.size(); position-- > 0;) {
    std::string kind, message;
    if (!raised_line(lines[position], kind, message)) continue;
    for (size_t next = position + 1; next < lines.size(); ++next)
      if (!strip(lines[next]).empty()) message += " " + strip(lines[next]);
    if (kind == ATOMPLUG_ERROR_KIND) return message;
    return format(MODEL_ERROR_MODEL_RAISED, {{"kind", kind}, {"message", message}});
  }
  return format(MODEL_ERROR_MODEL_FAILED, {{"message", first_line(text)}});
}

inline std::string describe_model_error(const std::exception &error)
{
  if (dynamic_cast<const PackageRefusal *>(&error) != nullptr) return error.what();
  return describe_model_error(error_text(error));
}

// ---- the archive, before any of its code is loaded (core: archive.read_header) ----------------

namespace detail {

inline uint32_t little_endian(const std::string &data, size_t at, int bytes)
{
  uint32_t value = 0;
  for (int k = bytes - 1; k >= 0; --k)
    value = (value << 8) | static_cast<unsigned char>(data[at + static_cast<size_t>(k)]);
  return value;
}

// What zipfile.is_zipfile says (Python 3.11): an end-of-central-directory record in the last
// 22 bytes, or within the last 64 kB (an archive comment); not one announcing several disks.
inline bool is_zipfile(std::FILE *file)
{
  const long record = 22;
  if (std::fseek(file, 0, SEEK_END) != 0) return false;
  const long size = std::ftell(file);
  if (size < record) return false;
  const long start = std::max(0L, size - (1L << 16) - record);
  std::string data(static_cast<size_t>(size - start), '\0');
  if (std::fseek(file, start, SEEK_SET) != 0 || std::fread(&data[0], 1, data.size(), file) != data.size())
    return false;
  const std::string signature("PK\x05\x06", 4);
  size_t at = data.size() - record;
  const bool plain = data.compare(at, 4, signature) == 0 && data[at + 20] == 0 && data[at + 21] == 0;
  if (!plain) {
    at = data.rfind(signature);
    if (at == std::string::npos || at + record > data.size()) return false;
  }
  // a ZIP64 locator right before the record: one archive on one disk only
  const size_t locator = 20;
  const long absolute = start + static_cast<long>(at);
  if (absolute >= static_cast<long>(locator) && at >= locator &&
      data.compare(at - locator, 4, std::string("PK\x06\x07", 4)) == 0)
    return little_endian(data, at - locator + 4, 4) == 0 && little_endian(data, at - locator + 16, 4) <= 1;
  return true;
}

// the first checks of read_header: the path is a readable, non-empty zip archive
inline void check_file(const std::string &path)
{
  struct stat status;
  if (stat(path.c_str(), &status) != 0) refuse(MODEL_FILE_MISSING, path);
  if (S_ISDIR(status.st_mode)) refuse(MODEL_FILE_DIRECTORY, path);
  std::unique_ptr<std::FILE, int (*)(std::FILE *)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) refuse(MODEL_FILE_UNREADABLE, path, {{"reason", std::strerror(errno)}});
  char magic[4] = {0, 0, 0, 0};
  const size_t read = std::fread(magic, 1, 4, file.get());
  if (read == 0 && std::ferror(file.get()))
    refuse(MODEL_FILE_UNREADABLE, path, {{"reason", std::strerror(errno)}});
  if (read == 0) refuse(MODEL_FILE_EMPTY, path);
  if (!is_zipfile(file.get())) {
    const bool zip_start = read == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0;
    refuse(zip_start ? MODEL_FILE_TRUNCATED : MODEL_FILE_NOT_ARCHIVE, path);
  }
}

// the metadata's text, read with torch's archive reader alone (nothing is unpickled), from the
// file `path` or, when `bytes` is given, from those bytes (`path` naming them in messages)
inline std::string metadata_text(const std::string &path, const std::string *bytes = nullptr)
{
  const std::string record = std::string("extra/") + METADATA_FILE;
  try {
    std::istringstream stream(bytes ? *bytes : std::string());
    std::unique_ptr<caffe2::serialize::PyTorchStreamReader> opened = bytes
        ? std::make_unique<caffe2::serialize::PyTorchStreamReader>(&stream)
        : std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    caffe2::serialize::PyTorchStreamReader &reader = *opened;
    if (!reader.hasRecord(record)) refuse(MODEL_FILE_NO_METADATA, path);
    const size_t declared = reader.getRecordSize(record);
    if (declared > static_cast<size_t>(MAX_METADATA_BYTES))    // a zip bomb: refused from its size
      refuse(MODEL_FILE_METADATA_TOO_LARGE, path,
             {{"size", std::to_string(declared)}, {"limit", std::to_string(MAX_METADATA_BYTES)}});
    at::DataPtr data;
    size_t size = 0;
    std::tie(data, size) = reader.getRecord(record);
    return std::string(static_cast<const char *>(data.get()), size);
  } catch (const ModelFileError &) {
    throw;
  } catch (const std::exception &error) {
    refuse(MODEL_FILE_CORRUPT, path, {{"reason", first_line(error_text(error))}});
  }
}

// whether [ and { outside JSON strings nest deeper than MAX_METADATA_DEPTH (core counts the same)
inline bool nested_too_deeply(const std::string &text)
{
  long depth = 0;
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > MAX_METADATA_DEPTH) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

inline Json parse_metadata(const std::string &text, const std::string &path)
{
  if (nested_too_deeply(text))
    refuse(MODEL_FILE_UNREADABLE_METADATA, path, {{"reason", "nested too deeply"}});
  try {
    return Json::parse(text);
  } catch (const std::exception &error) {
    refuse(MODEL_FILE_UNREADABLE_METADATA, path, {{"reason", error.what()}});
  }
}

// The shape ModelCapabilities.from_dict and ModelMetadata.from_dict read: a missing key is
// reported as Python's KeyError is ("missing 'outputs'"). What validate() checks beyond the shape
// (units, types, names) the plugins leave to the comparison with the archive's own declaration.
inline std::string shape_problem(const Json &header)
{
  auto missing = [](const Json &object, const char *key) {
    return object.contains(key) ? std::string() : std::string("missing '") + key + "'";
  };
  auto strings = [](const Json &value) {
    if (!value.is_array()) return false;
    for (const auto &item : value)
      if (!item.is_string()) return false;
    return true;
  };
  const Json &capabilities = header["capabilities"];
  if (!missing(capabilities, "outputs").empty()) return missing(capabilities, "outputs");
  if (!capabilities["outputs"].is_object()) return "'outputs' is not an object";
  for (const auto &output : capabilities["outputs"].items()) {
    const Json &declared = output.value();
    if (!declared.is_object()) return "output '" + output.key() + "' is not an object";
    for (const char *key : {"quantity", "unit", "per_atom"})
      if (!missing(declared, key).empty()) return missing(declared, key);
    if (!declared["quantity"].is_string() || !declared["unit"].is_string() ||
        !declared["per_atom"].is_boolean() ||
        (declared.contains("properties") && !strings(declared["properties"])))
      return "output '" + output.key() + "' has a quantity, unit, per_atom or properties of the wrong type";
  }
  for (const char *key : {"atomic_types", "interaction_range", "length_unit", "supported_devices", "dtype"})
    if (!missing(capabilities, key).empty()) return missing(capabilities, key);
  const Json &types = capabilities["atomic_types"];
  if (!types.is_array() ||
      !std::all_of(types.begin(), types.end(), [](const Json &t) { return t.is_number_integer(); }))
    return "'atomic_types' is not a list of integers";
  if (!capabilities["interaction_range"].is_number()) return "'interaction_range' is not a number";
  if (!capabilities["length_unit"].is_string() || !capabilities["dtype"].is_string())
    return "'length_unit' or 'dtype' is not a string";
  if (!strings(capabilities["supported_devices"])) return "'supported_devices' is not a list of strings";
  if (capabilities.contains("ghost_exchange") && !capabilities["ghost_exchange"].is_boolean())
    return "'ghost_exchange' is not a boolean";
  const Json &metadata = header["metadata"];
  for (const char *key : {"name", "description"})
    if (metadata.contains(key) && !metadata[key].is_string())
      return std::string("'") + key + "' is not a string";
  for (const char *key : {"authors", "references"})
    if (metadata.contains(key) && !strings(metadata[key]))
      return std::string("'") + key + "' is not a list of strings";
  return "";
}

inline void check_header(const Json &header, const std::string &path)
{
  if (!header.is_object() || !header.contains("format") || header["format"] != FORMAT_NAME)
    refuse(MODEL_FILE_NOT_ATOMPLUG, path);
  // non-negative JSON integers are unsigned for nlohmann; true, 1.0 or -1 are not versions
  const Json version = header.contains("format_version") ? header["format_version"] : Json();
  if (!version.is_number_unsigned() || version.get<unsigned long long>() < 1)
    refuse(MODEL_FILE_NO_VERSION, path);
  if (version.get<unsigned long long>() > static_cast<unsigned long long>(FORMAT_VERSION))
    refuse(MODEL_FILE_NEWER_VERSION, path,
           {{"version", version.dump()}, {"supported", std::to_string(FORMAT_VERSION)}});
  for (const char *key : {"capabilities", "metadata"})
    if (!header.contains(key) || !header[key].is_object())
      refuse(MODEL_FILE_LACKS, path, {{"key", quoted(key)}});
  const std::string problem = shape_problem(header);
  if (!problem.empty()) refuse(MODEL_FILE_MALFORMED, path, {{"reason", problem}});
}

}    // namespace detail

// The archive's atomplug metadata, checked as atomplug.core.archive.read_header checks it, without
// loading any of its code. Throws ModelFileError with core's words.
inline Json read_header(const std::string &path)
{
  detail::check_file(path);
  Json header = detail::parse_metadata(detail::metadata_text(path), path);
  detail::check_header(header, path);
  return header;
}

// read_header's checks of the metadata for an archive held in memory (the model inside a compiled
// package, core: archive._header_of_bytes), `path` naming it in messages
inline Json read_header_bytes(const std::string &bytes, const std::string &path)
{
  Json header = detail::parse_metadata(detail::metadata_text(path, &bytes), path);
  detail::check_header(header, path);
  return header;
}

// ---- compiled packages (core: package.CompiledProgram, program.ProgramLayout) ------------------

// core: program.ProgramLayout, what the program takes and returns (see its docstring)
struct ProgramLayout {
  std::vector<std::string> outputs;
  std::vector<bool> per_atom;
  std::vector<int64_t> widths;
  std::string gradient;    // the output differentiated for forces and virial, "" for none
  size_t n_lists = 0;

  static ProgramLayout from_json(const Json &data)
  {
    ProgramLayout layout;
    layout.outputs = data.at("outputs").get<std::vector<std::string>>();
    layout.per_atom = data.at("per_atom").get<std::vector<bool>>();
    layout.widths = data.at("widths").get<std::vector<int64_t>>();
    layout.gradient = data.at("gradient").get<std::string>();
    layout.n_lists = data.at("n_lists").get<size_t>();
    if (layout.per_atom.size() != layout.outputs.size() || layout.widths.size() != layout.outputs.size())
      throw std::runtime_error("the layout's lists differ in length");
    return layout;
  }
  // position of `name` among the outputs, -1 for none
  long find(const std::string &name) const
  {
    for (size_t k = 0; k < outputs.size(); ++k)
      if (outputs[k] == name) return static_cast<long>(k);
    return -1;
  }
  int64_t gradient_width() const
  {
    return gradient.empty() || find(gradient) < 0 ? 0 : widths[find(gradient)];
  }
  bool atomic_virial() const { return gradient_width() == 1; }
  // position of output k's values among the program's outputs
  size_t index(size_t k) const { return 2 + k; }
  // position of per-atom output k's weighted sum among the program's outputs
  size_t sum_index(size_t k) const
  {
    size_t before = 0;
    for (size_t j = 0; j < k; ++j) before += per_atom[j] ? 1 : 0;
    return 2 + outputs.size() + before;
  }
  // position of the forces among the program's outputs (virial and per-atom virial follow)
  size_t derivative_index() const
  {
    return 2 + outputs.size() + static_cast<size_t>(std::count(per_atom.begin(), per_atom.end(), true));
  }
};

namespace detail {

// "name/per_atom" -> "name"
inline std::string output_name(const std::string &request, bool *per_atom = nullptr)
{
  const std::string suffix = "/per_atom";
  const bool atomic = request.size() >= suffix.size() &&
      request.compare(request.size() - suffix.size(), suffix.size(), suffix) == 0;
  if (per_atom) *per_atom = atomic;
  return atomic ? request.substr(0, request.size() - suffix.size()) : request;
}

// argument `position` of an entry point stack, None where the stack stops before it (its default)
inline torch::jit::IValue argument(const std::vector<torch::jit::IValue> &stack, size_t position)
{
  return position < stack.size() ? stack[position] : torch::jit::IValue();
}

}    // namespace detail

// The native program of a package, called like the TorchScript entry point (core:
// package.CompiledProgram): `call` answers a call of the entry point, or gives nothing where the
// TorchScript entry point must answer (it throws PackageRefusal for what the package cannot do).
class CompiledProgram {
 public:
  CompiledProgram(std::shared_ptr<torch::inductor::AOTIModelPackageLoader> loader, ProgramLayout layout,
                  std::string model_file, std::string model_length_unit, std::vector<std::string> declared,
                  std::string device) :
      loader_(std::move(loader)), layout_(std::move(layout)), model_file_(std::move(model_file)),
      model_length_unit_(std::move(model_length_unit)), declared_(std::move(declared)),
      device_(std::move(device))
  {
  }

  const ProgramLayout &layout() const { return layout_; }
  const std::string &device() const { return device_; }
  long long calls_run() const { return calls_run_; }    // calls the program answered

  // Why the package cannot answer this call at all (what it was not compiled for), or ""
  std::string refusal(const std::vector<torch::jit::IValue> &stack) const
  {
    const Fields fix = {{"fix", format(PACKAGE_REFUSAL_FIX, {{"model", quoted(model_file_)}})}};
    const torch::jit::IValue non_conservative = detail::argument(stack, ARGUMENT_NON_CONSERVATIVE);
    if (non_conservative.isBool() && non_conservative.toBool())
      return format(PACKAGE_REFUSAL_NON_CONSERVATIVE, fix);
    if (!detail::argument(stack, ARGUMENT_GHOST_EXCHANGE).isNone())
      return format(PACKAGE_REFUSAL_GHOST_EXCHANGE, fix);
    for (const auto &item : stack.at(ARGUMENT_OUTPUTS).toListRef()) {
      const std::string name = detail::output_name(item.toStringRef());
      for (const char *excluded : PROGRAM_NON_CONSERVATIVE)
        if (name == excluded) {
          Fields fields = fix;
          fields.emplace_back("name", name);
          return format(PACKAGE_REFUSAL_OUTPUT, fields);
        }
    }
    const bool forces = stack.at(ARGUMENT_COMPUTE_FORCES).toBool();
    const bool virial = stack.at(ARGUMENT_COMPUTE_VIRIAL).toBool();
    const bool atomic_virial = stack.at(ARGUMENT_COMPUTE_ATOMIC_VIRIAL).toBool();
    if (forces || virial || atomic_virial) {
      const std::string &gradient_output = stack.at(ARGUMENT_GRADIENT_OUTPUT).toStringRef();
      if (gradient_output != layout_.gradient) {
        Fields fields = fix;
        fields.emplace_back("compiled",
                            layout_.gradient.empty() ? "no output" : "'" + layout_.gradient + "'");
        fields.emplace_back("gradient_output", gradient_output);
        return format(PACKAGE_REFUSAL_GRADIENT, fields);
      }
      if (atomic_virial && !layout_.atomic_virial()) return format(PACKAGE_REFUSAL_ATOMIC_VIRIAL, fix);
    }
    return "";
  }

  // The entry point's result for `stack` (AtomisticModel.forward's arguments), or nothing where the
  // TorchScript entry point `module` must answer (core: CompiledProgram.__call__)
  std::optional<c10::Dict<std::string, at::Tensor>> call(torch::jit::Module &module,
                                                         const std::vector<torch::jit::IValue> &stack)
  {
    const std::string refused = refusal(stack);
    if (!refused.empty()) throw PackageRefusal(refused);
    const at::Tensor positions = stack.at(ARGUMENT_POSITIONS).toTensor();
    const at::Tensor types = stack.at(ARGUMENT_TYPES).toTensor();
    const at::Tensor cells = stack.at(ARGUMENT_CELLS).toTensor();
    const at::Tensor pbcs = stack.at(ARGUMENT_PBCS).toTensor();
    const at::Tensor sizes = stack.at(ARGUMENT_SYSTEM_SIZES).toTensor();
    const c10::List<at::Tensor> pairs = stack.at(ARGUMENT_NEIGHBOR_PAIRS).toTensorList();
    const c10::List<at::Tensor> shifts = stack.at(ARGUMENT_NEIGHBOR_SHIFTS).toTensorList();
    // what the program takes: one structure of at least MIN_ATOMS atoms, each list of at least
    // MIN_PAIRS pairs, float64 positions (and, beyond Python's checks, inputs of the shapes it was
    // compiled for: anything else is TorchScript's to refuse, with its words)
    if (positions.dim() != 2 || positions.size(1) != 3 || sizes.dim() != 1 || sizes.size(0) != 1) return {};
    const int64_t n_atoms = positions.size(0);
    if (n_atoms < PROGRAM_MIN_ATOMS || pairs.size() != layout_.n_lists || shifts.size() != layout_.n_lists)
      return {};
    if (cells.dim() != 3 || cells.size(0) != 1 || pbcs.dim() != 2 || pbcs.size(0) != 1 || types.dim() != 1 ||
        types.size(0) != n_atoms)
      return {};
    for (size_t k = 0; k < pairs.size(); ++k) {
      const at::Tensor p = pairs.get(k), s = shifts.get(k);
      if (p.dim() != 2 || p.size(0) < PROGRAM_MIN_PAIRS || p.size(1) != 2 ||
          p.scalar_type() != torch::kInt64 || s.dim() != 2 || s.size(0) != p.size(0) || s.size(1) != 3)
        return {};
    }
    if (positions.scalar_type() != torch::kFloat64) return {};
    std::vector<std::string> outputs;
    for (const auto &item : stack.at(ARGUMENT_OUTPUTS).toListRef()) outputs.push_back(item.toStringRef());
    for (const std::string &request : outputs)
      if (layout_.find(detail::output_name(request)) < 0)
        return {};    // the entry point names the declared ones
    const Factors *factors = unit_factors(
        module, stack.at(ARGUMENT_LENGTH_UNIT).toStringRef(), stack.at(ARGUMENT_ENERGY_UNIT).toStringRef(),
        detail::argument(stack, ARGUMENT_QUANTITY_UNITS), positions.device());
    if (factors == nullptr) return {};    // a unit the entry point refuses, with its message
    const auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(positions.device());
    at::Tensor weights;
    std::optional<at::Tensor> selected;
    const torch::jit::IValue selection = stack.at(ARGUMENT_SELECTED_ATOMS);
    if (selection.isNone()) {
      weights = torch::ones({n_atoms}, f64);
    } else {
      selected = std::get<0>(at::_unique(selection.toTensor().to(torch::kInt64), true, false));
      const int64_t count = selected->size(0);
      if (count > 0 &&
          (selected->index({0}).item<int64_t>() < 0 ||
           selected->index({count - 1}).item<int64_t>() >= n_atoms))
        return {};
      const long gradient_index = layout_.gradient.empty() ? -1 : layout_.find(layout_.gradient);
      if (gradient_index >= 0 && !layout_.per_atom[gradient_index]) return {};    // the entry point says why
      weights = torch::zeros({n_atoms}, f64);
      weights.index_fill_(0, *selected, 1.0);
    }
    std::vector<at::Tensor> flat = {positions.contiguous(),
                                    types.to(torch::kInt32).contiguous(),
                                    cells.select(0, 0).contiguous(),
                                    pbcs.select(0, 0).to(torch::kBool).contiguous(),
                                    weights,
                                    factors->length,
                                    factors->outputs};
    for (size_t k = 0; k < pairs.size(); ++k) {
      flat.push_back(pairs.get(k).contiguous());
      flat.push_back(shifts.get(k).to(torch::kInt32).contiguous());
    }
    const std::vector<at::Tensor> values = loader_->run(flat);
    if (!values.at(0).item<bool>()) return {};
    const at::Tensor finite_tensor = values.at(1).to(torch::kCPU).contiguous();
    const bool *finite = finite_tensor.data_ptr<bool>();
    const size_t n_outputs = layout_.outputs.size();

    c10::Dict<std::string, at::Tensor> results;
    std::vector<std::string> requests = outputs;
    const bool forces = stack.at(ARGUMENT_COMPUTE_FORCES).toBool();
    const bool virial = stack.at(ARGUMENT_COMPUTE_VIRIAL).toBool();
    const bool atomic_virial = stack.at(ARGUMENT_COMPUTE_ATOMIC_VIRIAL).toBool();
    if ((forces || virial || atomic_virial) &&
        std::find(requests.begin(), requests.end(), layout_.gradient) == requests.end())
      requests.push_back(layout_.gradient);
    for (const std::string &request : requests) {
      bool per_atom = false;
      const long index = layout_.find(detail::output_name(request, &per_atom));
      if (index < 0 || !finite[index]) return {};
      if (per_atom) {
        const at::Tensor &value = values.at(layout_.index(index));
        results.insert_or_assign(request, selected ? value.index_select(0, *selected) : value);
      } else if (layout_.per_atom[index]) {
        results.insert_or_assign(request, values.at(layout_.sum_index(index)));
      } else {
        results.insert_or_assign(request, values.at(layout_.index(index)));
      }
    }
    const size_t first = layout_.derivative_index();
    const bool several = layout_.gradient_width() > 1;
    const bool flags[3] = {forces, virial, atomic_virial};
    const char *keys[3] = {"forces", "virial", "atomic_virial"};
    for (size_t offset = 0; offset < 3; ++offset) {
      if (!flags[offset]) continue;
      if (!finite[n_outputs + offset]) return {};
      at::Tensor value = values.at(first + offset);
      if (offset == 1) value = value.unsqueeze(several ? 1 : 0);
      results.insert_or_assign(keys[offset], value);
    }
    ++calls_run_;
    return results;
  }

 private:
  struct Factors {
    at::Tensor length;     // [] engine length -> model length
    at::Tensor outputs;    // [n_outputs] model unit -> engine unit of each output of the layout
  };

  // the archive's factors for a set of units, asked once per set and device (core: _unit_factors),
  // on that device (the program's inputs); null where the entry point refuses a unit
  const Factors *unit_factors(torch::jit::Module &module, const std::string &length_unit,
                              const std::string &energy_unit, const torch::jit::IValue &quantity_units,
                              const c10::Device &device)
  {
    std::string key = device.str() + "\n" + length_unit + "\n" + energy_unit + "\n";
    if (quantity_units.isNone()) {
      key += "None";
    } else {
      std::map<std::string, std::string> sorted;
      for (const auto &item : quantity_units.toGenericDict())
        sorted[item.key().toStringRef()] = item.value().toStringRef();
      for (const auto &item : sorted) key += item.first + "=" + item.second + "\n";
    }
    auto found = factors_.find(key);
    if (found != factors_.end()) return &found->second;
    Factors factors;
    try {
      torch::jit::GraphOptimizerEnabledGuard unoptimized(false);
      const auto values =
          module.run_method("output_factors", length_unit, energy_unit, quantity_units).toList();
      const double length = module.run_method("unit_conversion", length_unit, model_length_unit_).toDouble();
      std::vector<double> wanted;
      for (const auto &name : layout_.outputs) {
        const auto at = std::find(declared_.begin(), declared_.end(), name);
        if (at == declared_.end()) return nullptr;
        wanted.push_back(values.get(static_cast<size_t>(at - declared_.begin())).toDouble());
      }
      factors.length = torch::tensor(length, torch::dtype(torch::kFloat64)).to(device);
      factors.outputs = torch::tensor(wanted, torch::dtype(torch::kFloat64)).to(device);
    } catch (const std::exception &) {
      return nullptr;
    }
    return &factors_.emplace(key, std::move(factors)).first->second;
  }

  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> loader_;
  ProgramLayout layout_;
  std::string model_file_;               // the archive it was compiled from (its record's model_file)
  std::string model_length_unit_;        // the model's length unit (capabilities)
  std::vector<std::string> declared_;    // the declared outputs, in output_factors' order
  std::string device_;
  std::map<std::string, Factors> factors_;
  long long calls_run_ = 0;
};

// ---- its code (core: archive.load_model and LoadedModel) -------------------------------------

// How many forward calls run unoptimised on `device` before the switch (UNOPTIMIZED_NEVER: all):
// the environment's OPTIMIZE_AFTER_VARIABLE (N >= 0 or never) when set, else the device's default
// (core: archive.unoptimized_calls)
inline long long unoptimized_calls(const c10::Device &device)
{
  const char *variable = std::getenv(OPTIMIZE_AFTER_VARIABLE);
  const std::string setting = strip(variable == nullptr ? "" : variable);
  if (!setting.empty()) {
    if (setting == "never") return UNOPTIMIZED_NEVER;
    const bool digits =
        std::all_of(setting.begin(), setting.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits && setting.size() < 18) return std::stoll(setting);
    throw ModelFileError(format(OPTIMIZE_AFTER_MESSAGE,
                                {{"variable", OPTIMIZE_AFTER_VARIABLE},
                                 {"value", setting},
                                 {"default", std::to_string(UNOPTIMIZED_CALLS)}}));
  }
  const std::string type = c10::DeviceTypeName(device.type(), true);
  for (size_t k = 0; k < sizeof(DEVICE_UNOPTIMIZED_COUNTS) / sizeof(DEVICE_UNOPTIMIZED_COUNTS[0]); ++k)
    if (type == DEVICE_UNOPTIMIZED_TYPES[k]) return DEVICE_UNOPTIMIZED_COUNTS[k];
  return UNOPTIMIZED_CALLS;
}

// A loaded model (core: archive.LoadedModel). TorchScript's graph executor optimises a method on its
// first calls (a profiling run, then passes over the inlined graph: 0.1-1 s once, for 0-15% faster
// calls later), which short jobs never earn back. So, as in every engine (archive.UNOPTIMIZED_CALLS):
// forward runs unoptimised for its first unoptimized_calls(device) calls (UNOPTIMIZED_CALLS on the
// CPU, all of them on a GPU, or what ATOMPLUG_OPTIMIZE_AFTER says), and from the next one on
// optimised, on a fresh copy of the module loaded from the file's bytes kept since load (torch
// 2.13 goes wrong optimising a method that already ran unoptimised); setup methods (run_method)
// always run unoptimised. The count lives with the loaded model: a model loaded again starts at 0.
// Each call sets the executor's flag (thread-local in torch) and restores it after.
// A compiled package's model answers through its program first (CompiledProgram::call); only the
// calls it hands to TorchScript count as forward calls.
class Model {
 public:
  Model() = default;
  Model(torch::jit::Module module, std::string archive, const c10::Device &device) :
      module_(std::move(module)), archive_(std::move(archive)), device_(device)
  {
    unoptimized_calls_ = atomplug_core::unoptimized_calls(device);
    optimized_ = unoptimized_calls_ == 0;    // from the first call, on this module
    if (optimized_) archive_.clear();
  }

  // the TorchScript module, for what runs none of its code (find_method, schemas)
  const torch::jit::Module &module() const { return module_; }
  bool has_method(const std::string &name) const { return module_.find_method(name).has_value(); }

  // a setup method (format_version, neighbor_requests, unit_conversion, ...): always unoptimised
  template <typename... Types>
  torch::jit::IValue run_method(const std::string &name, Types &&...arguments)
  {
    torch::jit::GraphOptimizerEnabledGuard unoptimized(false);
    return module_.run_method(name, std::forward<Types>(arguments)...);
  }

  // one call of the entry point (core: LoadedModel.forward)
  torch::jit::IValue forward(std::vector<torch::jit::IValue> stack)
  {
    if (compiled_) {
      std::optional<c10::Dict<std::string, at::Tensor>> results = compiled_->call(module_, stack);
      if (results) return torch::jit::IValue(std::move(*results));
    }
    ++forward_calls_;
    if (unoptimized_calls_ != UNOPTIMIZED_NEVER && forward_calls_ > unoptimized_calls_ && !archive_.empty()) {
      std::string archive;
      archive.swap(archive_);    // dropped at the switch, whatever happens
      torch::jit::Module fresh = load(archive, device_);
      fresh.eval();
      module_ = std::move(fresh);
      optimized_ = true;
    }
    torch::jit::GraphOptimizerEnabledGuard guard(optimized_);
    return module_.forward(std::move(stack));
  }

  long long forward_calls() const { return forward_calls_; }            // calls TorchScript answered
  long long unoptimized_calls() const { return unoptimized_calls_; }    // before the switch (or NEVER)
  bool optimized() const { return optimized_; }    // whether forward runs optimised, on the copy

  // a compiled package's program (null for a model archive)
  const CompiledProgram *compiled() const { return compiled_.get(); }
  void set_compiled(std::shared_ptr<CompiledProgram> compiled) { compiled_ = std::move(compiled); }
  long long compiled_calls() const { return compiled_ ? compiled_->calls_run() : 0; }
  // one line for the engine's log: "compiled package (AOTInductor, cpu, torch 2.13.0+cpu)", or ""
  std::string package_description() const
  {
    if (!compiled_) return "";
    return "compiled package (AOTInductor, " + compiled_->device() + ", torch " + BUILD_TORCH_VERSION + ")";
  }

  // the module held in `archive` (a model file's bytes), on `device`
  static torch::jit::Module load(const std::string &archive, const c10::Device &device)
  {
    std::istringstream stream(archive);
    return torch::jit::load(stream, device);
  }

 private:
  torch::jit::Module module_;
  std::string archive_;    // the file's bytes, until the switch
  c10::Device device_ = c10::Device(c10::kCPU);
  long long forward_calls_ = 0;
  long long unoptimized_calls_ = UNOPTIMIZED_CALLS;
  bool optimized_ = false;
  std::shared_ptr<CompiledProgram> compiled_;
};

namespace detail {

// the whole file, as bytes (read_header already found it a readable archive)
inline std::string file_bytes(const std::string &path)
{
  std::unique_ptr<std::FILE, int (*)(std::FILE *)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw std::runtime_error(std::strerror(errno));
  std::string bytes;
  char buffer[1 << 16];
  size_t read;
  while ((read = std::fread(buffer, 1, sizeof(buffer), file.get())) > 0) bytes.append(buffer, read);
  if (std::ferror(file.get())) throw std::runtime_error(std::strerror(errno));
  return bytes;
}

// SHA-256 (FIPS 180-4) of `data`, as lowercase hex (Python's hashlib.sha256(...).hexdigest())
inline std::string sha256_hex(const std::string &data)
{
  static const uint32_t K[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotate = [](uint32_t x, int n) {
    return (x >> n) | (x << (32 - n));
  };
  std::string message = data;
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  message += static_cast<char>(0x80);
  while (message.size() % 64 != 56) message += '\0';
  for (int k = 7; k >= 0; --k) message += static_cast<char>((bits >> (8 * k)) & 0xff);
  uint32_t w[64];
  for (size_t block = 0; block < message.size(); block += 64) {
    for (int t = 0; t < 16; ++t) {
      const unsigned char *b = reinterpret_cast<const unsigned char *>(message.data() + block + 4 * t);
      w[t] = (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | uint32_t(b[3]);
    }
    for (int t = 16; t < 64; ++t) {
      const uint32_t s0 = rotate(w[t - 15], 7) ^ rotate(w[t - 15], 18) ^ (w[t - 15] >> 3);
      const uint32_t s1 = rotate(w[t - 2], 17) ^ rotate(w[t - 2], 19) ^ (w[t - 2] >> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; ++t) {
      const uint32_t t1 =
          hh + (rotate(e, 6) ^ rotate(e, 11) ^ rotate(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + w[t];
      const uint32_t t2 = (rotate(a, 2) ^ rotate(a, 13) ^ rotate(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
  }
  char hex[65];
  for (int k = 0; k < 8; ++k) std::snprintf(hex + 8 * k, 9, "%08x", h[k]);
  return std::string(hex, 64);
}

// Python's str() and repr() of a JSON value read from the metadata (a string, null as None, ...)
inline std::string python_str(const Json &value)
{
  if (value.is_string()) return value.get<std::string>();
  if (value.is_null()) return "None";
  if (value.is_boolean()) return value.get<bool>() ? "True" : "False";
  return value.dump();
}

inline std::string python_repr(const Json &value)
{
  return value.is_string() ? quoted(value.get<std::string>()) : python_str(value);
}

// record.get(key): null where the record has no such key
inline Json record_value(const Json &record, const char *key)
{
  return record.is_object() && record.contains(key) ? record[key] : Json();
}

// Whether the release `release` of torch's headers (TORCH_VERSION, "2.13.0") starts the version
// `full` of the Python torch that wrote this header ("2.13.0+cpu", "2.14.0.dev20260101+cu126"): a
// package records the latter (torch.__version__), which the plugins compare in full, as core does.
constexpr bool same_release(const char *full, const char *release)
{
  while (*full && *full != '+' && *release && *full == *release) {
    ++full;
    ++release;
  }
  return *release == '\0';
}
static_assert(same_release(BUILD_TORCH_VERSION, TORCH_VERSION),
              "the plugin is built against the headers of another torch than the Python torch that generated "
              "atomplug_core.h: rebuild the plugin");

// The directories libtorch unpacked compiled packages into (AOTIModelPackageLoader: a fresh
// "aotinductor_XXXXXX" under the temporary directory, holding <top>/data/aotinductor/<model>/*.so)
// whose libraries this process has mapped
inline std::set<std::string> mapped_package_directories()
{
  std::set<std::string> found;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  const std::string inside = "/data/aotinductor/";
  while (std::getline(maps, line)) {
    const size_t start = line.find('/');
    const size_t at = line.find(inside);
    if (start == std::string::npos || at == std::string::npos || at < start) continue;
    const std::string before = line.substr(start, at - start);    // <directory>/<top>
    const size_t top = before.rfind('/');
    if (top == std::string::npos || top == 0) continue;
    const std::string directory = before.substr(0, top);
    const size_t name = directory.rfind('/');
    if (directory.compare(name + 1, 12, "aotinductor_") == 0) found.insert(directory);
  }
  return found;
}

// rm -r `path` (no symbolic link followed), quietly: what cannot be removed stays
inline void remove_tree(const std::string &path)
{
  struct stat status;
  if (lstat(path.c_str(), &status) != 0) return;
  if (S_ISDIR(status.st_mode)) {
    if (DIR *directory = opendir(path.c_str())) {
      std::vector<std::string> entries;
      while (const dirent *entry = readdir(directory)) {
        const std::string name = entry->d_name;
        if (name != "." && name != "..") entries.push_back(path + "/" + name);
      }
      closedir(directory);
      for (const auto &entry : entries) remove_tree(entry);
    }
    rmdir(path.c_str());
  } else {
    unlink(path.c_str());
  }
}

// the model archive of a package: its checks and code, then the code's own declaration
// (load_archive below)
inline Model load_archive(std::string archive, const std::string &path, const c10::Device &device,
                          const Json &header);

}    // namespace detail

// The archive's TorchScript code on `device`, after read_header(path) gave `header`: its entry
// point present, and declaring what its metadata says. Throws ModelFileError with core's words.
// A compiled package (the header has "package") is loaded as core.archive.load_model loads one.
inline Model load_package(const std::string &path, const c10::Device &device, const Json &header);

inline Model load_model(const std::string &path, const c10::Device &device, const Json &header)
{
  if (header.contains("package")) return load_package(path, device, header);
  std::string archive;
  try {
    archive = detail::file_bytes(path);
  } catch (const std::exception &error) {
    refuse(MODEL_FILE_NOT_LOADABLE, path, {{"reason", first_line(error_text(error))}});
  }
  return detail::load_archive(std::move(archive), path, device, header);
}

inline Model detail::load_archive(std::string archive, const std::string &path, const c10::Device &device,
                                  const Json &header)
{
  torch::jit::Module module;
  try {
    module = Model::load(archive, device);
  } catch (const std::exception &error) {
    refuse(MODEL_FILE_NOT_LOADABLE, path, {{"reason", first_line(error_text(error))}});
  }
  for (const char *method : ENTRY_POINT_METHODS)
    if (!module.find_method(method)) refuse(MODEL_FILE_NO_ENTRY_POINT, path, {{"method", method}});
  module.eval();
  Model model(std::move(module), std::move(archive), device);
  if (model.run_method("format_version").toInt() != header["format_version"].get<long long>())
    refuse(MODEL_FILE_VERSION_DISAGREES, path);
  // the entry point converts units and checks outputs with what was compiled into the archive;
  // metadata claiming anything else (an edited or spliced file) would mislead the engine
  const auto compiled = nlohmann::json::parse(model.run_method("capabilities_json").toStringRef());
  if (compiled != nlohmann::json::parse(header["capabilities"].dump()))
    refuse(MODEL_FILE_CAPABILITIES_DISAGREE, path);
  return model;
}

// core: archive.load_model of a package (package.open_package, then load_model_bytes). The
// package's record checked in open_package's order (torch version, device, its archive intact, not
// stale), its native code loaded (libtorch's AOTIModelPackageLoader), then the archive inside it
// loaded as any model file.
inline Model load_package(const std::string &path, const c10::Device &device, const Json &header)
{
  const Json &record = header["package"];
  const Json model_file_value = detail::record_value(record, "model_file");
  const std::string model_file =
      model_file_value.is_null() && !(record.is_object() && record.contains("model_file"))
      ? std::string("MODEL.pt")
      : detail::python_str(model_file_value);
  auto refuse_package = [&](const char *pattern, Fields fields) {
    fields.emplace_back("model_file", model_file);
    fields.emplace_back("fix", format(PACKAGE_FIX, {{"model_file", model_file}}));
    refuse(pattern, path, std::move(fields));
  };
  const Json torch_version = detail::record_value(record, "torch_version");
  if (!(torch_version.is_string() && torch_version.get<std::string>() == BUILD_TORCH_VERSION))
    refuse_package(PACKAGE_TORCH_VERSION,
                   {{"compiled", detail::python_str(torch_version)}, {"running", BUILD_TORCH_VERSION}});
  const std::string wanted = c10::DeviceTypeName(device.type(), true);
  const Json compiled_device = detail::record_value(record, "device");
  if (!(compiled_device.is_string() && compiled_device.get<std::string>() == wanted))
    refuse_package(
        PACKAGE_DEVICE,
        {{"compiled", detail::python_repr(compiled_device)}, {"wanted", quoted(wanted)}, {"device", wanted}});
  // the archive inside, intact (the SHA-256 the package recorded)
  std::string archive;
  bool found = false;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    if (reader.hasRecord(PACKAGE_MODEL_RECORD)) {
      at::DataPtr data;
      size_t size = 0;
      std::tie(data, size) = reader.getRecord(PACKAGE_MODEL_RECORD);
      archive.assign(static_cast<const char *>(data.get()), size);
      found = true;
    }
  } catch (const std::exception &) {
    found = false;
  }
  const Json digest = detail::record_value(record, "model_sha256");
  if (!found || !digest.is_string() || detail::sha256_hex(archive) != digest.get<std::string>())
    refuse_package(PACKAGE_DAMAGED, {});
  // stale: the model it was compiled from, still next to it, is no longer the model inside it
  const bool named = model_file_value.is_string()
      ? !model_file_value.get<std::string>().empty()
      : !(model_file_value.is_null() || model_file_value == false || model_file_value == 0);
  if (named) {
    std::string directory = path;
    if (directory.empty() || directory[0] != '/') {
      char cwd[4096];
      if (getcwd(cwd, sizeof(cwd)) != nullptr) directory = std::string(cwd) + "/" + directory;
    }
    directory = directory.substr(0, directory.rfind('/'));
    const std::string sibling = model_file[0] == '/' ? model_file : directory + "/" + model_file;
    struct stat status;
    if (stat(sibling.c_str(), &status) == 0 && S_ISREG(status.st_mode)) {
      std::string bytes;
      try {
        bytes = detail::file_bytes(sibling);
      } catch (const std::exception &) {
        bytes = archive;    // unreadable: Python's open() would raise; nothing to compare
      }
      if (bytes != archive) refuse_package(PACKAGE_STALE, {});
    }
  }
  std::shared_ptr<torch::inductor::AOTIModelPackageLoader> loader;
  const std::set<std::string> mapped = detail::mapped_package_directories();
  try {
    loader = std::make_shared<torch::inductor::AOTIModelPackageLoader>(
        path, "model", false, 1, device.has_index() ? device.index() : -1);
  } catch (const std::exception &error) {
    refuse_package(PACKAGE_NOT_LOADABLE, {{"reason", first_line(error_text(error))}});
  }
  // libtorch unpacked the native code into a directory of its own, removed when the loader is
  // destroyed: an engine that ends on an error (exit, MPI_Abort) or is killed would leave it behind.
  // On the CPU nothing is read from it after loading: it goes now (its library stays mapped).
  if (wanted == "cpu")
    for (const std::string &directory : detail::mapped_package_directories())
      if (mapped.count(directory) == 0) detail::remove_tree(directory);
  ProgramLayout layout;
  try {
    layout = ProgramLayout::from_json(record.at("layout"));
  } catch (const std::exception &) {
    refuse_package(PACKAGE_DAMAGED, {});    // (Python stops at the missing key)
  }
  // the archive: every check of a model file (its metadata read from its own bytes)
  const Json archive_header = read_header_bytes(archive, path);
  Model model = detail::load_archive(std::move(archive), path, device, archive_header);
  std::vector<std::string> declared;
  for (const auto &item : archive_header["capabilities"]["outputs"].items()) declared.push_back(item.key());
  model.set_compiled(std::make_shared<CompiledProgram>(
      std::move(loader), std::move(layout), record.contains("model_file") ? model_file : path,
      archive_header["capabilities"]["length_unit"].get<std::string>(), std::move(declared), wanted));
  return model;
}

// Whether the archive's entry point takes `argument` (archives exported before an argument with a
// default existed lack it; entry_point_stack() leaves such arguments out unless they are set)
inline bool entry_point_accepts(const Model &model, const std::string &argument)
{
  for (const auto &known : model.module().get_method("forward").function().getSchema().arguments())
    if (known.name() == argument) return true;
  return false;
}

// ---- the model's device: inputs there in one copy, results back in one (core: runner) ----------

// An engine's per-step tensors cross to an accelerator in one copy each way, as the Python runner's
// do: the host tensors of a call are packed into one host buffer (pinned for CUDA) at 16-byte
// aligned offsets, sent in one transfer, and the device tensors are typed views of that copy; the
// results the engine reads are flattened into one float64 tensor on the device and come back in
// one copy, as views again. On the CPU nothing is packed or copied (the host tensors are the
// inputs), unless the environment sets ATOMPLUG_ONE_COPY=1: then the CPU packs and copies as a GPU
// would, which is how the tests check the offsets and views on machines without one.
class DeviceTransfer {
 public:
  DeviceTransfer() = default;
  explicit DeviceTransfer(const c10::Device &device) : device_(device)
  {
    const char *setting = std::getenv("ATOMPLUG_ONE_COPY");
    packs_ = !device.is_cpu() || (setting != nullptr && std::string(setting) == "1");
  }

  const c10::Device &device() const { return device_; }
  bool packs() const { return packs_; }         // whether calls cross in one copy each way
  long long calls() const { return calls_; }    // to_device calls that packed
  long long copies_in() const { return copies_in_; }
  long long copies_out() const { return copies_out_; }

  // the host tensors (any dtype and shape), on the device: views of one copy when packing
  std::vector<torch::Tensor> to_device(const std::vector<torch::Tensor> &host)
  {
    std::vector<torch::Tensor> sent;
    sent.reserve(host.size());
    if (!packs_) {
      for (const auto &tensor : host) sent.push_back(tensor.to(device_));
      return sent;
    }
    std::vector<torch::Tensor> parts;
    std::vector<int64_t> offsets;
    int64_t total = 0;
    for (const auto &tensor : host) {
      parts.push_back(tensor.to(torch::kCPU).contiguous());
      offsets.push_back(total);
      total += aligned((int64_t) parts.back().nbytes());
    }
    if (staging_.numel() < total) {
      auto options = torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(device_.is_cuda());
      staging_ = torch::empty({std::max<int64_t>(total, staging_.numel() * 3 / 2)}, options);
    }
    uint8_t *base = staging_.data_ptr<uint8_t>();
    for (size_t k = 0; k < parts.size(); ++k)
      if (parts[k].nbytes() > 0) std::memcpy(base + offsets[k], parts[k].data_ptr(), parts[k].nbytes());
    // a blocking copy: the staging buffer is refilled at the next call
    torch::Tensor arrived = staging_.narrow(0, 0, total).to(device_, /*non_blocking=*/false, /*copy=*/true);
    ++calls_;
    ++copies_in_;
    for (size_t k = 0; k < parts.size(); ++k) {
      const int64_t bytes = (int64_t) parts[k].nbytes();
      sent.push_back(
          arrived.narrow(0, offsets[k], bytes).view(parts[k].scalar_type()).view(parts[k].sizes()));
    }
    return sent;
  }

  // device tensors as float64 host tensors of the same shapes: views of one copy when packing
  std::vector<torch::Tensor> to_host(const std::vector<torch::Tensor> &results)
  {
    std::vector<torch::Tensor> received;
    received.reserve(results.size());
    if (!packs_) {
      for (const auto &tensor : results)
        received.push_back(tensor.detach().to(torch::kCPU, torch::kFloat64).contiguous());
      return received;
    }
    std::vector<torch::Tensor> flat;
    for (const auto &tensor : results) flat.push_back(tensor.detach().to(torch::kFloat64).reshape({-1}));
    torch::Tensor all = flat.empty()
        ? torch::zeros({0}, torch::kFloat64)
        : torch::cat(flat).to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);
    ++copies_out_;
    int64_t start = 0;
    for (const auto &tensor : results) {
      received.push_back(all.narrow(0, start, tensor.numel()).view(tensor.sizes()));
      start += tensor.numel();
    }
    return received;
  }

  // for the engine's log: "inputs to cuda and results back: 1000 calls, 1000 copies in, 1000 out"
  std::string summary() const
  {
    if (!packs_ || calls_ == 0) return "";
    return "inputs to " + device_.str() + " and results back: " + std::to_string(calls_) + " calls, " +
        std::to_string(copies_in_) + " copies in, " + std::to_string(copies_out_) + " out";
  }

 private:
  static int64_t aligned(int64_t bytes) { return (bytes + 15) / 16 * 16; }

  c10::Device device_ = c10::Device(c10::kCPU);
  bool packs_ = false;
  torch::Tensor staging_ = torch::empty({0}, torch::kUInt8);
  long long calls_ = 0, copies_in_ = 0, copies_out_ = 0;
};

// ---- what the metadata declares, typed -------------------------------------------------------

struct Output {
  std::string name, quantity, unit;
  bool per_atom = false;
  std::vector<std::string> properties;
};

// What a model declares (its metadata, which load_model found equal to its code's declaration)
struct Declaration {
  std::vector<Output> outputs;    // in the order of the file
  std::vector<std::string> supported_devices;
  std::string length_unit;
  double interaction_range = 0.0;
  bool ghost_exchange = false;    // the model calls system.exchange_ghosts after its layers
  std::string name, description;
  std::vector<std::string> authors, references;

  const Output *output(const std::string &wanted) const
  {
    for (const auto &output : outputs)
      if (output.name == wanted) return &output;
    return nullptr;
  }
  std::vector<std::string> output_names() const
  {
    std::vector<std::string> names;
    for (const auto &output : outputs) names.push_back(output.name);
    return names;
  }
};

inline Declaration declaration(const Json &header)
{
  const Json &capabilities = header["capabilities"];
  const Json &metadata = header["metadata"];
  Declaration declared;
  for (const auto &item : capabilities["outputs"].items()) {
    const Json &value = item.value();
    declared.outputs.push_back({item.key(), value["quantity"].get<std::string>(),
                                value["unit"].get<std::string>(), value["per_atom"].get<bool>(),
                                value.value("properties", std::vector<std::string>())});
  }
  declared.supported_devices = capabilities["supported_devices"].get<std::vector<std::string>>();
  declared.length_unit = capabilities["length_unit"].get<std::string>();
  declared.interaction_range = capabilities["interaction_range"].get<double>();
  declared.ghost_exchange = capabilities.value("ghost_exchange", false);
  declared.name = metadata.value("name", std::string());
  declared.description = metadata.value("description", std::string());
  declared.authors = metadata.value("authors", std::vector<std::string>());
  declared.references = metadata.value("references", std::vector<std::string>());
  return declared;
}

inline std::string join(const std::vector<std::string> &items, const std::string &separator)
{
  std::string out;
  for (size_t k = 0; k < items.size(); ++k) out += (k > 0 ? separator : "") + items[k];
  return out;
}

}    // namespace atomplug_core
