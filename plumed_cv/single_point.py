"""One structure through `plumed driver` with the model's energy as an ATOMPLUG CV, for `atomplug
crosscheck` (`atomplug.cli.crosscheck`), which reads the plain dict it returns.

`BIASVALUE ARG=energy` makes the bias equal to the model's energy, so the forces and the virial
PLUMED applies are the model's own. PLUMED works in its native nm and kJ/mol; the positions go in
and the results come back through the core's unit conversion, so no PLUMED constant is involved.

A model's inputs come from the Atoms as everywhere in atomplug (`atomplug.core.runner.inputs_from_atoms`):
masses (`get_masses()`) and charges (`get_initial_charges()`) go to `plumed driver --mc`, the total
charge (`info["charge"]`) and the spin multiplicity (`info["spin"]`) to CHARGE= and SPIN=. A model
that needs velocities is skipped (PLUMED does not receive velocities). A variant is chosen with
OUTPUT=<the archive's variant_output("energy", variant)>, i.e. energy/<variant>.
"""

from __future__ import annotations

import os
import subprocess
from typing import Dict

import numpy as np

from atomplug.core.units import ENGINE_QUANTITY_UNITS, conversion_factor

TIMEOUT = 600.0
FORMAT = "%.17e"


def _species_keywords(atoms) -> str:
    """SPECIESn (1-based atom numbers) and SPECIES_TO_TYPES (atomic numbers) for each element."""
    numbers = atoms.numbers
    keywords = []
    types = []
    for index, number in enumerate(sorted(set(numbers.tolist())), start=1):
        members = np.flatnonzero(numbers == number) + 1
        keywords.append(f"SPECIES{index}=" + ",".join(str(m) for m in members))
        types.append(str(number))
    return " ".join(keywords) + " SPECIES_TO_TYPES=" + ",".join(types)


def _quantity_factor(quantity: str) -> float:
    """ASE's unit of `quantity` (mass, charge) in PLUMED's."""
    return conversion_factor(ENGINE_QUANTITY_UNITS["ase"][quantity], ENGINE_QUANTITY_UNITS["plumed"][quantity])


def evaluate_with_plumed(model_path: str, atoms, workdir: str, variant: str = "") -> Dict[str, object]:
    """Energy (eV), forces (eV/A) and virial (eV) of `atoms` computed under PLUMED, with the model's
    energy (its `variant` when given: OUTPUT=energy/<variant>) as the CV.

    Returns {"energy": float, "forces": [n, 3] array, "virial": 3x3 array}, or {"skipped": reason}
    for a structure or model PLUMED cannot take; raises ValueError when the Atoms lack an input the
    model needs (the message says where to put it), RuntimeError when `plumed driver` fails.
    """
    from atomplug.core.archive import read_header
    from atomplug.core.runner import inputs_from_atoms

    from . import plugin_path, plumed_environment, plumed_program

    if atoms.pbc.any() and not atoms.pbc.all():
        return {"skipped": f"PLUMED treats a structure as fully periodic or not at all (pbc={atoms.pbc.tolist()})"}
    capabilities = read_header(model_path)["capabilities"]
    if not any(name == "energy" or name.startswith("energy/") for name in capabilities["outputs"]):
        return {"skipped": "the model has no 'energy' output to use as a CV"}
    input_names = list(capabilities.get("inputs", {}))
    if "velocities" in input_names:
        return {"skipped": "the model needs velocities, which PLUMED does not receive from the MD engine"}
    inputs = inputs_from_atoms(atoms, input_names)

    nm = conversion_factor("Angstrom", "nm")
    kj_per_mol = conversion_factor("eV", "kJ/mol")
    with open(os.path.join(workdir, "structure.xyz"), "w") as handle:
        handle.write(f"{len(atoms)}\n")
        if atoms.pbc.all():
            handle.write(" ".join(f"{v:.17e}" for v in (atoms.cell.array * nm).reshape(-1)) + "\n")
        else:
            handle.write("0 0 0\n")
        for position in atoms.positions * nm:
            handle.write(f"X {position[0]:.17e} {position[1]:.17e} {position[2]:.17e}\n")
    extra_arguments = []
    if "masses" in inputs or "charges" in inputs:
        # `plumed driver --mc`: the format DUMPMASSCHARGE writes (0-based index, mass, charge)
        masses = inputs.get("masses", atoms.get_masses()) * _quantity_factor("mass")
        charges = inputs.get("charges", np.zeros(len(atoms))) * _quantity_factor("charge")
        with open(os.path.join(workdir, "masses-charges.dat"), "w") as handle:
            handle.write("#! FIELDS index mass charge\n")
            for index, (mass, charge) in enumerate(zip(masses, charges)):
                handle.write(f"{index} {mass:.17e} {charge:.17e}\n")
        extra_arguments = ["--mc", "masses-charges.dat"]
    keywords = ""
    if "total_charge" in inputs:
        keywords += f" CHARGE={float(inputs['total_charge'][0]) * _quantity_factor('charge'):.17g}"
    if "spin_multiplicity" in inputs:
        keywords += f" SPIN={float(inputs['spin_multiplicity'][0]):.17g}"
    output = "energy"
    if variant:  # the archive's own rule names the output (and refuses an unknown variant)
        from atomplug.core.archive import load_model

        output = load_model(model_path).variant_output("energy", variant)
    with open(os.path.join(workdir, "plumed.dat"), "w") as handle:
        handle.write(
            f"LOAD FILE={plugin_path()}\n"
            f"energy: ATOMPLUG MODEL={os.path.abspath(model_path)} OUTPUT={output} {_species_keywords(atoms)}"
            f"{keywords}\n"
            "BIASVALUE ARG=energy\n"
            f"PRINT ARG=energy FILE=COLVAR FMT={FORMAT}\n"
        )
    command = [
        plumed_program(),
        "driver",
        "--plumed",
        "plumed.dat",
        "--ixyz",
        "structure.xyz",
        "--dump-forces",
        "forces.xyz",
        "--dump-forces-fmt",
        FORMAT,
        "--dump-full-virial",
        *extra_arguments,
    ]
    run = subprocess.run(
        command,
        cwd=workdir,
        env=plumed_environment(dict(os.environ, OMP_NUM_THREADS="1")),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if run.returncode != 0:
        text = (run.stdout + run.stderr).splitlines()
        message = next((line for line in text if "ERROR" in line or "error" in line), None)
        raise RuntimeError(message or f"plumed driver failed (exit {run.returncode}): {run.stderr.strip()[-500:]}")

    energy = float(np.loadtxt(os.path.join(workdir, "COLVAR"), comments="#", ndmin=2)[0, 1])
    with open(os.path.join(workdir, "forces.xyz")) as handle:
        lines = handle.read().splitlines()
    virial = np.array([float(v) for v in lines[1].split()]).reshape(3, 3)
    forces = np.array([[float(v) for v in line.split()[1:4]] for line in lines[2 : 2 + len(atoms)]])
    # PLUMED's virial is dE/d(strain) = -W (PLUMED's sign), in kJ/mol
    return {"energy": energy / kj_per_mol, "forces": forces / (kj_per_mol / nm), "virial": -virial / kj_per_mol}
