"""``segflow predict-many``: the served path over many images, on Ray Data, resumable.

An archive or a camera fleet's day of images is too much for one process and too valuable to
lose to one bad file. So:

* the images are rows of a Ray Data dataset and go through ``map_batches`` to a fixed pool of
  actors (``ActorPoolStrategy(size=actors)``), each holding the model once: loading it per image
  would cost more than segmenting it. ``RAY_ADDRESS`` runs the pool on a cluster
  (:func:`segflow.raycluster.connect_ray`); with GPUs in the cluster each actor takes one.
* each actor runs exactly the served path (:class:`segflow.evaluate.serving.Predictor`, built by
  the installed segflow from digest-checked weights): the scored inference mode, sliding windows
  over a large image when the spec says so, the CRF when it is on;
* every image is read header first (``dataset.max_pixels``: a decompression bomb is refused
  before it is decoded), and any failure of one image (corrupt, missing, too large, out of
  memory) is that image's row in the manifest, with its reason; the run goes on;
* outputs are written atomically (temp file, rename), so an output that exists is complete, and
  the manifest (:mod:`segflow.deploy.manifest`) says what is done: a second run skips it.

Outputs: ``<out>/labels/<key>.png`` (class ids, uint8), with ``overlay``
``<out>/overlays/<key>.png`` (the class colours blended over the image), ``<out>/manifest.jsonl``.
The actors write them, so on a cluster ``<out>`` must be a path every node mounts (as the
checkout is); the driver only records rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segflow.deploy.inputs import Item, list_inputs
from segflow.deploy.manifest import FAILED, MANIFEST, OK, ManifestWriter, is_done, read_manifest
from segflow.errors import SegflowError

LABELS_DIR, OVERLAYS_DIR = "labels", "overlays"
#: The image's weight in an overlay (the rest is the class colour).
OVERLAY_ALPHA = 0.5


@dataclass
class Outcome:
    """What a run did: counts, wall time, and the failed rows (for their one-line reasons)."""

    total: int
    written: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    manifest: Path = Path(MANIFEST)

    @property
    def images_per_second(self) -> float:
        done = self.written + len(self.failed)
        return done / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ModelFiles:
    """What an actor needs to build the served model: checked weights, spec, class table."""

    checkpoint: bytes
    serving: dict
    classes: list[dict]


def load_model_files(model: str, serving: Path | None = None) -> ModelFiles:
    """The weights, serving spec and class table of a model URI (digest-checked by
    :func:`segflow.lifecycle.registration.fetch_checked`) or of a local checkpoint with the
    serving spec evaluate wrote (``serving``, default reports/eval/serving.json)."""
    import json

    from segflow.deploy.export import is_model_uri
    from segflow.evaluate.serving import ServingSpec
    from segflow.lifecycle.registration import fetch_checked
    from segflow.models.checkpoint import model_from_payload, read_checkpoint

    if is_model_uri(model):
        if serving is not None:
            raise SegflowError(
                f"--serving {serving}: only for a local checkpoint; {model} carries its own"
            )
        with tempfile.TemporaryDirectory(prefix="segflow-model-") as tmp:
            checked = fetch_checked(model, tmp)
            checkpoint, data = checked.checkpoint, checked.checkpoint.read_bytes()
            spec, classes, label = checked.serving, checked.classes, checked.source
            # Built once here, so a model that does not build is one line, not N actor errors.
            model_from_payload(read_checkpoint(checkpoint), label)
    else:
        checkpoint, serving = Path(model), serving or Path("reports/eval/serving.json")
        for path, what in ((checkpoint, "checkpoint"), (serving, "serving spec")):
            if not path.is_file():
                raise SegflowError(f"{path}: no such {what} (--model: a model URI or a file)")
        try:
            spec = json.loads(serving.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise SegflowError(f"{serving}: not JSON ({exc})") from None
        payload = read_checkpoint(checkpoint)
        model_from_payload(payload, checkpoint)
        data, classes, label = checkpoint.read_bytes(), list(payload.get("classes") or []), serving
    ServingSpec.from_dict(spec, f"{label} serving spec")
    return ModelFiles(data, spec, classes)


def todo(items: list[Item], out_dir: Path, overlay: bool) -> tuple[list[Item], dict[str, dict]]:
    """(the items not done yet, the manifest's rows so far)."""
    previous = read_manifest(out_dir / MANIFEST)
    pending = [i for i in items if not is_done(previous.get(str(i.path)), out_dir, overlay)]
    return pending, previous


def predict_many(
    model: ModelFiles | None,
    sources: list[str],
    out_dir: Path,
    *,
    overlay: bool = False,
    actors: int | None = None,
    threads: int | None = None,
    max_pixels: int | None = None,
    load_model: Callable[[], ModelFiles] | None = None,
    progress: bool = True,
) -> Outcome:
    """Segment every image of ``sources`` not done yet into ``out_dir``.

    ``model`` (or ``load_model()``, called only when something is left to do, so a finished run
    does not even look the model up) gives the served model. ``actors``: the pool's size
    (default: one per GPU in the cluster, else 1); ``threads``: torch threads per actor on a CPU
    (default: the CPUs Ray sees, shared by the actors).
    """
    from segflow.data.images import DEFAULT_MAX_PIXELS

    # Outputs are PNGs too: an --out inside an input folder must not become input next time.
    outputs = out_dir.resolve()
    items = [i for i in list_inputs(sources) if not i.path.is_relative_to(outputs)]
    pending, previous = todo(items, out_dir, overlay)
    outcome = Outcome(total=len(items), skipped=len(items) - len(pending))
    outcome.manifest = out_dir / MANIFEST
    writer = ManifestWriter(out_dir / MANIFEST, previous)
    start = time.perf_counter()
    try:
        if pending:
            if model is None and load_model is None:
                raise SegflowError("predict_many: no model given")
            files = model if model is not None else load_model()
            rows = _run(
                files, pending, out_dir, overlay, actors, threads,
                max_pixels or DEFAULT_MAX_PIXELS, progress,
            )  # fmt: skip
            for row in rows:
                writer.append(row)
                if row["status"] == OK:
                    outcome.written += 1
                else:
                    outcome.failed.append(row)
    finally:
        writer.close()
        outcome.seconds = time.perf_counter() - start
    return outcome


def _run(
    files: ModelFiles,
    items: list[Item],
    out_dir: Path,
    overlay: bool,
    actors: int | None,
    threads: int | None,
    max_pixels: int,
    progress: bool,
):
    """Yield one manifest row per item, as the actors finish them."""
    import ray

    from segflow.raycluster import connect_ray

    connect_ray()
    _quiet_ray_data()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # No more actors than images: an idle actor still loads the model.
    actors = min(actors or max(1, gpus), len(items))
    threads = threads or max(1, cpus // actors)
    # The checked weights go where the outputs go (a folder every node sees anyway), named by
    # their sha256, which each actor checks again before it loads them; removed at the end.
    digest = hashlib.sha256(files.checkpoint).hexdigest()
    weights = out_dir / f".model-{digest[:16]}.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(files.checkpoint)
    dataset = ray.data.from_items(
        [{"input": str(i.path), "key": i.key} for i in items],
        override_num_blocks=min(len(items), 200),
    )
    with warnings.catch_warnings():
        # max_restarts goes through **ray_remote_args, which Ray deprecates for 2.64 (segflow
        # pins 2.60) with no named parameter for it yet.
        warnings.simplefilter("ignore", DeprecationWarning)
        results = dataset.map_batches(
            Segmenter,
            fn_constructor_kwargs={
                "checkpoint": str(weights),
                "sha256": digest,
                "serving": files.serving,
                "classes": files.classes,
                "out_dir": str(out_dir.resolve()),
                "overlay": overlay,
                "max_pixels": max_pixels,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=1,  # images differ in size; one per call balances the pool best
            batch_format="pandas",
            num_cpus=0 if gpus else threads,
            num_gpus=1 if gpus else 0,
            # An actor that dies (the OOM killer, a lost node) stops the run with Ray's error:
            # the manifest keeps what was done and the next run resumes. Restarted, it would
            # retry the image that killed it without end (and Ray 2.60 prints an error line
            # for every restartable actor whose arguments sit in its object store, ray#53727).
            max_restarts=0,
        )
    try:
        with ProgressBar(len(items), progress) as advance:
            for row in results.iter_rows():
                record = _record(row)
                advance(record)
                yield record
    finally:
        weights.unlink(missing_ok=True)


def _record(row: dict) -> dict:
    """A result row as the manifest stores it (no empty strings, plain Python numbers)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value != value:  # NaN from pandas for a missing value
            value = None
        out[key] = None if value == "" else value
    return out


class Segmenter:
    """A Ray Data actor: the served model, loaded once; each call segments a batch of paths."""

    def __init__(
        self,
        checkpoint: str,
        sha256: str,
        serving: dict,
        classes: list[dict],
        out_dir: str,
        overlay: bool,
        max_pixels: int,
        threads: int,
    ):
        import torch

        from segflow.data.datasets.base import ClassInfo
        from segflow.evaluate.serving import ServingSpec, load_predictor

        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory(prefix="segflow-actor-") as tmp:
            path = Path(tmp) / "model.pt"
            data = Path(checkpoint).read_bytes()
            if hashlib.sha256(data).hexdigest() != sha256:
                raise SegflowError(f"{checkpoint}: changed since it was checked; run again")
            path.write_bytes(data)
            self.predictor = load_predictor(path, ServingSpec.from_dict(serving))
        self.classes = [ClassInfo.from_dict(c) for c in classes]
        self.out_dir = Path(out_dir)
        self.overlay = overlay
        self.max_pixels = max_pixels

    def __call__(self, batch):
        import pandas as pd

        rows = [self.one(Path(p), k) for p, k in zip(batch["input"], batch["key"], strict=True)]
        return pd.DataFrame(rows)

    def one(self, path: Path, key: str) -> dict:
        """Segment one image; every failure is the row's reason, never an exception."""
        from segflow.data.datasets.base import read_rgb
        from segflow.deploy.export import first_line

        row = {"input": str(path), "labels": "", "overlay": "", "status": FAILED, "reason": ""}
        row.update({"ms": 0.0, "height": 0, "width": 0, "bytes": 0, "mtime_ns": 0})
        start = time.perf_counter()
        try:
            stat = os.stat(path)
            row["bytes"], row["mtime_ns"] = stat.st_size, stat.st_mtime_ns
            image = read_rgb(path, self.max_pixels)
            labels = self.predictor.labels(image)
            row["height"], row["width"] = labels.shape
            row["labels"] = f"{LABELS_DIR}/{key}.png"
            _write_png(self.out_dir / row["labels"], labels)
            if self.overlay:
                row["overlay"] = f"{OVERLAYS_DIR}/{key}.png"
                _write_png(self.out_dir / row["overlay"], self._overlay(image, labels))
            row["status"] = OK
        except SegflowError as exc:
            row["reason"] = str(exc)
        except OSError as exc:
            row["reason"] = f"{exc.filename or path}: {(exc.strerror or str(exc)).lower()}"
        except Exception as exc:  # noqa: BLE001 - one image's failure must not stop the run
            row["reason"] = f"{path}: {first_line(exc)}"
        row["ms"] = round(1000 * (time.perf_counter() - start), 2)
        return row

    def _overlay(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        import cv2

        from segflow.evaluate.report import colorize

        colours = colorize(labels, self.classes)
        mixed = cv2.addWeighted(image, OVERLAY_ALPHA, colours, 1 - OVERLAY_ALPHA, 0)
        return cv2.cvtColor(mixed, cv2.COLOR_RGB2BGR)


def _write_png(path: Path, array: np.ndarray) -> None:
    """Encode, then write atomically: an output file that exists is a whole PNG."""
    import cv2

    from segflow.io import atomic_path

    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise SegflowError(f"{path}: OpenCV could not encode the PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def _quiet_ray_data() -> None:
    """Ray Data's own progress bars and per-run statistics, unless verbose: segflow draws one
    bar (images, images/s) and prints one summary."""
    import logging

    import ray

    from segflow.logs import is_verbose

    if is_verbose():
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Its warning that the bars just turned off are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)


class ProgressBar:
    """A rich progress bar on stderr: images done of all, images/s, elapsed and left."""

    def __init__(self, total: int, show: bool):
        self.total, self.show = total, show

    def __enter__(self):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from segflow.logs import console

        self.progress = Progress(
            TextColumn("predict-many"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} images/s"),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not self.show,
        )
        self.progress.start()
        self.task = self.progress.add_task("images", total=self.total, rate="-", failed=0)
        self.start = time.perf_counter()
        self.done = self.failed = 0
        return self.advance

    def advance(self, row: dict) -> None:
        self.done += 1
        self.failed += row["status"] != OK
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.task, advance=1, rate=f"{rate:.2f}", failed=self.failed)

    def __exit__(self, *exc) -> None:
        self.progress.stop()
