"""The GPU path's marshalling, on the CPU: `pair_style atomplug ... device cuda` packs each step's
tensors (positions, types, cell, pbc, sizes, selection, every list's pairs and shifts, the model's
inputs) into one host buffer, sends it in one copy and hands the model typed views of it; the
results come back flattened in one copy (atomplug_core::DeviceTransfer). ATOMPLUG_ONE_COPY=1 makes
the CPU do exactly that, so the offsets and views are checked here on machines without a GPU:

- every dumped number (forces, per-atom energies and virials, the extra per-atom output, the
  pressure) is bit for bit what the ordinary CPU path gives, after several MD steps with list
  rebuilds, on 1 and 2 ranks (a selection of local atoms, ghosts), for a model with two lists of
  different cutoffs, a model with per-atom inputs (masses, velocities) and a message-passing model
  exchanging ghost features between its layers;
- the log says one copy in and one out per model call.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import ase.io
import numpy as np
import pytest
import torch
from lammps_harness import read_dump, run_lmp
from structures import hco_liquid
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export

ONE_COPY = {"ATOMPLUG_ONE_COPY": "1"}
SUMMARY = re.compile(r"atomplug: inputs to cpu and results back: (\d+) calls, (\d+) copies in, (\d+) out")
STEPS = 6


class TwoLists(torch.nn.Module):
    """Two neighbor lists: eps (1 - r/6)^2 per pair of a half list (cutoff 6 A) plus
    eps (1 - r/4)^3 per pair of a full list (cutoff 4 A, each pair seen twice), per atom."""

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(6.0, False, True), NeighborListOptions(4.0, True, True)]

    def forward(
        self, systems: List[System], outputs: Dict[str, ModelOutput], selected_atoms: Optional[Tensor]
    ) -> Dict[str, Tensor]:
        atomics: List[Tensor] = []
        for system in systems:
            atomic = torch.zeros(
                system.positions.shape[0], dtype=system.positions.dtype, device=system.positions.device
            )
            half = system.get_neighbor_list(NeighborListOptions(6.0, False, True))
            reduced = 1.0 - half.distances() / 6.0
            atomic = atomic.index_add(0, half.pairs[:, 0], 0.01 * reduced * reduced)
            full = system.get_neighbor_list(NeighborListOptions(4.0, True, True))
            reduced = 1.0 - full.distances() / 4.0
            atomics.append(atomic.index_add(0, full.pairs[:, 0], 0.02 * reduced * reduced * reduced))
        if outputs["energy"].per_atom:
            return {"energy": torch.cat(atomics).reshape(-1, 1)}
        return {"energy": torch.stack([a.sum() for a in atomics]).reshape(-1, 1)}


def export_two_lists(path: str) -> None:
    outputs = {"energy": ModelOutput(quantity="energy", unit="eV", per_atom=True)}
    capabilities = ModelCapabilities(
        outputs=outputs, atomic_types=[18], interaction_range=6.0, supported_devices=["cpu"]
    )
    export(TwoLists(), path, capabilities, ModelMetadata(name="two-lists", description="a half and a full list"))


def argon_block(model: str, label: str, extra_output: str = "") -> str:
    """fcc argon (two types), displaced, 6 NVE steps with a rebuild every 2; dumps the last step."""
    outputs = f" outputs {extra_output}" if extra_output else ""
    fix = f"fix extra all pair {STEPS} atomplug {extra_output} 1" if extra_output else ""
    column = "f_extra" if extra_output else ""
    return f"""
clear
units metal
lattice fcc 5.26
region box block 0 3 0 3 0 3
create_box 2 box
create_atoms 1 box
set type 1 type/fraction 2 0.4 8
displace_atoms all random 0.15 0.15 0.15 12345 units box
mass * 39.948
velocity all create 300 4928459 loop geom
comm_modify vel yes
neighbor 0.3 bin
neigh_modify every 2 delay 0 check no
pair_style atomplug {model}{outputs}
pair_coeff * * Ar Ar
compute pe all pe/atom
compute sa all stress/atom NULL virial
compute pv all pressure NULL virial
{fix}
fix nve all nve
thermo_style custom step pe c_pv[1] c_pv[4]
dump d all custom {STEPS} {label}.dump id fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6] {column}
dump_modify d sort id format float %.17g delay {STEPS}
run {STEPS}
"""


def message_passing_block(model: str, label: str) -> str:
    return f"""
clear
units metal
atom_style atomic
boundary p p p
read_data hco.data
pair_style atomplug {model}
pair_coeff * * H C O
compute pe all pe/atom
compute sa all stress/atom NULL virial
fix nve all nve
timestep 0.0002
dump d all custom {STEPS} {label}.dump id fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g delay {STEPS}
run {STEPS}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory, lj_model_path, message_passing_exchange_path):
    from atomplug.examples.inputs import export_kinetic

    directory = tmp_path_factory.mktemp("one-copy-models")
    two_lists = str(directory / "two-lists.pt")
    export_two_lists(two_lists)
    kinetic = str(directory / "kinetic.pt")
    export_kinetic(kinetic)
    return {"lj": lj_model_path, "two-lists": two_lists, "kinetic": kinetic, "exchange": message_passing_exchange_path}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, plugin, models):
    """{(packed, nprocs): (directory, stdout)}: the same input with and without ATOMPLUG_ONE_COPY."""
    results = {}
    for packed in (False, True):
        for nprocs in (1, 2):
            directory = tmp_path_factory.mktemp(f"one-copy-{int(packed)}-{nprocs}")
            ase.io.write(
                str(directory / "hco.data"), hco_liquid(), format="lammps-data", specorder=["H", "C", "O"], masses=True
            )
            text = argon_block(models["lj"], "lj")
            text += argon_block(models["two-lists"], "two-lists")
            text += argon_block(models["kinetic"], "kinetic", "atomplug::kinetic_energy")
            text += message_passing_block(models["exchange"], "exchange")
            result = run_lmp(directory, text, nprocs, name="in.one-copy", env=ONE_COPY if packed else {})
            results[(packed, nprocs)] = (directory, result.stdout)
    return results


@pytest.mark.parametrize("nprocs", [1, 2])
@pytest.mark.parametrize("label", ["lj", "two-lists", "kinetic", "exchange"])
def test_one_copy_gives_the_same_bits(runs, label, nprocs):
    plain = read_dump(runs[(False, nprocs)][0] / f"{label}.dump")
    packed = read_dump(runs[(True, nprocs)][0] / f"{label}.dump")
    assert plain.keys() == packed.keys()
    moving = [name for name in plain if name.startswith("f") or name.startswith("c_")]
    assert any(np.abs(plain[name]).max() > 0 for name in moving), "a run without forces checks nothing"
    for name in plain:
        assert np.array_equal(plain[name], packed[name]), f"{label} on {nprocs} rank(s): {name} differs"


@pytest.mark.parametrize("nprocs", [1, 2])
def test_the_log_counts_one_copy_each_way_per_call(runs, nprocs):
    summaries = SUMMARY.findall(runs[(True, nprocs)][1])
    # one per run: four models
    assert len(summaries) == 4, runs[(True, nprocs)][1][-3000:]
    for calls, copies_in, copies_out in summaries:
        assert int(calls) >= STEPS + 1
        assert copies_in == calls and copies_out == calls
    # the CPU path copies nothing and says nothing
    assert not SUMMARY.search(runs[(False, nprocs)][1])
