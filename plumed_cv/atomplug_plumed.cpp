// ATOMPLUG: an atomplug model as a PLUMED collective variable.
//
// This file only moves memory and maps names. Positions, cell and types go into the model's engine
// entry point (AtomisticModel.forward, TorchScript, written once in atomplug.core); values, forces
// and virial come out. Units are converted by the archive's own unit table; the neighbor pairs the
// model asks for come from vesin (the core's neighbor-list library) for the atoms PLUMED passes.
//
//   LOAD FILE=<atomplug plugin-path plumed>
//   cv: ATOMPLUG MODEL=model.pt SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1
//   PRINT ARG=cv FILE=COLVAR
//
// Conventions: the CV's derivative with respect to positions is -forces; the box derivative PLUMED
// wants (d CV / d box, contracted with the box: -sum_i r_i (x) dCV/dr_i for a CV without PBC) is
// the entry point's virial W = -dCV/d(strain), in the same index order.

#include "core/ActionRegister.h"
#include "core/Colvar.h"
#include "core/PlumedMain.h"
#include "tools/Pbc.h"
#include "tools/Units.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>
#pragma GCC diagnostic pop

#include "vesin.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#ifndef ATOMPLUG_VESIN_LIBRARY
#define ATOMPLUG_VESIN_LIBRARY "libvesin.so"
#endif

static_assert(sizeof(size_t) == sizeof(int64_t), "vesin pairs are read as int64");
static_assert(sizeof(PLMD::Vector) == 3 * sizeof(double), "PLMD::Vector must be three packed doubles");
static_assert(std::is_standard_layout<PLMD::Vector>::value, "PLMD::Vector must be standard layout");

namespace PLMD {
namespace atomplug {

namespace {

const char* const METADATA_FILE = "atomplug-metadata.json";
const long long FORMAT_VERSION = 1;

// ---- a small JSON reader, for the metadata header stored in the archive -------------------------

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool boolean = false;
  double number = 0.0;
  std::string text;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  const Json* find(const std::string& key) const {
    for (const auto& member : members) {
      if (member.first == key) return &member.second;
    }
    return nullptr;
  }
};

class JsonReader {
public:
  explicit JsonReader(const std::string& input): input_(input) {}

  Json document() {
    Json value = read();
    skip();
    if (position_ != input_.size()) fail("trailing characters");
    return value;
  }

private:
  const std::string& input_;
  size_t position_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error("invalid JSON (" + what + " at offset " + std::to_string(position_) + ")");
  }

  void skip() {
    while (position_ < input_.size() && std::isspace(static_cast<unsigned char>(input_[position_]))) position_++;
  }

  char peek() {
    skip();
    if (position_ >= input_.size()) fail("unexpected end");
    return input_[position_];
  }

  void expect(const char* word) {
    size_t length = std::strlen(word);
    if (input_.compare(position_, length, word) != 0) fail(std::string("expected '") + word + "'");
    position_ += length;
  }

  static void append_utf8(std::string& out, unsigned code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  unsigned hex4() {
    if (position_ + 4 > input_.size()) fail("short \\u escape");
    unsigned code = 0;
    for (int k = 0; k < 4; k++) {
      char c = input_[position_++];
      code <<= 4;
      if (c >= '0' && c <= '9') code |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') code |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') code |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return code;
  }

  std::string string() {
    if (peek() != '"') fail("expected a string");
    position_++;
    std::string out;
    while (true) {
      if (position_ >= input_.size()) fail("unterminated string");
      char c = input_[position_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (position_ >= input_.size()) fail("unterminated escape");
      char e = input_[position_++];
      switch (e) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': {
        unsigned code = hex4();
        if (code >= 0xD800 && code < 0xDC00 && input_.compare(position_, 2, "\\u") == 0) {
          position_ += 2;
          unsigned low = hex4();
          code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
        }
        append_utf8(out, code);
        break;
      }
      default: fail("bad escape");
      }
    }
  }

  Json read() {
    Json value;
    char c = peek();
    if (c == '{') {
      value.kind = Json::Object;
      position_++;
      if (peek() == '}') {
        position_++;
        return value;
      }
      while (true) {
        std::string key = string();
        if (peek() != ':') fail("expected ':'");
        position_++;
        value.members.emplace_back(key, read());
        char next = peek();
        position_++;
        if (next == '}') return value;
        if (next != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      value.kind = Json::Array;
      position_++;
      if (peek() == ']') {
        position_++;
        return value;
      }
      while (true) {
        value.items.push_back(read());
        char next = peek();
        position_++;
        if (next == ']') return value;
        if (next != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      value.kind = Json::String;
      value.text = string();
    } else if (c == 't') {
      expect("true");
      value.kind = Json::Bool;
      value.boolean = true;
    } else if (c == 'f') {
      expect("false");
      value.kind = Json::Bool;
    } else if (c == 'n') {
      expect("null");
    } else {
      size_t start = position_;
      while (position_ < input_.size() && std::strchr("+-0123456789.eE", input_[position_]) != nullptr) position_++;
      if (start == position_) fail("unexpected character");
      value.kind = Json::Number;
      value.number = std::stod(input_.substr(start, position_ - start));
    }
    return value;
  }
};

// Same JSON value (objects compared key by key, in any order).
bool same_json(const Json& a, const Json& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Json::Null: return true;
    case Json::Bool: return a.boolean == b.boolean;
    case Json::Number: return a.number == b.number;
    case Json::String: return a.text == b.text;
    case Json::Array:
      if (a.items.size() != b.items.size()) return false;
      for (size_t k = 0; k < a.items.size(); k++) {
        if (!same_json(a.items[k], b.items[k])) return false;
      }
      return true;
    case Json::Object:
      if (a.members.size() != b.members.size()) return false;
      for (const auto& member : a.members) {
        const Json* other = b.find(member.first);
        if (other == nullptr || !same_json(member.second, *other)) return false;
      }
      return true;
  }
  return false;
}

std::vector<std::string> string_list(const Json* value) {
  std::vector<std::string> out;
  if (value != nullptr) {
    for (const auto& item : value->items) out.push_back(item.text);
  }
  return out;
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t k = 0; k < items.size(); k++) {
    if (k > 0) out += separator;
    out += items[k];
  }
  return out;
}

// TorchScript errors carry the interpreter's traceback; users need the model's message.
std::string clean_error(const std::string& text) {
  std::string found;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    for (const char* marker : {"builtins.ValueError: ", "ValueError: ", "RuntimeError: ", "builtins.RuntimeError: "}) {
      size_t at = line.find(marker);
      if (at != std::string::npos) {
        found = line.substr(at + std::strlen(marker));
        break;
      }
    }
  }
  if (!found.empty()) return found;
  std::string first;
  std::istringstream again(text);
  while (std::getline(again, line)) {
    if (line.find_first_not_of(" \t") != std::string::npos) {
      first = line;
      break;
    }
  }
  return first.empty() ? text : first;
}

// The one line for an error raised while the entry point ran, as atomplug.core.model's
// describe_model_error words it: atomplug's own checks (ValueError) name the fix and are given as
// they are; anything else (a model's `raise RuntimeError(...)`) is said to be the model's.
std::string model_error(const std::string& text) {
  std::string kind;
  std::string message;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    const size_t first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line.compare(first, 9, "builtins.") == 0) {
      const size_t colon = line.find(": ", first);
      if (colon != std::string::npos) {
        kind = line.substr(first + 9, colon - first - 9);
        message = line.substr(colon + 2);
      }
    }
  }
  if (kind.empty()) {
    return "the model failed: " + clean_error(text) + " (an error inside the model: check its input, or ask its authors)";
  }
  if (kind == "ValueError") return message;
  return "the model's own code raised " + kind + ": " + message +
         " (the model refuses this input: see its documentation for what it supports, or ask its authors)";
}

// PLUMED's own units are multiples of nm and kJ/mol; the archive's unit parser reads such products.
std::string unit_expression(double factor, const char* base) {
  if (factor == 1.0) return base;
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.17g*", factor);
  return std::string(buffer) + base;
}

bool valid_component_name(const std::string& name) {
  if (name.empty()) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_')) return false;
  }
  return true;
}

// vesin's C library, looked up in that library only. The PLUMED kernel exports functions with the
// same names (an older vesin, built into its metatomic module, with another API): linking to
// libvesin.so would let the kernel's copy interpose, so the library is opened with RTLD_LOCAL.
struct Vesin {
  using Neighbors = decltype(&vesin_neighbors);
  using Free = decltype(&vesin_free);
  Neighbors neighbors = nullptr;
  Free free = nullptr;
  std::string error;

  Vesin() {
    void* handle = nullptr;
    std::string tried;
    for (const char* name : {ATOMPLUG_VESIN_LIBRARY, "libvesin.so"}) {
      handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (handle != nullptr) break;
      const char* reason = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (reason ? reason : name);
    }
    if (handle == nullptr) {
      error = "cannot load vesin's C library (" + tried + "): pip install vesin, then rebuild the plugin";
      return;
    }
    neighbors = reinterpret_cast<Neighbors>(dlsym(handle, "vesin_neighbors"));
    free = reinterpret_cast<Free>(dlsym(handle, "vesin_free"));
    if (neighbors == nullptr || free == nullptr) error = "vesin's C library lacks vesin_neighbors/vesin_free";
  }
};

const Vesin& vesin_library() {
  static const Vesin library;
  return library;
}

}  // namespace

//+PLUMEDOC COLVAR ATOMPLUG
/*
Use an exported atomplug model as a collective variable.

The model sees the atoms listed in the numbered SPECIES keywords (in increasing atom number), with
the model types given by SPECIES_TO_TYPES (default: i for SPECIESi). A per-structure output with one
property is the value of the action; with several properties each one is a component, named after
the property when the model names them (otherwise .0, .1, ...).
*/
//+ENDPLUMEDOC

class Atomplug : public Colvar {
public:
  static void registerKeywords(Keywords& keys);
  explicit Atomplug(const ActionOptions&);
  ~Atomplug() override;
  void calculate() override;

private:
  struct Request {
    double cutoff;
    bool full_list;
    double skin;
  };

  torch::jit::Module model_;
  torch::Device device_ = torch::kCPU;
  std::string output_;
  std::string length_unit_;
  std::string energy_unit_;
  std::vector<Request> requests_;
  std::vector<VesinNeighborList> lists_;
  std::vector<Value*> values_;
  unsigned n_properties_ = 1;
  bool use_pbc_ = true;
  bool last_periodic_ = false;
  bool has_selection_ = false;
  double last_box_[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};

  // inputs of the entry point that do not change from step to step
  torch::Tensor types_;
  torch::Tensor cells_;
  torch::Tensor pbcs_;
  torch::Tensor sizes_;
  torch::Tensor selected_;
  c10::List<std::string> outputs_;

  torch::jit::IValue call(const torch::Tensor& positions, bool periodic, bool forces, bool virial);
};

PLUMED_REGISTER_ACTION(Atomplug, "ATOMPLUG")

void Atomplug::registerKeywords(Keywords& keys) {
  Colvar::registerKeywords(keys);
  keys.add("compulsory", "MODEL", "the exported atomplug model file (atomplug.core.export)");
  keys.add("numbered", "SPECIES", "the atoms of each species: SPECIES1=..., SPECIES2=...; the model sees these atoms only");
  keys.reset_style("SPECIES", "atoms");
  keys.add("optional", "SPECIES_TO_TYPES", "the model's atom type for each SPECIES keyword, in order (default: 1, 2, ...)");
  keys.add("compulsory", "OUTPUT", "features", "the model output to use as the collective variable");
  keys.add("atoms", "SELECTED_ATOMS", "compute the output for these atoms only (they must be listed in SPECIES): the model's per-atom values are summed over them");
  keys.add("compulsory", "DEVICE", "cpu", "the torch device to run the model on (cpu, cuda, cuda:1, ...)");
  keys.add("optional", "SKIN", "Verlet skin of the neighbor lists (PLUMED length unit; default: a tenth of each "
           "list's cutoff; 0 rebuilds every step): lists are rebuilt only when an atom moved more than half "
           "of it, and are cut to the model's cutoff at every step");
  if (!keys.exists("NOPBC")) {
    keys.addFlag("NOPBC", false, "ignore the periodic box: the model sees a non-periodic system");
  }
  keys.setValueDescription("scalar", "the model output, when it has a single property");
  // one component per property of a multi-property output: named after the properties when the
  // model names them (and the names are valid PLUMED component names), otherwise 0, 1, ...
  ActionWithValue::useCustomisableComponents(keys);
}

Atomplug::Atomplug(const ActionOptions& options):
  PLUMED_COLVAR_INIT(options) {
  // ---- the model file: an atomplug archive, loaded with TorchScript only ----
  std::string path;
  parse("MODEL", path);
  if (path.empty()) error("MODEL is required: the path of an exported atomplug model");
  {
    std::ifstream probe(path, std::ios::binary);
    if (!probe.good()) {
      error("model file '" + path + "' does not exist or cannot be read: export one with "
            "atomplug.core.export() (see `atomplug export-example`)");
    }
    char magic[4] = {0, 0, 0, 0};
    probe.read(magic, 4);
    const std::streamsize read = probe.gcount();
    if (read == 0) {
      error("'" + path + "' is empty (0 bytes), not an atomplug model: an export or a copy did not finish; "
            "export the model again");
    }
    if (read != 4 || magic[0] != 'P' || magic[1] != 'K' || magic[2] != 3 || magic[3] != 4) {
      error("'" + path + "' could not be loaded by TorchScript: it is not a TorchScript archive, so not an "
            "atomplug model (export models with atomplug.core.export())");
    }
  }
  // The metadata first, read with the archive reader alone: nothing in a file that is not an
  // atomplug model (e.g. a torch.save pickle) is ever unpickled.
  std::string header_text;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = std::string("extra/") + METADATA_FILE;
    if (reader.hasRecord(record)) {
      at::DataPtr data;
      size_t size = 0;
      std::tie(data, size) = reader.getRecord(record);
      header_text.assign(static_cast<const char*>(data.get()), size);
    }
  } catch (const std::exception& e) {
    error("'" + path + "' is a corrupt or truncated archive (" + clean_error(e.what()) +
          "): export or copy the model again");
  }
  if (header_text.empty()) {
    error("'" + path + "' is a zip or TorchScript archive without atomplug metadata, not an atomplug model: "
          "wrap and export the module with atomplug.core.export()");
  }
  std::string device_name;
  parse("DEVICE", device_name);
  try {
    device_ = torch::Device(device_name);
  } catch (const std::exception& e) {
    error("DEVICE='" + device_name + "' is not a torch device (use cpu, cuda or cuda:N)");
  }
  if (device_.is_cuda() && !torch::cuda::is_available()) {
    error("DEVICE=" + device_name + " asked, but torch " + std::string(TORCH_VERSION) +
          " sees no CUDA device: use DEVICE=cpu");
  }

  Json header;
  try {
    header = JsonReader(header_text).document();
  } catch (const std::exception& e) {
    error("'" + path + "' has unreadable atomplug metadata (" + e.what() + "): export the model again");
  }
  const Json* format = header.find("format");
  const Json* version = header.find("format_version");
  const Json* capabilities = header.find("capabilities");
  const Json* metadata = header.find("metadata");
  if (format == nullptr || format->text != "atomplug" || version == nullptr || version->kind != Json::Number ||
      capabilities == nullptr || capabilities->kind != Json::Object) {
    error("'" + path + "' has metadata that is not atomplug's: export the model with atomplug.core.export()");
  }
  if (version->number > static_cast<double>(FORMAT_VERSION)) {
    error("'" + path + "' was written in atomplug model format " + std::to_string(static_cast<long long>(version->number)) +
          ", newer than this ATOMPLUG action understands (" + std::to_string(FORMAT_VERSION) +
          "): update atomplug and rebuild the plugin");
  }
  try {
    model_ = torch::jit::load(path, device_);
  } catch (const std::exception& e) {
    error("'" + path + "' could not be loaded by TorchScript " + std::string(TORCH_VERSION) + " (" +
          clean_error(e.what()) + "): is it an atomplug model exported with a compatible torch?");
  }
  for (const char* method : {"neighbor_requests", "unit_conversion", "atomic_types", "capabilities_json", "forward"}) {
    if (!model_.find_method(method)) {
      error("'" + path + "' lacks the atomplug entry point (" + std::string(method) + "): export the model again");
    }
  }
  model_.eval();
  // The entry point converts units and checks outputs with what was compiled into the archive:
  // metadata claiming anything else (an edited or spliced file) would mislead this action.
  bool same_capabilities = false;
  try {
    Json compiled = JsonReader(model_.run_method("capabilities_json").toStringRef()).document();
    same_capabilities = same_json(compiled, *capabilities);
  } catch (const std::exception& e) {
    same_capabilities = false;
  }
  if (!same_capabilities) {
    error("'" + path + "': its metadata declares other outputs, units or types than its code (the file was edited "
          "or assembled by hand): export the model again with atomplug.core.export()");
  }

  log.printf("  atomplug model %s\n", path.c_str());
  if (metadata != nullptr) {
    const Json* name = metadata->find("name");
    const Json* description = metadata->find("description");
    if (name != nullptr && !name->text.empty()) log.printf("  name: %s\n", name->text.c_str());
    if (description != nullptr && !description->text.empty()) log.printf("  description: %s\n", description->text.c_str());
    std::vector<std::string> authors = string_list(metadata->find("authors"));
    if (!authors.empty()) log.printf("  authors: %s\n", join(authors, ", ").c_str());
    for (const auto& reference : string_list(metadata->find("references"))) {
      log << "  please cite " << cite(reference) << "\n";
    }
  }

  std::vector<std::string> devices = string_list(capabilities->find("supported_devices"));
  if (std::find(devices.begin(), devices.end(), device_.is_cpu() ? std::string("cpu") : std::string(c10::DeviceTypeName(device_.type(), true))) == devices.end()) {
    error("the model supports devices [" + join(devices, ", ") + "], not '" + device_name + "'");
  }

  // ---- the output: a per-structure value, one component per property ----
  parse("OUTPUT", output_);
  const Json* outputs = capabilities->find("outputs");
  std::vector<std::string> output_names;
  const Json* declared = nullptr;
  if (outputs != nullptr) {
    for (const auto& member : outputs->members) {
      output_names.push_back(member.first);
      if (member.first == output_) declared = &member.second;
    }
  }
  if (declared == nullptr) {
    error("the model has no output '" + output_ + "' (it declares: " + join(output_names, ", ") +
          "): set OUTPUT to one of those");
  }
  std::vector<std::string> properties = string_list(declared->find("properties"));
  n_properties_ = properties.empty() ? 1 : static_cast<unsigned>(properties.size());
  const Json* quantity = declared->find("quantity");
  const Json* unit = declared->find("unit");
  log.printf("  output '%s'%s%s, %u propert%s\n", output_.c_str(),
             (quantity != nullptr && !quantity->text.empty()) ? (" (" + quantity->text + ")").c_str() : "",
             (unit != nullptr && !unit->text.empty()) ? (" [model unit " + unit->text + "]").c_str() : "",
             n_properties_, n_properties_ == 1 ? "y" : "ies");

  // ---- atoms and their types ----
  std::vector<long long> known_types;
  try {
    for (const auto& item : model_.run_method("atomic_types").toIntList()) known_types.push_back(item);
  } catch (const std::exception& e) {
    error("could not read the model's atomic types: " + clean_error(e.what()));
  }
  std::vector<int> species_to_types;
  parseVector("SPECIES_TO_TYPES", species_to_types);

  std::vector<std::vector<AtomNumber>> species;
  std::vector<AtomNumber> single;
  parseAtomList("SPECIES", single);
  if (!single.empty()) species.push_back(single);
  for (int k = 1;; k++) {
    std::vector<AtomNumber> atoms;
    parseAtomList("SPECIES", k, atoms);
    if (atoms.empty()) break;
    if (!single.empty()) error("use either SPECIES or SPECIES1, SPECIES2, ..., not both");
    species.push_back(atoms);
  }
  if (species.empty()) error("no atoms given: list them with SPECIES1=..., SPECIES2=... (one keyword per species)");
  if (!species_to_types.empty() && species_to_types.size() != species.size()) {
    error("SPECIES_TO_TYPES has " + std::to_string(species_to_types.size()) + " entries for " +
          std::to_string(species.size()) + " SPECIES keywords: give one model type per SPECIES keyword");
  }
  std::map<unsigned, int> type_of_atom;  // PLUMED index -> model type
  for (size_t s = 0; s < species.size(); s++) {
    int type = species_to_types.empty() ? static_cast<int>(s + 1) : species_to_types[s];
    if (std::find(known_types.begin(), known_types.end(), static_cast<long long>(type)) == known_types.end()) {
      std::vector<std::string> known;
      for (auto t : known_types) known.push_back(std::to_string(t));
      error("SPECIES" + std::to_string(s + 1) + " has type " + std::to_string(type) + ", which the model does not know "
            "(it knows " + join(known, ", ") + "): fix SPECIES_TO_TYPES");
    }
    for (const auto& atom : species[s]) {
      if (!type_of_atom.emplace(atom.index(), type).second) {
        error("atom " + std::to_string(atom.serial()) + " is listed in more than one SPECIES keyword");
      }
    }
    log.printf("  model type %d for %zu atom(s) of SPECIES%zu\n", type, species[s].size(), s + 1);
  }
  std::vector<AtomNumber> atoms;
  std::vector<int32_t> types;
  std::map<unsigned, int64_t> model_index;
  for (const auto& entry : type_of_atom) {
    model_index[entry.first] = static_cast<int64_t>(atoms.size());
    atoms.push_back(AtomNumber::index(entry.first));
    types.push_back(entry.second);
  }

  std::vector<AtomNumber> selection;
  parseAtomList("SELECTED_ATOMS", selection);
  std::vector<int64_t> selected;
  for (const auto& atom : selection) {
    auto found = model_index.find(atom.index());
    if (found == model_index.end()) {
      error("SELECTED_ATOMS contains atom " + std::to_string(atom.serial()) +
            ", which is not covered by any SPECIES keyword: the model only sees the SPECIES atoms");
    }
    selected.push_back(found->second);
  }
  has_selection_ = !selected.empty();

  double skin = -1.0;
  parse("SKIN", skin);
  bool nopbc = false;
  parseFlag("NOPBC", nopbc);
  use_pbc_ = !nopbc;
  checkRead();

  // ---- units: PLUMED's, as expressions the archive's unit table reads ----
  if (usingNaturalUnits()) {
    error("ATOMPLUG needs physical units: remove UNITS NATURAL (the model's units are converted to PLUMED's)");
  }
  length_unit_ = unit_expression(getUnits().getLength(), "nm");
  energy_unit_ = unit_expression(getUnits().getEnergy(), "kJ/mol");
  try {
    model_.run_method("unit_conversion", length_unit_, std::string("nm"));
    model_.run_method("unit_conversion", energy_unit_, std::string("kJ/mol"));
    for (const auto& item : model_.run_method("neighbor_requests", length_unit_).toList()) {
      auto tuple = item.get().toTuple();
      double cutoff = tuple->elements()[0].toDouble();
      requests_.push_back({cutoff, tuple->elements()[1].toBool(), skin < 0.0 ? 0.1 * cutoff : skin});
    }
  } catch (const std::exception& e) {
    error("PLUMED units (length " + length_unit_ + ", energy " + energy_unit_ + "): " + clean_error(e.what()));
  }
  log.printf("  PLUMED units passed to the model: length %s, energy %s\n", length_unit_.c_str(), energy_unit_.c_str());
  for (const auto& request : requests_) {
    log.printf("  neighbor list: cutoff %g (PLUMED length unit), %s, skin %g\n", request.cutoff,
               request.full_list ? "full" : "half", request.skin);
  }
  if (!requests_.empty() && !vesin_library().error.empty()) error(vesin_library().error);
  lists_.resize(requests_.size());
  log.printf("  %zu atom(s) passed to the model%s\n", atoms.size(), use_pbc_ ? "" : ", without periodic boundary conditions");
  if (has_selection_) log.printf("  output summed over %zu selected atom(s)\n", selected.size());

  // ---- PLUMED values ----
  if (n_properties_ == 1) {
    addValueWithDerivatives();
    setNotPeriodic();
    values_.push_back(getPntrToValue());
  } else {
    bool named = true;
    std::set<std::string> seen;
    for (const auto& property : properties) {
      if (!valid_component_name(property) || !seen.insert(property).second) named = false;
    }
    for (unsigned k = 0; k < n_properties_; k++) {
      std::string name = named ? properties[k] : std::to_string(k);
      addComponentWithDerivatives(name);
      componentIsNotPeriodic(name);
      values_.push_back(getPntrToComponent(name));
      log.printf("  component %s.%s: property '%s'\n", getLabel().c_str(), name.c_str(), properties[k].c_str());
    }
  }
  requestAtoms(atoms);

  auto int_options = torch::TensorOptions().device(device_);
  types_ = torch::tensor(types, torch::dtype(torch::kInt32)).to(device_);
  cells_ = torch::zeros({1, 3, 3}, torch::dtype(torch::kFloat64));
  pbcs_ = torch::zeros({1, 3}, int_options.dtype(torch::kBool));
  sizes_ = torch::full({1}, static_cast<int64_t>(atoms.size()), int_options.dtype(torch::kInt64));
  if (has_selection_) selected_ = torch::tensor(selected, torch::dtype(torch::kInt64)).to(device_);
  outputs_.push_back(output_);
}

Atomplug::~Atomplug() {
  if (vesin_library().free != nullptr) {
    for (auto& list : lists_) vesin_library().free(&list);
  }
}

torch::jit::IValue Atomplug::call(const torch::Tensor& positions, bool periodic, bool forces, bool virial) {
  const auto& plumed_positions = getPositions();
  const size_t n_atoms = plumed_positions.size();

  double box[3][3] = {{0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}};
  if (periodic) {
    const Tensor& plumed_box = getBox();
    for (unsigned a = 0; a < 3; a++) {
      for (unsigned b = 0; b < 3; b++) box[a][b] = plumed_box(a, b);
    }
  }
  std::memcpy(cells_.data_ptr<double>(), box, sizeof(box));
  const bool new_box = periodic != last_periodic_ || std::memcmp(box, last_box_, sizeof(box)) != 0;
  if (new_box) {
    // vesin's Verlet cache is kept for a fixed cell only: start the lists afresh
    for (auto& list : lists_) {
      vesin_library().free(&list);
      list = VesinNeighborList();
    }
    std::memcpy(last_box_, box, sizeof(box));
    pbcs_.fill_(periodic);
    last_periodic_ = periodic;
  }

  // vesin refuses NaN or infinite positions with its own index; name PLUMED's atom instead
  for (size_t i = 0; i < n_atoms; i++) {
    const Vector& position = plumed_positions[i];
    if (!std::isfinite(position[0]) || !std::isfinite(position[1]) || !std::isfinite(position[2])) {
      plumed_merror("ATOMPLUG " + getLabel() + ": atom " + std::to_string(getAbsoluteIndex(i).serial()) +
                    " has a NaN or infinite position: the trajectory or the MD engine's state is broken (a "
                    "diverging simulation? a bad input file?); fix the positions PLUMED receives");
    }
  }

  c10::List<at::Tensor> pairs;
  c10::List<at::Tensor> shifts;
  const bool periodic_axes[3] = {periodic, periodic, periodic};
  for (size_t k = 0; k < requests_.size(); k++) {
    VesinOptions options;
    options.cutoff = requests_[k].cutoff;
    options.full = requests_[k].full_list;
    options.sorted = false;
    options.algorithm = VesinAutoAlgorithm;
    options.skin = requests_[k].skin;
    options.n_threads = 1;
    options.return_shifts = true;
    options.return_distances = false;
    options.return_vectors = false;
    const char* message = nullptr;
    int status = vesin_library().neighbors(reinterpret_cast<const double(*)[3]>(plumed_positions.data()), n_atoms, box,
                                 periodic_axes, VesinDevice{VesinCPU, 0}, options, &lists_[k], &message);
    if (status != 0) {
      plumed_merror("ATOMPLUG " + getLabel() + ": vesin could not build the neighbor list (cutoff " +
                    std::to_string(requests_[k].cutoff) + "): " + (message ? message : "unknown error"));
    }
    const int64_t length = static_cast<int64_t>(lists_[k].length);
    torch::Tensor pair_tensor;
    torch::Tensor shift_tensor;
    if (length == 0) {
      pair_tensor = torch::zeros({0, 2}, torch::dtype(torch::kInt64));
      shift_tensor = torch::zeros({0, 3}, torch::dtype(torch::kInt32));
    } else {
      pair_tensor = torch::from_blob(lists_[k].pairs, {length, 2}, torch::dtype(torch::kInt64));
      shift_tensor = torch::from_blob(lists_[k].shifts, {length, 3}, torch::dtype(torch::kInt32));
    }
    if (!device_.is_cpu()) {
      pair_tensor = pair_tensor.to(device_);
      shift_tensor = shift_tensor.to(device_);
    }
    pairs.push_back(pair_tensor);
    shifts.push_back(shift_tensor);
  }

  std::vector<torch::jit::IValue> stack;
  stack.reserve(15);
  stack.emplace_back(positions);
  stack.emplace_back(types_);
  stack.emplace_back(device_.is_cpu() ? cells_ : cells_.to(device_));
  stack.emplace_back(pbcs_);
  stack.emplace_back(sizes_);
  stack.emplace_back(pairs);
  stack.emplace_back(shifts);
  stack.emplace_back(outputs_);
  stack.emplace_back(has_selection_ ? torch::jit::IValue(selected_) : torch::jit::IValue());
  stack.emplace_back(output_);
  stack.emplace_back(forces);
  stack.emplace_back(virial);
  stack.emplace_back(false);
  stack.emplace_back(length_unit_);
  stack.emplace_back(energy_unit_);
  return model_.forward(std::move(stack));
}

void Atomplug::calculate() {
  const auto& plumed_positions = getPositions();
  const int64_t n_atoms = static_cast<int64_t>(plumed_positions.size());
  torch::Tensor positions = torch::from_blob(const_cast<Vector*>(plumed_positions.data()), {n_atoms, 3},
                                             torch::dtype(torch::kFloat64));
  if (!device_.is_cpu()) positions = positions.to(device_);
  const bool derivatives = !doNotCalculateDerivatives();
  const bool periodic = use_pbc_ && getPbc().isSet();
  // Without a periodic cell the CV depends on the box only through the positions, and PLUMED's own
  // setBoxDerivativesNoPbc gives the box derivative from the atom derivatives: no strain needed.
  const bool virial_from_model = derivatives && periodic;

  torch::jit::IValue output;
  try {
    output = call(positions, periodic, derivatives, virial_from_model);
  } catch (const PLMD::Exception&) {
    throw;
  } catch (const std::exception& e) {
    std::string message = model_error(e.what());
    if (derivatives && n_properties_ > 1 && message.find("single-valued") != std::string::npos) {
      message += " (this atomplug core computes derivatives of single-valued outputs only: biasing the "
                 "components of a multi-property output needs a newer atomplug; printing them works)";
    }
    plumed_merror("ATOMPLUG " + getLabel() + ": " + message);
  }
  auto results = output.toGenericDict();

  torch::Tensor values = results.at(output_).toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  if (values.dim() != 2 || values.size(0) != 1 || values.size(1) != static_cast<int64_t>(n_properties_)) {
    plumed_merror("ATOMPLUG " + getLabel() + ": the model returned '" + output_ + "' with shape " +
                  c10::str(values.sizes()) + ", expected [1, " + std::to_string(n_properties_) +
                  "]: a multi-property output must declare its properties in ModelOutput(properties=[...])");
  }
  const double* value_data = values.data_ptr<double>();
  for (unsigned k = 0; k < n_properties_; k++) values_[k]->set(value_data[k]);
  if (!derivatives) return;

  torch::Tensor forces = results.at("forces").toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
  if (forces.dim() == 2) forces = forces.unsqueeze(0);  // [N, 3] for a single-valued output
  if (forces.size(0) != static_cast<int64_t>(n_properties_) || forces.size(1) != n_atoms) {
    plumed_merror("ATOMPLUG " + getLabel() + ": unexpected forces shape from the model: " + c10::str(forces.sizes()));
  }
  torch::Tensor virial;
  if (virial_from_model) {
    virial = results.at("virial").toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
    if (virial.dim() == 3) virial = virial.unsqueeze(0);  // [1, 3, 3] for a single-valued output
    if (virial.size(0) != static_cast<int64_t>(n_properties_)) {
      plumed_merror("ATOMPLUG " + getLabel() + ": unexpected virial shape from the model: " + c10::str(virial.sizes()));
    }
  }
  const double* force_data = forces.data_ptr<double>();
  for (unsigned k = 0; k < n_properties_; k++) {
    Value* value = values_[k];
    const double* f = force_data + static_cast<int64_t>(k) * n_atoms * 3;
    for (int64_t i = 0; i < n_atoms; i++) {
      setAtomsDerivatives(value, static_cast<int>(i), Vector(-f[3 * i], -f[3 * i + 1], -f[3 * i + 2]));
    }
    if (virial_from_model) {
      const double* w = virial.data_ptr<double>() + 9 * k;
      setBoxDerivatives(value, Tensor(w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]));
    } else {
      setBoxDerivativesNoPbc(value);
    }
  }
}

}  // namespace atomplug
}  // namespace PLMD
