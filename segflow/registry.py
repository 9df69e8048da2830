"""The MLflow Model Registry: register a trained model, and the gate that promotes it.

A trained checkpoint becomes a pyfunc model that takes what a user has, an H x W x 3 uint8 RGB
image, and returns what they want, an H x W uint8 label map: it normalises the image with the
training loader's mean/std, runs the network, and applies the dense CRF with the tuned
parameters when the pipeline attached them. It is registered as ``segflow-<dataset>`` and
gets the alias ``challenger``.

``champion`` (what ``segflow predict models:/segflow-<dataset>@champion`` serves) only moves
through :func:`promote_if_better`: the first version becomes champion; later ones must beat the
champion's test mIoU by ``min_gain`` *on the same test split* (same content hash), because a
score on different test images says nothing about which model is better. Versions are never
deleted or overwritten; every decision is recorded as tags on the version it judged, so the
registry itself is the audit trail.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError
from segflow.io import read_json

CHAMPION, CHALLENGER = "champion", "challenger"
#: Name of the pyfunc model inside the training run.
MODEL_NAME = "segmentation_model"
#: Version tags the gate reads: the score and the exact test split it was measured on.
TEST_MIOU, TEST_SPLIT_HASH = "test_miou", "test_split_hash"


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
):
    """Log the pyfunc model to training run ``run_id``, register it, alias it ``challenger``.

    The version carries, as tags, what the gate and a reader need: the test mIoU and the test
    split's hash, all metrics, the CRF params and the class table (JSON); the CRF params and
    class table are also artifacts of the model. Returns the new ``ModelVersion``.
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
        "metrics": json.dumps(metrics, sort_keys=True),
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


def promote_if_better(
    name: str, version: str | int, test_miou: float, min_gain: float, test_split_hash: str
) -> dict:
    """Move ``champion`` to ``version`` only if it measurably beats the champion.

    Decisions: ``promoted`` (first model, or mIoU gain > 0 and >= ``min_gain`` on the same test
    split), ``kept`` (not better enough, or already champion), ``refused`` (the champion was
    scored on a different test split, or the champion has no score). The decision is recorded
    as ``gate.*`` tags on ``version`` and returned.
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = str(version)
    current = champion_version(name)
    decision = {
        "name": name,
        "version": version,
        "test_miou": float(test_miou),
        "test_split_hash": test_split_hash,
        "min_gain": float(min_gain),
        "champion_before": str(current.version) if current else None,
        "champion_miou": None,
        "gain": None,
    }
    if current is None:
        verdict, reason = "promoted", "no champion yet: the first model becomes champion"
    elif str(current.version) == version:
        verdict, reason = "kept", f"version {version} is already the champion"
    else:
        champ_hash = current.tags.get(TEST_SPLIT_HASH)
        champ_miou = float(current.tags.get(TEST_MIOU, "nan"))
        decision["champion_miou"] = champ_miou
        if champ_hash != test_split_hash:
            verdict = "refused"
            reason = (
                f"champion v{current.version} was scored on test split {champ_hash!s:.12} and "
                f"this model on {test_split_hash:.12}: mIoU on different test images does not "
                "compare; re-evaluate both on one split"
            )
        elif not math.isfinite(champ_miou):
            verdict, reason = "refused", f"champion v{current.version} has no test mIoU tag"
        else:
            gain = float(test_miou) - champ_miou
            decision["gain"] = gain
            if gain > 0 and gain >= min_gain:
                verdict = "promoted"
                reason = f"mIoU {test_miou:.4f} beats champion's {champ_miou:.4f} by {gain:+.4f}"
            else:
                verdict = "kept"
                reason = (
                    f"mIoU {test_miou:.4f} vs champion's {champ_miou:.4f} ({gain:+.4f}); "
                    f"needs a gain > 0 and >= min_gain {min_gain}"
                )
    if verdict == "promoted":
        client.set_registered_model_alias(name, CHAMPION, version)
    decision["decision"] = verdict
    decision["reason"] = reason
    decision["champion_after"] = version if verdict == "promoted" else decision["champion_before"]
    for key, value in {
        "gate.decision": verdict,
        "gate.reason": reason,
        "gate.champion_before": str(decision["champion_before"]),
        "gate.min_gain": repr(float(min_gain)),
        "gate.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }.items():
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


def register_and_gate(
    run_info: Path,
    metrics_file: Path,
    crf_file: Path,
    index_file: Path,
    model_path: Path,
    mean: Sequence[float],
    std: Sequence[float],
    test_split: str,
    min_gain: float,
    prefix: str = "segflow",
    report_dir: Path | None = None,
) -> dict:
    """The register stage: register the trained model, run the gate; the registry.json record.

    The test metrics (as ``test_<name>``) and the evaluation report (``report_dir``, under the
    artifact path ``evaluation/``) are logged to the training run first, so the run in the
    MLflow UI shows how its model scored next to how it trained.

    ``crf_file`` is optional (no file: the model applies no CRF). The current tracking URI
    (``$MLFLOW_TRACKING_URI`` or the default store) must be the one training logged to.
    """
    import mlflow

    from segflow.tracking import tracking_uri

    run = read_json(run_info, "run the train stage (dvc repro train)")
    metrics = read_json(metrics_file, "run the evaluate stage (dvc repro evaluate)")
    crf = _served_crf(crf_file, metrics)
    index = read_json(index_file, "run the shard stage (dvc repro shard)")
    if "mlflow_run_id" not in run:
        raise SegflowError(f"{run_info}: no mlflow_run_id; rerun the train stage")
    mlflow.set_tracking_uri(tracking_uri())
    dataset = str(index.get("dataset", "unknown"))
    test_hash = split_hash(index, test_split)
    log_evaluation(run["mlflow_run_id"], metrics, metrics_file, report_dir)
    version = register_model(
        run["mlflow_run_id"], dataset, metrics, crf, index.get("classes", []), model_path,
        mean, std, test_hash, prefix,
    )  # fmt: skip
    decision = promote_if_better(
        version.name, version.version, model_miou(metrics, crf), min_gain, test_hash
    )
    return {
        "name": version.name,
        "version": str(version.version),
        "model_uri": f"models:/{version.name}/{version.version}",
        "aliases": aliases(version.name, version.version),
        "mlflow_run_id": run["mlflow_run_id"],
        "crf_applied": crf is not None,
        "decision": decision,
    }
