"""Stored label definitions and labels: finding a definition's row, reading its labels back."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from oaicohort.cohort.definitions import LabelDefinitionParams
from oaicohort.cohort.derivation import LABEL_COLUMNS
from oaicohort.db import Database
from oaicohort.db.frames import read_frame
from oaicohort.db.schema import Knee, KneeLabel, LabelDefinition
from oaicohort.errors import DatabaseStateError
from oaicohort.vocabulary import DEFAULT_DEFINITION


def latest_named(name: str) -> Any:
    """SELECT of the latest derived definition called ``name`` (``created_at`` marks a derivation)."""
    return (
        select(LabelDefinition)
        .where(LabelDefinition.name == name)
        .order_by(LabelDefinition.created_at.desc(), LabelDefinition.id.desc())
        .limit(1)
    )


def stored_definition(
    session: Session, definition: str | int | LabelDefinitionParams = DEFAULT_DEFINITION
) -> LabelDefinition:
    """The stored definition: by id, by exact parameters, or the latest derived of a name."""
    if isinstance(definition, LabelDefinitionParams):
        stmt = select(LabelDefinition).where(
            LabelDefinition.name == definition.name, LabelDefinition.params_hash == definition.hash()
        )
        what = f"{definition.name!r} (hash {definition.hash()[:12]})"
        name = definition.name
    elif isinstance(definition, int):
        stmt = select(LabelDefinition).where(LabelDefinition.id == definition)
        what, name = f"id {definition}", DEFAULT_DEFINITION
    else:
        stmt = latest_named(definition)
        what, name = repr(definition), definition
    row = session.execute(stmt).scalars().first()
    if row is None:
        if session.execute(select(Knee.id).limit(1)).first() is None:
            raise DatabaseStateError("the database holds no knees: run `oai ingest ROOT` first, then `oai label`")
        raise DatabaseStateError(
            f"no labels of definition {what} in the database: run `oai label --definition {name}` first"
        )
    return row


def stored_labels(session: Session, definition_id: int) -> pd.DataFrame:
    """The stored labels of a definition joined with subject and side (LABEL_COLUMNS)."""
    stmt = (
        select(
            KneeLabel.knee_id,
            Knee.subject_id,
            Knee.side,
            KneeLabel.kl_baseline,
            KneeLabel.label,
            KneeLabel.exclusion,
            KneeLabel.progression_month,
            KneeLabel.kl_increase,
            KneeLabel.time_months,
            KneeLabel.event_type,
        )
        .join(Knee, Knee.id == KneeLabel.knee_id)
        .where(KneeLabel.definition_id == definition_id)
        .order_by(Knee.subject_id, Knee.side)
    )
    frame = read_frame(session, stmt, list(LABEL_COLUMNS))
    for col in ("kl_baseline", "progression_month", "kl_increase"):
        frame[col] = frame[col].astype("Int64")
    frame["time_months"] = frame["time_months"].astype(float)
    return frame


def labels_fingerprint(labels: pd.DataFrame) -> str:
    """sha256 of the included knees' (subject, side, label): identifies the labels a split used."""
    included = labels[labels["exclusion"].isna()].sort_values(["subject_id", "side"])
    text = "\n".join(
        f"{s},{side},{lab}" for s, side, lab in zip(included["subject_id"], included["side"], included["label"])
    )
    return hashlib.sha256(text.encode()).hexdigest()


def list_definitions(db: Database) -> pd.DataFrame:
    """Every label definition: those stored (with their knee counts) and the presets not yet
    derived. Columns: id, name, params_hash, created_at, knees (included), labelled (all rows),
    derived, preset."""
    from sqlalchemy import func

    from oaicohort.cohort.definitions import PRESETS

    included = func.count(KneeLabel.id).filter(KneeLabel.exclusion.is_(None))
    stmt = (
        select(
            LabelDefinition.id,
            LabelDefinition.name,
            LabelDefinition.params_hash,
            LabelDefinition.created_at,
            included,
            func.count(KneeLabel.id),
        )
        .outerjoin(KneeLabel, KneeLabel.definition_id == LabelDefinition.id)
        .group_by(LabelDefinition.id)
        .order_by(LabelDefinition.name, LabelDefinition.created_at)
    )
    columns = ["id", "name", "params_hash", "created_at", "knees", "labelled"]
    with db.read() as session:
        frame = read_frame(session, stmt, columns)
    frame["derived"] = True
    stored = set(zip(frame["name"], frame["params_hash"]))
    missing = [
        {"id": None, "name": n, "params_hash": p.hash(), "created_at": None, "knees": None, "labelled": None}
        for n, p in PRESETS.items()
        if (n, p.hash()) not in stored
    ]
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing).assign(derived=False)], ignore_index=True)
    preset_hashes = {(n, p.hash()) for n, p in PRESETS.items()}
    frame["preset"] = [(n, h) in preset_hashes for n, h in zip(frame["name"], frame["params_hash"])]
    for col in ("knees", "labelled"):
        frame[col] = frame[col].astype("Int64")
    return frame.reset_index(drop=True)
