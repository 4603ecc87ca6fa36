"""atomplug as an i-PI Python PES: for `i-pi-py_driver -m custom` and `<ffdirect>`.

    i-pi-py_driver -m custom -P "$(atomplug ipi-driver-path)" -u -a NAME \
        -o model=model.pt,template=init.xyz[,device=cpu][,extras=energy/per_atom;energy_uncertainty]

and, inside i-PI itself (no socket):

    <ffdirect name="atomplug">
      <pes>custom</pes>
      <pes_path>/path/printed/by/atomplug/atomplug_pes.py</pes_path>
      <parameters>{model: model.pt, template: init.xyz}</parameters>
    </ffdirect>

Parameters: model (exported atomplug file), template (the structure: elements and periodicity;
`structure` is accepted too), device (default cpu), extras (outputs for the extras JSON,
separated by ';' because i-PI splits -o on commas), non_conservative (true/false), skin
(neighbor-list skin in Angstrom), name (label added to the extras), threads (torch CPU
threads), charge (total charge, e) and spin (spin multiplicity) for models that request them,
variant (the model's output variant, e.g. ccsdt). This file is loaded by path, so it imports everything from the installed `atomplug`
package.
"""

from ipi.pes.dummy import Dummy_driver

from atomplug.ipi_driver.evaluator import DEFAULT_SKIN_ANGSTROM, DriverError, IPIEvaluator

__DRIVER_NAME__ = "atomplug"
__DRIVER_CLASS__ = "AtomplugDriver"


class AtomplugDriver(Dummy_driver):
    """i-PI PES backed by an atomplug model (atomic units in and out, like every i-PI PES)."""

    def __init__(
        self,
        model=None,
        template=None,
        device="cpu",
        extras="",
        non_conservative=False,
        skin=DEFAULT_SKIN_ANGSTROM,
        name=None,
        threads=None,
        structure=None,
        charge=None,
        spin=None,
        variant="",
        *args,
        **kwargs,
    ):
        template = template if template is not None else structure
        if model is None or template is None:
            raise ValueError(
                "the atomplug PES needs model=<exported model .pt> and template=<structure file>, e.g. "
                "-o model=model.pt,template=init.xyz"
            )
        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        try:
            self.evaluator = IPIEvaluator(
                str(model),
                str(template),
                device=str(device),
                extras=extras,
                non_conservative=_flag(non_conservative),
                skin=float(skin),
                name=name,
                charge=charge,
                spin=spin,
                variant=str(variant or ""),
                input_flags=("charge=", "spin="),
            )
        except DriverError as error:
            raise ValueError(f"atomplug: {error}") from None
        # i-PI's <ffdirect> passes its verbosity level as a keyword; the base class keeps the rest.
        kwargs.pop("verbosity", None)
        super().__init__(*args, **kwargs)
        print(self.evaluator.describe(), flush=True)

    def compute_structure(self, cell, pos):
        return self.evaluator(cell, pos)

    def compute(self, cell, pos):
        if isinstance(cell, list):
            if not isinstance(pos, list) or len(cell) != len(pos):
                raise ValueError("batched evaluation needs as many cells as position arrays")
            return self.evaluator.batch(cell, pos)
        return self.evaluator(cell, pos)


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)
