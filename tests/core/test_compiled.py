"""Compiled packages (issue 18): the archive's torch.export program compiled by AOTInductor gives
what the TorchScript entry point gives, the same errors, and refuses stale or foreign packages."""

import os
import shutil
import subprocess
import sys
import zipfile
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase.calculators.lj import LennardJones
from bad_files import rewrite_metadata
from devices import NO_CUDA
from structures import AR_CUTOFF, AR_EPSILON, AR_SIGMA, displaced_triclinic_argon, hco_cluster, hco_liquid

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.core import ModelOutput, ModelRunner, NeighborListOptions, Structure, System, load_model
from atomplug.core.archive import read_header
from atomplug.core.compiled import compile_model
from atomplug.core.program import capturing, periodic_cell_ok

REQUESTS = ["energy", "energy/per_atom"]


def relative(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max(initial=0.0) / max(np.abs(b).max(initial=0.0), 1e-300))


def run_both(model_path, package_path, structures, **options):
    reference = ModelRunner(model_path).run(structures, REQUESTS, **options)
    runner = ModelRunner(package_path)
    compiled = runner.run(structures, REQUESTS, **options)
    return reference, compiled, runner.model.compiled.calls_run


def argon_cluster():
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


@pytest.mark.parametrize("structure", ["triclinic", "cluster", "slab"])
def test_lj_package_equals_torchscript(lj_model_path, lj_package_path, structure):
    atoms = {"triclinic": displaced_triclinic_argon(), "cluster": argon_cluster()}.get(structure)
    if structure == "slab":
        atoms = displaced_triclinic_argon()
        atoms.pbc = [True, True, False]
    options = dict(forces=True, virial=True, atomic_virial=True)
    reference, compiled, calls = run_both(lj_model_path, lj_package_path, [atoms], **options)
    assert calls == 1, "the compiled program did not answer"
    assert set(compiled) == set(reference)
    for key in reference:
        assert compiled[key].shape == reference[key].shape, key
        assert relative(compiled[key], reference[key]) < 1e-12, key


def test_lj_package_equals_ase_lennard_jones(lj_package_path):
    atoms = displaced_triclinic_argon()
    native = atoms.copy()
    native.calc = LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, rc=AR_CUTOFF, smooth=False)
    atoms.calc = AtomplugCalculator(lj_package_path)
    assert relative(atoms.get_potential_energy(), native.get_potential_energy()) < 1e-10
    assert relative(atoms.get_forces(), native.get_forces()) < 1e-10
    assert relative(atoms.get_stress(), native.get_stress()) < 1e-10
    assert atoms.calc.runner.model.compiled.calls_run > 0


def test_selected_atoms_weight_energy_and_forces(lj_model_path, lj_package_path):
    atoms = displaced_triclinic_argon()
    selected = list(range(3, len(atoms), 4))
    options = dict(forces=True, virial=True, atomic_virial=True, selected_atoms=selected)
    reference, compiled, calls = run_both(lj_model_path, lj_package_path, [atoms], **options)
    assert calls == 1
    assert compiled["energy/per_atom"].shape == (len(selected), 1)
    for key in reference:
        assert relative(compiled[key], reference[key]) < 1e-12, key


def test_calls_the_program_does_not_take_run_through_torchscript(lj_model_path, lj_package_path):
    """A batch, a single atom and a list with one pair: TorchScript answers, with the same results."""
    one_atom = Structure([18], [[0.0, 0.0, 0.0]], np.zeros((3, 3)), False)
    two_atoms = Structure([18, 18], [[0.0, 0.0, 0.0], [3.8, 0.0, 0.0]], np.zeros((3, 3)), False)
    batch = [displaced_triclinic_argon(), argon_cluster()]
    for structures in ([one_atom], [two_atoms], batch):
        reference, compiled, calls = run_both(lj_model_path, lj_package_path, structures, forces=True, virial=True)
        assert calls == 0
        for key in reference:
            assert np.array_equal(compiled[key], reference[key]), key


def entry_point_error(model, *changes):
    """The ValueError text of one entry-point call with NaN positions, an unknown type or a flat cell."""
    atoms = displaced_triclinic_argon(repeat=(2, 2, 2))
    runner = ModelRunner(model)
    ((pairs, shifts),) = runner.neighbor_lists(Structure.from_atoms(atoms), use_cache=False)
    positions = torch.tensor(atoms.positions)
    types = torch.tensor(atoms.numbers, dtype=torch.int32)
    cell = torch.tensor(atoms.cell.array)[None]
    for change in changes:
        if change == "nan":
            positions[5, 1] = float("nan")
        elif change == "type":
            types[2] = 7
        elif change == "flat":
            cell[0, 2] = cell[0, 1]
    arguments = [positions, types, cell, torch.ones((1, 3), dtype=torch.bool), torch.tensor([len(atoms)])]
    arguments += [[torch.from_numpy(pairs)], [torch.from_numpy(shifts)], ["energy"], None, "energy"]
    arguments += [True, True, False, "Angstrom", "eV"]
    with pytest.raises(Exception) as raised:
        runner.model.forward(*arguments)
    return str(raised.value)


@pytest.mark.parametrize("change", ["nan", "type", "flat"])
def test_bad_input_gives_the_torchscript_error(lj_model_path, lj_package_path, change):
    expected = entry_point_error(load_model(lj_model_path), change)
    assert entry_point_error(load_model(lj_package_path), change) == expected


def test_periodic_cell_flag_matches_the_entry_point_check():
    from atomplug.core.entry_checks import check_periodic_cells

    rng = np.random.default_rng(3)
    cells = [np.eye(3), np.diag([1.0, 1.0, 0.0]), np.array([[1.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]])]
    cells += [rng.normal(size=(3, 3)) for _ in range(20)]
    cells += [np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1e-12]]), np.zeros((3, 3))]
    for cell in cells:
        for flags in ([1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0]):
            tensor_cell = torch.tensor(cell)[None]
            pbc = torch.tensor(flags, dtype=torch.bool)[None]
            try:
                check_periodic_cells(tensor_cell, pbc)
                accepted = True
            except ValueError:
                accepted = False
            assert bool(periodic_cell_ok(tensor_cell[0], pbc[0])) == accepted, (cell, flags)


def test_what_the_package_was_not_compiled_for_is_a_clear_error(lj_package_path):
    runner = ModelRunner(lj_package_path)
    with pytest.raises(ValueError, match="not non-conservative forces: run the model archive"):
        runner.run([displaced_triclinic_argon()], ["energy"], forces=True, non_conservative=True)
    with pytest.raises(ValueError, match="not compiled for the output 'non_conservative_stress'"):
        runner.run([displaced_triclinic_argon()], ["non_conservative_stress"])


def test_units_are_converted_inside_the_program(lj_model_path, lj_package_path):
    """i-PI's atomic units and LAMMPS real units: the factors are the program's inputs."""
    atoms = displaced_triclinic_argon()
    for length, energy in (("Bohr", "Hartree"), ("Angstrom", "kcal/mol")):
        structure = Structure.from_atoms(atoms)
        structure.positions = structure.positions / (0.52917721067 if length == "Bohr" else 1.0)
        structure.cell = structure.cell / (0.52917721067 if length == "Bohr" else 1.0)
        results = []
        for path in (lj_model_path, lj_package_path):
            runner = ModelRunner(path, length_unit=length, energy_unit=energy)
            results.append(runner.run([structure], ["energy"], forces=True, virial=True))
        assert runner.model.compiled.calls_run == 1
        for key in results[0]:
            assert relative(results[1][key], results[0][key]) < 1e-12, (length, key)


def test_message_passing_package_equals_torchscript(message_passing_path, message_passing_package_path):
    for atoms in (hco_liquid(), hco_cluster()):
        options = dict(forces=True, virial=True, atomic_virial=True)
        reference, compiled, calls = run_both(message_passing_path, message_passing_package_path, [atoms], **options)
        assert calls == 1
        for key in reference:
            assert relative(compiled[key], reference[key]) < 1e-10, key


def copy_pair(model_path, package_path, directory):
    """The model and its package copied into `directory` (as a user would move them)."""
    os.makedirs(directory, exist_ok=True)
    model = shutil.copy(model_path, os.path.join(directory, os.path.basename(model_path)))
    package = shutil.copy(package_path, os.path.join(directory, os.path.basename(package_path)))
    return model, package


def test_stale_package_is_refused(lj_model_path, lj_package_path, tmp_path):
    from atomplug.examples.lj import export_lj

    model, package = copy_pair(lj_model_path, lj_package_path, tmp_path / "pair")
    assert load_model(package).compiled is not None
    export_lj(model, epsilon=2 * AR_EPSILON, sigma=AR_SIGMA, cutoff=AR_CUTOFF)
    with pytest.raises(ValueError, match=r"is stale: lj.pt next to it changed .* `atomplug compile lj.pt`"):
        load_model(package)
    os.remove(model)
    assert load_model(package).compiled is not None  # alone, the package holds its own model


def test_package_for_another_torch_or_device_is_refused(lj_package_path, tmp_path):
    other = str(tmp_path / "other.pt2")
    rewrite_metadata(lj_package_path, other, lambda header: header["package"].update(torch_version="2.99.0+cpu"))
    with pytest.raises(ValueError, match=r"was compiled for torch 2.99.0\+cpu, this is torch .*: compile it again"):
        load_model(other)
    cuda = str(tmp_path / "cuda.pt2")
    rewrite_metadata(lj_package_path, cuda, lambda header: header["package"].update(device="cuda"))
    with pytest.raises(ValueError, match="was compiled for device 'cuda', not 'cpu'.*--device cpu"):
        load_model(cuda)


def test_damaged_package_is_refused(lj_package_path, tmp_path):
    damaged = str(tmp_path / "damaged.pt2")
    with zipfile.ZipFile(lj_package_path) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("atomplug/atomplug-model.pt"):
                data = data[:-10] + b"0123456789"
            target.writestr(item, data)
    with pytest.raises(ValueError, match="damaged compiled package"):
        load_model(damaged)


def test_foreign_package_is_refused(tmp_path):
    """An AOTInductor package that is not ours: no atomplug metadata."""
    foreign = str(tmp_path / "foreign.pt2")
    with zipfile.ZipFile(foreign, "w") as archive:
        archive.writestr("foreign/data/aotinductor/model/x.wrapper.so", b"\x7fELF")
        archive.writestr("foreign/archive_format", "pt2")
    with pytest.raises(ValueError, match="without atomplug metadata, not an atomplug model"):
        load_model(foreign)


class CaptureCheat(torch.nn.Module):
    """LJ whose energy doubles while a program is captured: the compile check must catch it."""

    def __init__(self):
        super().__init__()
        from atomplug.examples.lj import LennardJones

        self.inner = LennardJones(AR_EPSILON, AR_SIGMA, AR_CUTOFF)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return self.inner.requested_neighbor_lists()

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        results = self.inner(systems, outputs, selected_atoms)
        if capturing():
            results["energy"] = 2.0 * results["energy"]
        return results


def lj_capabilities():
    from atomplug.core import ModelCapabilities

    return ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)},
        atomic_types=[18],
        interaction_range=AR_CUTOFF,
        length_unit="Angstrom",
        dtype="float64",
    )


def test_compile_refuses_a_program_that_disagrees(tmp_path):
    from atomplug.core import export

    path = str(tmp_path / "cheat.pt")
    export(CaptureCheat(), path, lj_capabilities())
    with pytest.raises(ValueError, match="disagrees with the TorchScript entry point on 'energy.*was not written"):
        compile_model(path, log=lambda *_: None)
    assert not os.path.exists(str(tmp_path / "cheat.pt2"))


class DataDependent(CaptureCheat):
    """A model whose Python branches on a value: torch.export cannot capture it."""

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[torch.Tensor]
    ) -> Dict[str, torch.Tensor]:
        results = self.inner(systems, outputs, selected_atoms)
        if float(results["energy"].sum()) > 1e6:
            results["energy"] = results["energy"] * 0.0
        return results


def test_uncapturable_model_exports_torchscript_only_with_a_notice(tmp_path, capfd):
    from atomplug.cli.command import main
    from atomplug.core import export

    path = str(tmp_path / "dependent.pt")
    export(DataDependent(), path, lj_capabilities())
    notice = capfd.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and "TorchScript only, no compiled program" in notice[0]
    assert "test_compiled.py" in notice[0] and "float(results" in notice[0]  # names the model's line
    assert read_header(path)["program"]["captured"] is False
    assert ModelRunner(path).run([argon_cluster()], ["energy"])["energy"].shape == (1, 1)
    assert main(["info", path]) == 0
    assert "compiled       no; TorchScript only (torch.export could not capture it" in capfd.readouterr().out
    assert main(["compile", path]) == 2
    assert "has no torch.export program to compile" in capfd.readouterr().err


def test_cli_compile_and_info(lj_model_path, tmp_path, capfd):
    """`atomplug compile MODEL -o OUT` in a fresh process (what users run), then `atomplug info`."""
    output = str(tmp_path / "out.pt2")
    done = subprocess.run(
        [sys.executable, "-m", "atomplug.cli", "compile", lj_model_path, "-o", output],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "agrees with TorchScript to" in done.stdout and output in done.stdout
    assert done.stderr.strip() == "", done.stderr
    from atomplug.cli.command import main

    assert main(["info", output]) == 0
    assert "compiled       yes: AOTInductor package for cpu" in capfd.readouterr().out
    assert main(["compile", output]) == 2
    assert "is already a compiled package" in capfd.readouterr().err


class Subclassed(torch.Tensor):
    """A tensor subclass: torch.export stores it pickled."""


class WithSubclassBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("offset", torch.ones(3).as_subclass(Subclassed))

    def forward(self, x):
        return x + 1


def test_a_program_with_pickled_objects_is_refused_unread():
    """torch.export.load would unpickle it (weights_only=False); atomplug's loader refuses."""
    import io
    import pickle

    from atomplug.core.program import load_program

    program = torch.export.export(WithSubclassBuffer(), (torch.ones(3),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    real_load, real_loads = torch.load, pickle.loads
    with pytest.raises(
        ValueError, match="holds pickled objects, which atomplug never writes nor loads: export the model again"
    ):
        load_program(buffer.getvalue())
    assert torch.load is real_load and pickle.loads is real_loads  # restored


def test_collective_variable_package_gives_its_derivatives(tmp_path):
    """A model without energy (PLUMED's coordination CV): the program differentiates its only
    output; a subset of selected atoms sums the per-atom values, as PLUMED asks."""
    from atomplug.examples.coordination import export_coordination

    model = str(tmp_path / "coordination.pt")
    export_coordination(model)
    package = compile_model(model, log=lambda *_: None)
    atoms = hco_liquid()
    keep = [i for i, number in enumerate(atoms.numbers) if number in (1, 8)]
    atoms = atoms[keep]
    for selected in (None, list(range(0, len(atoms), 3))):
        results = []
        for path in (model, package):
            runner = ModelRunner(path)
            results.append(
                runner.run(
                    [atoms],
                    ["features", "features/per_atom"],
                    forces=True,
                    virial=True,
                    gradient_output="features",
                    selected_atoms=selected,
                )
            )
        assert runner.model.compiled.calls_run == 1
        for key in results[0]:
            assert relative(results[1][key], results[0][key]) < 1e-12, key


# ---- compiling for another device: the program moves there whole ------------------------------------


@pytest.mark.parametrize("fixture", ["lj_model_path", "coordination_path", "message_passing_path", "ani1x_path"])
def test_the_program_moves_to_another_device_whole(request, fixture):
    """`atomplug compile --device cuda` compiles the program captured on the CPU after moving it
    (compiled.program_on). Checked here with the `meta` device, which every machine has: no
    weight, constant, device argument or traced value may stay on the CPU (it would fail on the
    GPU or cross the bus at every call); the LJ and coordination programs then run on meta inputs
    and give meta outputs (the other two use ops without meta kernels: nonzero, bincount)."""
    from atomplug.core.compiled import program_on
    from atomplug.core.package import archive_entry
    from atomplug.core.program import PROGRAM_FILE, load_program

    path = request.getfixturevalue(fixture)
    program = load_program(archive_entry(path, PROGRAM_FILE))  # (6 s for ANI-1x: loaded once)
    assert program_on(program, "cpu") is program
    moved = program_on(program, "meta")  # in place: `program` is moved too
    stayed = [name for name, value in {**moved.state_dict, **moved.constants}.items() if value.device.type != "meta"]
    assert not stayed, stayed
    for node in moved.graph.nodes:
        if "device" in node.kwargs:
            assert torch.device(node.kwargs["device"]).type == "meta", node.format_node()
        values = node.meta.get("val")
        for value in values if isinstance(values, (list, tuple)) else [values]:
            if isinstance(value, torch.Tensor):
                assert value.device.type == "meta", node.format_node()
    if fixture in ("lj_model_path", "coordination_path"):
        arguments, _ = moved.example_inputs
        outputs = moved.module()(*arguments)
        assert {value.device.type for value in outputs} == {"meta"}
        assert all(value.device.type == "meta" for value in arguments)


def test_compiling_for_cuda_without_a_gpu_says_so(lj_model_path, tmp_path, monkeypatch):
    """(On a GPU machine torch is told it has none, so that this refusal is checked there too.)"""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="sees no CUDA device: use device 'cpu'"):
        compile_model(lj_model_path, str(tmp_path / "lj.pt2"), device="cuda")
    assert not (tmp_path / "lj.pt2").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_a_package_compiled_for_cuda_equals_torchscript_on_the_cpu(lj_model_path, tmp_path):
    """`atomplug compile --device cuda` (its own check against TorchScript on the GPU passed when it
    writes the package); then on the GPU the program answers, with the CPU's TorchScript results
    to 1e-12 (float64) for a triclinic box, a slab and a cluster, selected atoms included."""
    package = compile_model(lj_model_path, str(tmp_path / "lj-cuda.pt2"), device="cuda", log=lambda *_: None)
    slab = displaced_triclinic_argon()
    slab.pbc = [True, True, False]
    structures = [displaced_triclinic_argon(), slab, argon_cluster()]
    reference_runner, runner = ModelRunner(lj_model_path), ModelRunner(package, device="cuda")
    options = dict(forces=True, virial=True, atomic_virial=True)
    for atoms in structures:
        for selected in (None, [0, 3, 5]):
            reference = reference_runner.run([atoms], REQUESTS, selected_atoms=selected, **options)
            compiled = runner.run([atoms], REQUESTS, selected_atoms=selected, **options)
            for key in reference:
                assert relative(compiled[key], reference[key]) < 1e-12, (key, selected)
    assert runner.model.compiled.calls_run == 2 * len(structures), "the compiled program did not answer"
