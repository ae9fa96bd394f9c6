"""Stage 3, inference: settings, window planning and the sliding-window predictor."""
