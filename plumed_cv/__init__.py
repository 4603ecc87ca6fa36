"""plumed_cv"""
