"""``oai preprocess --shard K/N`` and ``--launcher slurm|local --shards N``: the options' checks
(usage errors, before anything is opened) and the submission of one job per shard."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from oaicli.common import emit_json, err_console, guard_output, state

if TYPE_CHECKING:
    from oaicohort.imaging.recipe.params import PreprocessParams
    from oaicohort.imaging.runs.slots import Shard

_LAUNCH_ONLY = ("shards", "partition", "account", "time", "array_parallelism", "wait")


def check_shard_options(ctx: typer.Context, *, view: str) -> Shard | None:
    """The run's shard (``--shard``), once the shard and launcher options agree; usage errors exit 2."""
    from oaicohort.db import resolve_url
    from oaicohort.imaging.runs.slots import Shard, ShardError

    params = ctx.params
    given = [name for name in _LAUNCH_ONLY if params.get(name) not in (None, False)]
    if params.get("launcher") is None and given:
        raise typer.BadParameter("needs --launcher slurm or --launcher local", param_hint=f"--{given[0]}")
    if params.get("launcher") is not None:
        if params["launcher"] not in ("slurm", "local"):
            raise typer.BadParameter(f"{params['launcher']!r}; choose slurm or local", param_hint="--launcher")
        if params.get("shards") is None:
            raise typer.BadParameter("give --shards N (how many jobs)", param_hint="--launcher")
        if params.get("shard") is not None:
            raise typer.BadParameter(
                "give --shard K/N for one shard, or --launcher with --shards N", param_hint="--shard"
            )
        if params.get("limit") is not None:
            raise typer.BadParameter("applies to one run, not to --launcher jobs", param_hint="--limit")
    sharded = params.get("shard") is not None or params.get("launcher") is not None
    if not sharded:
        return None
    hint = "--shard" if params.get("shard") is not None else "--launcher"
    if view == "xray":
        raise typer.BadParameter("shards write MRI views; run --view xray without shards", param_hint=hint)
    if params.get("replace_missing_store"):
        raise typer.BadParameter("a sharded run never replaces a missing store; run without shards", param_hint=hint)
    if resolve_url(state(ctx).db).startswith("sqlite"):
        raise typer.BadParameter(
            "a SQLite database has one writer; shards of one store need PostgreSQL (--db postgresql+psycopg://...)",
            param_hint=hint,
        )
    if params.get("shard") is None:
        return None
    try:
        return Shard.parse(params["shard"])
    except ShardError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"--shard {params['shard']}: "), param_hint="--shard") from None


def launch_shards(
    ctx: typer.Context, params: PreprocessParams | None, views: tuple[str, ...], *, json_out: bool
) -> None:
    """Submit ``--shards N`` jobs; with ``--wait``, wait for them and report each shard."""
    from oaicohort.cluster import LauncherOptions, parse_time
    from oaicohort.db import resolve_url
    from oaicohort.imaging.runs.shard_jobs import ShardJob, submit_shards
    from oaicohort.imaging.runs.slots import Shard
    from oaicohort.outputs import STORE

    options: dict[str, Any] = ctx.params
    db_url = resolve_url(state(ctx).db)
    guard_output(ctx, options["store"], "--store", allow=STORE)
    launcher = LauncherOptions(options["launcher"], partition=options["partition"], account=options["account"])
    if options.get("array_parallelism") is not None:
        launcher.array_parallelism = int(options["array_parallelism"])
    if options["time"] is not None:
        try:
            launcher.time_min = parse_time(options["time"])
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--time") from None
    job = ShardJob(
        db_url, str(options["store"]), params, views, options["visit"], options["workers"], options["strict"],
        Shard(1, options["shards"]),
    )  # fmt: skip
    submitted, futures = submit_shards(job, options["shards"], launcher)
    rows: list[dict[str, Any]] = [{"shard": s.shard, "job_id": s.job_id, "stdout": s.stdout} for s in submitted]
    if not json_out:
        for s in submitted:
            err_console.print(f"shard {s.shard}: job {s.job_id}  log {s.stdout}", highlight=False)
    failed = 0
    if options["wait"]:
        for row, future in zip(rows, futures, strict=True):
            try:
                summary = future.result()
                row.update(done=summary["done"], failed=summary["failed"], skipped=summary["skipped"])
            except Exception as exc:  # a job's own failure: reported per shard, the others still counted
                failed += 1
                lines = str(exc).strip().splitlines()
                row["error"] = lines[-1] if lines else repr(exc)
                if not json_out:
                    err_console.print(f"[red]shard {row['shard']} failed[/]: {row['error']}", highlight=False)
    if json_out:
        emit_json({"jobs": rows})
    elif not options["wait"]:
        err_console.print(
            f"a failed shard is rerun alone: oai preprocess --store {options['store']} --shard K/{options['shards']}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)
