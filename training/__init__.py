"""neolabel training core (light: no heavy imports here)."""
