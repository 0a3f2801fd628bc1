"""DeepFish: the TFDS builder (``deepfish_dataset_builder``), tree reading and sources."""
