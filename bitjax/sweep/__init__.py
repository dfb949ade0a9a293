"""Sweeps over config files: precision comparisons, scaling sweeps, fits and plots."""
