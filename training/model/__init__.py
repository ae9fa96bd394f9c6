"""Stage 2, model: the DynUNet presets and builder, instance-norm variants, the scan-age head and
checkpoints (resolved config and class table saved with the weights)."""
