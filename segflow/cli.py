"""The ``segflow`` command: what a user runs besides ``dvc repro``; user errors in one line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from segflow.errors import SegflowError

if TYPE_CHECKING:
    import numpy as np

#: What ``segflow --help`` says first: for a user, one paragraph per line (rich re-wraps them).
HELP = "\n\n".join(
    [
        "segflow turns a labelled image dataset into a trained, evaluated semantic-segmentation "
        "model in the MLflow registry. `dvc repro` runs the pipeline (ingest, validate, shard, "
        "train, evaluate, register); these commands look at its data and models, segment an "
        "image with a registered model, and run or schedule retraining.",
        "`segflow -v COMMAND` also shows the libraries' own log lines and warnings.",
    ]
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=HELP,
    # A user error is one line (see main); a rich traceback box is for bugs only.
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show the libraries' log lines and warnings."
    ),
) -> None:
    from segflow.logs import quiet_libraries

    quiet_libraries(verbose)


def require_file(path: Path, what: str) -> None:
    """Fail before any slow work (loading a model) when ``path`` is not a readable file."""
    if not path.exists():
        raise SegflowError(f"{path}: no such file ({what})")
    if not path.is_file():
        raise SegflowError(f"{path}: is a directory, not a file ({what})")


@app.command()
def models(
    num_classes: int = typer.Option(21, help="Classes of the head used for counting."),
    size: int = typer.Option(512, help="Square input size for the GFLOPs count."),
) -> None:
    """List every registered model with its parameter count (and its paper's) and GFLOPs."""
    from segflow.models.summary import summaries

    table = Table(
        title=f"segflow models ({num_classes} classes, {size}x{size} input)",
        caption="paper: the count the architecture's paper publishes at its setting "
        "(sources: segflow.models.summary.PUBLISHED)",
    )
    table.add_column("model")
    table.add_column("backbone")
    table.add_column("OS", justify="right")
    table.add_column("params (M)", justify="right")
    table.add_column("paper (M)", justify="right")
    table.add_column("GFLOPs", justify="right")
    for row in summaries(num_classes=num_classes, size=(size, size)):
        paper = row["paper_params"]
        table.add_row(
            row["name"],
            row["backbone"] or "-",
            str(row["output_stride"] or "-"),
            f"{row['params'] / 1e6:.2f}",
            f"{paper / 1e6:.4g}" if paper is not None else "-",
            f"{row['gflops']:.1f}",
        )
    console.print(table)


@app.command()
def baseline(
    name: str = typer.Argument(..., help="patch_classifier or split_and_merge."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file of the project."),
    split: str = typer.Option(None, help="Split to score (default: dataset.test_split)."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="Baseline option KEY=VALUE (repeatable), e.g. stride=4."
    ),
) -> None:
    """Train a classical baseline on data/shards, score it like evaluate, log an MLflow run."""
    from segflow.baselines.run import baseline_main

    run = baseline_main(name, params, split, option)
    m = run.metrics
    console.print(
        f"baseline {name}: {run.split} PA {m['pa']:.4f} MPA {m['mpa']:.4f} mIoU {m['miou']:.4f} "
        f"FWIoU {m['fwiou']:.4f}, {m['ms_per_image']:.0f} ms per image (MLflow run {run.run_id})"
    )


@app.command()
def init(
    preset: str = typer.Option(..., help="Preset name (configs/presets/), e.g. camvid-cpu."),
    root: Path | None = typer.Option(None, help="The dataset's root directory (dataset.root)."),
    dir: Path = typer.Option(Path("."), "--dir", help="Project directory for params.yaml."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing params.yaml."),
) -> None:
    """Write a complete, commented params.yaml for a published setting (a preset)."""
    from segflow.presets import write_preset

    if root is not None and not root.is_dir():
        raise SegflowError(f"--root {root}: no such directory (the dataset's root)")
    out = write_preset(preset, dir, force, dataset_root=root)
    where = f", dataset.root {root.resolve()}" if root is not None else ""
    console.print(f"init: wrote {out} (preset {preset}{where})")


@app.command()
def check_params(path: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Validate a params file: the schema, the model it names, the dataset root and its layout."""
    import yaml

    from segflow.stages.check_params import check_params as check

    params = check(path)
    console.print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))


@app.command()
def shards(
    shard_dir: Path = typer.Argument(Path("data/shards")),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash every shard against index.json (reads every byte)."
    ),
) -> None:
    """Summarise the shards: samples per split and class pixel shares."""
    from segflow.data.shards import shard_index_path, verify_shards

    index = verify_shards(shard_dir, full_hash=verify)
    names = [c["name"] for c in index["classes"]]
    table = Table(title=f"{shard_dir} ({index['dataset']}, hash {index['content_hash'][:12]})")
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("files", justify="right")
    table.add_column("largest classes by pixels")
    for split, info in index["splits"].items():
        pixels = info["class_pixels"]
        total = max(sum(pixels), 1)
        top = sorted(range(len(pixels)), key=lambda i: -pixels[i])[:4]
        share = ", ".join(f"{names[i]} {100 * pixels[i] / total:.1f}%" for i in top)
        table.add_row(split, str(info["num_samples"]), str(len(info["files"])), share)
    console.print(table)
    if verify:
        console.print(f"shards: every file matches {shard_index_path(shard_dir)} (sha256)")


@app.command()
def predict(
    image: Path = typer.Argument(..., help="RGB image to segment (PNG, JPEG...)."),
    model: str = typer.Option(..., help="Model URI, e.g. models:/segflow-camvid@champion."),
    out: Path = typer.Option(None, help="Coloured mask PNG (default: <image>_mask.png)."),
    labels: Path = typer.Option(None, help="Also write the raw class-id PNG here."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: as training)."),
) -> None:
    """Segment one image with a registered model; write the mask in the class colours.

    The model's artifacts are checked against their registered sha256 and its network is built
    by this installation of segflow: no code from the artifact store runs."""
    import os

    import cv2

    from segflow.data.datasets.base import ClassInfo, read_rgb
    from segflow.evaluate.report import colorize
    from segflow.lifecycle.registration import load_for_predict
    from segflow.tracking import tracking_uri as default_uri

    require_file(image, "the image to segment")
    # Header first (dataset.max_pixels' default): a decompression bomb is refused in one line
    # before any decode and before a model is loaded.
    rgb = read_rgb(image)
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    # An interactive command: a server that is down is an error in seconds, not after MLflow's
    # default ~4 minutes of retries (the pipeline stages keep those, to ride out a restart).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    import mlflow

    mlflow.set_tracking_uri(default_uri())
    predictor, classes = load_for_predict(model)
    label_map = predictor.labels(rgb)
    out = out or image.with_name(f"{image.stem}_mask.png")
    mask = colorize(label_map, [ClassInfo.from_dict(c) for c in classes])
    _write_png(out, cv2.cvtColor(mask, cv2.COLOR_RGB2BGR), "the mask")
    if labels is not None:
        _write_png(labels, label_map, "the label map")
    timing = predictor.last_timing
    took = f" in {timing['ms']:.0f} ms (network {timing['ms_network']:.0f} ms)"
    console.print(f"predict: {image} -> {out}" + (f", labels {labels}" if labels else "") + took)


def _write_png(path: Path, array: np.ndarray, what: str) -> None:
    """cv2.imwrite; a path it cannot write (an extension OpenCV has no writer for) is one line."""
    import cv2

    from segflow.data.images import one_line

    try:
        ok = cv2.imwrite(str(path), array)
    except cv2.error as exc:
        raise SegflowError(f"{path}: cannot write {what} ({one_line(exc)})") from None
    if not ok:
        raise SegflowError(f"{path}: cannot write {what}")


@app.command()
def schedule(
    params: Path = typer.Option(Path("params.yaml"), help="Params file with retrain.schedule."),
    out: Path = typer.Option(Path("infra/schedule"), help="Directory of the scheduler files."),
    check: bool = typer.Option(False, "--check", help="Only compare; exit 1 if any is stale."),
) -> None:
    """Render the retrain schedulers (CronJob, systemd timer, crontab) from retrain.schedule."""
    from segflow.config import load_params
    from segflow.lifecycle.schedule import cron_to_oncalendar, stale_files, write

    loaded = load_params(params)
    if check:
        stale = stale_files(loaded, out)
        if stale:
            names = ", ".join(str(p) for p in stale)
            raise SegflowError(f"{names}: stale for {params}; run `segflow schedule`")
        console.print(f"schedule: {out} matches {params}")
        return
    changed = write(loaded, out)
    cron = loaded.retrain.schedule
    console.print(f"schedule: {cron!r} (UTC) = OnCalendar {cron_to_oncalendar(cron)!r}")
    for path in changed:
        console.print(f"  wrote {path}")
    if not changed:
        console.print(f"  {out} was up to date")


@app.command()
def retrain(
    params: Path = typer.Option(Path("params.yaml"), help="Params file of the project."),
) -> None:
    """New data -> dvc repro -> promotion gate; one audit record in reports/retrain_log.jsonl.

    Run in the project checkout (where dvc.yaml is). Exit 0: retrained (promoted or kept) or no
    new data; 1: a stage or the gate failed (the champion is untouched); 75: another retrain
    holds the lock.
    """
    from segflow.lifecycle.retrain import run_retrain

    sys.exit(run_retrain(params))


PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user caused, or None for a bug (keeps its traceback).

    A path the user named that is missing, a directory or unreadable surfaces from deep inside a
    library as an OSError carrying the file name; it is the user's error like a SegflowError.
    """
    if isinstance(exc, SegflowError):
        return str(exc)
    if isinstance(exc, PATH_ERRORS) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror.lower() if exc.strerror else exc}"
    return None


def main() -> None:
    """Entry point: user errors print one message and exit 1, without a traceback."""
    try:
        app()  # click itself reports usage errors (exit 2)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for line in message.splitlines():
            err.print(f"[bold red]error:[/] {escape(line)}", markup=True)
        sys.exit(1)
