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
    subprocess.run([sys.executable, "-m", "atomplug.cli", *args], check=True)


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
    print(
        f"  {'molecule':<10}{'atoms':>6}{'E atomplug (eV)':>20}{'E torchani (eV)':>20}{'|dE| (eV)':>12}{'max|dF| (eV/A)':>16}"
    )
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
        print(
            f"  {name:<10}{len(atoms):>6}{ours:>20.8f}{energy_ev:>20.8f}{abs(ours - energy_ev):>12.1e}{force_error:>16.1e}"
        )
    print(f"\n  largest relative energy difference to torchani's own ANI-1x: {worst:.1e}")
    print("  (forces pass through the extxyz text file, written with 8 decimals: hence ~1e-9 eV/A)")


def ase_langevin(model_path: str, steps: int = 200) -> dict:
    from ase import units
    from ase.build import molecule
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    from atomplug.ase_calculator import AtomplugCalculator

    banner(f"ASE: {steps} steps of Langevin MD, ethanol at 300 K, 0.5 fs (AtomplugCalculator)")
    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(2026)
    momenta = rng.normal(size=(len(atoms), 3)) * np.sqrt(atoms.get_masses() * units.kB * 300.0)[:, None]
    atoms.set_momenta(momenta)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_momenta(atoms.get_momenta() * np.sqrt(300.0 / atoms.get_temperature()))
    atoms.calc = AtomplugCalculator(model_path, additional_outputs=["energy_uncertainty"])
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False, rng=rng)
    print(f"  {'step':>5}{'t (fs)':>8}{'E_pot (eV)':>16}{'E_kin (eV)':>12}{'T (K)':>9}{'sigma_E (meV)':>15}")
    temperatures = []
    potentials = []

    def report() -> None:
        temperature = atoms.get_temperature()
        temperatures.append(temperature)
        potentials.append(atoms.get_potential_energy())
        if dynamics.nsteps % 25 == 0:
            print(
                f"  {dynamics.nsteps:>5}{dynamics.nsteps * 0.5:>8.1f}{atoms.get_potential_energy():>16.5f}"
                f"{atoms.get_kinetic_energy():>12.5f}{temperature:>9.1f}"
                f"{1000 * atoms.calc.results['energy_uncertainty']:>15.2f}"
            )

    dynamics.attach(report, interval=1)
    start = time.perf_counter()
    dynamics.run(steps)
    elapsed = time.perf_counter() - start
    print(
        f"\n  mean T over the last {steps // 2} steps: {np.mean(temperatures[-(steps // 2) :]):.0f} K (target 300 K: the run starts at the "
        "energy minimum, so kinetic energy first flows into the potential; 9 atoms fluctuate strongly)"
    )
    print(f"  {1000 * elapsed / steps:.1f} ms per MD step (ANI-1x, 8 networks, float64, CPU)")
    return {
        "time_fs": 0.5 * np.arange(len(potentials)),
        "potential_ev": np.array(potentials),
        "temperature_k": np.array(temperatures),
    }


def plumed_metadynamics(model_path: str, steps: int = 100) -> dict:
    from atomplug.examples.plumed_demo import run_demo

    banner("PLUMED: metadynamics on an ATOMPLUG CV (ASE drives PLUMED, ANI-1x underneath)")
    workdir = os.path.join(BUILD, "plumed")
    run_demo(model_path, workdir, steps=steps)
    data = np.loadtxt(os.path.join(workdir, "energies.dat"), ndmin=2)
    return {"time_fs": data[:, 0], "potential_ev": data[:, 1], "temperature_k": data[:, 2]}


def lammps_water(model_path: str, steps: int = 200) -> dict:
    from atomplug.lammps_plugin.demo import run_demo

    banner("LAMMPS: NVT of a periodic water box with ANI-1x, pair_style atomplug on 2 MPI ranks")
    rows = run_demo(model_path, os.path.join(BUILD, "lammps"), steps=steps)
    return {
        "time_fs": np.array([0.5 * row["Step"] for row in rows]),
        "potential_ev": np.array([row["PotEng"] for row in rows]),
        "temperature_k": np.array([row["Temp"] for row in rows]),
    }


def ipi_pimd(model_path: str, steps: int = 200) -> dict:
    from atomplug.ipi_driver.demo import run_demo

    banner("i-PI: 4-bead path-integral MD of methanol, ANI-1x on two atomplug-ipi clients")
    return run_demo(model_path, os.path.join(BUILD, "ipi"), steps=steps)


def crosscheck_engines(model_path: str) -> None:
    """The same frame through every engine, with the `atomplug crosscheck` command a user runs."""
    import ase.io

    from atomplug.lammps_plugin.demo import water_box

    banner("atomplug crosscheck: one water box frame through ASE, i-PI, LAMMPS (1 and 2 ranks), PLUMED")
    structure = os.path.join(BUILD, "water64.extxyz")
    water = water_box(n_per_side=4, seed=11)
    ase.io.write(structure, water)
    plot = os.path.join(BUILD, "crosscheck.png")
    print(
        f"  $ atomplug crosscheck {os.path.relpath(model_path)} {os.path.relpath(structure)} --ranks 1,2 "
        f"--output {os.path.relpath(plot)}\n"
    )
    atomplug_cli("crosscheck", model_path, structure, "--ranks", "1,2", "--output", plot, "--quiet")


def plot_energies(runs: dict) -> str:
    """One panel per engine: potential energy (from its start) and temperature against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(2, 2, figsize=(10, 6.5), sharex=False)
    for axes, (title, series) in zip(panels.flat, runs.items()):
        time_fs, potential = series["time_fs"], series["potential_ev"]
        axes.plot(time_fs, potential - potential[0], color="tab:blue", lw=1.2)
        axes.set_title(title, fontsize=9)
        axes.set_xlabel("time (fs)")
        axes.set_ylabel("E_pot - E_pot(0) (eV)", color="tab:blue")
        twin = axes.twinx()
        twin.plot(time_fs, series["temperature_k"], color="tab:red", lw=0.8, alpha=0.6)
        twin.set_ylabel("T (K)", color="tab:red")
    figure.suptitle("ANI-1x (exported once by atomplug) in four engines", fontsize=11)
    figure.tight_layout()
    path = os.path.join(BUILD, "energies.png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="atomplug demo: ANI-1x in every engine")
    parser.add_argument("--quick", action="store_true", help="a tenth of the MD steps (for the test suite)")
    args = parser.parse_args(argv)
    scale = 0.1 if args.quick else 1.0
    steps = lambda n: max(10, int(n * scale))  # noqa: E731
    start = time.perf_counter()
    print("atomplug demo: one exported model, every engine")
    paths = export_models()
    evaluate_molecules(paths["ani1x"])
    runs = {
        "ASE: ethanol, Langevin 300 K": ase_langevin(paths["ani1x"], steps(200)),
        "i-PI: methanol, 4-bead PIMD 300 K (bead average)": ipi_pimd(paths["ani1x"], steps(200)),
        "PLUMED + ASE: methanol, metadynamics (E incl. bias)": plumed_metadynamics(paths["ani1x"], steps(100)),
        "LAMMPS: 192-atom water, NVT 300 K, 2 MPI ranks": lammps_water(paths["ani1x"], steps(200)),
    }
    crosscheck_engines(paths["ani1x"])
    banner("done")
    print(f"  energy against time in every engine: {os.path.relpath(plot_energies(runs))}")
    print(f"  total {time.perf_counter() - start:.1f} s; models and outputs are in {os.path.relpath(BUILD)}/")


if __name__ == "__main__":
    main()
