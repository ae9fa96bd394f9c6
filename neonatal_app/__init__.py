"""neolabel's MONAI Label app (``main.py`` + ``lib/``): adapters between MONAI Label and the annotation core."""
