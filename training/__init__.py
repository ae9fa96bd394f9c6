"""neolabel's learning core, one sub-package per stage (knows nothing of MONAI Label, HTTP or plans).

``data`` (class table, NIfTI I/O, dHCP reader, splits, preprocessing, synthetic scans, head box)
→ ``model`` (network presets, norms, age head, checkpoints) → ``infer`` (windowed prediction)
→ ``evaluate`` (scoring a predictor) → ``fit`` (augmentation, patch sampling, masked loss, the
trainer, fine-tuning). ``metrics`` and ``config_dict`` are leaves. A stage imports only stages
before it (import-linter contract in pyproject.toml).
"""
