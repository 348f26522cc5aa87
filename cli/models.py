"""``oai models``: parameters, MACs and latency of every network of Table 1.

Registered in the root app as ``app.command("models")(models_command)``. The numbers come from
``oaimodels.networks.complexity``; this module only parses options and renders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.table import Table

from oaicli.common import emit_json, err_console, handles_errors, out_console, rich_progress

if TYPE_CHECKING:  # torch is imported only when the command runs, so `oai --help` stays fast
    from oaimodels.networks.complexity import EfficiencyRow


def _check_options(device: str, names: list[str]) -> None:
    import torch

    from oaimodels.networks import list_models

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"expected cpu or cuda, got {device!r}", param_hint="--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("CUDA is not available on this machine", param_hint="--device")
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise typer.BadParameter(f"unknown model(s) {unknown}; known: {', '.join(list_models())}", param_hint="--model")


def _shape_text(row: EfficiencyRow) -> str:
    # One line per view; the leading channel count (always 1) is left out to save width.
    return "\n".join(f"{v} {'x'.join(map(str, s[1:]))}" for v, s in row.complexity.shapes.items())


def _render(rows: list[EfficiencyRow], latency: bool) -> Table:
    table = Table(title="Table 1 efficiency: ours vs the paper's", title_justify="left")
    table.add_column("model", no_wrap=True)
    table.add_column("input DxHxW", no_wrap=True)
    table.add_column("params M", justify="right")
    table.add_column("GMACs", justify="right")
    if latency:
        table.add_column("ms", justify="right")
    table.add_column("paper M", justify="right", style="dim")
    table.add_column("paper GMACs", justify="right", style="dim")
    table.add_column("paper ms", justify="right", style="dim")
    for row in rows:
        c = row.complexity
        gmacs = f"{c.gmacs:.1f}" if c.gmacs >= 10 else f"{c.gmacs:.2f}"
        cells = [c.name, _shape_text(row), f"{c.params_m:.2f}", gmacs]
        if latency:
            cells.append(f"{row.latency_ms:.1f}" if row.latency_ms is not None else "")
        cells += [f"{row.paper.params_m:g}", f"{row.paper.gmacs:g}", f"{row.paper.latency_ms:g}"]
        table.add_row(*cells)
    return table


@handles_errors
def models_command(
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of objects."),
    latency: bool = typer.Option(
        False, "--latency", help="Also time inference: median after warm-up, synchronised on CUDA."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for --latency: cpu or cuda."),
    precision: str = typer.Option("fp32", "--precision", help="For --latency: fp32 or bf16 (autocast)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Batch size for --latency."),
    names: list[str] = typer.Option([], "--model", "-m", help="Only this model (repeatable); default: all."),
    small: bool = typer.Option(
        False, "--small", help="Use the reduced test shapes instead of the paper's (quick on CPU)."
    ),
    repeats: int = typer.Option(10, "--repeats", min=1, help="Timed passes for --latency."),
) -> None:
    """Parameters, MACs of one sample and (with --latency) inference time of every model."""
    _check_options(device, names)
    if precision not in ("fp32", "bf16"):
        raise typer.BadParameter(f"{precision!r}; choose fp32 or bf16", param_hint="--precision")
    with rich_progress(enabled=latency) as progress:
        from oaimodels.networks.complexity import efficiency_table

        rows = efficiency_table(
            names or None,
            small=small,
            latency=latency,
            device=device,
            batch=batch,
            repeats=repeats,
            precision=precision,
            progress=progress,
        )
    if json_out:
        emit_json([row.to_json() for row in rows])
        return
    out_console.print(_render(rows, latency))
    if small:
        err_console.print("note: reduced shapes (--small); paper figures are at the paper's shapes")
