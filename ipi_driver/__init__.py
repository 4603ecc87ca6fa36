"""ipi_driver"""
