"""`make demo`: the bundled ANI-1x model, wrapped and exported by atomplug, in every engine so far.

Each engine issue adds its section; the whole run stays short and prints what a scientist checks:
energies, forces, temperatures, and agreement between independent paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

BUILD = os.path.join(os.getcwd(), "build", "demo")
MOLECULES = ["H2O", "NH3", "CH4", "C2H2", "HCN", "CH3OH", "C6H6", "CH3CONH2"]


def banner(title: str) -> None:
    print()
    print(f"== {title} " + "=" * max(0, 74 - len(title)))


def atomplug_cli(*args: str) -> None:
    """Run the real `atomplug` command line, as a user would."""
    subprocess.run([sys.executable, "-m", "atomplug.core.cli", *args], check=True)


def export_models() -> dict:
    from atomplug.examples.ani1x import export_ani1x
    from atomplug.examples.lj import export_lj

    banner("Export: our example code wraps the models into single archives")
    os.makedirs(BUILD, exist_ok=True)
    paths = {"lj": os.path.join(BUILD, "lj.pt"), "ani1x": os.path.join(BUILD, "ani1x.pt")}
    start = time.perf_counter()
    export_lj(paths["lj"])
    export_ani1x(paths["ani1x"])
    for name, path in paths.items():
        print(f"  {name:<6} -> {os.path.relpath(path)} ({os.path.getsize(path) / 1e6:.2f} MB)")
    print(f"  exported in {time.perf_counter() - start:.1f} s")
    banner("atomplug info build/demo/ani1x.pt")
    atomplug_cli("info", paths["ani1x"])
    return paths


def evaluate_molecules(model_path: str) -> None:
    import ase.io
    import torch
    from ase.build import molecule
    from ase.units import Hartree

    from atomplug.examples.ani1x import torchani_reference

    banner("atomplug eval: ANI-1x on small molecules (any ASE-readable file in, extxyz out)")
    frames = [molecule(name) for name in MOLECULES]
    source = os.path.join(BUILD, "molecules.xyz")
    target = os.path.join(BUILD, "molecules-ani1x.xyz")
    ase.io.write(source, frames)
    atomplug_cli("eval", model_path, source, "-o", target, "--quiet")
    results = ase.io.read(target, ":")

    reference = torchani_reference()
    print()
    print(f"  {'molecule':<10}{'atoms':>6}{'E atomplug (eV)':>20}{'E torchani (eV)':>20}{'|dE| (eV)':>12}{'max|dF| (eV/A)':>16}")
    worst = 0.0
    for name, atoms in zip(MOLECULES, results):
        species = torch.tensor(atoms.numbers, dtype=torch.long).unsqueeze(0)
        coordinates = torch.tensor(atoms.positions, dtype=torch.float64).unsqueeze(0).requires_grad_(True)
        energy = reference((species, coordinates)).energies.sum()
        (gradient,) = torch.autograd.grad(energy, coordinates)
        energy_ev = float(energy.detach()) * Hartree
        forces_ev = -gradient[0].numpy() * Hartree
        ours = atoms.get_potential_energy()
        force_error = float(np.max(np.abs(atoms.get_forces() - forces_ev)))
        worst = max(worst, abs(ours - energy_ev) / abs(energy_ev))
        print(f"  {name:<10}{len(atoms):>6}{ours:>20.8f}{energy_ev:>20.8f}{abs(ours - energy_ev):>12.1e}{force_error:>16.1e}")
    print(f"\n  largest relative energy difference to torchani's own ANI-1x: {worst:.1e}")
    print("  (forces pass through the extxyz text file, written with 8 decimals: hence ~1e-9 eV/A)")


def main() -> None:
    start = time.perf_counter()
    print("atomplug demo: one exported model, every engine")
    paths = export_models()
    evaluate_molecules(paths["ani1x"])
    banner("done")
    print(f"  total {time.perf_counter() - start:.1f} s; models and outputs are in {os.path.relpath(BUILD)}/")


if __name__ == "__main__":
    main()
