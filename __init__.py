"""atomplug: one exported PyTorch model of atoms, run unchanged in ASE, i-PI, LAMMPS and PLUMED."""

__version__ = "0.1.0"
