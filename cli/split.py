"""``oai split``: held-out site(s) as the test set, grouped stratified k folds for the rest."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from oaicli.common import emit_json, handles_errors, out_console, state
from oaicohort.vocabulary import CLASSES, DEFAULT_DEFINITION

if TYPE_CHECKING:
    from oaicohort.cohort.splits import SplitResult


def split_table(result: SplitResult) -> Table:
    params = result.params
    status = "new" if result.created else "existing"
    table = Table(
        title=(
            f"Split {result.split_id} ({status}) of {result.definition}: test site(s) "
            f"{', '.join(params['test_sites']) or '-'}, {params['folds']} folds, seed {params['seed']}"
        ),
        title_justify="left",
    )
    for col in ("set", "knees", "subjects", *CLASSES):
        table.add_column(col, justify="left" if col == "set" else "right")
    counts = result.counts()
    for _i, row in enumerate(counts.itertuples(index=False)):
        if row.set == "train":
            table.add_section()
        table.add_row(*(str(v) for v in row), style="bold" if row.set in ("train", "test") else None)
    return table


@handles_errors
def split_command(
    ctx: typer.Context,
    test_site: list[str] = typer.Option(["D"], "--test-site", help="Held-out site (V00SITE); repeat for several."),
    folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds of the training sites."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled StratifiedGroupKFold."),
    definition: str = typer.Option(DEFAULT_DEFINITION, "--definition", "-d", help="Label definition."),
    json_out: bool = typer.Option(False, "--json", help="Print the split as JSON."),
) -> None:
    """Make (or find) the subject-wise split of the labelled cohort and print per-fold counts."""
    from oaicohort.cohort.splits import make_split  # pandas, scikit-learn: keep `oai --help` fast

    db = state(ctx).open_db()
    result = make_split(db, definition=definition, test_sites=test_site, folds=folds, seed=seed)
    if json_out:
        emit_json(result.to_dict())
        return
    out_console.print(split_table(result))
