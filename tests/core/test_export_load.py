"""Exporting, reloading and refusing what is not an atomplug model; bad input at the entry point."""

import json
import os
import pickle
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from ase import Atoms
from bad_files import rewrite_metadata
from structures import displaced_triclinic_argon
from torch import Tensor

from atomplug.core import (
    ModelCapabilities,
    ModelMetadata,
    ModelOutput,
    ModelRunner,
    NeighborListOptions,
    System,
    export,
    load_model,
)


def test_reload_is_bit_identical_and_runs_with_only_torch(lj_model_path, tmp_path):
    atoms = displaced_triclinic_argon()
    first = ModelRunner(lj_model_path).run([atoms], ["energy"], forces=True, virial=True)
    second = ModelRunner(load_model(lj_model_path)).run([atoms], ["energy"], forces=True, virial=True)
    for key in ("energy", "forces", "virial"):
        assert np.array_equal(first[key], second[key])

    runner = ModelRunner(lj_model_path)
    ((pairs, shifts),) = runner.neighbor_lists(runner_structure(atoms), use_cache=False)
    np.savez(
        tmp_path / "inputs.npz",
        positions=atoms.positions,
        types=atoms.numbers.astype(np.int32),
        cell=atoms.cell.array,
        pbc=atoms.pbc,
        pairs=pairs,
        shifts=shifts,
    )
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import torch
        data = np.load({str(tmp_path / "inputs.npz")!r})
        model = torch.jit.load({lj_model_path!r})
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
        out = model(t(data["positions"]), t(data["types"]), t(data["cell"][None]), t(data["pbc"][None]),
                    torch.tensor([len(data["types"])]), [t(data["pairs"])], [t(data["shifts"])], ["energy"], None,
                    "energy", True, True, False, "Angstrom", "eV")
        assert not any(name.startswith("atomplug") for name in sys.modules), "atomplug was imported"
        np.savez({str(tmp_path / "outputs.npz")!r}, energy=out["energy"].numpy(), forces=out["forces"].numpy(),
                 virial=out["virial"].numpy())
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=str(tmp_path))
    fresh = np.load(tmp_path / "outputs.npz")
    for key in ("energy", "forces", "virial"):
        assert np.array_equal(fresh[key], first[key])


def runner_structure(atoms):
    from atomplug.core import Structure

    return Structure.from_atoms(atoms)


def test_metadata_is_inside_the_archive(lj_model_path):
    model = load_model(lj_model_path)
    assert model.metadata.name == "lennard-jones"
    assert model.capabilities.atomic_types == [18]
    assert model.capabilities.outputs["energy"].per_atom
    assert json.loads(model.module.capabilities_json())["length_unit"] == "Angstrom"
    assert model.neighbor_requests("nm") == [(0.85, False, True)]


# ---- files that are not atomplug models ----------------------------------------------------------


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/model.pt")


def test_not_a_torchscript_archive(tmp_path):
    path = tmp_path / "text.pt"
    path.write_text("certainly not a model")
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        load_model(str(path))


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="without atomplug metadata"):
        load_model(str(path))
    legacy = tmp_path / "legacy.pkl"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="not a TorchScript archive"):
        load_model(str(legacy))


def test_plain_torchscript_archive_without_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(path))
    with pytest.raises(ValueError, match="TorchScript archive without atomplug metadata"):
        load_model(str(path))


def test_newer_format_version_is_refused(lj_model_path, tmp_path):
    path = tmp_path / "future.pt"
    rewrite_metadata(lj_model_path, path, lambda header: header.update(format_version=99))
    with pytest.raises(ValueError, match="newer than this atomplug understands.*upgrade atomplug"):
        load_model(str(path))


def test_truncated_archive(lj_model_path, tmp_path):
    path = tmp_path / "truncated.pt"
    data = open(lj_model_path, "rb").read()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a TorchScript archive|corrupt or truncated"):
        load_model(str(path))


# ---- models that do not keep their promises -------------------------------------------------------


class ToyModel(torch.nn.Module):
    """Energy = sum of pair distances; `mode` breaks it on purpose."""

    def __init__(self, mode: str = "ok", cutoff: float = 3.0):
        super().__init__()
        self.mode = mode
        self.cutoff = cutoff

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, False, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        energies: List[Tensor] = []
        for system in systems:
            energies.append(system.get_neighbor_list(NeighborListOptions(self.cutoff, False, True)).distances().sum())
        energy = torch.stack(energies).reshape(-1, 1)
        if self.mode == "wrong-shape":
            return {"energy": energy.reshape(-1)}
        if self.mode == "missing-output":
            return {"something": energy}
        return {"energy": energy}


def toy_capabilities(**changes):
    values = dict(
        outputs={"energy": ModelOutput(quantity="energy", unit="eV", per_atom=False)},
        atomic_types=[1, 8],
        interaction_range=3.0,
        length_unit="Angstrom",
        dtype="float64",
    )
    values.update(changes)
    return ModelCapabilities(**values)


@pytest.mark.parametrize(
    "mode,message",
    [
        ("wrong-shape", "returned 'energy' with shape"),
        ("missing-output", "did not return the output 'energy'"),
    ],
)
def test_export_refuses_a_model_that_breaks_its_declaration(tmp_path, mode, message):
    path = tmp_path / "broken.pt"
    with pytest.raises(ValueError, match=message):
        export(ToyModel(mode), str(path), toy_capabilities(), ModelMetadata(name="broken"))
    assert not path.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".atomplug-export")]


def test_declared_unit_must_exist_and_fit(tmp_path):
    with pytest.raises(ValueError, match="furlong"):
        export(
            ToyModel(),
            str(tmp_path / "m.pt"),
            toy_capabilities(outputs={"energy": ModelOutput("energy", "furlong", False)}),
        )
    with pytest.raises(ValueError, match="not an energy unit"):
        export(
            ToyModel(),
            str(tmp_path / "m.pt"),
            toy_capabilities(outputs={"energy": ModelOutput("energy", "Angstrom", False)}),
        )


@pytest.mark.parametrize("cutoff", [0.0, -1.0])
def test_zero_or_negative_cutoff(cutoff):
    with pytest.raises(Exception, match="cutoff must be a positive finite number"):
        NeighborListOptions(cutoff, False, True)


@pytest.fixture(scope="module")
def toy_runner(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy.pt"
    export(ToyModel(), str(path), toy_capabilities(), ModelMetadata(name="toy"))
    return ModelRunner(str(path))


def water():
    return Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


def test_unknown_atom_types(toy_runner):
    carbon_monoxide = Atoms("CO", positions=[[0, 0, 0], [1.1, 0, 0]])
    with pytest.raises(ValueError, match=r"element\(s\) C \(6\) unknown to this model, which knows H \(1\), O \(8\)"):
        toy_runner.run([carbon_monoxide], ["energy"])
    # The entry point itself (what LAMMPS and PLUMED call from C++) refuses them too.
    with pytest.raises(torch.jit.Error, match=r"atom types \[6\] are unknown to this model, which knows \[1, 8\]"):
        toy_runner.model.module(
            torch.tensor(carbon_monoxide.positions),
            torch.tensor([6, 8], dtype=torch.int32),
            torch.zeros((1, 3, 3), dtype=torch.float64),
            torch.zeros((1, 3), dtype=torch.bool),
            torch.tensor([2]),
            [torch.zeros((0, 2), dtype=torch.int64)] * len(toy_runner.requests),
            [torch.zeros((0, 3), dtype=torch.int32)] * len(toy_runner.requests),
            ["energy"],
            None,
            "energy",
            False,
            False,
            False,
            "Angstrom",
            "eV",
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite_positions(toy_runner, bad):
    atoms = water()
    atoms.positions[1, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        toy_runner.run([atoms], ["energy"], forces=True)


def test_output_not_declared(toy_runner):
    with pytest.raises(ValueError, match="no output 'dipole'.*declares: energy"):
        toy_runner.run([water()], ["dipole"])
    with pytest.raises(ValueError, match="cannot compute 'energy' per atom"):
        toy_runner.run([water()], ["energy/per_atom"])


def test_unknown_engine_unit(lj_model_path):
    with pytest.raises(ValueError, match="furlong"):
        ModelRunner(lj_model_path, length_unit="furlong")
    with pytest.raises(ValueError, match="cannot convert"):
        ModelRunner(lj_model_path, energy_unit="Angstrom")


def test_subset_energy_needs_per_atom_energy(toy_runner):
    with pytest.raises(ValueError, match="per-atom 'energy'.*ModelOutput\\(per_atom=True\\)"):
        toy_runner.run([water()], ["energy"], selected_atoms=[0])


def test_empty_structure(toy_runner):
    with pytest.raises(ValueError, match="no atoms"):
        toy_runner.run([Atoms()], ["energy"])
