"""What Hydra's plugin discovery needs: the sweeper class under `hydra_plugins` and its ConfigStore entry.

Hydra instantiates a plugin only from a class its scan found in a module under `hydra_plugins`
(`Plugins._instantiate` rejects any other `_target_`), so the sweeper in `cxr.sweep` is subclassed
here. The scan imports this module at every command's start-up: nothing it imports loads optuna
or mlflow.
"""

from hydra.core.config_store import ConfigStore

from cxr.sweep import settings, sweeper


class CxrOptunaSweeper(sweeper.CxrOptunaSweeper):
    """`cxr.sweep.sweeper.CxrOptunaSweeper`, where Hydra looks for plugins."""


ConfigStore.instance().store(
    group="hydra/sweeper", name="cxr_optuna", node=settings.CxrOptunaSweeperConf, provider="cxr"
)
