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
    import click
    import numpy as np

#: What ``segflow --help`` says first: for a user, one paragraph per line (rich re-wraps them).
HELP = "\n\n".join(
    [
        "segflow turns a labelled image dataset into a trained, evaluated semantic-segmentation "
        "model in the MLflow registry. `dvc repro` runs the pipeline (ingest, validate, shard, "
        "train, evaluate, register); these commands look at its data and models, segment an "
        "image or a folder of them with a registered model, export it to ONNX, and run or "
        "schedule retraining.",
        "`segflow -v COMMAND` also shows the libraries' own log lines and warnings.",
    ]
)


def _no_type_label_on_flags(params: list[click.Parameter]) -> list[click.Parameter]:
    """Typer's help prints ``<bool>`` beside every flag (``--force``, ``--help``): a flag takes
    no value, so the label only misleads. An empty metavar leaves that column blank."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Commands(typer.core.TyperGroup):
    """The ``segflow`` group: every command's flags, and the group's own, without ``<bool>``."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _no_type_label_on_flags(super().get_params(ctx))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _no_type_label_on_flags(command.get_params(ctx))
        return command


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=HELP,
    # A user error is one line (see main); a rich traceback box is for bugs only.
    pretty_exceptions_enable=False,
    cls=_Commands,
)
console = Console()


def _print_version(value: bool) -> None:
    """``segflow --version``: the installed distribution's version, as pip reports it."""
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        console.print(f"segflow {version('segflow')}", highlight=False)
    except PackageNotFoundError:  # imported from a source tree that was never installed
        console.print("segflow (not installed: no version)", highlight=False)
    raise typer.Exit()


@app.callback()
def options(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show the libraries' log lines and warnings."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print segflow's version and exit.",
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
    from segflow.config import load_params
    from segflow.presets import write_preset

    if root is not None and not root.is_dir():
        raise SegflowError(f"--root {root}: no such directory (the dataset's root)")
    out = write_preset(preset, dir, force, dataset_root=root)
    where = f", dataset.root {root.resolve()}" if root is not None else ""
    console.print(f"init: wrote {out} (preset {preset}{where})", highlight=False, markup=False)
    classes_file = load_params(out).dataset.classes_file
    if root is not None and classes_file is not None and not Path(classes_file).is_file():
        # The one file a folder dataset needs besides images and masks: say where it goes.
        from segflow.data.datasets.folder import CLASS_TABLE_FORMAT

        console.print(
            f"init: no class table at {classes_file} (dataset.classes_file) yet; write it there: "
            f"{CLASS_TABLE_FORMAT}",
            highlight=False,
            soft_wrap=True,
            markup=False,  # the format's [r, g, b] is text, not a style tag
        )


@app.command()
def check_params(
    path: Path = typer.Argument(Path("params.yaml")),
    show: bool = typer.Option(
        False, "--show", help="Also print every resolved value (defaults filled in) as YAML."
    ),
) -> None:
    """Validate a params file: the schema, the model it names, the dataset root and its layout.

    Ends with one verdict line: what is set up, or how many problems were found (exit 1)."""
    import yaml

    from segflow.stages.check_params import check_params as check

    try:
        params = check(path)
    except SegflowError as exc:
        problems = str(exc).splitlines()
        print_error_lines(str(exc))
        many = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"check-params: {path}: {many}; nothing was run", markup=False
        )
        raise typer.Exit(1) from None
    if show:
        # Written as it is: no line folding by YAML (long paths) or by the console, no markup.
        values = params.model_dump(mode="json")
        typer.echo(yaml.safe_dump(values, sort_keys=False, width=2**31 - 1), nl=False)
    ds, train = params.dataset, params.train
    model = train.model + (f" ({train.backbone})" if train.backbone else "")
    console.print(
        f"check-params: {path}: OK: dataset {ds.name} at {ds.resolved_root()}, model {model}, "
        f"{train.epochs} epochs; `dvc repro` runs it",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )


@app.command()
def shards(
    shard_dir: str = typer.Argument(
        "data/shards", help="A shard directory or an object-store prefix (s3://bucket/prefix)."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Re-hash every shard against index.json (reads every byte, streams every object).",
    ),
) -> None:
    """Summarise the shards: samples per split, and every class's share of each split's pixels."""
    from segflow.data.shards import shard_index_path, verify_shards

    index = verify_shards(shard_dir, full_hash=verify)
    splits = index["splits"]
    table = Table(title=f"{shard_dir} ({index['dataset']}, hash {index['content_hash'][:12]})")
    table.add_column("split")
    table.add_column("samples", justify="right")
    table.add_column("files", justify="right")
    table.add_column("ignored pixels", justify="right")
    for split, info in splits.items():
        labelled = sum(info["class_pixels"])
        ignored = int(info.get("ignored_pixels", 0))
        table.add_row(
            split,
            str(info["num_samples"]),
            str(len(info["files"])),
            _percent(ignored, labelled + ignored),
        )
    console.print(table)
    # Every class, not the largest few: a class missing from a split (0.00%) is what to see.
    classes = Table(title="share of each split's labelled pixels, per class")
    classes.add_column("id", justify="right")
    classes.add_column("class")
    for split in splits:
        classes.add_column(split, justify="right")
    totals = {split: sum(info["class_pixels"]) for split, info in splits.items()}
    for i, c in enumerate(index["classes"]):
        shares = [_percent(info["class_pixels"][i], totals[s]) for s, info in splits.items()]
        classes.add_row(str(c.get("id", i)), c["name"], *shares)
    console.print(classes)
    if verify:
        console.print(f"shards: every file matches {shard_index_path(shard_dir)} (sha256)")


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage with two decimals (a rare class still shows)."""
    return f"{100 * part / whole:.2f}%" if whole else "-"


@app.command()
def predict(
    image: Path = typer.Argument(..., help="RGB image to segment (PNG, JPEG...)."),
    model: str = typer.Option(
        None,
        help="Model URI, e.g. models:/segflow-camvid@champion (default: the champion of "
        "--params' dataset, models:/<register.model_name_prefix>-<dataset.name>@champion).",
    ),
    out: Path = typer.Option(None, help="Coloured mask PNG (default: <image>_mask.png)."),
    labels: Path = typer.Option(None, help="Also write the raw class-id PNG here."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: as training)."),
    params: Path = typer.Option(
        Path("params.yaml"),
        help="Project params: the dataset whose champion is the default model, and the "
        "mlflow.* HTTP policy (if present).",
    ),
) -> None:
    """Segment one image with a registered model; write the mask in the class colours.

    The model's artifacts are checked against their registered sha256 and its network is built
    by this installation of segflow: no code from the artifact store runs."""
    import os

    import cv2

    from segflow.config import MlflowParams, load_params
    from segflow.data.datasets.base import ClassInfo, read_rgb
    from segflow.evaluate.report import colorize
    from segflow.lifecycle.registration import load_for_predict
    from segflow.tracking import quiet_store_setup
    from segflow.tracking import tracking_uri as default_uri

    require_file(image, "the image to segment")
    # Header first (dataset.max_pixels' default): a decompression bomb is refused in one line
    # before any decode and before a model is loaded.
    rgb = read_rgb(image)
    chosen = model is None
    model = model or champion_uri(params)
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    # The pipeline's HTTP policy (mlflow.* in params.yaml; its defaults outside a project): a
    # server that is down or hangs is an error within a minute, as in every stage.
    policy = load_params(params).mlflow if params.is_file() else MlflowParams()
    os.environ.update(policy.environ())
    import mlflow

    mlflow.set_tracking_uri(default_uri())
    quiet_store_setup()
    predictor, classes = load_for_predict(model)
    label_map = predictor.labels(rgb)
    out = out or image.with_name(f"{image.stem}_mask.png")
    mask = colorize(label_map, [ClassInfo.from_dict(c) for c in classes])
    _write_png(out, cv2.cvtColor(mask, cv2.COLOR_RGB2BGR), "the mask")
    if labels is not None:
        _write_png(labels, label_map, "the label map")
    timing = predictor.last_timing
    took = f" in {timing['ms']:.0f} ms (network {timing['ms_network']:.0f} ms)"
    which = f" (model {model})" if chosen else ""
    console.print(
        f"predict: {image} -> {out}" + (f", labels {labels}" if labels else "") + took + which
    )


def champion_uri(params_path: Path) -> str:
    """The model ``segflow predict`` uses without ``--model``: the project's champion.

    ``models:/<register.model_name_prefix>-<dataset.name>@champion``, the name the register
    stage gives the configured dataset's models and the alias only the promotion gate moves.
    """
    from segflow.config import load_params
    from segflow.lifecycle.registration import registered_name

    if not params_path.is_file():
        raise SegflowError(
            f"{params_path}: not found, so no default model; pass --model (e.g. "
            "models:/segflow-camvid@champion) or run in the project directory"
        )
    params = load_params(params_path)
    name = registered_name(params.dataset.name, params.register.model_name_prefix)
    return f"models:/{name}@champion"


@app.command("predict-many")
def predict_many(
    inputs: list[str] = typer.Argument(
        ..., help="Folders, globs ('cams/**/*.jpg', quoted), .txt lists of paths, or images."
    ),
    model: str = typer.Option(
        ..., help="Model URI (models:/segflow-camvid@champion) or a checkpoint (models/best.pt)."
    ),
    out: Path = typer.Option(..., help="Output folder: labels/, overlays/, manifest.jsonl."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write colour overlays."),
    actors: int = typer.Option(None, help="Actors holding the model (default: 1 per GPU, else 1)."),
    threads: int = typer.Option(None, help="Torch threads per actor (default: CPUs / actors)."),
    serving: Path = typer.Option(None, help="Serving spec of a checkpoint file."),
    max_pixels: int = typer.Option(None, help="Largest image, in pixels (dataset.max_pixels)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: as training)."),
) -> None:
    """Segment many images on Ray Data; resumable, one manifest row per image.

    Writes <out>/labels/<name>.png (class ids) and with --overlay <out>/overlays/<name>.png.
    A second run skips what is done. A corrupt, missing or too large image is a failed row of
    <out>/manifest.jsonl with its reason, and the run goes on; exit code 3 when any failed."""
    from segflow.deploy.batch import load_model_files
    from segflow.deploy.batch import predict_many as run
    from segflow.deploy.export import is_model_uri

    for name, value in (("--max-pixels", max_pixels), ("--actors", actors), ("--threads", threads)):
        if value is not None and value < 1:
            raise SegflowError(f"{name} {value}: at least 1")
    if is_model_uri(model):
        _use_tracking(tracking_uri)
    outcome = run(
        None, inputs, out, overlay=overlay, actors=actors, threads=threads,
        max_pixels=max_pixels, load_model=lambda: load_model_files(model, serving),
    )  # fmt: skip
    for row in outcome.failed[:10]:
        console.print(f"failed: {escape(str(row['reason']))}", highlight=False, soft_wrap=True)
    if len(outcome.failed) > 10:
        more = len(outcome.failed) - 10
        console.print(f"failed: ... {more} more in {outcome.manifest}", soft_wrap=True)
    ran = outcome.written + len(outcome.failed)
    rate = f" ({outcome.images_per_second:.2f} images/s)" if ran else ""
    console.print(
        f"predict-many: {outcome.total} images: {outcome.written} written, "
        f"{outcome.skipped} already done, {len(outcome.failed)} failed "
        f"in {outcome.seconds:.1f} s{rate}; manifest {outcome.manifest}",
        highlight=False,
        soft_wrap=True,
    )
    if outcome.failed:
        sys.exit(3)


@app.command()
def export(
    model: str = typer.Argument(
        ..., help="Model URI (models:/segflow-camvid@champion, runs:/...) or models/best.pt."
    ),
    format: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path = typer.Option(..., help="Folder for the model file and export.json."),
    argmax: bool = typer.Option(
        None,
        "--argmax/--no-argmax",
        help="Labels out, or probabilities (default: labels, unless the model applies a CRF).",
    ),
    serving: Path = typer.Option(
        None, help="Serving spec of a checkpoint file (default: reports/eval/serving.json)."
    ),
    fresh: bool = typer.Option(
        False, "--fresh", help="Export again even when the registry holds this version's ONNX."
    ),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: as training)."),
) -> None:
    """Export the served model (resize, normalisation, inference mode, argmax) to ONNX or
    TorchScript, with export.json beside it (input, classes, CRF, source digests).

    A registered version's ONNX export is downloaded and checked against its sha256 (the bytes
    registered); otherwise the model is exported here and checked against the PyTorch served
    path first."""
    from segflow.deploy.export import (
        FORMATS,
        SPEC_FILE,
        export_model,
        is_model_uri,
        load_source,
    )

    if format not in FORMATS:
        raise SegflowError(f"--format {format}: one of {', '.join(FORMATS)}")
    if is_model_uri(model):
        _use_tracking(tracking_uri)
    if format == "onnx" and is_model_uri(model) and argmax is None and not fresh:
        from segflow.deploy.registered import fetch_onnx

        target = fetch_onnx(model, out)
        if target is not None:
            console.print(
                f"export: {model} -> {target}, {out / SPEC_FILE} (the registered ONNX export, "
                "sha256 checked)",
                highlight=False,
                soft_wrap=True,
            )
            return
    source = load_source(model, serving)
    target = export_model(source, format, out, argmax)
    crf = "; the CRF runs after it, as export.json says" if source.spec.crf is not None else ""
    console.print(
        f"export: {model} -> {target}, {out / SPEC_FILE} ({format}; {source.spec.describe()}"
        f"{crf}; checked against the served path)",
        highlight=False,
        soft_wrap=True,
    )


def _use_tracking(tracking_uri: str | None) -> None:
    """The MLflow store a model URI resolves in; a server that is down fails in seconds."""
    import os

    import mlflow

    from segflow.tracking import tracking_uri as default_uri

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    mlflow.set_tracking_uri(default_uri())


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


@app.command(
    hidden=True,  # not a command: `segflow --help` lists what segflow does itself
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def train() -> None:
    """Training is the DVC stage `train`: this says how to run it (exit 2)."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "segflow train: training is a DVC stage: `dvc repro train` (runs what changed before it "
        "too; `dvc repro -f -s train` retrains with nothing else re-run)"
    )
    raise typer.Exit(2)


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
    holds the lock, or another dvc process holds the checkout (recorded as "locked").
    """
    from segflow.lifecycle.retrain import run_retrain

    sys.exit(run_retrain(params))


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user caused, or None for a bug (keeps its traceback).

    A path the user named that is missing, a directory or unreadable, a full disk or a
    read-only one surfaces from deep inside a library as an OSError; it is the user's error
    like a SegflowError, and is said as the stages say it (the path, the rule, what to do).
    """
    from segflow.stages.oserror import os_error_message

    if isinstance(exc, SegflowError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_message(exc)
    return None


def main() -> None:
    """Entry point: user errors print one message and exit 1, without a traceback."""
    try:
        app()  # click itself reports usage errors (exit 2)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print_error_lines(message)
        sys.exit(1)


def print_error_lines(message: str) -> None:
    """``error: <line>`` on stderr for each line of a user error, as the stages print them."""
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    for line in message.splitlines():
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True)
