"""The `atomplug` command line: inspect a model, evaluate structures, export the examples, locate
the plugins, compare the engines (crosscheck) and check the installation (doctor)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import numpy as np


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def _load(path: str):
    from atomplug.core.archive import load_model

    try:
        return load_model(path)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


def command_info(args: argparse.Namespace) -> None:
    model = _load(args.model)
    caps = model.capabilities
    meta = model.metadata
    print(f"model          {meta.name or '(unnamed)'}")
    if meta.description:
        print(f"description    {meta.description}")
    if meta.authors:
        print(f"authors        {', '.join(meta.authors)}")
    for reference in meta.references:
        print(f"reference      {reference}")
    print(
        f"file           {os.path.abspath(args.model)} (atomplug format {model.format_version}, "
        f"exported with torch {model.exported_with_torch})"
    )
    print(f"atomic types   {', '.join(_type_label(t) for t in caps.atomic_types)}")
    print(f"length unit    {caps.length_unit}")
    print(f"dtype          {caps.dtype}; devices: {', '.join(caps.supported_devices)}")
    print(f"interaction    {caps.interaction_range} {caps.length_unit}")
    if caps.ghost_exchange:
        print("ghost exchange yes: features exchanged between layers (LAMMPS ranks need ghosts out to one cutoff)")
    if model.package is not None:
        record = model.package
        print(
            f"compiled       yes: AOTInductor package for {record['device']}, torch {record['torch_version']}, "
            f"from {record['model_file']} (compiled in {record['compile_seconds']:g} s)"
        )
    elif model.program.get("captured"):
        print("compiled       no; torch.export program stored: `atomplug compile` makes a native package")
    else:
        print(f"compiled       no; TorchScript only ({model.program.get('reason', 'no program stored')})")
    print("outputs")
    for name, output in caps.outputs.items():
        quantity = output.quantity or "(no quantity)"
        unit = f" [{output.unit}]" if output.unit else ""
        per_atom = ", per atom" if output.per_atom else ""
        properties = f", {len(output.properties)} properties" if output.properties else ""
        print(f"  {name:<22} {quantity}{unit}{per_atom}{properties}")
    variants = caps.variants()
    if variants:
        print("variants       (choose one with variant= / --variant / OUTPUT=<name>/<variant>)")
        for name, names in variants.items():
            print(f"  {name}: {', '.join(names)}")
    print("inputs")
    if not caps.inputs:
        print("  (none: positions, types and cell only)")
    for name, value in caps.inputs.items():
        unit = f" [{value.unit}]" if value.unit else ""
        quantity = value.quantity or "(no unit)"
        print(f"  {name:<22} {quantity}{unit}, {'per atom' if value.per_atom else 'per structure'}")
    print("neighbor lists")
    requests = model.neighbor_requests(caps.length_unit)
    if not requests:
        print("  (none)")
    for cutoff, full_list, strict in requests:
        print(
            f"  cutoff {cutoff:g} {caps.length_unit}, {'full' if full_list else 'half'}, "
            f"{'strict' if strict else 'non-strict'}"
        )


def command_compile(args: argparse.Namespace) -> None:
    from atomplug.core.compiled import compile_model

    try:
        compile_model(args.model, args.output, args.device)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None


def _type_label(atomic_type: int) -> str:
    from ase.data import chemical_symbols

    if 0 < atomic_type < len(chemical_symbols):
        return f"{chemical_symbols[atomic_type]} ({atomic_type})"
    return str(atomic_type)


def command_eval(args: argparse.Namespace) -> None:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.stress import full_3x3_to_voigt_6_stress
    from tqdm import tqdm

    from atomplug.core.files import write_atomically
    from atomplug.core.runner import ModelRunner
    from atomplug.core.virial import stress_from_virial_array

    model = _load(args.model)
    if "energy" not in model.capabilities.outputs:
        raise CommandError(f"{args.model!r} has no 'energy' output; `atomplug eval` computes energies and forces")
    if not os.path.exists(args.structures):
        raise CommandError(f"structure file {args.structures!r} does not exist")
    try:
        frames = ase.io.read(args.structures, index=args.index)
    except Exception as error:  # ASE raises many kinds for unreadable files
        raise CommandError(
            f"could not read {args.structures!r} with ASE: {error}: check the file (ASE guesses its format from "
            "the extension)"
        ) from None
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise CommandError(f"{args.structures!r} holds no structures")
    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")
    output_directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(output_directory):
        raise CommandError(f"the directory of -o {args.output!r} does not exist: create {output_directory!r} first")
    try:
        runner = ModelRunner(model, device=args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        energy = runner.output_name("energy", args.variant)
    except ValueError as error:
        raise CommandError(f"--variant: {error}") from None
    _set_total_charge_and_spin(frames, runner.input_names, args.charge, args.spin)
    progress = tqdm(total=len(frames), unit="structure", disable=args.quiet or None, file=sys.stderr)
    results = []
    try:
        for start in range(0, len(frames), args.batch_size):
            batch = frames[start : start + args.batch_size]
            try:
                output = runner.run(batch, [energy], forces=True, virial=True, gradient_output=energy)
            except ValueError as error:
                raise CommandError(_first_failure(runner, batch, start, error, energy)) from None
            offset = 0
            for index, atoms in enumerate(batch):
                n_atoms = len(atoms)
                result = {
                    "energy": float(output[energy][index, 0]),
                    "forces": output["forces"][offset : offset + n_atoms].copy(),
                }
                if atoms.pbc.all():
                    stress = stress_from_virial_array(output["virial"][index], atoms.cell.array)
                    result["stress"] = full_3x3_to_voigt_6_stress(stress)
                offset += n_atoms
                results.append(result)
            progress.update(len(batch))
    finally:
        progress.close()

    written = []
    for atoms, result in zip(frames, results):
        atoms = atoms.copy()
        atoms.calc = SinglePointCalculator(atoms, **result)
        written.append(atoms)
    try:  # a temporary file renamed at the end: never a half-written output
        write_atomically(
            args.output,
            lambda handle: ase.io.write(handle, written, format="extxyz"),
            tag="eval",
            what="the results",
            binary=False,
        )
    except OSError as error:
        raise CommandError(str(error)) from None
    energies = np.array([r["energy"] for r in results])
    print(
        f"wrote {len(results)} structure(s) to {args.output}: energy from {energies.min():.6f} "
        f"to {energies.max():.6f} eV"
    )


def _set_total_charge_and_spin(frames: list, input_names, charge, spin) -> None:
    """--charge / --spin into every frame's info (where ASE and the model's runner read them);
    refused when the model does not read them, so that a flag never silently does nothing."""
    for value, key, name, flag in (
        (charge, "charge", "total_charge", "--charge"),
        (spin, "spin", "spin_multiplicity", "--spin"),
    ):
        if value is None:
            continue
        if name not in input_names:
            raise CommandError(
                f"{flag} is for models that request {name}, and this one requests "
                f"{', '.join(input_names) or 'no inputs'}: leave {flag} out"
            )
        for atoms in frames:
            atoms.info[key] = value


def _first_failure(runner, batch: list, start: int, error: ValueError, energy: str = "energy") -> str:
    """Which structure of a failed batch fails, and why: each alone, for a message naming it."""
    if len(batch) > 1:
        for index, atoms in enumerate(batch):
            try:
                runner.run([atoms], [energy], forces=True, virial=True, gradient_output=energy, use_cache=False)
            except ValueError as single:
                return f"structure {start + index}: {single}"
    return f"structure {start}: {error}" if len(batch) == 1 else f"structures {start}-{start + len(batch) - 1}: {error}"


def _export_named_example(name: str, path: str, source: Optional[str]) -> None:
    """The bundled examples; `mace` wraps the MACE model file given with --from."""
    if name == "lj":
        from atomplug.examples.lj import export_lj

        export_lj(path)
    elif name == "ani1x":
        from atomplug.examples import ani1x

        ccsdt = source
        if source == "auto":
            ccsdt = ani1x.find_ani1ccx_resources()
            if ccsdt is None:
                candidates = " or ".join(ani1x.ani1ccx_resource_candidates())
                raise CommandError(f"no complete ANI-1ccx files in {candidates}: {ani1x.ANI1CCX_HINT}")
        ani1x.export_ani1x(path, ccsdt)
    elif name in ("message-passing", "message-passing-exchange"):
        from atomplug.examples.message_passing import export_message_passing

        export_message_passing(path, ghost_exchange=name == "message-passing-exchange")
    elif name == "coulomb":
        from atomplug.examples.coulomb import export_coulomb

        export_coulomb(path)
    elif name == "charge-spin":
        from atomplug.examples.inputs import export_charge_spin

        export_charge_spin(path)
    elif name == "kinetic":
        from atomplug.examples.inputs import export_kinetic

        export_kinetic(path)
    else:
        if source is None:
            raise CommandError(
                "export-example mace needs the MACE model file: --from MODEL (a .model mace-torch wrote)"
            )
        from atomplug.examples.mace import export_mace

        export_mace(source, path)


def command_export_example(args: argparse.Namespace) -> None:
    if args.source is not None and args.name not in ("mace", "ani1x"):
        raise CommandError(
            f"--from is for the mace example (a MACE model file to wrap) and ani1x (the ANI-1ccx files for the "
            f"variant ccsdt), not for {args.name!r}"
        )
    try:
        _export_named_example(args.name, args.path, args.source)
    except (ImportError, OSError, FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"exported the {args.name} example model to {args.path}")


def command_plugin_path(args: argparse.Namespace) -> None:
    """Print where an engine plugin is (building it first when missing or stale)."""
    if args.engine == "plumed":
        from atomplug.plumed_cv import BuildError, plugin_path

        locate = plugin_path
    else:
        from atomplug.lammps_plugin import BuildError
        from atomplug.lammps_plugin import plugin_path as lammps_plugin_path

        def locate() -> str:
            return lammps_plugin_path(build_if_needed=True)

    try:
        print(locate())  # compiler messages go to stderr
    except BuildError as error:
        raise CommandError(str(error)) from None


def command_ipi_driver_path(args: argparse.Namespace) -> None:
    """The PES file for `i-pi-py_driver -m custom -P` and `<ffdirect><pes_path>`."""
    from atomplug.ipi_driver import custom_driver_path

    print(custom_driver_path())


class ChecksFailed(Exception):
    """A check ran and found a problem (exit status 1), as opposed to bad input (status 2)."""


def _ranks(text: str) -> List[int]:
    try:
        ranks = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise CommandError(f"--ranks takes comma-separated rank counts such as 1,2,4, not {text!r}") from None
    if not ranks or any(n < 1 for n in ranks):
        raise CommandError(f"--ranks needs positive rank counts such as 1,2,4, not {text!r}")
    return ranks


def command_crosscheck(args: argparse.Namespace) -> None:
    import ase.io

    from .crosscheck import ENGINES, crosscheck, format_report, plot_report

    model = _load(args.model)  # a missing or foreign model is bad input, reported before any engine starts
    if not os.path.exists(args.structure):
        raise CommandError(f"structure file {args.structure!r} does not exist")
    try:
        atoms = ase.io.read(args.structure, index=args.index)
    except Exception as error:  # ASE raises many kinds for unreadable files
        raise CommandError(f"could not read {args.structure!r} with ASE: {error}") from None
    if isinstance(atoms, list):
        raise CommandError(f"--index {args.index!r} selects {len(atoms)} frames; crosscheck takes one (e.g. --index 0)")
    try:
        model.variant_output("energy", args.variant)
    except ValueError as error:
        raise CommandError(f"--variant: {error}") from None
    _set_total_charge_and_spin([atoms], model.input_names, args.charge, args.spin)
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    unknown = [name for name in engines if name not in ENGINES]
    if unknown:
        raise CommandError(f"unknown engine(s) {', '.join(unknown)} in --engines; choose from {', '.join(ENGINES)}")
    models = {}
    for item in args.model_for or []:
        engine, _, path = item.partition("=")
        if not path:
            raise CommandError(f"--model-for takes ENGINE=MODEL (e.g. lammps=other.pt), not {item!r}")
        models[engine] = path
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise CommandError(f"the directory of --output {args.output!r} does not exist: create it first")
    if args.output and os.path.splitext(args.output)[1].lower() not in (".png", ".pdf", ".svg"):
        raise CommandError(f"--output {args.output!r}: give a .png, .pdf or .svg file name for the plot")
    package = None
    if args.compiled is not None:
        from atomplug.core.compiled import package_path_for

        package = args.compiled or package_path_for(args.model)
        if not os.path.exists(package):
            raise CommandError(f"no compiled package {package!r}: make it with `atomplug compile {args.model}`")
        _load(package)  # a stale, foreign or damaged package is bad input, reported now
    progress = (lambda text: print(f"  running {text} ...", file=sys.stderr, flush=True)) if not args.quiet else None
    try:
        report = crosscheck(
            args.model,
            atoms,
            ranks=_ranks(args.ranks),
            engines=engines,
            tolerance=args.tolerance,
            workdir=args.workdir,
            models=models,
            structure_name=os.path.basename(args.structure),
            progress=progress,
            variant=args.variant,
            package=package,
        )
    except (ValueError, FileNotFoundError) as error:
        raise CommandError(str(error)) from None
    print(format_report(report))
    if args.output:
        from atomplug.core.files import OutputError

        try:
            plot_report(report, args.output)
        except OutputError as error:
            raise CommandError(str(error)) from None
        print(f"plot written to {args.output}")
    if not report.passed:
        raise ChecksFailed("the engines disagree (see the table above)")


def command_doctor(args: argparse.Namespace) -> None:
    from .doctor import main as doctor

    if doctor(load=not args.no_load) != 0:
        raise CommandError("some checks failed (see above)")


def _add_input_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--variant",
        default="",
        help="the model's output variant, e.g. ccsdt for energy/ccsdt (see `atomplug info`)",
    )
    parser.add_argument(
        "--charge",
        type=float,
        default=None,
        help="total charge (e) of every structure, for a model that requests total_charge (default: each "
        "structure's charge= from the extxyz comment line)",
    )
    parser.add_argument(
        "--spin",
        type=float,
        default=None,
        help="spin multiplicity 2S+1 of every structure, for a model that requests spin_multiplicity (default: "
        "each structure's spin= from the extxyz comment line)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atomplug",
        description="Run one exported atomistic model in ASE, i-PI, LAMMPS and PLUMED.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="show a model's metadata, outputs, units and neighbor lists")
    info.add_argument("model")
    info.set_defaults(handler=command_info)

    compile_ = commands.add_parser(
        "compile",
        help="compile a model's torch.export program into a native package (.pt2) for this machine, checked "
        "against TorchScript",
    )
    compile_.add_argument("model", help="the exported model (.pt)")
    compile_.add_argument("-o", "--output", help="the package to write (default: MODEL with .pt2)")
    compile_.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    compile_.set_defaults(handler=command_compile)

    evaluate = commands.add_parser("eval", help="evaluate energy, forces and stress on structures (any ASE format)")
    evaluate.add_argument("model")
    evaluate.add_argument("structures", help="any file ASE can read")
    evaluate.add_argument("-o", "--output", required=True, help="extxyz file to write")
    evaluate.add_argument("--index", default=":", help="which frames to read (ASE index syntax, default all)")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_input_options(evaluate)
    evaluate.set_defaults(handler=command_eval)

    example = commands.add_parser("export-example", help="export a bundled example model")
    example.add_argument(
        "name",
        choices=[
            "lj",
            "ani1x",
            "message-passing",
            "message-passing-exchange",
            "coulomb",
            "charge-spin",
            "kinetic",
            "mace",
        ],
        help="lj, ani1x, message-passing (message-passing-exchange: the same weights, exchanging ghost features "
        "between layers); coulomb (cut Coulomb from per-atom charges), charge-spin (reads the "
        "total charge and spin multiplicity), kinetic (reads masses and velocities); mace (wraps --from MODEL)",
    )
    example.add_argument("path")
    example.add_argument(
        "--from",
        dest="source",
        metavar="MODEL",
        help="mace: the MACE model file (.model) to wrap into PATH; ani1x: the directory of ANI-1ccx's NeuroChem "
        "files (or 'auto': where torchani keeps them) to add the variant energy/ccsdt",
    )
    example.set_defaults(handler=command_export_example)

    plugin = commands.add_parser("plugin-path", help="print an engine plugin's path (building it if needed)")
    plugin.add_argument("engine", choices=["lammps", "plumed"])
    plugin.set_defaults(handler=command_plugin_path)

    ipi = commands.add_parser(
        "ipi-driver-path", help="print the PES file for `i-pi-py_driver -m custom -P` and <ffdirect><pes_path>"
    )
    ipi.set_defaults(handler=command_ipi_driver_path)

    check = commands.add_parser(
        "crosscheck", help="evaluate one structure in ASE, i-PI, LAMMPS and PLUMED and compare the results"
    )
    check.add_argument("model")
    check.add_argument("structure", help="any file ASE can read (one frame is used, see --index)")
    check.add_argument("--ranks", default="1,2", help="LAMMPS MPI rank counts to run, comma-separated (default 1,2)")
    check.add_argument("--output", "-o", help="write a plot of the differences (PNG, PDF or SVG)")
    check.add_argument(
        "--engines",
        default="ase,ipi,lammps,plumed",
        help="engines to compare with ASE (default all: ase,ipi,lammps,plumed)",
    )
    check.add_argument("--index", default="0", help="which frame of the structure file (ASE index, default 0)")
    check.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="relative tolerance (default 1e-10 for float64 models, 1e-4 for float32)",
    )
    check.add_argument(
        "--model-for",
        action="append",
        metavar="ENGINE=MODEL",
        help="give one engine another model file (ipi, lammps or plumed), e.g. a re-export",
    )
    check.add_argument(
        "--workdir", help="keep the engines' input and output files here (default: a temporary directory)"
    )
    check.add_argument(
        "--compiled",
        nargs="?",
        const="",
        metavar="PACKAGE",
        help="also run every engine with the model's compiled package (default: MODEL with .pt2, from `atomplug "
        "compile`)",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    _add_input_options(check)
    check.set_defaults(handler=command_crosscheck)

    doctor = commands.add_parser("doctor", help="check torch, vesin, i-PI, LAMMPS and PLUMED and their plugins")
    doctor.add_argument("--no-load", action="store_true", help="skip starting LAMMPS and PLUMED to load the plugins")
    doctor.set_defaults(handler=command_doctor)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except CommandError as error:
        print(f"atomplug: error: {error}", file=sys.stderr)
        return 2
    except ChecksFailed as error:
        print(f"atomplug: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
