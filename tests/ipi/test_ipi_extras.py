"""--extras: requested model outputs travel in the extras JSON and land in i-PI's extras output."""

import ast
import json
import os

import numpy as np
from ase.units import Bohr, Hartree
from ipi_harness import log_text, molecule_frames, read_extras, replay, socket_xml, unique_socket_name, wait

from atomplug.ase_calculator import AtomplugCalculator

EXTRAS = ["energy/per_atom", "energy_uncertainty", "energy_ensemble"]


def test_extras_json_reaches_ipi_output(procs, ani1x_path, tmp_path):
    base, frames = molecule_frames("CH3OH", 3, seed=9)
    template = tmp_path / "methanol.xyz"
    base.write(template)
    name = unique_socket_name("extras")

    def start():
        return [
            procs.client(
                "--model", ani1x_path, "--structure", str(template), "--unix", name, "--extras", ",".join(EXTRAS)
            )
        ]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name, pbc=False), box_bohr=40.0, start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])

    # i-PI prints its dictionary of per-bead lists (one bead here); "raw" holds the client's string
    printed = [ast.literal_eval(line) for line in read_extras(os.path.join(procs.workdir, "sim.xtr_0"))]
    assert len(printed) == len(records)
    calculator = AtomplugCalculator(ani1x_path, additional_outputs=EXTRAS)
    worst = 0.0
    for record, fields in zip(records, printed):
        extras = json.loads(fields["raw"][0])
        assert sorted(extras) == sorted(EXTRAS)
        atoms = base.copy()
        atoms.positions = record.positions * Bohr
        atoms.calc = calculator
        atoms.get_potential_energy()
        expected = {key: np.asarray(atoms.calc.results[key]) / Hartree for key in EXTRAS}
        per_atom = np.array(extras["energy/per_atom"])
        assert per_atom.shape == (len(base),)
        assert abs(per_atom.sum() - record.energy) < 1e-10 * abs(record.energy)
        assert np.asarray(extras["energy_ensemble"]).shape == (8,)
        assert isinstance(extras["energy_uncertainty"], float)
        for key in EXTRAS:
            difference = np.abs(np.asarray(extras[key]) - expected[key]).max() / np.abs(expected[key]).max()
            worst = max(worst, difference)
        # i-PI also parses the JSON itself: the fields are there, per bead
        assert fields["energy_uncertainty"][0] == extras["energy_uncertainty"]
    print(f"\nextras vs ASE calculator (Hartree): {worst:.1e} relative")
    assert worst < 1e-12
