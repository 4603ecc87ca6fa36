"""Wrap a MACE model (mace-torch) into an atomplug archive.

    python -m atomplug.examples.mace my_mace.model mace.pt            # float64, default head
    python -m atomplug.examples.mace my_mace.model mace.pt --head pt_head --dtype float32

The input is a model file a user trained with `mace-torch` (the pickled module `mace_run_train`
writes, `*.model`), or the module itself. Exporting needs `mace-torch` (the `mace` extra:
`pip install -c <(echo torch==<your torch>) 'atomplug[mace]'`); the exported archive needs only
torch, like every atomplug model.

What the wrapper does (MACE and ScaleShiftMACE classes of mace-torch 0.3.16):
- it requests one FULL, strict neighbor list with MACE's `r_max` and declares the interaction
  range `num_interactions x r_max` (a message-passing model sees that far);
- it builds MACE's input dict from the atomplug `System`s: one-hot `node_attrs` over the model's
  atomic-number table, `edge_index` = [senders, receivers] = [i, j] of each pair (i, j),
  `batch`, `ptr`, `cell`, `head` (the head chosen at export);
- MACE computes its edge vectors as `positions[receiver] - positions[sender] + shifts`. The
  wrapper passes zero positions and `shifts` = our differentiable `vectors`, so MACE's vectors are
  exactly ours and every geometric dependence flows through them: forces, virial and per-atom
  virial come from the entry point's autograd, and the model runs with LAMMPS ghost atoms.
  MACE is called with compute_force=False (it differentiates nothing itself); in these classes
  nothing else is computed from positions. `export_mace` checks this on every export by comparing
  the wrapper with MACE's own forward (its own vectors and force computation) on a small cluster;
- it returns per-atom energies, MACE's `node_energy` (the E0s included), so an energy of a subset
  of atoms (LAMMPS local atoms among ghosts) is the sum of its atoms' energies.

e3nn 0.4.4 calls `torch.load` when it is imported and mace-torch sets
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in `os.environ` for good when *it* is imported: `import_mace`
sets that variable for the import only and restores the environment afterwards, so that the rest
of the process keeps torch's safe `weights_only` default. MACE modules are scripted with
`e3nn.util.jit.script` (plain `torch.jit.script` fails on e3nn's code-generated blocks).

Reference: I. Batatia, D. P. Kovacs, G. N. C. Simm, C. Ortner, G. Csanyi, MACE: Higher order
equivariant message passing neural networks for fast and accurate force fields, NeurIPS 35 (2022).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import Tensor

from atomplug.core import ModelCapabilities, ModelMetadata, ModelOutput, NeighborListOptions, System, export
from atomplug.core.graph import batch_systems, exchange_ghosts

MACE_VERSION = "0.3.16"
MACE_REQUIREMENT = (
    f"export_mace needs mace-torch=={MACE_VERSION} (the 'mace' extra; install it keeping your torch: "
    f"pip install -c <(echo torch==$(python -c 'import torch; print(torch.__version__)')) "
    f"'mace-torch=={MACE_VERSION}')"
)
SUPPORTED_CLASSES = ("MACE", "ScaleShiftMACE")
REFERENCES = [
    "I. Batatia, D. P. Kovacs, G. N. C. Simm, C. Ortner, G. Csanyi, MACE: Higher Order Equivariant "
    "Message Passing Neural Networks for Fast and Accurate Force Fields, Advances in Neural Information "
    "Processing Systems 35 (2022), arXiv:2206.07697",
]
_WEIGHTS_ONLY_VARIABLE = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
# what TorchScript says about e3nn's generated modules (harmless)
_TORCHSCRIPT_NOTICE = "The TorchScript type system doesn't support instance-level"


@contextlib.contextmanager
def weights_only_load_allowed() -> Iterator[None]:
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 inside the block only; the environment as it was after it.

    Wrap every first import of a mace module in it (`import mace` and `import mace.calculators`
    set the variable for good, which would make every later `torch.load` in the process unpickle
    arbitrary code by default)."""
    saved = os.environ.get(_WEIGHTS_ONLY_VARIABLE)
    os.environ[_WEIGHTS_ONLY_VARIABLE] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_WEIGHTS_ONLY_VARIABLE, None)
        else:
            os.environ[_WEIGHTS_ONLY_VARIABLE] = saved


def import_mace():
    """Import mace (and e3nn) with the environment torch >= 2.6 needs for e3nn's import-time
    `torch.load`, restoring the environment afterwards; returns the `mace` package."""
    try:
        # quiet: e3nn warns about the variable, mace prints a line about cuequivariance
        with weights_only_load_allowed(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", category=UserWarning)
            import e3nn.util.jit  # noqa: F401  (e3nn 0.4.4 calls torch.load at import)
            import mace
            import mace.modules  # noqa: F401
    except ImportError as error:
        raise ImportError(f"{MACE_REQUIREMENT}: {error}") from error
    version = getattr(mace, "__version__", "unknown")
    if version != MACE_VERSION:
        warnings.warn(
            f"examples/mace.py was written and tested against mace-torch {MACE_VERSION}, found {version}: "
            "the export checks the wrapper against MACE's own forward, but read docs/mace.md",
            stacklevel=2,
        )
    return mace


class MACEWrapper(torch.nn.Module):
    """The atomplug contract around a scripted MACE module: per-atom energies from `node_energy`.

    With `ghost_exchange`, the wrapper runs MACE's blocks itself, layer by layer (the steps of
    MACE.forward / ScaleShiftMACE.forward in mace-torch 0.3.16, checked against MACE's own forward
    at every export), and calls `exchange_ghosts` on the node features before each interaction
    after the first: LAMMPS ranks then need ghosts one r_max deep, not num_interactions x r_max.
    (MACE's own LAMMPS interface exchanges at the same place, after the per-atom `linear_up`;
    a per-atom map commutes with the exchange.)"""

    def __init__(
        self,
        mace_module: torch.nn.Module,
        atomic_numbers: Sequence[int],
        r_max: float,
        head_index: int,
        ghost_exchange: bool = False,
    ):
        super().__init__()
        self.mace = mace_module
        self.ghost_exchange = bool(ghost_exchange)
        numbers = [int(z) for z in atomic_numbers]
        self.atomic_numbers = numbers
        self.num_elements = len(numbers)
        self.cutoff = float(r_max)
        self.head_index = int(head_index)
        table = torch.full((max(numbers) + 1,), -1, dtype=torch.long)
        for index, number in enumerate(numbers):
            table[number] = index
        self.register_buffer("species_of_number", table)

    def requested_neighbor_lists(self) -> List[NeighborListOptions]:
        return [NeighborListOptions(self.cutoff, True, True)]

    def forward(
        self,
        systems: List[System],
        outputs: Dict[str, ModelOutput],
        selected_atoms: Optional[Tensor],
    ) -> Dict[str, Tensor]:
        if "energy" not in outputs:
            return {}
        species, pairs, vectors, batch, sizes = batch_systems(
            systems,
            NeighborListOptions(self.cutoff, True, True),
            self.species_of_number,
            f"this MACE model knows only the atomic numbers {self.atomic_numbers}",
        )
        dtype = vectors.dtype
        device = vectors.device
        n_atoms = species.shape[0]
        n_systems = len(systems)

        # a non-strict list may hold pairs beyond r_max: MACE's cutoff makes them weigh exactly 0
        inside = torch.nonzero(torch.linalg.vector_norm(vectors, dim=1) < self.cutoff).flatten()
        pairs = pairs.index_select(0, inside)
        vectors = vectors.index_select(0, inside)

        data: Dict[str, Tensor] = {
            # MACE: vectors = positions[receiver] - positions[sender] + shifts = our vectors, exactly
            "positions": torch.zeros((n_atoms, 3), dtype=dtype, device=device),
            "shifts": vectors,
            "unit_shifts": torch.zeros_like(vectors),
            "edge_index": torch.stack([pairs[:, 0], pairs[:, 1]]),
            "node_attrs": torch.nn.functional.one_hot(species, self.num_elements).to(dtype),
            "batch": batch,
            "ptr": torch.tensor(sizes, dtype=torch.long, device=device),
            "cell": torch.cat([system.cell for system in systems]).to(dtype),
            "head": torch.full((n_systems,), self.head_index, dtype=torch.long, device=device),
        }
        if self.ghost_exchange:
            node_energy = self._layer_by_layer(systems, data, vectors, sizes)
        else:
            results = self.mace(
                data,
                training=False,
                compute_force=False,
                compute_virials=False,
                compute_stress=False,
                compute_displacement=False,
                compute_hessian=False,
                compute_edge_forces=False,
                compute_atomic_stresses=False,
                lammps_mliap=False,
            )
            returned = results["node_energy"]
            if returned is None:
                raise ValueError("the MACE model returned no node_energy")
            node_energy = returned
        atomic = node_energy.to(dtype)
        if selected_atoms is not None:
            atomic = atomic.index_select(0, selected_atoms)
            batch = batch.index_select(0, selected_atoms)
        if outputs["energy"].per_atom:
            return {"energy": atomic.reshape(-1, 1)}
        energy = torch.zeros(n_systems, dtype=dtype, device=device).index_add(0, batch, atomic)
        return {"energy": energy.reshape(-1, 1)}

    def _layer_by_layer(self, systems: List[System], data: Dict[str, Tensor], vectors: Tensor, sizes: List[int]):
        """MACE's node energies from its blocks, with the ghost features exchanged between them."""
        node_attrs = data["node_attrs"]
        edge_index = data["edge_index"]
        node_heads = data["head"].index_select(0, data["batch"])
        atoms = torch.arange(node_attrs.shape[0], device=node_attrs.device)
        lengths = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
        node_e0 = self.mace.atomic_energies_fn(node_attrs)[atoms, node_heads]
        node_feats = self.mace.node_embedding(node_attrs)
        edge_attrs = self.mace.spherical_harmonics(vectors)
        edge_feats, cutoff = self.mace.radial_embedding(lengths, node_attrs, edge_index, self.mace.atomic_numbers)
        if hasattr(self.mace, "pair_repulsion"):
            pair_node_energy = self.mace.pair_repulsion_fn(lengths, node_attrs, edge_index, self.mace.atomic_numbers)
        else:
            pair_node_energy = torch.zeros_like(node_e0)
        features: List[Tensor] = []
        for index, (interaction, product) in enumerate(zip(self.mace.interactions, self.mace.products)):
            if index > 0:
                node_feats = exchange_ghosts(systems, node_feats, sizes)
            node_feats, sc = interaction(
                node_attrs=node_attrs,
                node_feats=node_feats,
                edge_attrs=edge_attrs,
                edge_feats=edge_feats,
                edge_index=edge_index,
                cutoff=cutoff,
                first_layer=(index == 0),
            )
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=node_attrs)
            features.append(node_feats)
        energies: List[Tensor] = [pair_node_energy]
        for index, readout in enumerate(self.mace.readouts):
            chosen = features[-1] if len(self.mace.readouts) == 1 else features[index]
            energies.append(readout(chosen, node_heads)[atoms, node_heads])
        interaction_energy = torch.sum(torch.stack(energies, dim=-1), dim=-1)
        if hasattr(self.mace, "scale_shift"):  # ScaleShiftMACE
            return node_e0.double() + self.mace.scale_shift(interaction_energy, node_heads).double()
        return node_e0.double() + interaction_energy.double()


def load_mace_model(model_path_or_module: Union[str, os.PathLike, torch.nn.Module]) -> torch.nn.Module:
    """A copy of the MACE module, or the one pickled in the user's own model file.

    A `.model` file is a pickle: loading it runs code from the file, so only load files you
    trained or trust (atomplug itself never unpickles anything when it loads an archive)."""
    import_mace()
    if isinstance(model_path_or_module, torch.nn.Module):
        return copy.deepcopy(model_path_or_module)  # the export converts it: leave the caller's alone
    path = os.fspath(model_path_or_module)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no MACE model file {path!r}: give the path of a model trained with mace-torch")
    module = torch.load(path, map_location="cpu", weights_only=False)  # the user's own file: a pickle
    if not isinstance(module, torch.nn.Module):
        raise ValueError(
            f"{path!r} holds a {type(module).__name__}, not a MACE module: give the '.model' file that "
            "mace_run_train writes (not a checkpoint or a state dict)"
        )
    return module


def _choose_head(heads: Sequence[str], head: Optional[str]) -> int:
    """The index of `head`; without one, the only head or the one called 'default' (as MACECalculator)."""
    heads = list(heads)
    if head is not None:
        if head not in heads:
            raise ValueError(f"head {head!r} is not in this MACE model, which has the heads {heads}")
        return heads.index(head)
    if len(heads) == 1:
        return 0
    defaults = [index for index, name in enumerate(heads) if name.lower() == "default"]
    if not defaults:
        raise ValueError(f"this MACE model has several heads {heads} and none called 'default': choose one with head=")
    return defaults[0]


def describe_mace(module: torch.nn.Module) -> Dict[str, object]:
    """What the export reads from a MACE module: atomic numbers, r_max, interactions, heads, dtype."""
    name = type(module).__name__
    if name not in SUPPORTED_CLASSES:
        raise ValueError(
            f"{name} is not supported: examples/mace.py wraps the energy models {', '.join(SUPPORTED_CLASSES)} "
            "of mace-torch (not dipole, polarizability or charge models)"
        )
    if hasattr(module, "joint_embedding"):
        raise ValueError(
            f"this {name} embeds per-structure inputs ({', '.join(getattr(module, 'embedding_specs', {}) or {})}, "
            "e.g. total charge or spin), which the atomplug wrapper does not pass yet: use a model without them"
        )
    parameters = list(module.parameters())
    return {
        "class": name,
        "atomic_numbers": [int(z) for z in module.atomic_numbers.tolist()],
        "r_max": float(module.r_max),
        "num_interactions": int(module.num_interactions),
        "heads": list(getattr(module, "heads", None) or ["Default"]),
        "dtype": str(parameters[0].dtype).replace("torch.", "") if parameters else "float64",
    }


def _check_against_mace(
    module: torch.nn.Module, scripted_wrapper: torch.nn.Module, info: Dict[str, object], head_index: int
) -> None:
    """The wrapper (zero positions, shifts = vectors) must give MACE's own energies and forces on a
    small periodic cluster (MACE's vectors and its own autograd), or the export is refused."""
    from atomplug.core.neighbors import compute_pairs
    from atomplug.core.system import NeighborList

    dtype = next(module.parameters()).dtype
    generator = torch.Generator().manual_seed(1234)
    numbers = list(info["atomic_numbers"]) * max(1, 6 // len(info["atomic_numbers"]))
    n_atoms = len(numbers)
    r_max = float(info["r_max"])
    cell = torch.eye(3, dtype=torch.float64) * (1.2 * r_max)
    positions = torch.rand((n_atoms, 3), generator=generator, dtype=torch.float64) @ cell
    pbc = torch.ones(3, dtype=torch.bool)
    pairs, shifts = compute_pairs(positions.numpy(), cell.numpy(), pbc.numpy(), r_max, True)
    pairs_t = torch.from_numpy(pairs)
    shifts_t = torch.from_numpy(shifts).to(torch.float64)
    types = torch.tensor(numbers, dtype=torch.int32)

    # MACE's own forward: its vectors from positions and shifts, its own forces
    species = torch.tensor([info["atomic_numbers"].index(z) for z in numbers])
    data = {
        "positions": positions.to(dtype).clone(),
        "shifts": (shifts_t @ cell).to(dtype),
        "unit_shifts": shifts_t.to(dtype),
        "edge_index": pairs_t.T.contiguous(),
        "node_attrs": torch.nn.functional.one_hot(species, len(info["atomic_numbers"])).to(dtype),
        "batch": torch.zeros(n_atoms, dtype=torch.long),
        "ptr": torch.tensor([0, n_atoms]),
        "cell": cell.to(dtype),
        "head": torch.tensor([head_index]),
    }
    expected = module(data, training=False, compute_force=True)
    expected_energy = expected["node_energy"].detach().to(torch.float64)
    expected_forces = expected["forces"].detach().to(torch.float64)

    ours_positions = positions.to(dtype).clone().requires_grad_(True)
    vectors = ours_positions[pairs_t[:, 1]] - ours_positions[pairs_t[:, 0]] + (shifts_t @ cell).to(dtype)
    system = System(types, ours_positions, cell.to(dtype), pbc)
    system.add_neighbor_list(
        NeighborList(NeighborListOptions(r_max, True, True), pairs_t, torch.from_numpy(shifts), vectors)
    )
    energy = scripted_wrapper([system], {"energy": ModelOutput("energy", "eV", True)}, None)["energy"]
    (gradient,) = torch.autograd.grad(energy.sum(), [ours_positions])
    scale = float(expected_energy.abs().max()) + 1e-30
    force_scale = float(expected_forces.abs().max()) + 1e-30
    tolerance = 1e-9 if dtype == torch.float64 else 1e-4
    energy_error = float((energy.detach().reshape(-1).to(torch.float64) - expected_energy).abs().max()) / scale
    force_error = float((-gradient.to(torch.float64) - expected_forces).abs().max()) / force_scale
    if not (energy_error <= tolerance and force_error <= tolerance):
        raise ValueError(
            f"the atomplug wrapper disagrees with MACE's own forward on a test cluster (relative errors: "
            f"energies {energy_error:.2e}, forces {force_error:.2e}): this mace-torch version computes "
            f"something the wrapper does not pass; examples/mace.py supports mace-torch {MACE_VERSION}"
        )


def export_mace(
    model_path_or_module: Union[str, os.PathLike, torch.nn.Module],
    path: str,
    *,
    head: Optional[str] = None,
    dtype: str = "float64",
    energy_unit: str = "eV",
    length_unit: str = "Angstrom",
    name: Optional[str] = None,
    description: Optional[str] = None,
    ghost_exchange: bool = False,
) -> Dict[str, object]:
    """Wrap a MACE model (a `.model` file or the module) into an atomplug archive at `path`.

    With `ghost_exchange`, the archive runs MACE's blocks layer by layer and exchanges the ghost
    atoms' node features between them (`ModelCapabilities(ghost_exchange=True)`): on several LAMMPS
    ranks the ghosts then reach r_max, not num_interactions x r_max. Same energies either way.

    Reads the model's atomic numbers, r_max, number of interactions (interaction range =
    num_interactions x r_max) and heads; converts it to `dtype` ("float64" by default, or
    "float32"); `head` picks one head of a multi-head model (default: the only one, or 'default').
    The units are those the model was trained in (mace-torch: eV and Angstrom).
    Returns what was read (class, atomic_numbers, r_max, num_interactions, heads, head,
    interaction_range, dtype).
    """
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    mace = import_mace()
    from e3nn.util import jit as e3nn_jit

    module = load_mace_model(model_path_or_module)
    info = describe_mace(module)
    head_index = _choose_head(info["heads"], head)
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    module = module.to(torch_dtype).eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    with warnings.catch_warnings():
        # e3nn's generated modules trigger TorchScript's notice about instance-level annotations
        warnings.filterwarnings("ignore", message=_TORCHSCRIPT_NOTICE)
        scripted = e3nn_jit.script(module)
    wrapper = MACEWrapper(scripted, info["atomic_numbers"], info["r_max"], head_index, ghost_exchange)
    _check_against_mace(module, torch.jit.script(wrapper), info, head_index)

    interaction_range = info["num_interactions"] * info["r_max"]
    info.update(head=info["heads"][head_index], interaction_range=interaction_range, dtype=dtype)
    capabilities = ModelCapabilities(
        outputs={"energy": ModelOutput(quantity="energy", unit=energy_unit, per_atom=True)},
        atomic_types=list(info["atomic_numbers"]),
        interaction_range=interaction_range,
        length_unit=length_unit,
        supported_devices=["cpu", "cuda"],
        dtype=dtype,
        ghost_exchange=bool(ghost_exchange),
    )
    source = model_path_or_module if not isinstance(model_path_or_module, torch.nn.Module) else "a module"
    metadata = ModelMetadata(
        name=name or "mace",
        description=description
        or (
            f"MACE model ({info['class']}, from {os.fspath(source)}) wrapped by atomplug with mace-torch "
            f"{getattr(mace, '__version__', '?')}: elements {info['atomic_numbers']}, r_max {info['r_max']} "
            f"{length_unit}, {info['num_interactions']} interactions (interaction range {interaction_range} "
            f"{length_unit}), head {info['head']!r}, {dtype}"
            + (", ghost features exchanged between interactions" if ghost_exchange else "")
        ),
        authors=["MACE: Ilyes Batatia, David P. Kovacs, Gregor N. C. Simm, Christoph Ortner, Gabor Csanyi"],
        references=list(REFERENCES),
    )
    export(wrapper, path, capabilities, metadata)
    return info


def random_mace_model(
    atomic_numbers: Sequence[int] = (1, 6, 8),
    r_max: float = 4.0,
    num_interactions: int = 2,
    hidden_irreps: str = "16x0e+16x1o",
    correlation: int = 3,
    max_ell: int = 2,
    atomic_energies: Optional[Sequence[float]] = None,
    seed: int = 20260514,
) -> torch.nn.Module:
    """A float64 ScaleShiftMACE with seeded random weights (mace-torch ships no weights offline):
    the subject of the tests and benchmarks, built the way mace_run_train builds a model.

    The default E0s are small (-0.5 .. -1.5 eV) so that relative comparisons of total energies
    test the interactions rather than the constant offsets."""
    import numpy as np

    import_mace()
    from e3nn import o3
    from mace import modules

    numbers = [int(z) for z in atomic_numbers]
    if atomic_energies is None:
        atomic_energies = [-0.5 - 1.0 * index / max(1, len(numbers) - 1) for index in range(len(numbers))]
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TORCHSCRIPT_NOTICE)
        torch.manual_seed(int(seed))
        model = modules.ScaleShiftMACE(
            r_max=float(r_max),
            num_bessel=8,
            num_polynomial_cutoff=6,
            max_ell=int(max_ell),
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=int(num_interactions),
            num_elements=len(numbers),
            hidden_irreps=o3.Irreps(hidden_irreps),
            MLP_irreps=o3.Irreps("16x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=np.asarray(atomic_energies, dtype=np.float64),
            avg_num_neighbors=8.0,
            atomic_numbers=numbers,
            correlation=int(correlation),
            atomic_inter_scale=1.0,
            atomic_inter_shift=0.0,
        )
    return model.to(torch.float64).eval()


def mace_calculator(model_path_or_module: Union[str, os.PathLike, torch.nn.Module], dtype: str = "float64", **kwargs):
    """MACE's own ASE calculator (`mace.calculators.MACECalculator`) on the same model: the
    oracle of the tests. Imported with the environment restored afterwards (see import_mace)."""
    import_mace()
    with weights_only_load_allowed(), contextlib.redirect_stdout(io.StringIO()):
        from mace.calculators import MACECalculator
    module = load_mace_model(model_path_or_module)
    return MACECalculator(models=[module], default_dtype=dtype, device="cpu", **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Wrap a MACE model file (mace-torch) as an atomplug model.")
    parser.add_argument("model", help="the MACE .model file (trained with mace-torch)")
    parser.add_argument("path", help="the atomplug archive to write")
    parser.add_argument("--head", default=None, help="head of a multi-head model (default: the only one, or 'default')")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument(
        "--ghost-exchange",
        action="store_true",
        help="run MACE's blocks layer by layer, exchanging ghost features (LAMMPS ranks: ghosts out to r_max only)",
    )
    args = parser.parse_args(argv)
    try:
        info = export_mace(args.model, args.path, head=args.head, dtype=args.dtype, ghost_exchange=args.ghost_exchange)
    except (ImportError, FileNotFoundError, ValueError) as error:
        raise SystemExit(str(error)) from None
    print(
        f"wrote {args.path}: MACE {info['class']}, elements {info['atomic_numbers']}, r_max {info['r_max']}, "
        f"{info['num_interactions']} interactions (interaction range {info['interaction_range']}), "
        f"head {info['head']!r}, {info['dtype']}"
    )


if __name__ == "__main__":
    main()
