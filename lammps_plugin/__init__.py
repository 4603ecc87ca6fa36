"""lammps_plugin"""
