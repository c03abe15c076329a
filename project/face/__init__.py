"""The top storey, the Face: what the user types and reads. invoke's parser for bare Hydra
overrides, the run catalog and comparisons, sweeps (with hydra_plugins/ and tasks.py). It may import
every storey; nothing imports it."""
