"""The MLflow Model Registry: register the served model, query aliases, load it back.

A trained checkpoint becomes a pyfunc model that takes what a user has, an H x W x 3 uint8 RGB
image, and returns what they want, an H x W uint8 label map, by exactly the path evaluate
scored (:mod:`segflow.evaluate.serving`). It is logged "from code" (:mod:`.pyfunc_model`) with
three artifacts: the checkpoint (plain tensors, read with ``weights_only=True``), the serving
spec and the class table (JSON), so loading a registered model unpickles nothing. It is
registered as ``segflow-<dataset>`` and gets the alias ``challenger``; ``champion`` moves only
through :mod:`.gate`. Versions are never deleted or overwritten; decisions are recorded as tags
on the version they judged, so the registry itself is the audit trail.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError

CHAMPION, CHALLENGER = "champion", "challenger"
#: Name of the pyfunc model inside the training run.
MODEL_NAME = "segmentation_model"
#: Version tags: the score, the exact test split it was measured on, the data it trained on.
TEST_MIOU, TEST_SPLIT_HASH, DATA_HASH = "test_miou", "test_split_hash", "data_hash"
#: Artifacts of the registered model.
CHECKPOINT, SERVING, CLASSES = "checkpoint", "serving", "classes"


def registered_name(dataset: str, prefix: str) -> str:
    """``<register.model_name_prefix>-<dataset>``: the registry name of a dataset's models."""
    return f"{prefix}-{dataset}"


def check_store(uri: str) -> None:
    """Fail with one line naming the store when it cannot be read (a corrupt database file, a
    server that is down): before the register stage writes anything anywhere."""
    import logging

    import mlflow

    # A new sqlite store announces its table creation and migrations on stderr; the stage's
    # own lines (and a one-line error) are what the user should see.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # SQLAlchemy, HTTP, OS errors: all mean "not a usable store"
        cause = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegflowError(f"MLflow store {uri}: cannot be read ({cause[:300]})") from None


def check_run(run_id: str) -> None:
    """The training run must be in the current store (an empty or another store: one line)."""
    import mlflow

    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise SegflowError(
            f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}: set "
            "MLFLOW_TRACKING_URI to the store the train stage logged to"
        ) from None


def _signature():
    """Output only. An input schema would make MLflow check the input before the model does,
    and MLflow's message for a wrong array starts with the whole array printed; the model's
    own check (:func:`segflow.evaluate.serving.check_image`) says in one line what it expects."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1))]))


def log_served_model(
    model_path: str | Path, serving: dict, classes: list[dict], name: str = MODEL_NAME
) -> str:
    """Log checkpoint + serving spec + class table as a pyfunc model in the active run.

    Nothing in it is a pickle: the model class is code (:mod:`.pyfunc_model`, logged "from
    code"), the checkpoint is plain tensors read with ``weights_only=True``, the rest is JSON.
    Returns the model URI.
    """
    import mlflow
    import torch

    model_path = Path(model_path)
    if not model_path.is_file():
        raise SegflowError(f"{model_path}: checkpoint not found; run the train stage")
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = {CHECKPOINT: str(model_path)}
        for key, value in ((SERVING, serving), (CLASSES, classes)):
            path = Path(tmp) / f"{key}.json"
            path.write_text(json.dumps(value, indent=2) + "\n")
            artifacts[key] = str(path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(package / "lifecycle" / "pyfunc_model.py"),
            artifacts=artifacts,
            code_paths=[str(package)],
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
    return info.model_uri


def register_model(
    run_id: str,
    dataset: str,
    metrics: dict,
    test_miou: float,
    serving: dict,
    classes: list[dict],
    model_path: str | Path,
    test_split_hash: str,
    *,
    prefix: str,
    data_hash: str = "unknown",
):
    """Log the served model to training run ``run_id``, register it, alias it ``challenger``.

    ``serving`` is the spec evaluate scored with (reports/eval/serving.json); ``test_miou`` the
    score of that path. The version carries, as tags, what the gate and a reader need: the test
    mIoU and the test split's hash, the content hash of the data it was trained on, all
    metrics, the serving spec and the class table (JSON). Returns the new ``ModelVersion``.
    """
    import mlflow

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    if not Path(model_path).is_file():
        raise SegflowError(f"{model_path}: checkpoint not found; run the train stage")
    check_run(run_id)
    client = mlflow.MlflowClient()
    name = registered_name(dataset, prefix)
    # Reopening the finished training run attaches the model to the run that made it.
    with mlflow.start_run(run_id=run_id):
        model_uri = log_served_model(model_path, serving, classes)
    tags = {
        "dataset": dataset,
        TEST_MIOU: repr(float(test_miou)),
        TEST_SPLIT_HASH: test_split_hash,
        DATA_HASH: data_hash,
        "metrics": json.dumps(metrics, sort_keys=True),
        "serving": json.dumps(serving, sort_keys=True),
        "classes": json.dumps(classes),
    }
    version = mlflow.register_model(model_uri, name, tags=tags)
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


def aliases(name: str, version: str | int) -> list[str]:
    import mlflow

    return sorted(mlflow.MlflowClient().get_model_version(name, str(version)).aliases)


def download_version(version, dst: str | Path) -> dict[str, Path]:
    """Download a registered version's model directory; its artifact paths by name."""
    import mlflow
    from mlflow.models import Model

    uri = f"models:/{version.name}/{version.version}"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
    artifacts = Model.load(str(local)).flavors["python_function"].get("artifacts", {})
    if CHECKPOINT not in artifacts:
        raise SegflowError(f"{uri}: no checkpoint artifact; not a segflow model")
    return {key: local / value["path"] for key, value in artifacts.items()}


def serving_of(version, files: dict[str, Path]) -> dict:
    """The serving spec of a registered version: its artifact, or for a version registered
    before specs existed, what its model did (single scale at the image's size, its mean/std
    and CRF tags)."""
    if SERVING in files:
        return json.loads(files[SERVING].read_text())
    tags = version.tags
    if "mean" not in tags or "std" not in tags:
        raise SegflowError(f"{version.name} v{version.version}: no serving spec and no mean/std")
    return {"mode": "single", "options": {}, "mean": json.loads(tags["mean"]),
            "std": json.loads(tags["std"]), "input_size": None,
            "crf": json.loads(tags.get("crf_params", "null")), "prob_dtype": "uint8"}  # fmt: skip


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
