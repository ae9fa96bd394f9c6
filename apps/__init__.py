"""neolabel command line and long-running jobs (simulation, export)."""

from neonatal_app import ensure_project_training

ensure_project_training()
