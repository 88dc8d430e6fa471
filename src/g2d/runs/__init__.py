"""Whole runs: experiments, run folders, sweeps, cross-validation, the demo and parity harness."""
