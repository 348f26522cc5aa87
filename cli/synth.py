"""``oai synth``: write a synthetic OAI release in the real file formats."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from oaicli.common import emit_json, err_console, guard_output, handles_errors, out_console, rich_progress
from oaicohort.errors import OAIError
from oaicohort.synth import OAI_SIZE, write_release
from oaicohort.synth.clinical import MAX_SUBJECTS


class ImageSize(StrEnum):
    full = "full"
    small = "small"


class Distribution(StrEnum):
    ascii = "ascii"
    ascii_categories = "ascii-categories"
    zip = "zip"
    sas = "sas"
    nda = "nda"


class ImageLayout(StrEnum):
    indexed = "indexed"
    folders = "folders"
    zip = "zip"


# the share of participants whose baseline radiograph an NDA-form release has in the screening package
NDA_SCREENING_SHARE = 0.2


def _write_images(
    out: Path, size: str, seed: int, workers: int, progress: Any, screening_share: float
) -> tuple[int, int]:
    try:
        from oaicohort.synth.images import write_images  # heavy (pydicom); only when asked
        from oaicohort.synth.radiograph_release import write_radiographs
    except ImportError as exc:
        raise OAIError(f"--images needs oaicohort.synth.images, which cannot be imported here ({exc})") from None
    series = write_images(out, size=size, seed=seed, workers=workers, progress=progress)
    radiographs = write_radiographs(
        out, size=size, seed=seed, workers=workers, progress=progress, screening_share=screening_share
    )
    return series, radiographs


@handles_errors
def synth_command(
    ctx: typer.Context,
    out: Path = typer.Argument(
        ..., help="Folder to write the release into (new, empty, or an earlier synthetic release)."
    ),
    subjects: int = typer.Option(
        OAI_SIZE, "--subjects", "-n", min=1, max=MAX_SUBJECTS, help="Number of participants (the OAI enrolled 4,796)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives byte-identical files."),
    images: bool = typer.Option(
        False,
        "--images",
        help="Also write a DICOM DESS series for every knee listed in 00m/contents.csv and a bilateral "
        "PA radiograph per subject with a baseline X-ray reading (XR/00m).",
    ),
    image_size: ImageSize = typer.Option(
        ImageSize.full,
        "--image-size",
        help="full: 384x384x160 as in the OAI; small: a tiny version for tests and demos.",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes writing image series."),
    distribution: Distribution = typer.Option(
        Distribution.ascii,
        "--distribution",
        help="Form to write the release in: ascii (flat folder), ascii-categories (2018 per-category folders), "
        "zip (OAICompleteData_ASCII.zip), sas (.sas7bdat), nda (NDA data package with image03.txt and "
        ".tar.gz series).",
    ),
    legacy_names: bool = typer.Option(
        False,
        "--legacy-names",
        help="With --distribution nda: the structure and column names of the first synthetic packages "
        "(guessed before real packages were seen) instead of the real ones, and image03.txt unquoted with a "
        "visit column.",
    ),
    image_layout: ImageLayout | None = typer.Option(
        None,
        "--image-layout",
        help="How --images are held: indexed (visit folders with contents.csv), folders or zip (an image "
        "download of today: visit packages without contents.csv, extracted or as results/<visit>.zip). "
        "Default: zip with --distribution nda (which also puts a fifth of the baseline radiographs in the "
        "screening package P001), indexed otherwise.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary (only JSON on stdout)."),
) -> None:
    """Write a synthetic OAI release: clinical tables, X-ray readings, outcomes, the baseline image
    index and synth_truth.csv (the per-knee latent progression factor), optionally DESS images."""
    if legacy_names and distribution != Distribution.nda:
        raise typer.BadParameter("--legacy-names needs --distribution nda", param_hint="--legacy-names")
    nda = distribution == Distribution.nda
    layout = image_layout or (ImageLayout.zip if nda else ImageLayout.indexed)
    if image_layout is not None and not images:
        raise typer.BadParameter("--image-layout needs --images", param_hint="--image-layout")
    screening = NDA_SCREENING_SHARE if nda else 0.0

    from oaicohort.outputs import RELEASE

    guard_output(ctx, out, "OUT", allow=RELEASE)  # a synthetic release is rewritten in place
    with rich_progress(enabled=not json_out) as progress:
        summary = write_release(out, subjects=subjects, seed=seed, progress=progress)
        series, radiographs = (
            _write_images(out, image_size.value, seed, workers, progress, screening) if images else (None, None)
        )
        from oaicohort.synth.distributions import convert_release

        converted = convert_release(
            out, distribution.value, legacy_names=legacy_names, images=layout.value if images else "indexed"
        )
    result = {
        **summary.to_dict(),
        "images": series,
        "radiographs": radiographs,
        "image_size": image_size.value if images else None,
        "image_layout": layout.value if images else None,
        "distribution": distribution.value,
        "distribution_files": converted,
        "legacy_names": legacy_names,
    }
    if json_out:
        emit_json(result)
        return
    out_console.print(
        f"[bold]{summary.subjects}[/] subjects (seed {summary.seed}) written to {summary.root}: "
        f"{len(summary.files)} files, {summary.xray_readings} X-ray readings, "
        f"{summary.image_series} MR series indexed, {summary.knee_replacements} knee replacements "
        f"in {summary.seconds:.1f} s"
    )
    if distribution != Distribution.ascii:
        out_console.print(f"written as the {distribution.value} form: {len(converted)} files")
    if series is not None:
        out_console.print(
            f"{series} DESS series and {radiographs} bilateral PA radiographs written ({image_size.value})"
        )
    else:
        err_console.print("images not written (add --images)", style="dim")
