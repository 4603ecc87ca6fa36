"""ase_calculator"""
