"""The MLflow Model Registry: register a trained model, and the gate that promotes it.

A trained checkpoint becomes a pyfunc model that takes what a user has, an H x W x 3 uint8 RGB
image, and returns what they want, an H x W uint8 label map: it normalises the image with the
training loader's mean/std, runs the network, and applies the dense CRF with the tuned
parameters when the pipeline attached them. It is registered as ``segflow-<dataset>`` and
gets the alias ``challenger``.

``champion`` (what ``segflow predict models:/segflow-<dataset>@champion`` serves) only moves
through :func:`promote_if_better`: the first version becomes champion; a later one must be
*measurably* better. The champion is re-scored on the same test images as the new model
(:mod:`segflow.gate`), a paired bootstrap over those images gives an interval for the mIoU
difference (:mod:`segflow.evaluate.bootstrap`), and the new model is promoted only if the
interval's lower bound exceeds ``register.min_gain``. Versions are never deleted or
overwritten; every decision, with its figures, is recorded as tags on the version it judged,
so the registry itself is the audit trail.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import load_image_counts, paired_bootstrap
from segflow.io import read_json

CHAMPION, CHALLENGER = "champion", "challenger"
#: Name of the pyfunc model inside the training run.
MODEL_NAME = "segmentation_model"
#: Version tags: the score, the exact test split it was measured on, the data it trained on.
TEST_MIOU, TEST_SPLIT_HASH, DATA_HASH = "test_miou", "test_split_hash", "data_hash"


def registered_name(dataset: str, prefix: str = "segflow") -> str:
    return f"{prefix}-{dataset}"


def model_miou(metrics: dict, crf_params: dict | None) -> float:
    """The test mIoU of what the registered model returns: with the CRF when it applies one.

    The pyfunc model applies the CRF whenever CRF params are attached, so its score is the
    evaluate stage's ``miou_crf``; without them it is the plain ``miou``.
    """
    key = "miou_crf" if crf_params is not None and "miou_crf" in metrics else "miou"
    if key not in metrics:
        raise SegflowError(f"metrics: no {key!r} key (have {sorted(metrics)})")
    value = float(metrics[key])
    if not math.isfinite(value):
        raise SegflowError(f"metrics: {key} is {value}; a model without a test score")
    return value


def _python_model_class():
    # Defined lazily so importing segflow.registry does not import mlflow.
    import mlflow.pyfunc

    class SegmentationModel(mlflow.pyfunc.PythonModel):
        """H x W x 3 uint8 RGB in, H x W uint8 class ids out (CRF applied when attached)."""

        def __init__(
            self,
            mean: Sequence[float],
            std: Sequence[float],
            crf_params: dict | None,
            classes: list[dict],
        ) -> None:
            self.mean = [float(v) for v in mean]
            self.std = [float(v) for v in std]
            self.crf_params = crf_params
            self.classes = classes
            self.network = None

        def load_context(self, context) -> None:
            from segflow.train.loop import load_model

            self.network = load_model(context.artifacts["checkpoint"])

        def predict(self, context, model_input, params=None):
            return predict_labels(
                self.network, np.asarray(model_input), self.mean, self.std, self.crf_params
            )

    return SegmentationModel


def predict_labels(
    network, image: np.ndarray, mean: Sequence[float], std: Sequence[float], crf: dict | None
) -> np.ndarray:
    """One image through the network (and the CRF): H x W uint8 label map at the image's size."""
    from segflow.evaluate.inference import normalize, predict_single
    from segflow.postprocess.crf import CRFParams, dense_crf

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise SegflowError(
            f"model input of shape {image.shape} and dtype {image.dtype}: "
            "expected one H x W x 3 uint8 RGB image"
        )
    probs = predict_single(network, normalize(image, mean, std))[0].numpy()
    if crf is not None:
        probs = dense_crf(image, probs, CRFParams.from_dict(crf))
    if probs.shape[0] > 256:
        raise SegflowError(f"model has {probs.shape[0]} classes; a uint8 label map holds 256")
    return probs.argmax(axis=0).astype(np.uint8)


def _signature():
    # Unnamed tensors: a named one would hand predict() a {name: array} dict instead.
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]),
    )


def register_model(
    run_id: str,
    dataset: str,
    metrics: dict,
    crf_params: dict | None,
    classes: list[dict],
    model_path: str | Path,
    mean: Sequence[float],
    std: Sequence[float],
    test_split_hash: str,
    prefix: str = "segflow",
    data_hash: str = "unknown",
):
    """Log the pyfunc model to training run ``run_id``, register it, alias it ``challenger``.

    The version carries, as tags, what the gate and a reader need: the test mIoU and the test
    split's hash, the content hash of the data it was trained on, all metrics, the CRF params,
    the normalisation and the class table (JSON); the CRF params and class table are also
    artifacts of the model. Returns the new ``ModelVersion``.
    """
    import mlflow
    import torch

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise SegflowError(f"{model_path}: checkpoint not found; run the train stage")
    test_miou = model_miou(metrics, crf_params)
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise SegflowError(
            f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}: set "
            "MLFLOW_TRACKING_URI to the store the train stage logged to"
        ) from None
    name = registered_name(dataset, prefix)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {"checkpoint": str(model_path)}
        for key, value in (("classes", classes), ("crf_params", crf_params)):
            if value is not None:
                path = Path(tmp) / f"{key}.json"
                path.write_text(json.dumps(value, indent=2) + "\n")
                artifacts[key] = str(path)
        # Reopening the finished training run attaches the model to the run that made it.
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=_python_model_class()(mean, std, crf_params, classes),
                artifacts=artifacts,
                code_paths=[str(Path(__file__).resolve().parent)],
                signature=_signature(),
                # Given, not inferred: inference imports the model in a subprocess (slow).
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    "numpy",
                    "opencv-python-headless",
                    "pydantic",
                    "pydensecrf2",
                ],
            )
    tags = {
        "dataset": dataset,
        TEST_MIOU: repr(test_miou),
        TEST_SPLIT_HASH: test_split_hash,
        DATA_HASH: data_hash,
        "metrics": json.dumps(metrics, sort_keys=True),
        "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]),
        "crf_params": json.dumps(crf_params),
        "classes": json.dumps(classes),
    }
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    return client.get_model_version(name, version.version)


def champion_version(name: str):
    """The version behind alias ``champion``, or None when there is none yet."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower():
            return None
        raise


def latest_version(name: str):
    """The newest registered version of ``name`` (None when there is none): the last model the
    pipeline produced, promoted or not."""
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def promote_if_better(
    name: str,
    version: str | int,
    new_counts: np.ndarray,
    champion_counts: Callable[[object], np.ndarray],
    min_gain: float,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    test_split_hash: str = "unknown",
) -> dict:
    """Move ``champion`` to ``version`` only if it is measurably better than the champion.

    ``new_counts`` are the new model's per-image counts on the test split (N x 3 x C, see
    evaluate.bootstrap); ``champion_counts(champion_version)`` scores the current champion on
    the same images. Decisions: ``promoted`` (the first model, or the lower bound of the
    ``confidence`` interval of the paired-bootstrap mIoU difference is above ``min_gain``),
    ``kept`` (not measurably better, or already champion), ``refused`` (the champion cannot be
    scored on these images: another class table, a missing artifact). The decision and its
    figures are recorded as ``gate.*`` tags on ``version`` and returned.
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = str(version)
    current = champion_version(name)
    decision = {
        "name": name,
        "version": version,
        "test_split_hash": test_split_hash,
        "min_gain": float(min_gain),
        "champion_before": str(current.version) if current else None,
        "bootstrap": None,
    }
    if current is None:
        verdict, reason = "promoted", "no champion yet: the first model becomes champion"
    elif str(current.version) == version:
        verdict, reason = "kept", f"version {version} is already the champion"
    else:
        try:
            old_counts = champion_counts(current)
        except SegflowError as exc:
            old_counts, verdict = None, "refused"
            reason = f"champion v{current.version} cannot be scored on this test split: {exc}"
        if old_counts is not None:
            boot = paired_bootstrap(new_counts, old_counts, samples, confidence, seed)
            decision["bootstrap"] = boot.to_dict()
            interval = f"{round(100 * confidence)}% interval [{boot.low:+.4f}, {boot.high:+.4f}]"
            scores = (
                f"mIoU {boot.new_miou:.4f} vs champion v{current.version}'s {boot.old_miou:.4f} "
                f"on the same {boot.num_images} images ({boot.diff:+.4f}, {interval})"
            )
            if math.isfinite(boot.low) and boot.low > min_gain:
                verdict = "promoted"
                reason = f"{scores}: lower bound above min_gain {min_gain}"
            else:
                verdict = "kept"
                reason = f"{scores}: lower bound not above min_gain {min_gain}"
    if verdict == "promoted":
        client.set_registered_model_alias(name, CHAMPION, version)
    decision["decision"] = verdict
    decision["reason"] = reason
    decision["champion_after"] = version if verdict == "promoted" else decision["champion_before"]
    tags = {
        "gate.decision": verdict,
        "gate.reason": reason,
        "gate.champion_before": str(decision["champion_before"]),
        "gate.min_gain": repr(float(min_gain)),
        "gate.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in (decision["bootstrap"] or {}).items():
        tags[f"gate.{key}"] = repr(value)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return decision


def aliases(name: str, version: str | int) -> list[str]:
    import mlflow

    return sorted(mlflow.MlflowClient().get_model_version(name, str(version)).aliases)


def split_hash(index: dict, split: str) -> str:
    """Content hash of one split's shard files (the gate's notion of "the same test set")."""
    from segflow.data.shards import content_hash

    splits = index.get("splits", {})
    if split not in splits:
        raise SegflowError(f"shard index: no split {split!r} (have {sorted(splits)})")
    return content_hash(f["sha256"] for f in splits[split]["files"])


def load_for_predict(model_uri: str):
    """(pyfunc model, class table) of a registered model; errors a user can cause are
    SegflowErrors naming the URI."""
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    try:
        # No dependency-mismatch warnings: the CLI prints results, and only errors on stderr.
        model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegflowError(f"{model_uri}: cannot load the model ({first})") from None
    try:
        classes = getattr(model.unwrap_python_model(), "classes", None)
    except MlflowException:  # another flavour (a plain PyTorch model, say)
        classes = None
    if classes is None:
        raise SegflowError(f"{model_uri}: not a segflow segmentation model (no class table)")
    return model, classes


def _served_crf(crf_file: Path, metrics: dict) -> dict | None:
    """The CRF params the registered model applies, or None.

    crf_tune writes ``{"params": ..., "metrics": ...}``; the CRF is served only when the
    evaluate stage found it no worse on the test split than the raw prediction (a CRF tuned
    on val can still lose on test, and then serving it would make the model worse).
    """
    from segflow.postprocess.crf import CRFParams

    if not crf_file.is_file():
        return None
    raw = read_json(crf_file, "rerun the crf_tune stage")
    crf = CRFParams.from_dict(raw.get("params", raw)).to_dict()
    with_crf, without = metrics.get("miou_crf"), metrics.get("miou")
    if with_crf is None or (without is not None and with_crf < without):
        return None
    return crf


def log_evaluation(
    run_id: str, metrics: dict, metrics_file: Path, report_dir: Path | None = None
) -> None:
    """Attach the evaluate stage's numbers and report to the training run."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
            client.log_metric(run_id, f"test_{key}", float(value))
    client.log_artifact(run_id, str(metrics_file), "evaluation")
    if report_dir is not None and Path(report_dir).is_dir():
        client.log_artifacts(run_id, str(report_dir), "evaluation/report")


def register_and_gate(params: Params) -> dict:
    """The register stage: register the trained model, run the gate; the registry.json record.

    The test metrics (as ``test_<name>``) and the evaluation report (under the artifact path
    ``evaluation/``) are logged to the training run first, so the run in the MLflow UI shows
    how its model scored next to how it trained. The new model is judged by what it serves:
    with the tuned CRF when the evaluate stage found the CRF no worse on test, else without.

    Reads and writes the stage paths of :mod:`segflow.paths`, relative to the working
    directory. The current tracking URI (``$MLFLOW_TRACKING_URI`` or the default store) must be
    the one training logged to.
    """
    import mlflow

    from segflow import paths
    from segflow.gate import score_version
    from segflow.run_info import read_run_info
    from segflow.tracking import tracking_uri

    run = read_run_info(paths.RUN_INFO, paths.BEST_MODEL)  # best.pt must be the run's model
    metrics = read_json(paths.METRICS, "run the evaluate stage (dvc repro evaluate)")
    crf = _served_crf(paths.CRF_PARAMS, metrics)
    index = read_json(paths.SHARD_INDEX, "run the shard stage (dvc repro shard)")
    ids, counts = load_image_counts(paths.IMAGE_COUNTS, "run the evaluate stage")
    if "mlflow_run_id" not in run:
        raise SegflowError(f"{paths.RUN_INFO}: no mlflow_run_id; rerun the train stage")
    mlflow.set_tracking_uri(tracking_uri())
    dataset = str(index.get("dataset", "unknown"))
    test_hash = split_hash(index, params.dataset.test_split)
    log_evaluation(run["mlflow_run_id"], metrics, paths.METRICS, paths.EVAL_REPORT)
    version = register_model(
        run["mlflow_run_id"], dataset, metrics, crf, index.get("classes", []), paths.BEST_MODEL,
        params.loader.mean, params.loader.std, test_hash, params.register.model_name_prefix,
        data_hash=str(index.get("content_hash", "unknown")),
    )  # fmt: skip

    def champion_counts(champion) -> np.ndarray:
        champion_ids, champion_counts = score_version(champion, params, paths.SHARDS)
        if champion_ids != ids:
            raise SegflowError(
                f"{paths.IMAGE_COUNTS} lists other test images than the shards; rerun evaluate"
            )
        return champion_counts

    g = params.register
    decision = promote_if_better(
        version.name, version.version, counts["crf" if crf is not None else "raw"],
        champion_counts, g.min_gain, g.confidence, g.bootstrap_samples, params.seed, test_hash,
    )  # fmt: skip
    decision["test_miou"] = model_miou(metrics, crf)
    return {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "aliases": aliases(version.name, version.version),
        "mlflow_run_id": run["mlflow_run_id"],
        "data_hash": str(index.get("content_hash", "unknown")),
        "crf_applied": crf is not None,
        "decision": decision,
    }
