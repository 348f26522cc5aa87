"""Training with the paper's recipe, fold by fold, into a run folder (``oaimodels.run_folder``).

Recipe (REFERENCE.md section 5): focal loss (gamma 2, no class weights); weighted random
sampling with weights 1/class frequency and epoch length = training-set size; Adam, lr 1e-4,
weight decay 1e-4; linear warm-up of the learning rate from 1e-5 over 5 epochs (per epoch), then
constant; 100 epochs; the validation fold's binary AP after every epoch, the best snapshot kept
(ties go to the later epoch); per-model batch sizes from the registry.

Modules, in the order a run uses them (import names from them; this package re-exports nothing):

- :mod:`.config`       ``TrainConfig``, its validation and ``auto`` resolution, ``PreparedRun``
- :mod:`.config_file`  ``--config`` TOML/JSON files, merged with the command line's flags
- :mod:`.run`          ``prepare_run``, torch settings, process spawning, ``train_run``, ``train_all``
- :mod:`.plan`         ``FoldPlan``: the few values the epoch loop needs, taken from the config once
- :mod:`.recipe`       model, optimiser, learning-rate schedule of the recipe (``losses``: focal loss)
- :mod:`.sampling`     the epoch sampler a config names
- :mod:`.rng`          per-epoch reseeding, RNG state capture/restore (exact resume)
- :mod:`.distributed`  ranks, barriers, DDP wrapping, gathering validation shards
- :mod:`.checkpoint`   ``last.pt``/``best.pt`` save and load (plain state dicts only)
- :mod:`.loop`         one fold: ``_train_epoch`` / ``_validate`` / ``_keep_best``
- :mod:`.tracking`     TensorBoard and MLflow
- :mod:`.launcher`     ``submit_study``: one SLURM/local job per (model, fold) through submitit
- :mod:`.jobs`         ``FoldJob`` (a fold as a requeueable job), ``jobs.json``, fold states

Prediction (``predict_logits``, the autocast context) lives in :mod:`oaimodels.logits`, so
evaluation loads checkpoints without importing the loop.
"""
