"""cxr's Optuna sweeps, one job per module. The top department: it imports config and every
department below it, never a command.

- `space`: Hydra's sweep syntax (`choice`, `range`, `interval`, ...) as Optuna distributions.
- `settings`: the sweeper's typed settings, `hydra.sweeper.*`.
- `study`: the stored study: storage URL and connection, sampler, pruner, create-or-join, and the
  names of the study's and trials' user attributes.
- `parent_run`: the study's MLflow parent run: create or join, progress and best trial, finish,
  the `summary_by` table.
- `sweeper`: the Hydra sweeper and its ask / launch / tell loop, composing the above; console output.
- `reporter`: the job's side: reopen its trial from the storage, report each epoch, prune.
- `best`: which trials keep their models, and the full evaluation of the best ones.
- `grid`: a Hydra basic-sweeper multirun as one MLflow parent run with the same summary.

`hydra_plugins/cxr_optuna_sweeper` only registers the sweeper for Hydra's plugin discovery. Nothing
here imports optuna or mlflow at import time: Hydra's plugin scan imports the sweeper at every
command's start-up.
"""
