"""The i-PI-native forms: `i-pi-py_driver -m custom -P <atomplug file>` and in-process <ffdirect>.

Both load the PES file whose path `atomplug.ipi_driver.custom_driver_path()` gives; both must
produce the same numbers as the atomplug-ipi client (which the agreement tests check against
the ASE calculator).
"""

import os
import time

from ipi_harness import (
    agreement,
    argon_frames,
    executable,
    log_text,
    replay,
    socket_xml,
    unique_socket_name,
    wait,
    write_ipi_xyz,
)

from atomplug.ase_calculator import AtomplugCalculator
from atomplug.ipi_driver import custom_driver_path

TOLERANCE = 1e-8


def test_custom_driver_path_is_the_packaged_pes_file():
    path = custom_driver_path()
    assert os.path.isabs(path) and os.path.isfile(path) and path.endswith(".py")
    text = open(path).read()
    assert '__DRIVER_CLASS__ = "AtomplugDriver"' in text and "Dummy_driver" in text


def test_ipi_py_driver_custom_mode(procs, lj_model_path, tmp_path):
    base, frames = argon_frames(2, seed=5)
    template = tmp_path / "template.xyz"
    write_ipi_xyz(str(template), [base])
    name = unique_socket_name("pydriver")

    def start():
        # i-pi-py_driver does not wait for the server: start it once the socket exists
        deadline = time.monotonic() + 60
        while not os.path.exists("/tmp/ipi_" + name) and time.monotonic() < deadline:
            time.sleep(0.05)
        command = [
            executable("i-pi-py_driver"),
            "-m",
            "custom",
            "-P",
            custom_driver_path(),
            "-u",
            "-a",
            name,
            "-o",
            f"model={lj_model_path},template={template},name=pydriver,threads=1",
        ]
        return [procs.command(command, "py_driver.log")]

    _, clients, records = replay(procs, frames, socket_xml("model", unix=name), start=start)
    assert wait(clients[0], 30) == 0, log_text(clients[0])
    worst = agreement(records, frames, AtomplugCalculator(lj_model_path))
    print(f"\ni-pi-py_driver -m custom vs ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst


def test_ffdirect_in_process(procs, lj_model_path, tmp_path):
    base, frames = argon_frames(2, seed=6)
    template = tmp_path / "template.extxyz"
    base.write(template)
    forcefield = (
        f'<ffdirect name="model"><pes>custom</pes><pes_path>{custom_driver_path()}</pes_path>'
        f"<parameters>{{model: {lj_model_path}, template: {template}, threads: 1}}</parameters></ffdirect>"
    )
    server, _, records = replay(procs, frames, forcefield)
    assert "lennard-jones" in log_text(server)  # the model's citation block, printed at start
    worst = agreement(records, frames, AtomplugCalculator(lj_model_path))
    print(f"\n<ffdirect> vs ASE calculator: {worst}")
    assert all(value < TOLERANCE for value in worst.values()), worst
