// ATOMPLUG: an atomplug model as a PLUMED collective variable.
//
// This file only moves memory and maps names. Positions, cell and types go into the model's engine
// entry point (AtomisticModel.forward, TorchScript, written once in atomplug.core); values, forces
// and virial come out. A compiled package (MODEL=model.pt2, `atomplug compile`) answers through its
// native program where it can (atomplug_core::Model), as in every engine. Units are converted by the
// archive's own unit table; the neighbor pairs the model asks for come from vesin (the core's neighbor-list
// library) for the atoms PLUMED passes. What the action knows about the model file (its checks and their
// words, the entry point's arguments) comes from atomplug_core.h, generated from atomplug.core by the build
// (shared with LAMMPS' pair style).
//
//   LOAD FILE=<atomplug plugin-path plumed>
//   cv: ATOMPLUG MODEL=model.pt SPECIES1=1-10 SPECIES2=11-30 SPECIES_TO_TYPES=8,1
//   PRINT ARG=cv FILE=COLVAR
//
// Model inputs: masses and charges are PLUMED's (those the MD engine passed; `plumed driver` reads
// them with --mc), the total charge and the spin multiplicity come from CHARGE= and SPIN=; they go
// to the entry point in PLUMED's units of mass and charge, which the archive converts. Velocities
// are refused: PLUMED does not receive them. OUTPUT= names the output in full, variants included
// (energy/ccsdt).
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
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include "atomplug_core.h"
#pragma GCC diagnostic pop

#include "atomplug_plumed_units.h"

#include "vesin.h"

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
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

using atomplug_core::join;

// the first line of an exception's text, as atomplug.core.errors.first_line gives it
std::string first_line(const std::exception &e)
{
  return atomplug_core::first_line(atomplug_core::error_text(e));
}

// PLUMED's own units are multiples of nm and kJ/mol; the archive's unit parser reads such products.
std::string unit_expression(double factor, const char *base)
{
  if (factor == 1.0) return base;
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), "%.17g*", factor);
  return std::string(buffer) + base;
}

bool valid_component_name(const std::string &name)
{
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

  Vesin()
  {
    void *handle = nullptr;
    std::string tried;
    for (const char *name : {ATOMPLUG_VESIN_LIBRARY, "libvesin.so"}) {
      handle = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (handle != nullptr) break;
      const char *reason = dlerror();
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

const Vesin &vesin_library()
{
  static const Vesin library;
  return library;
}

}    // namespace

//+PLUMEDOC COLVAR ATOMPLUG
/*
Use an exported atomplug model as a collective variable.

The model sees the atoms listed in the numbered SPECIES keywords (in increasing atom number), with
the model types given by SPECIES_TO_TYPES (default: i for SPECIESi). A per-structure output with one
property is the value of the action; with several properties each one is a component, named after
the property when the model names them (otherwise .0, .1, ...). OUTPUT names a variant in full
(OUTPUT=energy/ccsdt).

A model that asks for inputs gets them from PLUMED: masses and charges of its atoms (as the MD
engine passed them; `plumed driver --mc FILE`), the total charge from CHARGE= and the spin
multiplicity from SPIN=. A model that asks for velocities cannot run in PLUMED.
*/
//+ENDPLUMEDOC

class Atomplug : public Colvar {
 public:
  static void registerKeywords(Keywords &keys);
  explicit Atomplug(const ActionOptions &);
  ~Atomplug() override;
  void calculate() override;

 private:
  struct Request {
    double cutoff;
    bool full_list;
    double skin;
  };
  // the atoms the model sees (PLUMED indices, in increasing order), their model types, and the
  // selected ones among them (model indices)
  struct Atoms {
    std::vector<AtomNumber> atoms;
    std::vector<int32_t> types;
    std::vector<int64_t> selected;
  };

  atomplug_core::Model model_;    // forward: see atomplug_core::Model
  torch::Device device_ = torch::kCPU;
  // each step's tensors to the model's device in one copy and the results back in one (none on the CPU)
  atomplug_core::DeviceTransfer transfer_;
  std::string output_;
  std::string output_quantity_;    // its quantity ("", "energy", "charge", ...)
  std::string length_unit_;
  std::string energy_unit_;
  std::vector<Request> requests_;
  std::vector<VesinNeighborList> lists_;
  std::vector<Value *> values_;
  unsigned n_properties_ = 1;
  bool use_pbc_ = true;
  bool last_periodic_ = false;
  bool has_selection_ = false;
  double last_box_[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};

  // inputs of the entry point that do not change from step to step
  atomplug_core::EntryPointArguments inputs_;

  // the model's requested inputs (most models have none: then none of this runs per step)
  bool has_model_inputs_ = false;
  bool needs_masses_ = false;
  bool needs_charges_ = false;
  std::vector<std::pair<std::string, torch::Tensor>> fixed_inputs_;    // total_charge, spin_multiplicity
  std::vector<std::string> input_names_;

  // the constructor's steps
  atomplug_core::Declaration load_model();
  void choose_device(const std::string &device_name);
  void log_metadata(const atomplug_core::Declaration &declared);
  std::vector<std::string> choose_output(const atomplug_core::Declaration &declared);
  std::string unknown_output(const atomplug_core::Declaration &declared);
  void read_model_inputs();
  Atoms read_atoms();
  std::vector<std::vector<AtomNumber>> read_species();
  void read_units_and_lists(double skin);
  void add_values(const std::vector<std::string> &properties);
  void prepare_inputs(const Atoms &atoms);

  // calculate()'s
  void set_box(bool periodic);
  void check_positions();
  void add_neighbor_lists();
  c10::Dict<std::string, at::Tensor> model_inputs();
  using Results = std::map<std::string, torch::Tensor>;    // name -> float64 host tensor
  Results call(const torch::Tensor &positions, bool periodic, bool forces, bool virial);
  Results run(const torch::Tensor &positions, bool periodic, bool derivatives, bool virial);
  void set_derivatives(const Results &results, bool virial_from_model);
};

PLUMED_REGISTER_ACTION(Atomplug, "ATOMPLUG")

void Atomplug::registerKeywords(Keywords &keys)
{
  Colvar::registerKeywords(keys);
  keys.add("compulsory", "MODEL", "the exported atomplug model file (atomplug.core.export)");
  keys.add("numbered", "SPECIES",
           "the atoms of each species: SPECIES1=..., SPECIES2=...; the model sees these atoms only");
  keys.reset_style("SPECIES", "atoms");
  keys.add("optional", "SPECIES_TO_TYPES",
           "the model's atom type for each SPECIES keyword, in order (default: 1, 2, ...)");
  keys.add("compulsory", "OUTPUT", "features", "the model output to use as the collective variable");
  keys.add(
      "atoms", "SELECTED_ATOMS",
      "compute the output for these atoms only (they must be listed in SPECIES): the model's per-atom values are summed over them");
  keys.add("compulsory", "DEVICE", "cpu", "the torch device to run the model on (cpu, cuda, cuda:1, ...)");
  keys.add("optional", "SKIN",
           "Verlet skin of the neighbor lists (PLUMED length unit; default: a tenth of each "
           "list's cutoff; 0 rebuilds every step): lists are rebuilt only when an atom moved more than half "
           "of it, and are cut to the model's cutoff at every step");
  keys.add("optional", "CHARGE",
           "the total charge of the atoms the model sees (PLUMED charge unit), for a model that asks for it");
  keys.add("optional", "SPIN", "the spin multiplicity 2S+1 (1 for a singlet), for a model that asks for it");
  if (!keys.exists("NOPBC")) {
    keys.addFlag("NOPBC", false, "ignore the periodic box: the model sees a non-periodic system");
  }
  keys.setValueDescription("scalar", "the model output, when it has a single property");
  // one component per property of a multi-property output: named after the properties when the
  // model names them (and the names are valid PLUMED component names), otherwise 0, 1, ...
  ActionWithValue::useCustomisableComponents(keys);
}

Atomplug::Atomplug(const ActionOptions &options) : PLUMED_COLVAR_INIT(options)
{
  const atomplug_core::Declaration declared = load_model();
  log_metadata(declared);
  const std::vector<std::string> properties = choose_output(declared);
  const Atoms atoms = read_atoms();
  read_model_inputs();
  double skin = -1.0;
  parse("SKIN", skin);
  bool nopbc = false;
  parseFlag("NOPBC", nopbc);
  use_pbc_ = !nopbc;
  checkRead();
  read_units_and_lists(skin);
  log.printf("  %zu atom(s) passed to the model%s\n", atoms.atoms.size(),
             use_pbc_ ? "" : ", without periodic boundary conditions");
  if (has_selection_) log.printf("  output summed over %zu selected atom(s)\n", atoms.selected.size());
  add_values(properties);
  requestAtoms(atoms.atoms);
  prepare_inputs(atoms);
}

// The model file, checked and loaded as atomplug.core.archive checks and loads it (atomplug_core.h):
// the metadata first, read with the archive reader alone, so that nothing in a file that is not an
// atomplug model (e.g. a torch.save pickle) is ever unpickled; then the device; then the code.
atomplug_core::Declaration Atomplug::load_model()
{
  std::string path;
  parse("MODEL", path);
  if (path.empty()) error("MODEL is required: the path of an exported atomplug model");
  atomplug_core::Json header;
  try {
    header = atomplug_core::read_header(path);
  } catch (const atomplug_core::ModelFileError &e) {
    error(e.what());
  }
  const atomplug_core::Declaration declared = atomplug_core::declaration(header);
  std::string device_name;
  parse("DEVICE", device_name);
  choose_device(device_name);
  const std::string kind = device_.is_cpu() ? "cpu" : c10::DeviceTypeName(device_.type(), true);
  const auto &devices = declared.supported_devices;
  if (std::find(devices.begin(), devices.end(), kind) == devices.end()) {
    error("the model supports devices [" + join(devices, ", ") + "], not '" + device_name + "'");
  }
  try {
    model_ = atomplug_core::load_model(path, device_, header);
    transfer_ = atomplug_core::DeviceTransfer(device_);
  } catch (const atomplug_core::ModelFileError &e) {
    error(e.what());
  } catch (const std::exception &e) {
    error("the model could not describe itself (" + first_line(e) + ")");
  }
  log.printf("  atomplug model %s\n", path.c_str());
  if (model_.compiled()) log.printf("  %s\n", model_.package_description().c_str());
  return declared;
}

void Atomplug::choose_device(const std::string &device_name)
{
  try {
    device_ = torch::Device(device_name);
  } catch (const std::exception &) {
    error("DEVICE='" + device_name + "' is not a torch device (use cpu, cuda or cuda:N)");
  }
  if (device_.is_cuda() && !torch::cuda::is_available()) {
    error("DEVICE=" + device_name + " asked, but torch " + std::string(TORCH_VERSION) +
          " sees no CUDA device: use DEVICE=cpu");
  }
}

void Atomplug::log_metadata(const atomplug_core::Declaration &declared)
{
  if (!declared.name.empty()) log.printf("  name: %s\n", declared.name.c_str());
  if (!declared.description.empty()) log.printf("  description: %s\n", declared.description.c_str());
  if (!declared.authors.empty()) log.printf("  authors: %s\n", join(declared.authors, ", ").c_str());
  for (const auto &reference : declared.references) log << "  please cite " << cite(reference) << "\n";
}

// the output: a per-structure value, one component per property; returns its properties
std::vector<std::string> Atomplug::choose_output(const atomplug_core::Declaration &declared)
{
  parse("OUTPUT", output_);
  const atomplug_core::Output *output = declared.output(output_);
  if (output == nullptr) error(unknown_output(declared));
  output_quantity_ = output->quantity;
  n_properties_ = output->properties.empty() ? 1 : static_cast<unsigned>(output->properties.size());
  log.printf("  output '%s'%s%s, %u propert%s\n", output_.c_str(),
             output->quantity.empty() ? "" : (" (" + output->quantity + ")").c_str(),
             output->unit.empty() ? "" : (" [model unit " + output->unit + "]").c_str(), n_properties_,
             n_properties_ == 1 ? "y" : "ies");
  return output->properties;
}

// OUTPUT names an output the model does not declare: the archive's variant rule (variant_output) says
// what is wrong with a variant (an unknown one, or an output that has variants only)
std::string Atomplug::unknown_output(const atomplug_core::Declaration &declared)
{
  const std::string declares = " (it declares: " + join(declared.output_names(), ", ") + ")";
  const std::string generic =
      "the model has no output '" + output_ + "'" + declares + ": set OUTPUT to one of those";
  const std::string per_atom = "/per_atom";
  const bool asks_per_atom = output_.size() >= per_atom.size() &&
      output_.compare(output_.size() - per_atom.size(), per_atom.size(), per_atom) == 0;
  if (asks_per_atom || !model_.has_method("variant_output")) return generic;
  const size_t slash = output_.find('/');
  const std::string name = output_.substr(0, slash);
  const std::string variant = slash == std::string::npos ? std::string() : output_.substr(slash + 1);
  try {
    model_.run_method("variant_output", name, variant);
  } catch (const std::exception &e) {
    return first_line(e) + "; in PLUMED, OUTPUT names the output in full: OUTPUT=" + name + "/<variant>";
  }
  return generic;
}

std::vector<std::vector<AtomNumber>> Atomplug::read_species()
{
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
  if (species.empty())
    error("no atoms given: list them with SPECIES1=..., SPECIES2=... (one keyword per species)");
  return species;
}

// atoms and their types (SPECIESi, SPECIES_TO_TYPES), and SELECTED_ATOMS
Atomplug::Atoms Atomplug::read_atoms()
{
  std::vector<long long> known_types;
  try {
    for (const auto &item : model_.run_method("atomic_types").toIntList()) known_types.push_back(item);
  } catch (const std::exception &e) {
    error("could not read the model's atomic types: " + first_line(e));
  }
  std::vector<int> species_to_types;
  parseVector("SPECIES_TO_TYPES", species_to_types);
  const std::vector<std::vector<AtomNumber>> species = read_species();
  if (!species_to_types.empty() && species_to_types.size() != species.size()) {
    error("SPECIES_TO_TYPES has " + std::to_string(species_to_types.size()) + " entries for " +
          std::to_string(species.size()) + " SPECIES keywords: give one model type per SPECIES keyword");
  }
  std::map<unsigned, int> type_of_atom;    // PLUMED index -> model type
  for (size_t s = 0; s < species.size(); s++) {
    int type = species_to_types.empty() ? static_cast<int>(s + 1) : species_to_types[s];
    if (std::find(known_types.begin(), known_types.end(), static_cast<long long>(type)) ==
        known_types.end()) {
      std::vector<std::string> known;
      for (auto t : known_types) known.push_back(std::to_string(t));
      error("SPECIES" + std::to_string(s + 1) + " has type " + std::to_string(type) +
            ", which the model does not know "
            "(it knows " +
            join(known, ", ") + "): fix SPECIES_TO_TYPES");
    }
    for (const auto &atom : species[s]) {
      if (!type_of_atom.emplace(atom.index(), type).second) {
        error("atom " + std::to_string(atom.serial()) + " is listed in more than one SPECIES keyword");
      }
    }
    log.printf("  model type %d for %zu atom(s) of SPECIES%zu\n", type, species[s].size(), s + 1);
  }
  Atoms result;
  std::map<unsigned, int64_t> model_index;
  for (const auto &entry : type_of_atom) {
    model_index[entry.first] = static_cast<int64_t>(result.atoms.size());
    result.atoms.push_back(AtomNumber::index(entry.first));
    result.types.push_back(entry.second);
  }
  std::vector<AtomNumber> selection;
  parseAtomList("SELECTED_ATOMS", selection);
  for (const auto &atom : selection) {
    auto found = model_index.find(atom.index());
    if (found == model_index.end()) {
      error("SELECTED_ATOMS contains atom " + std::to_string(atom.serial()) +
            ", which is not covered by any SPECIES keyword: the model only sees the SPECIES atoms");
    }
    result.selected.push_back(found->second);
  }
  has_selection_ = !result.selected.empty();
  return result;
}

// The inputs the model asks for (input_names(); archives exported before inputs existed have none),
// each with its source in PLUMED, and the CHARGE and SPIN keywords, each given exactly when used
void Atomplug::read_model_inputs()
{
  const double unset = std::numeric_limits<double>::quiet_NaN();
  double charge = unset;
  double spin = unset;
  parse("CHARGE", charge);
  parse("SPIN", spin);
  if (atomplug_core::entry_point_accepts(model_, "quantity_units") && model_.has_method("input_names")) {
    try {
      for (const auto &item : model_.run_method("input_names").toList()) {
        input_names_.push_back(item.get().toStringRef());
      }
    } catch (const std::exception &e) {
      error("could not read the inputs the model asks for: " + first_line(e));
    }
  }
  const std::string asks = "the model needs " + join(input_names_, ", ");
  auto wants = [this](const std::string &name) {
    return std::find(input_names_.begin(), input_names_.end(), name) != input_names_.end();
  };
  for (const auto &name : input_names_) {
    if (name == "masses") {
      needs_masses_ = true;
    } else if (name == "charges") {
      needs_charges_ = true;
    } else if (name == "total_charge") {
      if (std::isnan(charge)) {
        error(asks +
              ": give the total charge of its atoms with CHARGE=<number> (in PLUMED's charge unit, e by "
              "default)");
      }
    } else if (name == "spin_multiplicity") {
      if (std::isnan(spin))
        error(asks + ": give the spin multiplicity 2S+1 with SPIN=<number> (1 for a singlet)");
    } else if (name == "velocities") {
      error(asks +
            ": PLUMED does not receive velocities from the MD engine, so ATOMPLUG cannot run a model that "
            "needs them; use the model in an engine that gives velocities (ASE, LAMMPS)");
    } else {
      error(asks + ": this ATOMPLUG does not know the input '" + name +
            "' (a newer atomplug model?): update atomplug and rebuild the plugin");
    }
  }
  if (!std::isnan(charge) && !wants("total_charge")) {
    error(
        "CHARGE is given but the model does not use a total charge (" +
        (input_names_.empty() ? std::string("it needs no inputs") : "it needs " + join(input_names_, ", ")) +
        "): remove CHARGE");
  }
  if (!std::isnan(spin) && !wants("spin_multiplicity")) {
    error(
        "SPIN is given but the model does not use a spin multiplicity (" +
        (input_names_.empty() ? std::string("it needs no inputs") : "it needs " + join(input_names_, ", ")) +
        "): remove SPIN");
  }
  auto scalar = [this](double value) {
    return torch::full({1}, value, torch::dtype(torch::kFloat64)).to(device_);
  };
  if (wants("total_charge")) fixed_inputs_.emplace_back("total_charge", scalar(charge));
  if (wants("spin_multiplicity")) fixed_inputs_.emplace_back("spin_multiplicity", scalar(spin));
  has_model_inputs_ = !input_names_.empty();
  if (has_model_inputs_) {
    log.printf("  model inputs: %s%s%s%s\n", join(input_names_, ", ").c_str(),
               needs_masses_ || needs_charges_ ? " (masses and charges as the MD engine passed them)" : "",
               wants("total_charge") ? (", CHARGE=" + std::to_string(charge)).c_str() : "",
               wants("spin_multiplicity") ? (", SPIN=" + std::to_string(spin)).c_str() : "");
  }
}

// units: PLUMED's, as expressions the archive's unit table reads; the neighbor lists in them
void Atomplug::read_units_and_lists(double skin)
{
  if (usingNaturalUnits()) {
    error(
        "ATOMPLUG needs physical units: remove UNITS NATURAL (the model's units are converted to PLUMED's)");
  }
  const Units &units = getUnits();
  length_unit_ = unit_expression(units.getLength(), atomplug_plumed_units::LENGTH);
  energy_unit_ = unit_expression(units.getEnergy(), atomplug_plumed_units::ENERGY);
  // PLUMED's units of mass, charge and velocity (length / time), for the model's inputs and for
  // an output of those quantities: given only then (a model without them is called as before;
  // archives exported before inputs existed do not take them)
  const bool in_these_units = output_quantity_ == "mass" || output_quantity_ == "velocity" ||
      output_quantity_ == "charge" || output_quantity_ == "dipole";
  const bool quantities =
      atomplug_core::entry_point_accepts(model_, "quantity_units") && (has_model_inputs_ || in_these_units);
  c10::Dict<std::string, std::string> quantity_units;
  quantity_units.insert("mass", unit_expression(units.getMass(), atomplug_plumed_units::MASS));
  quantity_units.insert("charge", unit_expression(units.getCharge(), atomplug_plumed_units::CHARGE));
  quantity_units.insert(
      "velocity", unit_expression(units.getLength() / units.getTime(), atomplug_plumed_units::VELOCITY));
  try {
    model_.run_method("unit_conversion", length_unit_, std::string(atomplug_plumed_units::LENGTH));
    model_.run_method("unit_conversion", energy_unit_, std::string(atomplug_plumed_units::ENERGY));
    if (quantities) {
      model_.run_method("unit_conversion", quantity_units.at("mass"),
                        std::string(atomplug_plumed_units::MASS));
      model_.run_method("unit_conversion", quantity_units.at("charge"),
                        std::string(atomplug_plumed_units::CHARGE));
      model_.run_method("unit_conversion", quantity_units.at("velocity"),
                        std::string(atomplug_plumed_units::VELOCITY));
      inputs_.quantity_units = quantity_units;
    }
    for (const auto &item : model_.run_method("neighbor_requests", length_unit_).toList()) {
      auto tuple = item.get().toTuple();
      double cutoff = tuple->elements()[0].toDouble();
      requests_.push_back({cutoff, tuple->elements()[1].toBool(), skin < 0.0 ? 0.1 * cutoff : skin});
    }
  } catch (const std::exception &e) {
    error("PLUMED units (length " + length_unit_ + ", energy " + energy_unit_ + ", mass " +
          quantity_units.at("mass") + ", charge " + quantity_units.at("charge") + "): " + first_line(e));
  }
  log.printf("  PLUMED units passed to the model: length %s, energy %s", length_unit_.c_str(),
             energy_unit_.c_str());
  if (quantities) {
    log.printf(", mass %s, charge %s, velocity %s", quantity_units.at("mass").c_str(),
               quantity_units.at("charge").c_str(), quantity_units.at("velocity").c_str());
  }
  log.printf("\n");
  for (const auto &request : requests_) {
    log.printf("  neighbor list: cutoff %g (PLUMED length unit), %s, skin %g\n", request.cutoff,
               request.full_list ? "full" : "half", request.skin);
  }
  if (!requests_.empty() && !vesin_library().error.empty()) error(vesin_library().error);
  lists_.resize(requests_.size());
}

// the PLUMED values: the action's own for one property, else one component per property
void Atomplug::add_values(const std::vector<std::string> &properties)
{
  if (n_properties_ == 1) {
    addValueWithDerivatives();
    setNotPeriodic();
    values_.push_back(getPntrToValue());
    return;
  }
  bool named = true;
  std::set<std::string> seen;
  for (const auto &property : properties) {
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

void Atomplug::prepare_inputs(const Atoms &atoms)
{
  auto int_options = torch::TensorOptions().device(device_);
  inputs_.types = torch::tensor(atoms.types, torch::dtype(torch::kInt32)).to(device_);
  inputs_.cells = torch::zeros({1, 3, 3}, torch::dtype(torch::kFloat64));
  inputs_.pbcs = torch::zeros({1, 3}, int_options.dtype(torch::kBool));
  inputs_.system_sizes =
      torch::full({1}, static_cast<int64_t>(atoms.atoms.size()), int_options.dtype(torch::kInt64));
  if (has_selection_)
    inputs_.selected_atoms = torch::tensor(atoms.selected, torch::dtype(torch::kInt64)).to(device_);
  inputs_.outputs.push_back(output_);
  inputs_.gradient_output = output_;
  inputs_.length_unit = length_unit_;
  inputs_.energy_unit = energy_unit_;
}

Atomplug::~Atomplug()
{
  // a compiled package: how many calls its program answered (the others: TorchScript's)
  if (model_.compiled()) {
    log.printf(
        "  ATOMPLUG %s: the compiled package answered %lld of %lld model calls (%lld by TorchScript)\n",
        getLabel().c_str(), model_.compiled_calls(), model_.compiled_calls() + model_.forward_calls(),
        model_.forward_calls());
  }
  // a device that packs (a GPU, or ATOMPLUG_ONE_COPY=1): the copies per call
  if (transfer_.packs() && transfer_.calls() > 0)
    log.printf("  ATOMPLUG %s: %s\n", getLabel().c_str(), transfer_.summary().c_str());
  if (vesin_library().free != nullptr) {
    for (auto &list : lists_) vesin_library().free(&list);
  }
}

// the cell PLUMED gives (rows are cell vectors), zero when not periodic; vesin's lists restart for a new one
void Atomplug::set_box(bool periodic)
{
  double box[3][3] = {{0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}, {0.0, 0.0, 0.0}};
  if (periodic) {
    const Tensor &plumed_box = getBox();
    for (unsigned a = 0; a < 3; a++) {
      for (unsigned b = 0; b < 3; b++) box[a][b] = plumed_box(a, b);
    }
  }
  std::memcpy(inputs_.cells.data_ptr<double>(), box, sizeof(box));
  const bool new_box = periodic != last_periodic_ || std::memcmp(box, last_box_, sizeof(box)) != 0;
  if (new_box) {
    // vesin's Verlet cache is kept for a fixed cell only: start the lists afresh
    for (auto &list : lists_) {
      vesin_library().free(&list);
      list = VesinNeighborList();
    }
    std::memcpy(last_box_, box, sizeof(box));
    inputs_.pbcs.fill_(periodic);
    last_periodic_ = periodic;
  }
}

// vesin refuses NaN or infinite positions with its own index; name PLUMED's atom instead
void Atomplug::check_positions()
{
  const auto &plumed_positions = getPositions();
  for (size_t i = 0; i < plumed_positions.size(); i++) {
    const Vector &position = plumed_positions[i];
    if (!std::isfinite(position[0]) || !std::isfinite(position[1]) || !std::isfinite(position[2])) {
      plumed_merror("ATOMPLUG " + getLabel() + ": atom " + std::to_string(getAbsoluteIndex(i).serial()) +
                    " has a NaN or infinite position: the trajectory or the MD engine's state is broken (a "
                    "diverging simulation? a bad input file?); fix the positions PLUMED receives");
    }
  }
}

// the pairs of each neighbor list the model asked for, from vesin, in the cell set by set_box
void Atomplug::add_neighbor_lists()
{
  const auto &plumed_positions = getPositions();
  const double (*box)[3] = reinterpret_cast<const double (*)[3]>(last_box_);
  const bool periodic_axes[3] = {last_periodic_, last_periodic_, last_periodic_};
  inputs_.neighbor_pairs = c10::List<at::Tensor>();
  inputs_.neighbor_shifts = c10::List<at::Tensor>();
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
    const char *message = nullptr;
    int status = vesin_library().neighbors(reinterpret_cast<const double (*)[3]>(plumed_positions.data()),
                                           plumed_positions.size(), box, periodic_axes,
                                           VesinDevice{VesinCPU, 0}, options, &lists_[k], &message);
    if (status != 0) {
      plumed_merror("ATOMPLUG " + getLabel() + ": vesin could not build the neighbor list (cutoff " +
                    std::to_string(requests_[k].cutoff) + "): " + (message ? message : "unknown error"));
    }
    const int64_t length = static_cast<int64_t>(lists_[k].length);
    torch::Tensor pair_tensor = torch::zeros({0, 2}, torch::dtype(torch::kInt64));
    torch::Tensor shift_tensor = torch::zeros({0, 3}, torch::dtype(torch::kInt32));
    if (length > 0) {
      pair_tensor = torch::from_blob(lists_[k].pairs, {length, 2}, torch::dtype(torch::kInt64));
      shift_tensor = torch::from_blob(lists_[k].shifts, {length, 3}, torch::dtype(torch::kInt32));
    }
    inputs_.neighbor_pairs.push_back(pair_tensor);    // on the host: call() sends them
    inputs_.neighbor_shifts.push_back(shift_tensor);
  }
}

// the model's per-atom inputs for this step, on the host: masses and charges as PLUMED holds them
// (in the action's atom order, which is the model's); call() sends them and adds CHARGE and SPIN
c10::Dict<std::string, at::Tensor> Atomplug::model_inputs()
{
  c10::Dict<std::string, at::Tensor> inputs;
  const int64_t n_atoms = static_cast<int64_t>(getNumberOfAtoms());
  // `plumed driver` without --mc (or an MD engine that passed none) leaves NaN masses and charges
  auto per_atom = [&](const std::vector<double> &values, const char *what) {
    for (int64_t i = 0; i < n_atoms; i++) {
      if (!std::isfinite(values[i])) {
        plumed_merror("ATOMPLUG " + getLabel() + ": the model needs the atoms' " + what + " and atom " +
                      std::to_string(getAbsoluteIndex(i).serial()) + " has " + std::to_string(values[i]) +
                      " in PLUMED: the MD engine passed no " + what + " (cmd set" +
                      (std::string(what) == "masses" ? "Masses" : "Charges") +
                      "); with `plumed driver`, give them with --mc FILE (the format DUMPMASSCHARGE writes)");
      }
    }
    return torch::from_blob(const_cast<double *>(values.data()), {n_atoms}, torch::dtype(torch::kFloat64))
        .clone();
  };
  if (needs_masses_) {
    if (!massesWereSet) {
      plumed_merror("ATOMPLUG " + getLabel() +
                    ": the model needs the atoms' masses and the MD engine did not pass masses to PLUMED "
                    "(cmd setMasses); with `plumed driver`, give them with --mc FILE");
    }
    inputs.insert("masses", per_atom(getMasses(), "masses"));
  }
  if (needs_charges_) {
    if (!chargesWereSet) {
      plumed_merror("ATOMPLUG " + getLabel() +
                    ": the model needs per-atom charges and the MD engine did not pass charges to PLUMED "
                    "(cmd setCharges); with `plumed driver`, give them with --mc FILE");
    }
    inputs.insert("charges", per_atom(getCharges(), "charges"));
  }
  return inputs;
}

// one call of the entry point: this step's host tensors (positions, cell, pairs, masses and charges)
// sent to the model's device in one copy, its results back in one
Atomplug::Results Atomplug::call(const torch::Tensor &positions, bool periodic, bool forces, bool virial)
{
  set_box(periodic);
  check_positions();
  add_neighbor_lists();
  atomplug_core::EntryPointArguments inputs = inputs_;
  inputs.compute_forces = forces;
  inputs.compute_virial = virial;
  inputs.compute_atomic_virial = false;
  std::vector<torch::Tensor> host = {positions, inputs_.cells};
  for (size_t k = 0; k < inputs_.neighbor_pairs.size(); k++) {
    host.push_back(inputs_.neighbor_pairs.get(k));
    host.push_back(inputs_.neighbor_shifts.get(k));
  }
  c10::Dict<std::string, at::Tensor> given;
  if (has_model_inputs_) {
    given = model_inputs();
    for (const auto &entry : given) host.push_back(entry.value());
  }
  const std::vector<torch::Tensor> sent = transfer_.to_device(host);
  size_t next = 0;
  inputs.positions = sent[next++];
  inputs.cells = sent[next++];
  inputs.neighbor_pairs = c10::List<at::Tensor>();
  inputs.neighbor_shifts = c10::List<at::Tensor>();
  for (size_t k = 0; k < inputs_.neighbor_pairs.size(); k++) {
    inputs.neighbor_pairs.push_back(sent[next++]);
    inputs.neighbor_shifts.push_back(sent[next++]);
  }
  if (has_model_inputs_) {
    for (auto &entry : given) entry.setValue(sent[next++]);
    for (const auto &entry : fixed_inputs_) given.insert(entry.first, entry.second);
    inputs.inputs = given;
  }
  const auto output = model_.forward(atomplug_core::entry_point_stack(inputs)).toGenericDict();
  std::vector<std::string> names;
  std::vector<torch::Tensor> values;
  for (const auto &entry : output) {
    names.push_back(entry.key().toStringRef());
    values.push_back(entry.value().toTensor());
  }
  values = transfer_.to_host(values);
  Results results;
  for (size_t k = 0; k < names.size(); k++) results.emplace(names[k], values[k]);
  return results;
}

// the entry point's results, or PLUMED's error with core's words for what went wrong in the model
Atomplug::Results Atomplug::run(const torch::Tensor &positions, bool periodic, bool derivatives, bool virial)
{
  try {
    return call(positions, periodic, derivatives, virial);
  } catch (const PLMD::Exception &) {
    throw;
  } catch (const std::exception &e) {
    std::string message = atomplug_core::describe_model_error(e);
    if (derivatives && n_properties_ > 1 && message.find("single-valued") != std::string::npos) {
      message += " (this atomplug core computes derivatives of single-valued outputs only: biasing the "
                 "components of a multi-property output needs a newer atomplug; printing them works)";
    }
    plumed_merror("ATOMPLUG " + getLabel() + ": " + message);
  }
}

void Atomplug::calculate()
{
  const auto &plumed_positions = getPositions();
  const int64_t n_atoms = static_cast<int64_t>(plumed_positions.size());
  torch::Tensor positions = torch::from_blob(const_cast<Vector *>(plumed_positions.data()), {n_atoms, 3},
                                             torch::dtype(torch::kFloat64));
  const bool derivatives = !doNotCalculateDerivatives();
  const bool periodic = use_pbc_ && getPbc().isSet();
  // Without a periodic cell the CV depends on the box only through the positions, and PLUMED's own
  // setBoxDerivativesNoPbc gives the box derivative from the atom derivatives: no strain needed.
  const bool virial_from_model = derivatives && periodic;
  const Results results = run(positions, periodic, derivatives, virial_from_model);

  torch::Tensor values = results.at(output_);
  if (values.dim() != 2 || values.size(0) != 1 || values.size(1) != static_cast<int64_t>(n_properties_)) {
    plumed_merror("ATOMPLUG " + getLabel() + ": the model returned '" + output_ + "' with shape " +
                  c10::str(values.sizes()) + ", expected [1, " + std::to_string(n_properties_) +
                  "]: a multi-property output must declare its properties in ModelOutput(properties=[...])");
  }
  const double *value_data = values.data_ptr<double>();
  for (unsigned k = 0; k < n_properties_; k++) values_[k]->set(value_data[k]);
  if (derivatives) set_derivatives(results, virial_from_model);
}

void Atomplug::set_derivatives(const Results &results, bool virial_from_model)
{
  const int64_t n_atoms = static_cast<int64_t>(getPositions().size());
  torch::Tensor forces = results.at("forces");
  if (forces.dim() == 2) forces = forces.unsqueeze(0);    // [N, 3] for a single-valued output
  if (forces.size(0) != static_cast<int64_t>(n_properties_) || forces.size(1) != n_atoms) {
    plumed_merror("ATOMPLUG " + getLabel() +
                  ": unexpected forces shape from the model: " + c10::str(forces.sizes()));
  }
  torch::Tensor virial;
  if (virial_from_model) {
    virial = results.at("virial");
    if (virial.dim() == 3) virial = virial.unsqueeze(0);    // [1, 3, 3] for a single-valued output
    if (virial.size(0) != static_cast<int64_t>(n_properties_)) {
      plumed_merror("ATOMPLUG " + getLabel() +
                    ": unexpected virial shape from the model: " + c10::str(virial.sizes()));
    }
  }
  const double *force_data = forces.data_ptr<double>();
  for (unsigned k = 0; k < n_properties_; k++) {
    Value *value = values_[k];
    const double *f = force_data + static_cast<int64_t>(k) * n_atoms * 3;
    for (int64_t i = 0; i < n_atoms; i++) {
      setAtomsDerivatives(value, static_cast<int>(i), Vector(-f[3 * i], -f[3 * i + 1], -f[3 * i + 2]));
    }
    if (virial_from_model) {
      const double *w = virial.data_ptr<double>() + 9 * k;
      setBoxDerivatives(value, Tensor(w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]));
    } else {
      setBoxDerivativesNoPbc(value);
    }
  }
}

}    // namespace atomplug
}    // namespace PLMD
