"""`AtomplugCalculator`: an exported atomplug model as an ASE calculator.

The adapter only translates: `ase.Atoms` in, ASE's property names and shapes out. Units (eV,
Angstrom), neighbor lists, forces, virials and per-atom virials all come from `atomplug.core`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from atomplug.core import PER_ATOM_SUFFIX, LoadedModel, ModelRunner
from atomplug.core.virial import stress_from_virial_array

LOGGER = logging.getLogger("atomplug")
_CITED: set = set()

ASE_PROPERTIES = ("energy", "free_energy", "energies", "forces", "stress", "stresses")
NON_CONSERVATIVE_FORCES = "non_conservative_forces"
NON_CONSERVATIVE_STRESS = "non_conservative_stress"


# the system change reported when an input the model reads changed (initial_charges is ASE's own)
_INPUT_CHANGE = {"charges": "initial_charges", "total_charge": "info:charge", "spin_multiplicity": "info:spin"}
_INFO_KEYS = {"total_charge": "charge", "spin_multiplicity": "spin"}


def _input_changed(name: str, old: Atoms, new: Atoms, tol: float) -> bool:
    """Whether the input `name` read from `new` differs from the one read from `old`."""
    if name in _INFO_KEYS:
        key = _INFO_KEYS[name]
        if (key in old.info) != (key in new.info):
            return True
        if key not in new.info:
            return False
        try:
            return bool(np.any(np.abs(np.asarray(old.info[key], float) - np.asarray(new.info[key], float)) > tol))
        except (TypeError, ValueError):
            return True  # not a number: evaluating again reports it
    if name == "masses":
        return not np.allclose(old.get_masses(), new.get_masses(), rtol=0.0, atol=tol)
    if name == "velocities":
        return not (
            np.allclose(old.get_momenta(), new.get_momenta(), rtol=0.0, atol=tol)
            and np.allclose(old.get_masses(), new.get_masses(), rtol=0.0, atol=tol)
        )
    if name == "charges":
        if old.has("initial_charges") != new.has("initial_charges"):
            return True
        return not np.allclose(old.get_initial_charges(), new.get_initial_charges(), rtol=0.0, atol=tol)
    return True


def _cite_once(model: LoadedModel) -> None:
    """Log the model's references the first time it is used in this process."""
    key = (model.metadata.name, tuple(model.metadata.references))
    if key in _CITED:
        return
    _CITED.add(key)
    text = model.metadata.citation_text() if hasattr(model.metadata, "citation_text") else ""
    if text:
        LOGGER.info("atomplug model %r: please cite\n%s", model.metadata.name, text)


class AtomplugCalculator(Calculator):
    """Energy, forces, stress, per-atom energies and virials (and any declared output) of an
    exported atomplug model, with ASE's caching: only what was asked is computed, except that
    one backward pass gives forces and stress together, so asking for either computes both
    (stress where the cell is 3D periodic): ASE's one-property-at-a-time requests then cost one
    model call per MD step. An energy alone costs no backward pass.

    model                 path to an exported `.pt` file, or a `LoadedModel`
    device                torch device ("cpu", "cuda"); default cpu
    additional_outputs    declared model outputs put into `calc.results` on every calculation
                          ("name" per structure, "name/per_atom" per atom)
    non_conservative      take forces and stress from the model's `non_conservative_forces` /
                          `non_conservative_stress` outputs instead of differentiating the energy
    uncertainty_threshold warn (per structure) when `energy_uncertainty` exceeds it (eV)
    skin                  Verlet skin (Angstrom) of the neighbor-list cache reused across MD steps
    variant               one of the model's output variants ("ccsdt" for `energy/ccsdt`): energy,
                          forces and stress come from `energy/<variant>`, and every extra output
                          with that variant is taken in it (the archive's rule, variant_output)
    neighbor_backend      where the neighbor lists are built: "auto" (default: on the GPU for a
                          CUDA device, with vesin-torch; on the host otherwise), "numpy" (host),
                          "torch" (on the model's device, also on a CPU); see docs/gpu.md

    Inputs the model requests are read from the Atoms by ASE's conventions (ASE units):
    `get_masses()`, `get_velocities()`, `get_initial_charges()`, `info["charge"]` (total charge, e)
    and `info["spin"]` (spin multiplicity 2S+1); a change of any of them is a change of the system
    (the results are computed again), also for velocities, masses and `info`, which ASE's own
    `system_changes` do not watch.
    """

    implemented_properties = list(ASE_PROPERTIES)

    def __init__(
        self,
        model: Union[str, os.PathLike, LoadedModel],
        *,
        device: Optional[str] = None,
        additional_outputs: Sequence[str] = (),
        non_conservative: bool = False,
        uncertainty_threshold: Optional[float] = None,
        skin: float = 0.5,
        variant: str = "",
        neighbor_backend: Optional[str] = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.runner = ModelRunner(model, device=device, skin=skin, neighbor_backend=neighbor_backend)
        self.model = self.runner.model
        declared = self.model.capabilities.outputs
        self.variant = str(variant or "")
        if "energy" not in declared and "energy" not in self.model.capabilities.variants():
            raise ValueError(
                f"model {self.model.metadata.name!r} declares no 'energy' output (it has "
                f"{', '.join(declared)}): it is not a potential; use calc.run(atoms, outputs=[...])"
            )
        # the model's names for what ASE asks, under the variant (the archive's rule)
        self._energy = self.runner.output_name("energy", self.variant)
        self._energies = self.runner.output_name("energy" + PER_ATOM_SUFFIX, self.variant)
        self.additional_outputs = list(additional_outputs)
        self._additional = {name: self._check_output_name(name) for name in self.additional_outputs}
        self.input_names = list(self.runner.input_names)
        self.non_conservative = bool(non_conservative)
        if self.non_conservative and self.variant:
            for name in (NON_CONSERVATIVE_FORCES, NON_CONSERVATIVE_STRESS):
                if name in declared and self.runner.output_name(name, self.variant) != name:
                    raise ValueError(
                        f"non_conservative=True with variant {self.variant!r}: the model has "
                        f"{name}/{self.variant}, but direct forces and stress are taken from the plain "
                        f"{name!r}: use non_conservative=False (forces from energy/{self.variant})"
                    )
        if self.non_conservative:
            missing = [n for n in (NON_CONSERVATIVE_FORCES, NON_CONSERVATIVE_STRESS) if n not in declared]
            if NON_CONSERVATIVE_FORCES in missing:
                raise ValueError(
                    f"non_conservative=True needs the model output {NON_CONSERVATIVE_FORCES!r}, which "
                    f"{self.model.metadata.name!r} does not declare: use non_conservative=False"
                )
            self._has_non_conservative_stress = not missing
        self._uncertainty = "energy_uncertainty"
        if uncertainty_threshold is not None:
            if "energy_uncertainty" not in declared and "energy_uncertainty" not in self.model.capabilities.variants():
                raise ValueError(
                    f"uncertainty_threshold needs the model output 'energy_uncertainty', which "
                    f"{self.model.metadata.name!r} does not declare: drop uncertainty_threshold"
                )
            if not uncertainty_threshold >= 0.0:
                raise ValueError(f"uncertainty_threshold must be >= 0, got {uncertainty_threshold}")
            self._uncertainty = self.runner.output_name("energy_uncertainty", self.variant)
        self.uncertainty_threshold = uncertainty_threshold
        self.device = device
        self.skin = skin
        _cite_once(self.model)

    # -- description ------------------------------------------------------------------------
    def todict(self, skip_default: bool = True) -> Dict[str, Any]:
        metadata = self.model.metadata
        return {
            "model": getattr(self.model, "path", None),
            "model_name": metadata.name,
            "model_description": metadata.description,
            "model_authors": list(metadata.authors),
            "model_references": list(metadata.references),
            "device": self.device or "cpu",
            "additional_outputs": list(self.additional_outputs),
            "non_conservative": self.non_conservative,
            "uncertainty_threshold": self.uncertainty_threshold,
            "skin": self.skin,
            "variant": self.variant,
        }

    def __repr__(self) -> str:
        return f"AtomplugCalculator(model={self.model.metadata.name!r}, path={getattr(self.model, 'path', None)!r})"

    # -- checks ------------------------------------------------------------------------------
    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> List[str]:
        """ASE's system changes, plus those of the inputs the model reads that ASE does not watch:
        masses, velocities (momenta), info["charge"] and info["spin"]. Models without inputs pay
        nothing extra."""
        changes = super().check_state(atoms, tol=tol)
        if not self.input_names or self.atoms is None:
            return changes
        for name in self.input_names:
            if name in changes or _INPUT_CHANGE.get(name, name) in changes:
                continue
            if _input_changed(name, self.atoms, atoms, tol):
                changes.append(_INPUT_CHANGE.get(name, name))
        return changes

    def _check_output_name(self, request: str) -> str:
        """The model's output for `request` under the calculator's variant, checked."""
        return self.runner.check_output_request(self.runner.output_name(request, self.variant))

    def _check_properties(self, atoms: Atoms, properties: Iterable[str]) -> List[str]:
        properties = list(properties)
        for name in properties:
            if name not in ASE_PROPERTIES:
                raise PropertyNotImplementedError(
                    f"{name!r} is not an ASE property atomplug computes ({', '.join(ASE_PROPERTIES)}); "
                    "other model outputs go through additional_outputs or calc.run()"
                )
        if "stress" in properties or "stresses" in properties:
            if not atoms.pbc.all() or atoms.cell.rank != 3:
                raise PropertyNotImplementedError(
                    "stress needs a cell that is periodic in all three directions; this structure has "
                    f"pbc={atoms.pbc.tolist()}: set pbc=True and a 3D cell, or do not ask for stress"
                )
        if self.non_conservative:
            if "stresses" in properties:
                raise PropertyNotImplementedError(
                    "per-atom stresses are not defined for non-conservative forces: use non_conservative=False"
                )
            if "stress" in properties and not self._has_non_conservative_stress:
                raise PropertyNotImplementedError(
                    f"the model declares no {NON_CONSERVATIVE_STRESS!r} output, so non_conservative "
                    "stress is unavailable: use non_conservative=False"
                )
        if len(atoms) == 0:
            raise ValueError("the Atoms object is empty: give at least one atom")
        return properties

    # -- evaluation --------------------------------------------------------------------------
    def _evaluate(self, structures: List[Atoms], properties: List[str], use_cache: bool) -> List[Dict[str, Any]]:
        """One model call for a batch; one dict of ASE-shaped results per structure."""
        wanted = set(properties) | {"energy"}
        if "free_energy" in wanted:
            wanted.add("energy")
        outputs = [self._energy]
        if "energies" in wanted:
            outputs.append(self._energies)
        forces = "forces" in wanted
        virial = "stress" in wanted
        atomic_virial = "stresses" in wanted
        if self.uncertainty_threshold is not None and self._uncertainty not in outputs:
            outputs.append(self._uncertainty)
        for name in self._additional.values():
            if name not in outputs:
                outputs.append(name)
        raw = self.runner.run(
            structures,
            outputs,
            forces=forces,
            virial=virial,
            atomic_virial=atomic_virial,
            non_conservative=self.non_conservative,
            gradient_output=self._energy,
            use_cache=use_cache,
        )
        results: List[Dict[str, Any]] = []
        start = 0
        for index, atoms in enumerate(structures):
            stop = start + len(atoms)
            result: Dict[str, Any] = {"energy": float(raw[self._energy][index, 0])}
            result["free_energy"] = result["energy"]
            if "energies" in wanted:
                result["energies"] = raw[self._energies][start:stop, 0].copy()
            if "forces" in wanted:
                result["forces"] = raw["forces"][start:stop].copy()
            if "stress" in wanted:
                stress = stress_from_virial_array(raw["virial"][index], atoms.cell.array)
                result["stress"] = full_3x3_to_voigt_6_stress(stress)
            if "stresses" in wanted:
                stresses = stress_from_virial_array(raw["atomic_virial"][start:stop], atoms.cell.array)
                result["stresses"] = full_3x3_to_voigt_6_stress(stresses)
            for name, output in self._additional.items():
                result[name] = self._extra_value(name, raw[output], index, start, stop)
            if self.uncertainty_threshold is not None:
                self._warn_if_uncertain(atoms, float(raw[self._uncertainty][index, 0]))
            results.append(result)
            start = stop
        return results

    @staticmethod
    def _extra_value(name: str, values: np.ndarray, index: int, start: int, stop: int):
        rows = values[start:stop] if name.endswith(PER_ATOM_SUFFIX) else values[index]
        if rows.shape[-1] == 1:
            rows = rows[..., 0]
        return float(rows) if rows.ndim == 0 else rows.copy()

    def _warn_if_uncertain(self, atoms: Atoms, uncertainty: float) -> None:
        if uncertainty > self.uncertainty_threshold:
            warnings.warn(
                f"{self.model.metadata.name}: energy uncertainty {uncertainty:.4g} eV exceeds the threshold "
                f"{self.uncertainty_threshold:.4g} eV for {atoms.get_chemical_formula()}: the model is "
                "extrapolating, its energies and forces here are not trustworthy",
                RuntimeWarning,
                stacklevel=3,
            )

    def calculate(
        self,
        atoms: Optional[Atoms] = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = tuple(all_changes),
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        properties = self._check_properties(self.atoms, properties)
        (self.results,) = self._evaluate([self.atoms], self._with_gradients(self.atoms, properties), use_cache=True)

    def _with_gradients(self, atoms: Atoms, properties: List[str]) -> List[str]:
        """Forces and stress come from one backward pass: asking for one computes both."""
        wanted = set(properties)
        if wanted & {"forces", "stress"}:
            wanted.add("forces")
            periodic = bool(atoms.pbc.all()) and atoms.cell.rank == 3
            if periodic and (not self.non_conservative or self._has_non_conservative_stress):
                wanted.add("stress")
        return [name for name in ASE_PROPERTIES if name in wanted]

    # -- beyond ASE's interface --------------------------------------------------------------
    def compute(
        self,
        structures: Sequence[Atoms],
        properties: Sequence[str] = ("energy", "forces"),
        *,
        batch_size: int = 16,
        progress: bool = True,
    ) -> List[Dict[str, Any]]:
        """Evaluate many structures, `batch_size` per model call, with a progress bar.

        Returns one dict per structure, keyed like `calc.results` (ASE units and shapes), plus
        the calculator's `additional_outputs`.
        """
        from tqdm import tqdm

        structures = list(structures)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        for atoms in structures:
            self._check_properties(atoms, properties)
        results: List[Dict[str, Any]] = []
        with tqdm(total=len(structures), unit="structure", disable=not progress) as bar:
            for start in range(0, len(structures), batch_size):
                batch = structures[start : start + batch_size]
                results.extend(self._evaluate(batch, list(properties), use_cache=False))
                bar.update(len(batch))
        return results

    def run(
        self,
        structures: Union[Atoms, Sequence[Atoms]],
        outputs: Sequence[str],
        *,
        selected_atoms: Optional[Sequence[int]] = None,
    ) -> Dict[str, np.ndarray]:
        """Any declared outputs on one structure or a batch, as numpy arrays in eV/Angstrom units:
        "name" -> [n_structures, n_properties], "name/per_atom" -> [n_atoms, n_properties]
        (atoms of all structures concatenated, or only `selected_atoms` when given). With a
        `variant`, each output is taken in that variant where the model has it."""
        if isinstance(structures, Atoms):
            structures = [structures]
        names = {name: self._check_output_name(name) for name in outputs}
        raw = self.runner.run(
            list(structures), list(dict.fromkeys(names.values())), selected_atoms=selected_atoms, use_cache=False
        )
        for request, name in names.items():  # under the names asked (the variant's output otherwise)
            raw[request] = raw[name]
        return raw
