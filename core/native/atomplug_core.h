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
// Errors are ModelFileError with core's message; each plugin turns it into its engine's error.

#pragma once

#include <caffe2/serialize/inline_container.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
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

// the metadata's text, read with torch's archive reader alone (nothing is unpickled)
inline std::string metadata_text(const std::string &path)
{
  const std::string record = std::string("extra/") + METADATA_FILE;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
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

// ---- its code (core: archive.load_model and LoadedModel) -------------------------------------

// A loaded model (core: archive.LoadedModel). TorchScript's graph executor optimises a method on its
// first calls (a profiling run, then passes over the inlined graph: 0.1-1 s once, for 0-15% faster
// calls later), which short jobs never earn back. So, as in every engine (archive.UNOPTIMIZED_CALLS):
// forward runs unoptimised for its first UNOPTIMIZED_CALLS calls, and from the next one on
// optimised, on a fresh copy of the module loaded from the file's bytes kept since load (torch
// 2.13 goes wrong optimising a method that already ran unoptimised); setup methods (run_method)
// always run unoptimised. The count lives with the loaded model: a model loaded again starts at 0.
// Each call sets the executor's flag (thread-local in torch) and restores it after.
class Model {
 public:
  Model() = default;
  Model(torch::jit::Module module, std::string archive, const c10::Device &device) :
      module_(std::move(module)), archive_(std::move(archive)), device_(device)
  {
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
    ++forward_calls_;
    if (forward_calls_ > UNOPTIMIZED_CALLS && !archive_.empty()) {
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

  long long forward_calls() const { return forward_calls_; }
  bool optimized() const { return optimized_; }    // whether forward runs optimised, on the copy

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
  bool optimized_ = false;
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

}    // namespace detail

// The archive's TorchScript code on `device`, after read_header(path) gave `header`: its entry
// point present, and declaring what its metadata says. Throws ModelFileError with core's words.
inline Model load_model(const std::string &path, const c10::Device &device, const Json &header)
{
  std::string archive;
  torch::jit::Module module;
  try {
    archive = detail::file_bytes(path);
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

// Whether the archive's entry point takes `argument` (archives exported before an argument with a
// default existed lack it; entry_point_stack() leaves such arguments out unless they are set)
inline bool entry_point_accepts(const Model &model, const std::string &argument)
{
  for (const auto &known : model.module().get_method("forward").function().getSchema().arguments())
    if (known.name() == argument) return true;
  return false;
}

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
