"""Scaling studies: sweeps through the shared loop, scaling-law fits and their plots, muP diagnostics."""
