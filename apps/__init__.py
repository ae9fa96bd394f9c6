"""neolabel command line and long-running jobs (simulation, scheduled retraining)."""
