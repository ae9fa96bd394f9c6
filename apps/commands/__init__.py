"""One module per ``neolabel`` command; each imports only typer at module level."""
