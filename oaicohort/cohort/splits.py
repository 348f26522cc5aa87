"""Subject-wise splits: held-out site(s) as the test set, grouped stratified k folds for the rest.

``make_split(db, definition="panfilov2022", test_sites=("D",), folds=5, seed=0)``:

- test: every included knee whose subject's enrolment site (``V00SITE``) is a test site;
- train: the other included knees, in ``folds`` cross-validation folds from scikit-learn's
  ``StratifiedGroupKFold(shuffle=True, random_state=seed)``, stratified on the 3-class label and
  grouped by subject (both knees of a person always share a fold). Knees are fed to it sorted by
  (subject ID, side), so the split depends only on the labels, the sites and the seed.

A split is stored with its parameters and their sha256; the parameters include a fingerprint of
the labels it was made from, so re-deriving different labels makes a new split instead of
silently changing an old one. Same parameters and labels -> same split id and assignment
(get-or-create). :func:`check_split` enforces the guarantees (no subject in two folds or in
both train and test, no test-site knee in train, every included knee assigned exactly once) on
every split made or loaded, and raises :class:`SplitIntegrityError` on a violation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.stored import labels_fingerprint, stored_definition, stored_labels
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import Knee, Split, SplitAssignment, Subject
from oaicohort.db.staleness import SPLIT, clear_stale, drop_if_stale
from oaicohort.errors import DatabaseStateError, OAIError
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION, ROLES

log = logging.getLogger(__name__)

METHOD = "sklearn.model_selection.StratifiedGroupKFold"


class SplitError(OAIError):
    """A split cannot be made with the given parameters (too few subjects, unknown site ...)."""


class SplitIntegrityError(OAIError):
    """A split violates one of its guarantees (leakage, a knee missing or assigned twice)."""


class LeakageError(SplitIntegrityError):
    """A subject appears on both sides of a train/test (or fold) boundary."""


@dataclass
class SplitResult:
    """A stored split and its assignment of every included knee."""

    split_id: int
    definition_id: int
    definition: str
    params: dict[str, Any]
    params_hash: str
    created: bool
    # knee_id, subject_id, side, site, label, role, fold (fold <NA> for test knees)
    assignments: pd.DataFrame

    @property
    def folds(self) -> int:
        return int(self.params["folds"])

    def counts(self) -> pd.DataFrame:
        """Knees, subjects and knees per class for each fold, the test set and all of train."""
        a = self.assignments
        groups: list[tuple[str, pd.DataFrame]] = [
            (f"fold {k}", a[(a["role"] == "train") & a["fold"].eq(k).fillna(False)]) for k in range(self.folds)
        ]
        groups += [("train", a[a["role"] == "train"]), ("test", a[a["role"] == "test"])]
        rows = [
            {
                "set": name,
                "knees": int(len(g)),
                "subjects": int(g["subject_id"].nunique()),
                **{c: int((g["label"] == c).sum()) for c in CLASSES},
            }
            for name, g in groups
        ]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts().set_index("set")
        fold_rows = [{"fold": k, **counts.loc[f"fold {k}"].to_dict()} for k in range(self.folds)]
        return {
            "split_id": self.split_id,
            "definition": self.definition,
            "definition_id": self.definition_id,
            "params": self.params,
            "params_hash": self.params_hash,
            "created": self.created,
            "folds": [{k: int(v) if k != "fold" else v for k, v in r.items()} for r in fold_rows],
            "train": {k: int(v) for k, v in counts.loc["train"].to_dict().items()},
            "test": {k: int(v) for k, v in counts.loc["test"].to_dict().items()},
        }


# --------------------------------------------------------------------------- pure functions


def _normalise_sites(test_sites: Iterable[str]) -> tuple[str, ...]:
    if isinstance(test_sites, str):
        test_sites = (test_sites,)
    sites = tuple(sorted({str(s).strip().upper() for s in test_sites}))
    if any(not s for s in sites):
        raise SplitError("a test site must be a non-empty site code such as 'D'")
    return sites


def assign_folds(
    knees: pd.DataFrame, *, test_sites: Sequence[str] = ("D",), folds: int = 5, seed: int = 0
) -> pd.DataFrame:
    """Assign included knees (knee_id, subject_id, side, site, label) to test or a train fold.

    Returns the knees sorted by (subject_id, side) with ``role`` and ``fold`` (Int64, <NA> for
    test) added. Pure: no database.
    """
    sites = _normalise_sites(test_sites)
    if folds < 2:
        raise SplitError(f"folds must be at least 2, got {folds}")
    frame = knees.sort_values(["subject_id", "side"], kind="stable").reset_index(drop=True)
    site = frame["site"].astype("string").str.upper()
    present = set(site.dropna())
    unknown = [s for s in sites if s not in present]
    if unknown:
        raise SplitError(f"no included knee at test site(s) {unknown}; sites in the cohort: {sorted(present)}")
    is_test = site.isin(sites).fillna(False).to_numpy(dtype=bool)
    train = np.flatnonzero(~is_test)
    n_subjects = frame.loc[train, "subject_id"].nunique()
    if n_subjects < folds:
        raise SplitError(
            f"{folds} folds need at least {folds} training subjects; the cohort has {n_subjects} "
            f"outside test site(s) {list(sites)}"
        )
    from sklearn.model_selection import StratifiedGroupKFold  # slow import: only when splitting

    fold = np.full(len(frame), -1)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    # a time-to-event definition's knees censored before it could label them are a stratum of their own
    y = frame.loc[train, "label"].fillna("censored").astype(str).to_numpy()
    groups = frame.loc[train, "subject_id"].to_numpy()
    per_class = pd.Series(y).value_counts()
    if (per_class < folds).all():
        raise SplitError(
            f"{folds} folds need at least {folds} training knees of some class; the cohort has "
            f"{per_class.to_dict()} outside test site(s) {list(sites)}"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, (_, held) in enumerate(splitter.split(np.zeros(len(train)), y, groups)):
            fold[train[held]] = k
    for w in caught:
        log.warning("split: %s", w.message)
    frame["role"] = np.where(is_test, "test", "train")
    frame["fold"] = pd.array(np.where(is_test, pd.NA, fold), dtype="Int64")
    return frame


def leakage_problems(assignments: pd.DataFrame) -> list[str]:
    """What makes a split leak: a subject on both sides of the train/test or a fold boundary.

    ``assignments``: subject_id, role, fold (one row per knee). Empty when nothing leaks.
    """
    problems: list[str] = []
    train = assignments[assignments["role"] == "train"]
    test = assignments[assignments["role"] == "test"]
    shared = sorted(set(train["subject_id"]) & set(test["subject_id"]))
    if shared:
        problems.append(
            f"{len(shared)} test-set subject(s) also appear in the training folds "
            f"(e.g. subject {int(shared[0])} in both train and test; subjects {', '.join(map(str, shared[:5]))})"
        )
    folds_per_subject = train.groupby("subject_id")["fold"].nunique()
    crossing = sorted(folds_per_subject[folds_per_subject > 1].index.tolist())
    if crossing:
        problems.append(
            f"{len(crossing)} subject(s) have knees in more than one cross-validation fold "
            f"(e.g. subject {int(crossing[0])} in two folds; subjects {', '.join(map(str, crossing[:5]))})"
        )
    return problems


def check_leakage(assignments: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` if a subject crosses a train/test or fold boundary.

    The one leakage check: :func:`check_split` runs it on every split made or loaded, and
    training runs it on whatever knee table it is given.
    """
    problems = leakage_problems(assignments)
    if problems:
        raise LeakageError("; ".join(problems) + ". Make a new split with `oai split`.")


def check_split(
    assignments: pd.DataFrame,
    included: pd.DataFrame,
    *,
    test_sites: Sequence[str],
    folds: int,
) -> None:
    """Raise :class:`SplitIntegrityError` unless the split keeps every guarantee.

    ``assignments``: knee_id, subject_id, role, fold; ``included``: knee_id, subject_id, site of
    every included knee of the definition.
    """
    sites = set(_normalise_sites(test_sites))
    problems: list[str] = []
    dup = assignments["knee_id"][assignments["knee_id"].duplicated()]
    if len(dup):
        problems.append(f"{dup.nunique()} knee(s) assigned more than once (e.g. knee {int(dup.iloc[0])})")
    assigned, wanted = set(assignments["knee_id"]), set(included["knee_id"])
    if wanted - assigned:
        problems.append(f"{len(wanted - assigned)} included knee(s) not assigned (e.g. knee {min(wanted - assigned)})")
    if assigned - wanted:
        problems.append(
            f"{len(assigned - wanted)} assigned knee(s) not in the cohort (e.g. knee {min(assigned - wanted)})"
        )
    bad_role = ~assignments["role"].isin(ROLES)
    if bad_role.any():
        problems.append(f"{int(bad_role.sum())} knee(s) with a role other than train/test")
    train = assignments[assignments["role"] == "train"]
    test = assignments[assignments["role"] == "test"]
    fold = pd.to_numeric(train["fold"], errors="coerce")
    if fold.isna().any() or not fold.dropna().isin(range(folds)).all():
        problems.append(f"train knee(s) without a fold in 0..{folds - 1}")
    if test["fold"].notna().any():
        problems.append("test knee(s) with a fold")
    empty = sorted(set(range(folds)) - set(fold.dropna().astype(int)))
    if empty:
        problems.append(f"empty fold(s) {empty}")
    problems += leakage_problems(assignments)
    site = included.set_index("knee_id")["site"].astype("string").str.upper()
    train_sites = site.reindex(train["knee_id"])
    if train_sites.isin(sites).any():
        knee = int(train_sites[train_sites.isin(sites).fillna(False)].index[0])
        problems.append(f"test-site knee {knee} in train")
    test_site = site.reindex(test["knee_id"])
    if (~test_site.isin(sites).fillna(False)).any():
        problems.append("knee(s) of a training site in test")
    if problems:
        raise SplitIntegrityError("split violates its guarantees: " + "; ".join(problems))


def split_params(*, test_sites: Sequence[str], folds: int, seed: int, labels_hash: str) -> tuple[dict[str, Any], str]:
    """The hashed split parameters and their sha256."""
    params = {
        "test_sites": list(_normalise_sites(test_sites)),
        "folds": int(folds),
        "seed": int(seed),
        "method": METHOD,
        "shuffle": True,
        "stratify": "label",
        "groups": "subject",
        "labels_hash": labels_hash,
    }
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    return params, digest.hexdigest()


# --------------------------------------------------------------------------- database


def _included_knees(session: Session, definition_id: int) -> pd.DataFrame:
    labels = stored_labels(session, definition_id)
    sites = dict(session.execute(select(Subject.id, Subject.site)).all())
    labels["site"] = labels["subject_id"].map(sites)
    return labels


def _stored_assignments(session: Session, split_id: int, labels: pd.DataFrame) -> pd.DataFrame:
    frame = read_frame(
        session,
        select(SplitAssignment.knee_id, SplitAssignment.role, SplitAssignment.fold).where(
            SplitAssignment.split_id == split_id
        ),
        ["knee_id", "role", "fold"],
    )
    frame["fold"] = frame["fold"].astype("Int64")
    info = labels[["knee_id", "subject_id", "side", "site", "label"]]
    # knees excluded since: keep them (check_split reports them) with what the knees table says
    merged = frame.merge(info, on="knee_id", how="left")
    if merged["subject_id"].isna().any():
        knees = dict(session.execute(select(Knee.id, Knee.subject_id)).all())
        merged["subject_id"] = merged["subject_id"].fillna(merged["knee_id"].map(knees))
    merged["subject_id"] = merged["subject_id"].astype("int64")
    cols = ["knee_id", "subject_id", "side", "site", "label", "role", "fold"]
    return merged[cols].sort_values(["subject_id", "side"], kind="stable").reset_index(drop=True)


def make_split(
    db: Database,
    *,
    definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION,
    test_sites: Sequence[str] = ("D",),
    folds: int = 5,
    seed: int = 0,
) -> SplitResult:
    """Make (or find) the split of ``definition``'s included knees; see the module docstring."""
    with db.write() as session:
        row = stored_definition(session, definition)
        labels = _included_knees(session, row.id)
        included = labels[labels["exclusion"].isna()].reset_index(drop=True)
        if included.empty:
            raise DatabaseStateError(f"definition {row.name!r} (id {row.id}) has no included knees to split")
        params, params_hash = split_params(
            test_sites=test_sites, folds=folds, seed=seed, labels_hash=labels_fingerprint(labels)
        )
        existing = session.execute(
            select(Split).where(Split.definition_id == row.id, Split.params_hash == params_hash)
        ).scalar_one_or_none()
        if existing is not None and drop_if_stale(session, existing.id):
            existing = None
        if existing is not None:
            assignments = _stored_assignments(session, existing.id, labels)
            check_split(assignments, included, test_sites=params["test_sites"], folds=folds)
            clear_stale(session, SPLIT, existing.id)  # checked against the current data: valid again
            return SplitResult(existing.id, row.id, row.name, dict(existing.params), params_hash, False, assignments)
        assignments = assign_folds(included, test_sites=params["test_sites"], folds=folds, seed=seed)
        check_split(assignments, included, test_sites=params["test_sites"], folds=folds)
        import sklearn

        stored_params = {**params, "sklearn_version": sklearn.__version__}
        split = Split(definition_id=row.id, params=stored_params, params_hash=params_hash)
        session.add(split)
        session.flush()
        records = [
            {"split_id": split.id, "knee_id": int(k), "role": r, "fold": None if pd.isna(f) else int(f)}
            for k, r, f in zip(assignments["knee_id"], assignments["role"], assignments["fold"])
        ]
        session.connection().execute(insert(SplitAssignment), records)
        log.info("split %d of %s: %d knees (%s)", split.id, row.name, len(records), params)
        return SplitResult(
            split.id,
            row.id,
            row.name,
            stored_params,
            params_hash,
            True,
            assignments[["knee_id", "subject_id", "side", "site", "label", "role", "fold"]],
        )


def latest_split(session: Session, definition_id: int, labels_hash: str | None = None) -> Split | None:
    """The newest split of a definition (made from labels with ``labels_hash`` when given)."""
    rows = session.execute(
        select(Split).where(Split.definition_id == definition_id).order_by(Split.id.desc())
    ).scalars()
    for split in rows:
        if labels_hash is None or split.params.get("labels_hash") == labels_hash:
            return split
    return None


def load_split(db: Database, split_id: int) -> SplitResult:
    """A stored split by id, checked against the current labels of its definition."""
    with db.read() as session:
        split = session.get(Split, split_id)
        if split is None:
            raise DatabaseStateError(f"no split with id {split_id}: run `oai split` first")
        row = stored_definition(session, split.definition_id)
        labels = _included_knees(session, row.id)
        included = labels[labels["exclusion"].isna()]
        assignments = _stored_assignments(session, split.id, labels)
    if split.params.get("labels_hash") != labels_fingerprint(labels):
        raise DatabaseStateError(
            f"split {split_id} was made from labels of {row.name!r} that have since been "
            f"re-derived differently: run `oai split --definition {row.name}` again"
        )
    check_split(assignments, included, test_sites=split.params["test_sites"], folds=split.params["folds"])
    return SplitResult(split.id, row.id, row.name, dict(split.params), split.params_hash, False, assignments)
