"""Runs TPOT AutoML jobs on a shared Dask cluster, falling back to local mode when allowed."""

__version__ = "0.1.0"
