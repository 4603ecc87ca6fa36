"""atomplug.ipi_driver: run an exported atomplug model as an i-PI force provider.

Three ways, same numbers (they share `IPIEvaluator`):
  - `atomplug-ipi --model m.pt --structure init.xyz --unix NAME`: a socket client (UNIX or INET);
  - `i-pi-py_driver -m custom -P <custom_driver_path()> -u -a NAME -o model=m.pt,template=init.xyz`;
  - in-process `<ffdirect><pes>custom</pes><pes_path>...</pes_path>` in the i-PI input.
Importing this package does not import torch.
"""

import os

__all__ = ["custom_driver_path", "IPIEvaluator", "main"]


def custom_driver_path() -> str:
    """The PES file for `i-pi-py_driver -m custom -P <path>` and `<ffdirect><pes_path>`."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "atomplug_pes.py")


def __getattr__(name):
    if name == "IPIEvaluator":
        from .evaluator import IPIEvaluator

        return IPIEvaluator
    if name == "main":
        from .client import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
