"""Stage 1, data: the label contract, NIfTI I/O, dataset readers, subject splits, preprocessing,
the synthetic generator and the head box. numpy/nibabel/scipy only (no torch), so the planning
layer (``strategies``) may use it."""
