"""Which evaluated runs may share one Table 1: runs scored on the same held-out knees.

A comparison puts runs side by side only when their test sets can be the same: the same label
definition (parameters hash) and the same split (test sites, folds, seed, labels fingerprint;
the split id itself differs between databases holding the same split). Runs that differ in any
of these are reported in separate tables, each saying what it was tested on and why it stands
apart. Runs that record no labels or split (a run trained from a caller's knee table) are
grouped by what they do record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oaimodels import run_folder as rf


@dataclass
class RunGroup:
    """Runs that share a test set definition: their metrics and what defines it."""

    definition: dict[str, Any]
    split: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def test_sites(self) -> list[str]:
        return [str(s) for s in (self.split.get("params") or {}).get("test_sites") or []]

    def describe(self) -> str:
        """What the group was tested on, in words."""
        parts = []
        if self.test_sites:
            parts.append(f"test site(s) {', '.join(self.test_sites)}")
        if self.split.get("id") is not None:
            parts.append(f"split {self.split.get('id')}")
        if self.definition.get("name"):
            parts.append(f"label definition `{self.definition['name']}`")
        return ", ".join(parts) if parts else "split not recorded"

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": [m["name"] for m in self.runs],
            "test_sites": self.test_sites,
            "split": self.split,
            "definition": self.definition,
            "described": self.describe(),
        }


def _split_identity(split: dict[str, Any]) -> str:
    params = dict(split.get("params") or {})
    if not params and split.get("id") is not None:
        return f"id {split['id']}"
    return json.dumps(params, sort_keys=True, default=str)


def _key(m: dict[str, Any]) -> tuple[str, str]:
    labels = m.get("labels") or {}
    definition = labels.get("definition") or {}
    return str(definition.get("params_hash") or definition.get("name") or ""), _split_identity(
        labels.get("split") or {}
    )


def comparable_groups(runs: list[dict[str, Any]]) -> list[RunGroup]:
    """The runs in groups of one test set definition, in the order the runs were given."""
    groups: dict[tuple[str, str], RunGroup] = {}
    for m in runs:
        labels = m.get("labels") or {}
        group = groups.setdefault(_key(m), RunGroup(labels.get("definition") or {}, labels.get("split") or {}))
        group.runs.append(m)
    return list(groups.values())


def run_folder_groups(run_dirs: Sequence[Path]) -> list[list[Path]]:
    """The run folders in the groups :func:`comparable_groups` will make of their metrics, read
    from each run's ``labels.json`` before anything is evaluated."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for run_dir in run_dirs:
        labels = rf.read_json(run_dir / rf.LABELS) if (run_dir / rf.LABELS).is_file() else {}
        groups.setdefault(_key({"labels": labels}), []).append(run_dir)
    return list(groups.values())


def why_apart(group: RunGroup, first: RunGroup) -> str:
    """What separates ``group`` from ``first`` (test sites, split parameters, label definition)."""
    reasons = []
    if group.test_sites != first.test_sites:
        reasons.append(
            f"test sites {', '.join(group.test_sites) or 'not recorded'} vs {', '.join(first.test_sites) or 'not recorded'}"
        )
    mine, theirs = group.split.get("params") or {}, first.split.get("params") or {}
    other = sorted(k for k in set(mine) | set(theirs) if k != "test_sites" and mine.get(k) != theirs.get(k))
    if other:
        reasons.append(f"split {', '.join(other)} differ")
    if (group.definition.get("params_hash"), group.definition.get("name")) != (
        first.definition.get("params_hash"),
        first.definition.get("name"),
    ):
        reasons.append(f"label definition `{group.definition.get('name')}` vs `{first.definition.get('name')}`")
    return "; ".join(reasons) or "split not recorded by every run"
