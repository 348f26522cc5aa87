#!/usr/bin/env bash
# CI installs what users install: the README's own commands, each in a throw-away venv that sees
# nothing else installed (no --system-site-packages), before CI's own `.[dev]` install. Without
# this, CI passed while `pip install -e .` could not start `oai` (click, imported by the CLI,
# only arrived through dev-only packages).
#  - `pip install -e .` (the cohort layer): oai --version, then synth, ingest and label a tiny
#    release;
#  - `pip install -e ".[models]" && oai demo`, the README's first command, at the demo's smallest
#    size (20 subjects, one fold, one epoch: every step of the full demo, about 15 s of work).
# pip's cache is used as on any machine (PIP_CACHE_DIR moves it), so CI with a kept cache
# downloads nothing; what remains is unpacking (torch and its CUDA libraries: about 6 GB).
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
python=${PYTHON:-python}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/oai-fresh.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

started=$SECONDS
timed() {  # timed LABEL COMMAND...: run it, then say how long it took
    local label=$1 t0=$SECONDS
    shift
    "$@"
    echo "fresh install: $label: $((SECONDS - t0)) s" >&2
}

fresh_venv() {
    "$python" -m venv "$tmp/$1"
    # the README's command, quiet. (--no-compile saved 35 s of installing torch, and the first
    # imports then spent them again: measured, not kept.)
    "$tmp/$1/bin/python" -m pip install -q --disable-pip-version-check -e "$repo$2"
}

base_commands() {
    local oai=$tmp/base/bin/oai
    (
        cd "$tmp"
        "$oai" --version
        "$oai" synth release --subjects 40 --seed 1 --json >/dev/null
        "$oai" --db base.sqlite ingest release --json >/dev/null
        "$oai" --db base.sqlite label --json >/dev/null
    )
    # the cohort layer installs without torch: a models command says how to get it
    if "$oai" --db "$tmp/base.sqlite" models 2>"$tmp/models.err"; then
        echo "fresh install: \`oai models\` ran without the models extra" >&2
        exit 1
    fi
    grep -q 'oai-toolkit\[models\]' "$tmp/models.err" || { cat "$tmp/models.err" >&2; exit 1; }
}

demo() {
    (cd "$tmp" && "$tmp/models/bin/oai" demo --subjects 20 --epochs 1 --folds 0 --workers 1 --threads 1)
}

timed 'pip install -e .' fresh_venv base ""
timed 'oai --version, synth, ingest, label' base_commands
rm -rf "$tmp/base"
timed 'pip install -e ".[models]"' fresh_venv models "[models]"
timed 'oai demo (smallest)' demo
echo "fresh install: all in $((SECONDS - started)) s" >&2
