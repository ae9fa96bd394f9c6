"""Simulation mode internals: conditions, plans, the oracle, static and loop runners, reports.

The public entry point is :func:`apps.simulation.run.run_simulation`; these modules stay free of torch at
import time (training is reached through :mod:`apps.simulation.backend`).
"""
