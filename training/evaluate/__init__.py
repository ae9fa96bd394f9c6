"""Stage 4, evaluation: scoring a predictor or checkpoint on labelled scans (segmentation, scan age)."""
