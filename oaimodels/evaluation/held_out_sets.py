"""Whether runs compared in one report were tested on the same knees (one test set for Table 1).

The reference keeps only knees with clinical data, DESS and radiograph, so every row of its
Table 1 is measured on the same knees. Here each run records its knees (``knees.csv``); an MRI
run and an X-ray run made from labels derived with ``oai label --store S --require sag,xray``
share their test knees, others may not. :func:`compare_test_sets` says which runs differ from the
first one and by how many knees; ``oai eval`` refuses such a comparison unless asked to flag it.
A knee is identified by (subject, side), which does not depend on the database's row ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from oaimodels import run_folder as rf

Knee = tuple[int, str]


@dataclass(frozen=True)
class RunTestSet:
    """One run's test knees against the first run's."""

    name: str
    knees: int
    subjects: int
    not_in_first: int  # this run's test knees the first run does not test
    missing_from_first: int  # the first run's test knees this run does not test

    @property
    def differs(self) -> int:
        return self.not_in_first + self.missing_from_first


@dataclass(frozen=True)
class SharedTestCheck:
    """The test sets of the runs of one comparison (the first run is the reference)."""

    runs: list[RunTestSet]
    shared_knees: int  # tested by every run
    shared_subjects: int
    differing: list[str] = field(default_factory=list)  # names of the runs that differ from the first

    @property
    def same(self) -> bool:
        return not self.differing

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "same": self.same}

    def summary(self) -> str:
        """One line: the shared test set, or which runs differ and by how many knees."""
        if self.same:
            return f"one shared test set: {self.runs[0].knees} knees of {self.runs[0].subjects} subjects"
        first = self.runs[0].name
        parts = [
            f"{r.name}: {r.differs} knees differ ({r.not_in_first} not in {first}'s, "
            f"{r.missing_from_first} of {first}'s missing)"
            for r in self.runs[1:]
            if r.differs
        ]
        return (
            f"the runs were tested on different knees ({self.shared_knees} knees of {self.shared_subjects} "
            f"subjects are common to all); " + "; ".join(parts)
        )


def held_out_knees(run_dir: Path) -> set[Knee]:
    """The (subject_id, side) of a run's test knees (``knees.csv``, role test)."""
    knees = pd.read_csv(Path(run_dir) / rf.KNEES, usecols=["subject_id", "side", "role"])
    test = knees[knees["role"] == "test"]
    return {(int(s), str(side)) for s, side in zip(test["subject_id"], test["side"])}


def compare_test_sets(run_dirs: Sequence[Path]) -> SharedTestCheck:
    """The test sets of ``run_dirs`` compared with the first one's."""
    sets = [held_out_knees(d) for d in run_dirs]
    first = sets[0]
    runs = [
        RunTestSet(
            name=Path(d).name,
            knees=len(s),
            subjects=len({k[0] for k in s}),
            not_in_first=len(s - first),
            missing_from_first=len(first - s),
        )
        for d, s in zip(run_dirs, sets)
    ]
    shared = set.intersection(*sets)
    return SharedTestCheck(
        runs=runs,
        shared_knees=len(shared),
        shared_subjects=len({k[0] for k in shared}),
        differing=[r.name for r in runs if r.differs],
    )
