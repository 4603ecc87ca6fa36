"""Message-passing models in LAMMPS: the example model (3 layers x 2.5 A = 7.5 A of interaction
range), as it is ("widened") and exchanging ghost features between its layers ("exchange", same
weights), on 1, 2 and 4 ranks equals the core on the very frame LAMMPS used: energy, forces,
virial, per-atom energies and per-atom virials, for periodic, triclinic, slab, isolated (with empty
subdomains) and tiny boxes (many periodic images); a short `comm_modify cutoff` is raised with a
warning; 1,000 steps of NVE on 2 ranks follow the 1-rank trajectory.

On one rank LAMMPS maps its ghosts to periodic images (the model sees the periodic structure). On
several ranks the pair style either widens the ghost region to the interaction range and hands
every ghost to the model, or (ghost_exchange) keeps ghosts out to one cutoff and exchanges their
features through LAMMPS' forward and reverse communication inside the model call; these runs test
every path against the same oracle (`ModelRunner`, the code path of `AtomplugCalculator`).
"""

from __future__ import annotations

import os
import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from lammps_harness import lammps_cell, read_dump, read_values, relative_difference, run_lmp
from structures import hco_cluster, hco_liquid, hco_slab, hco_tiny_box, triclinic_hco_liquid

from atomplug.core import ModelRunner

TOLERANCE = 1e-10
# LAMMPS' pressure conversion for units metal (update.cpp: nktv2p = 1.6021765e6 bar per eV/A^3);
# the pressure and stress/atom outputs are W / V and -W_i in these units
NKTV2P_METAL = 1.6021765e6
SPECIES = ["H", "C", "O"]  # LAMMPS types 1, 2, 3
LAMMPS_ORDER = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]  # xx yy zz xy xz yz


def isolated() -> Atoms:
    """The ethanol + water cluster in a box with room around it (LAMMPS f f f)."""
    atoms = hco_cluster()
    atoms.positions += 10.0 - atoms.positions.min(axis=0)
    atoms.set_cell(np.diag(atoms.positions.max(axis=0) + 10.0))
    return atoms


def slab() -> Atoms:
    """p p f: the liquid with its z extent as the (fixed) box; no atom leaves it in a `run 0`."""
    atoms = hco_slab()
    atoms.positions[:, 2] = np.clip(atoms.positions[:, 2], 0.05, atoms.cell[2, 2] - 0.05)
    return atoms


# name: (structure, boundary, ranks, processors)
CONFIGS = {
    "periodic": (hco_liquid, "p p p", (1, 2, 4), ""),
    "triclinic": (triclinic_hco_liquid, "p p p", (1, 2, 4), ""),
    "slab": (slab, "p p f", (1, 2, 4), ""),
    # split along z only: with 4 ranks some subdomains hold no atom
    "isolated": (isolated, "f f f", (1, 2, 4), "processors 1 1 *"),
    "tiny": (hco_tiny_box, "p p p", (1, 2, 4), ""),
}
MODELS = ("widened", "exchange")
CASES = [(model, name, nprocs) for model in MODELS for name, spec in CONFIGS.items() for nprocs in spec[2]]


@pytest.fixture(scope="module")
def model_paths(message_passing_path, message_passing_exchange_path):
    return {"widened": message_passing_path, "exchange": message_passing_exchange_path}


def run_block(name: str, boundary: str, processors: str, model: str, label: str) -> str:
    return f"""
clear
units metal
atom_style atomic
boundary {boundary}
{processors}
read_data {name}.data
pair_style atomplug {model}
pair_coeff * * {" ".join(SPECIES)}
compute pe all pe/atom
compute sa all stress/atom NULL virial
compute pv all pressure NULL virial
thermo_style custom step pe c_pv[1] c_pv[2] c_pv[3] c_pv[4] c_pv[5] c_pv[6]
dump d all custom 1 {label}.dump id type x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g
run 0
undump d
print "{label} pe=$(pe:%.17g) vol=$(vol:%.17g) pxx=$(c_pv[1]:%.17g) pyy=$(c_pv[2]:%.17g) pzz=$(c_pv[3]:%.17g) pxy=$(c_pv[4]:%.17g) pxz=$(c_pv[5]:%.17g) pyz=$(c_pv[6]:%.17g)" append values.txt screen no
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plugin, model_paths):
    """(directory, {nprocs: stdout}) with every configuration and model run once per rank count."""
    directory = tmp_path_factory.mktemp("lammps-mp")
    for name, (structure, *_rest) in CONFIGS.items():
        ase.io.write(str(directory / f"{name}.data"), structure(), format="lammps-data", specorder=SPECIES, masses=True)
    results = {}
    for nprocs in (1, 2, 4):
        text = "\n".join(
            run_block(name, boundary, processors, model_paths[model], f"{model}-{name}-{nprocs}")
            for model in MODELS
            for name, (_structure, boundary, ranks, processors) in CONFIGS.items()
            if nprocs in ranks
        )
        result = run_lmp(directory, text, nprocs, name=f"in.mp-{nprocs}")
        results[nprocs] = result.stdout
    return str(directory), results


def core_reference(model: str, dump, boundary: str):
    """The core's energy, forces, virial, per-atom energies and virials on the frame LAMMPS dumped."""
    numbers = {1: 1, 2: 6, 3: 8}
    atoms = Atoms(
        numbers=[numbers[int(t)] for t in dump["type"]],
        positions=np.stack([dump["x"], dump["y"], dump["z"]], axis=1),
        cell=lammps_cell(dump),
        pbc=[flag == "p" for flag in boundary.split()],
    )
    runner = ModelRunner(model)
    return runner.run(
        [atoms], ["energy", "energy/per_atom"], forces=True, virial=True, atomic_virial=True, use_cache=False
    )


@pytest.mark.parametrize("model, name, nprocs", CASES)
def test_message_passing_matches_the_core(runs, model_paths, model, name, nprocs):
    directory, _ = runs
    label = f"{model}-{name}-{nprocs}"
    dump = read_dump(os.path.join(directory, f"{label}.dump"))
    values = read_values(os.path.join(directory, "values.txt"))[label]
    reference = core_reference(model_paths[model], dump, CONFIGS[name][1])

    energy = reference["energy"][0, 0]
    assert abs(values["pe"] - energy) <= TOLERANCE * abs(energy)
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert np.max(np.abs(reference["forces"])) > 1e-2  # a real test: the forces are not zero
    assert relative_difference(forces, reference["forces"]) <= TOLERANCE
    assert relative_difference(dump["c_pe"], reference["energy/per_atom"][:, 0]) <= TOLERANCE

    virial = reference["virial"][0]
    pressure = np.array([values[k] for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")])
    lammps_virial = pressure * values["vol"] / NKTV2P_METAL
    expected = np.array([0.5 * (virial[a, b] + virial[b, a]) for a, b in LAMMPS_ORDER])
    assert relative_difference(lammps_virial, expected) <= TOLERANCE

    atomic = reference["atomic_virial"]
    lammps_atomic = -np.stack([dump[f"c_sa[{k}]"] for k in range(1, 7)], axis=1) / NKTV2P_METAL
    expected_atomic = np.stack([0.5 * (atomic[:, a, b] + atomic[:, b, a]) for a, b in LAMMPS_ORDER], axis=1)
    assert relative_difference(lammps_atomic, expected_atomic) <= TOLERANCE


def test_several_ranks_widen_the_ghost_region_or_exchange_and_say_so(runs):
    _, stdout = runs
    assert "ghost atoms out to" not in stdout[1]  # one rank: periodic images, no wider region
    for nprocs in (2, 4):
        assert "atomplug: message-passing model (interaction range 7.5 = 3 x its cutoff): ghost" in stdout[nprocs]
        assert (
            "atomplug: message-passing model with ghost exchange (interaction range 7.5 = 3 x its cutoff): "
            "ghost atoms out to the cutoff + skin only" in stdout[nprocs]
        )


@pytest.mark.parametrize("model", MODELS)
def test_results_do_not_depend_on_ranks(runs, model):
    directory, _ = runs
    values = read_values(os.path.join(directory, "values.txt"))
    for name in CONFIGS:
        one = read_dump(os.path.join(directory, f"{model}-{name}-1.dump"))
        for nprocs in (2, 4):
            reference = values[f"{model}-{name}-1"]["pe"]
            assert abs(values[f"{model}-{name}-{nprocs}"]["pe"] - reference) <= 1e-12 * abs(reference)
            many = read_dump(os.path.join(directory, f"{model}-{name}-{nprocs}.dump"))
            forces = [np.stack([d[c] for c in ("fx", "fy", "fz")], axis=1) for d in (one, many)]
            assert relative_difference(forces[1], forces[0]) <= 1e-11


def test_a_short_comm_cutoff_is_raised_with_a_warning(tmp_path, plugin, message_passing_path):
    ase.io.write(str(tmp_path / "periodic.data"), hco_liquid(), format="lammps-data", specorder=SPECIES, masses=True)
    text = run_block("periodic", "p p p", "comm_modify cutoff 4.0", message_passing_path, "short")
    result = run_lmp(tmp_path, text, 2)
    warnings = [line for line in result.stdout.splitlines() if "comm_modify cutoff" in line]
    assert len(warnings) == 1, result.stdout
    assert "comm_modify cutoff 4 is shorter than the message-passing model's interaction range + skin" in warnings[0]
    assert "raised to 9.5" in warnings[0]


@pytest.mark.parametrize("model", MODELS)
def test_nve_on_two_ranks_follows_one_rank(tmp_path, plugin, model_paths, model):
    """1,000 steps of velocity Verlet: the 2-rank trajectory is the 1-rank one to 1e-8 A.

    The example is a random potential: it heats this 300 K liquid to ~1100 K, and its trajectories
    are chaotic (rounding differences grow ~10x per 10 fs). At 0.2 fs steps the 1e-15 A between 1
    and 2 ranks reached 3e-7 A after 600 steps; at 0.05 fs, 1,000 steps (0.05 ps) end at 1.4e-11 A:
    a real divergence (a missing ghost, a wrong force) would show at once."""
    atoms = hco_liquid(n_molecules=32, seed=21)
    ase.io.write(str(tmp_path / "liquid.data"), atoms, format="lammps-data", specorder=SPECIES, masses=True)
    final = {}
    for nprocs in (1, 2):
        text = f"""
units metal
atom_style atomic
read_data liquid.data
pair_style atomplug {model_paths[model]}
pair_coeff * * {" ".join(SPECIES)}
velocity all create 300.0 4928459 loop geom
timestep 0.00005
fix nve all nve
thermo 200
run 1000
write_dump all custom final-{nprocs}.dump id x y z modify sort id format float %.17g
"""
        run_lmp(tmp_path, text, nprocs, name=f"in.nve-{nprocs}", timeout=900)
        dump = read_dump(tmp_path / f"final-{nprocs}.dump")
        final[nprocs] = np.stack([dump["x"], dump["y"], dump["z"]], axis=1)
    moved = np.max(np.abs(final[1] - atoms.positions))
    assert moved > 0.05  # the atoms did move
    assert np.max(np.abs(final[2] - final[1])) <= 1e-8


@pytest.fixture(scope="module")
def mace_runs(tmp_path_factory, plugin, mace_path, mace_exchange_path):
    """A real third-party architecture: the random MACE (2 interactions x r_max 4 = 8 A) in LAMMPS
    on 1 and 2 ranks, on the periodic liquid and on the isolated cluster; as MACE runs itself
    (widened ghosts) and layer by layer with the ghost exchange."""
    directory = tmp_path_factory.mktemp("lammps-mace")
    for name in ("periodic", "isolated"):
        ase.io.write(
            str(directory / f"{name}.data"), CONFIGS[name][0](), format="lammps-data", specorder=SPECIES, masses=True
        )
    paths = {"widened": mace_path, "exchange": mace_exchange_path}
    for nprocs in (1, 2):
        text = "\n".join(
            run_block(name, CONFIGS[name][1], CONFIGS[name][3], paths[model], f"mace-{model}-{name}-{nprocs}")
            for model in MODELS
            for name in ("periodic", "isolated")
        )
        result = run_lmp(directory, text, nprocs, name=f"in.mace-{nprocs}")
        if nprocs == 2:  # the exchanging MACE really exchanges: ghosts one r_max deep
            assert "message-passing model with ghost exchange (interaction range 8 = 2 x its cutoff)" in result.stdout
    return str(directory)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", ["periodic", "isolated"])
@pytest.mark.parametrize("nprocs", [1, 2])
def test_mace_matches_its_own_calculator(mace_runs, mace_model_path, model, name, nprocs):
    """LAMMPS with the wrapped MACE equals MACE's own MACECalculator (float64, 1e-8 relative),
    with widened ghosts and with the ghost exchange (ghosts out to r_max only)."""
    from atomplug.examples.mace import mace_calculator

    label = f"mace-{model}-{name}-{nprocs}"
    dump = read_dump(os.path.join(mace_runs, f"{label}.dump"))
    values = read_values(os.path.join(mace_runs, "values.txt"))[label]
    numbers = {1: 1, 2: 6, 3: 8}
    periodic = name == "periodic"
    atoms = Atoms(
        numbers=[numbers[int(t)] for t in dump["type"]],
        positions=np.stack([dump["x"], dump["y"], dump["z"]], axis=1),
        cell=lammps_cell(dump),
        pbc=periodic,
    )
    atoms.calc = mace_calculator(mace_model_path)
    energy = atoms.get_potential_energy()
    assert abs(values["pe"] - energy) <= 1e-8 * abs(energy)
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert relative_difference(forces, atoms.get_forces()) <= 1e-8
    assert relative_difference(dump["c_pe"], atoms.get_potential_energies()) <= 1e-8
    if periodic:
        # MACE's stress -W / V (Voigt xx yy zz yz xz xy); LAMMPS' virial pressure W / V * nktv2p
        stress = atoms.get_stress()
        pressure = np.array([values[k] for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
        assert relative_difference(-pressure / NKTV2P_METAL, stress) <= 1e-8


def test_an_absurd_ghost_region_is_refused_with_the_numbers(tmp_path, plugin):
    """12 layers x 2.5 A over a 3-atom box on 2 ranks: ~33,000 ghosts per rank for 3 local atoms."""
    from atomplug.examples.message_passing import export_message_passing

    model = str(tmp_path / "deep.pt")
    export_message_passing(model, n_layers=12)
    ase.io.write(str(tmp_path / "tiny.data"), hco_tiny_box(), format="lammps-data", specorder=SPECIES, masses=True)
    result = run_lmp(tmp_path, run_block("tiny", "p p p", "", model, "deep"), 2, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "local atoms and" in output and "ghost atoms within the message-passing model's interaction range (30" in output
    )
    assert "use fewer MPI ranks" in output


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "units, energy_unit, length_factor", [("real", "kcal/mol", 1.0), ("nano", "attogram*nm^2/ns^2", 0.1)]
)
def test_other_unit_styles_on_two_ranks(tmp_path, plugin, model_paths, model, units, energy_unit, length_factor):
    """The ghost region is the interaction range (widened) or the cutoff (exchange) in LAMMPS' own
    length unit (nm for `units nano`): energy and forces on 2 ranks equal the core in that unit
    system."""
    message_passing_path = model_paths[model]
    atoms = hco_liquid()
    atoms.set_cell(atoms.cell * length_factor, scale_atoms=True)
    ase.io.write(str(tmp_path / "liquid.data"), atoms, format="lammps-data", specorder=SPECIES, masses=True)
    text = run_block("liquid", "p p p", "", message_passing_path, "units").replace("units metal", f"units {units}")
    result = run_lmp(tmp_path, text, 2)
    logged = re.search(
        r"message-passing model (?:with ghost exchange )?\(interaction range (\S+) = 3 x its cutoff\)", result.stdout
    )
    assert logged and abs(float(logged.group(1)) - 7.5 * length_factor) <= 1e-12
    dump = read_dump(tmp_path / "units.dump")
    values = read_values(tmp_path / "values.txt")["units"]
    frame = Atoms(
        numbers=[{1: 1, 2: 6, 3: 8}[int(t)] for t in dump["type"]],
        positions=np.stack([dump["x"], dump["y"], dump["z"]], axis=1),
        cell=lammps_cell(dump),
        pbc=True,
    )
    length_unit = "Angstrom" if length_factor == 1.0 else "nm"
    runner = ModelRunner(message_passing_path, length_unit=length_unit, energy_unit=energy_unit)
    reference = runner.run([frame], ["energy"], forces=True)
    assert abs(values["pe"] - reference["energy"][0, 0]) <= TOLERANCE * abs(reference["energy"][0, 0])
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert relative_difference(forces, reference["forces"]) <= TOLERANCE


def two_ranks_against_the_core(tmp_path, model: str, label: str):
    """The periodic liquid on 2 ranks: (LAMMPS run, its relative differences from the core)."""
    ase.io.write(str(tmp_path / "periodic.data"), hco_liquid(), format="lammps-data", specorder=SPECIES, masses=True)
    result = run_lmp(tmp_path, run_block("periodic", "p p p", "", model, label), 2)
    dump = read_dump(tmp_path / f"{label}.dump")
    values = read_values(tmp_path / "values.txt")[label]
    reference = core_reference(model, dump, "p p p")
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    energy = reference["energy"][0, 0]
    return result, abs(values["pe"] - energy) / abs(energy), relative_difference(forces, reference["forces"])


def test_features_wider_than_one_communication_go_in_rounds(tmp_path, plugin):
    """72 features per atom: more than the 64 columns LAMMPS' buffers take per communication, so
    each exchange (and its backward) is two rounds; results still equal the core."""
    from atomplug.examples.message_passing import export_message_passing

    model = str(tmp_path / "wide.pt")
    export_message_passing(model, features=72, ghost_exchange=True)
    result, energy_error, force_error = two_ranks_against_the_core(tmp_path, model, "wide")
    assert "with ghost exchange" in result.stdout
    assert energy_error <= TOLERANCE and force_error <= TOLERANCE


def test_declaring_the_exchange_without_calling_it_stops_the_run(tmp_path, plugin):
    """A model that declares ghost_exchange but never calls system.exchange_ghosts would leave its
    ghosts (one cutoff deep) with wrong features on several ranks: refused, naming the fix."""
    from atomplug.core import export
    from atomplug.examples.message_passing import MessagePassingModel, message_passing_capabilities

    module = MessagePassingModel().eval()  # exchanges nothing
    capabilities = message_passing_capabilities(module)
    capabilities.ghost_exchange = True
    model = str(tmp_path / "liar.pt")
    export(module, model, capabilities)
    ase.io.write(str(tmp_path / "periodic.data"), hco_liquid(), format="lammps-data", specorder=SPECIES, masses=True)
    run_lmp(tmp_path, run_block("periodic", "p p p", "", model, "liar-1"), 1)  # one rank: no ghosts, fine
    assert "liar-1" in read_values(tmp_path / "values.txt")
    result = run_lmp(tmp_path, run_block("periodic", "p p p", "", model, "liar-2"), 2, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "declares ghost_exchange but never called system.exchange_ghosts" in output
    assert "export the model without ghost_exchange" in output


@pytest.mark.parametrize("model", MODELS)
def test_without_atom_ids_one_rank_hands_ghosts_to_the_model(tmp_path, plugin, model_paths, model):
    """Without atom IDs LAMMPS' ghosts cannot be mapped to their owners, so even one rank hands
    them to the model: widened out to the range, or (exchange) one cutoff deep with the exchange
    run by LAMMPS' communication inside the one process. Both equal the core."""
    text = f"""
units metal
atom_style atomic
atom_modify id no
boundary p p p
lattice custom 1.0 a1 3.2 0 0 a2 0 3.2 0 a3 0 0 3.2 basis 0 0 0 basis 0.5 0.5 0 basis 0.5 0 0.5 basis 0 0.5 0.5
region box block 0 3 0 3 0 3
create_box 3 box
create_atoms 1 box basis 1 3 basis 2 1 basis 3 2 basis 4 1
mass * 1.0
displace_atoms all random 0.15 0.15 0.15 4821
pair_style atomplug {model_paths[model]}
pair_coeff * * {" ".join(SPECIES)}
dump d all custom 1 noid.dump id type x y z fx fy fz
dump_modify d format float %.17g
run 0
print "noid pe=$(pe:%.17g)" append values.txt screen no
"""
    result = run_lmp(tmp_path, text, 1)
    expected_log = "with ghost exchange" if model == "exchange" else "ghost atoms out to 9.5"
    assert expected_log in result.stdout
    dump = read_dump(tmp_path / "noid.dump")  # ids are all 0: rows stay in LAMMPS' order
    reference = core_reference(model_paths[model], dump, "p p p")
    energy = reference["energy"][0, 0]
    assert abs(read_values(tmp_path / "values.txt")["noid"]["pe"] - energy) <= TOLERANCE * abs(energy)
    forces = np.stack([dump["fx"], dump["fy"], dump["fz"]], axis=1)
    assert np.max(np.abs(reference["forces"])) > 1e-2
    assert relative_difference(forces, reference["forces"]) <= TOLERANCE
