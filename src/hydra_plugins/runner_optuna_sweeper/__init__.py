"""The runner's Optuna sweeper for Hydra (`hydra/sweeper=optuna`), on current Optuna."""
