#!/usr/bin/env bash
# Dependency check: an import that no dependency of its install extra declares fails the run
# (deptry; its settings, the first-party names of the package-dir mapping among them, are in
# pyproject.toml [tool.deptry]). Three passes:
#  1. the whole tree (packages, migrations, benchmarks): every third-party import is a declared
#     dependency, not one that only arrives through another package (click once did, through
#     import-linter; `pip install -e .` then could not start `oai`), and every one declared is used;
#  2. the cohort layer and the CLI (`pip install -e .`): every extra counts as not installed, so
#     importing one of its packages fails. Exempt are the imports that are guarded, i.e. that turn
#     a missing package into "install the X extra": torch and torchvision (the CLI's models
#     commands, after require_models_extra; tests/test_packaging.py runs the cohort commands
#     with torch blocked), nibabel (oaicohort.imaging.store.export), the [study] extra
#     (oaicohort.cohort.study_extra) and submitit (oaicohort.cluster, the [cluster] extra);
#  3. the model layer (`pip install -e ".[models]"`): base + models; mlflow is guarded
#     (oaimodels.tracking), and so is submitit (oaicohort.cluster, the [cluster] extra);
#     tensorboard is loaded by torch, never imported by name.
#  4. the tests (`pip install -e ".[dev]"`): every import is declared somewhere (base, an extra
#     or dev), so the README's test command works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# In passes 2 and 3 deptry reports a package of an extra that the layer's install lacks as
# "DEP004 ... declared as a dev dependency": that is how it is told which extras count as absent.
not_models=dev,postgres,tracking,mlflow,export,study,cluster
echo "deps: every import declared, every declaration used" >&2
deptry .
echo "deps: the cohort layer and the CLI need the base install only" >&2
deptry oaicohort migrations cli --optional-dependencies-dev-groups "models,$not_models" --ignore DEP002 \
    --per-rule-ignores "DEP004=torch|torchvision|nibabel|graphviz|tableone|tabulate|sksurv|submitit"
echo "deps: the model layer needs the base install and [models] only" >&2
deptry oaimodels --optional-dependencies-dev-groups "$not_models" --ignore DEP002 --per-rule-ignores "DEP004=mlflow|submitit"
echo "deps: the tests need [dev] only" >&2
deptry tests --exclude venv --known-first-party tests --ignore DEP002,DEP004  # --exclude: not the default 'tests'
