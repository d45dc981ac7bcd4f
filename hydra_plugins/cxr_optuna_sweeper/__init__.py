"""Registers cxr's Optuna sweeper with Hydra as `hydra/sweeper=cxr_optuna`; the sweeper is `cxr.sweep`."""
