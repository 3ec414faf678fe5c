"""The ``train`` job: entry point, epoch loop, engine, checkpoints, incremental training."""
