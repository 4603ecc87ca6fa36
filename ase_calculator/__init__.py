"""atomplug models as ASE calculators: `AtomplugCalculator("model.pt")`."""

from .calculator import AtomplugCalculator

__all__ = ["AtomplugCalculator"]
