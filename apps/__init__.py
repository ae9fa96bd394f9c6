"""neolabel command line (``cli`` + one module per command in ``commands/``) and long-running jobs
(``simulation``, ``export``, ``plans``, ``studies``, ``demo``)."""
