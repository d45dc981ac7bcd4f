"""cxr's Optuna sweeper for Hydra (`hydra/sweeper=cxr_optuna`), found by Hydra's plugin discovery."""
