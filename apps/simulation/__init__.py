"""Simulation mode internals: conditions, plans, budget curves, the oracle, static and loop runners, curves and
their statistics, reports.

The public entry point is :func:`apps.simulation.run.run_simulation`; these modules stay free of torch at
import time (training is reached through :mod:`apps.simulation.backend`).
"""
