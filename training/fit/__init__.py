"""Stage 5, fitting: augmentation, annotated-voxel patch sampling, the masked Dice+CE loss, the
trainer (setup / epoch / validate / save) and fine-tuning from a checkpoint."""
