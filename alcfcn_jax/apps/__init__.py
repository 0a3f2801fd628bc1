"""Applications of a trained checkpoint: pseudo masks, predict on a folder, fish measurement,
learning curves."""
