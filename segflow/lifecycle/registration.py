"""The MLflow Model Registry: register the served model, query aliases, load it back checked.

A trained checkpoint becomes a pyfunc model that takes what a user has, an H x W x 3 uint8 RGB
image, and returns what they want, an H x W uint8 label map, by exactly the path evaluate
scored (:mod:`segflow.evaluate.serving`). It is logged "from code" (:mod:`.pyfunc_model`) with
three artifacts: the checkpoint (plain tensors, read with ``weights_only=True``), the serving
spec and the class table (JSON). It is registered as ``segflow-<dataset>`` and gets the alias
``challenger``; ``champion`` moves only through :mod:`.gate`. Versions are never deleted or
overwritten; decisions are recorded as tags on the version they judged, so the registry itself
is the audit trail.

The artifact store is untrusted input: whoever can write to its bucket can change a file of a
registered model. So segflow's own commands (``segflow predict``, the gate) never load the
pyfunc model, which would import ``pyfunc_model.py`` and the bundled ``code/segflow`` from the
store: :func:`fetch_checked` downloads only the three artifacts, checks each against the sha256
recorded when it was logged (:data:`DIGEST_TAG`), and the network is built by the *installed*
segflow from the checked weights. The pyfunc model stays for MLflow's own serving (``mlflow
models serve``, ``mlflow.pyfunc.load_model``), which runs the stored code: README, "Security
model".
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segflow.errors import SegflowError
from segflow.lifecycle.run_card import run_test_metrics, version_description
from segflow.logs import console, is_verbose

CHAMPION, CHALLENGER = "champion", "challenger"
#: Name of the pyfunc model inside the training run: its one logged model, the served path
#: (logged by the register stage, once crf_tune has decided on the CRF).
MODEL_NAME = "segmentation_model"
#: The input example logged with the model: a small black RGB image, as the model takes it.
EXAMPLE_SHAPE = (8, 8, 3)
#: Version tags: the score, the exact test split it was measured on, the data it trained on.
TEST_MIOU, TEST_SPLIT_HASH, DATA_HASH = "test_miou", "test_split_hash", "data_hash"
#: Artifacts of the registered model.
CHECKPOINT, SERVING, CLASSES = "checkpoint", "serving", "classes"
ARTIFACTS = (CHECKPOINT, SERVING, CLASSES)
#: Tag holding an artifact's sha256 (``segflow.sha256.checkpoint``, ...), on the logged model
#: and on each registered version of it.
DIGEST_TAG = "segflow.sha256.{}"
#: The model URIs :func:`fetch_checked` resolves.
URI_FORMS = (
    "models:/<name>@<alias>, models:/<name>/<version>, models:/m-<id>, runs:/<run id>/<name>"
)


def registered_name(dataset: str, prefix: str) -> str:
    """``<register.model_name_prefix>-<dataset>``: the registry name of a dataset's models."""
    return f"{prefix}-{dataset}"


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


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (a checkpoint can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def log_served_model(
    model_path: str | Path, serving: dict, classes: list[dict], name: str = MODEL_NAME
) -> str:
    """Log checkpoint + serving spec + class table as a pyfunc model in the active run.

    Nothing in it is a pickle: the model class is code (:mod:`.pyfunc_model`, logged "from
    code"), the checkpoint is plain tensors read with ``weights_only=True``, the rest is JSON.
    Each artifact's sha256 becomes a tag of the logged model (:data:`DIGEST_TAG`), so the run's
    model (``runs:/<run id>/<name>``) is checked when loaded, like a registered version.
    Returns the model URI.
    """
    return _log_served_model(model_path, serving, classes, name)[0]


def _log_served_model(
    model_path: str | Path, serving: dict, classes: list[dict], name: str
) -> tuple[str, dict[str, str]]:
    """(model URI, digest tags) of the logged model: the digests of the very files uploaded."""
    import mlflow
    import torch

    model_path = Path(model_path)
    if not model_path.is_file():
        raise SegflowError(f"{model_path}: checkpoint not found; run the train stage")
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = _artifact_files(Path(tmp), model_path, serving, classes)
        digests = {DIGEST_TAG.format(key): sha256_file(path) for key, path in artifacts.items()}
        # MLflow runs the model on the input example and says so at INFO: hidden unless verbose
        with _quiet_logger("mlflow.pyfunc"):
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(package / "lifecycle" / "pyfunc_model.py"),
                artifacts=artifacts,
                code_paths=[str(package)],
                signature=_signature(),
                input_example=np.zeros(EXAMPLE_SHAPE, np.uint8),
                # Given, not inferred: inference imports the model in a subprocess (slow).
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    "numpy",
                    "opencv-python-headless",
                    "pydantic",
                    "pydensecrf2",
                ],
                tags=digests,
            )
    return info.model_uri, digests


def _artifact_files(
    into: Path, model_path: Path, serving: dict, classes: list[dict]
) -> dict[str, str]:
    """The served model's three artifacts as files (the JSON ones written into ``into``)."""
    artifacts = {CHECKPOINT: str(model_path)}
    for key, value in ((SERVING, serving), (CLASSES, classes)):
        path = into / f"{key}.json"
        path.write_text(json.dumps(value, indent=2) + "\n")
        artifacts[key] = str(path)
    return artifacts


def _served_digests(model_path: Path, serving: dict, classes: list[dict]) -> dict[str, str]:
    """The digest tags the served model of these files would get when logged."""
    with tempfile.TemporaryDirectory() as tmp:
        files = _artifact_files(Path(tmp), model_path, serving, classes)
        return {DIGEST_TAG.format(key): sha256_file(path) for key, path in files.items()}


def registered_from_run(name: str, run_id: str, digests: dict[str, str]):
    """The newest version of ``name`` registered from run ``run_id`` with exactly these
    artifacts (``digests``, as :data:`DIGEST_TAG` tags), or None."""
    import mlflow

    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    same = [
        v for v in versions
        if v.run_id == run_id and all(v.tags.get(tag) == d for tag, d in digests.items())
    ]  # fmt: skip
    return max(same, key=lambda v: int(v.version)) if same else None


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """``name``'s INFO lines hidden for the block, unless segflow runs verbose: MLflow sets its
    loggers' levels when it is imported, after segflow's quiet_libraries has run."""
    logger = logging.getLogger(name)
    level = logger.level
    if not is_verbose():
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    per_class: list[dict] | None = None,
):
    """Log the served model to training run ``run_id``, register it, alias it ``challenger``.

    ``serving`` is the spec evaluate scored with (reports/eval/serving.json); ``test_miou`` the
    score of that path. The version carries, as tags, what the gate and a reader need: the test
    mIoU and the test split's hash, the content hash of the data it was trained on, all
    metrics, the serving spec and the class table (JSON), and the sha256 of each artifact
    (:data:`DIGEST_TAG`), which :func:`fetch_checked` requires. Its description is the
    served path's test metrics and ``per_class`` IoU (reports/eval/per_class_iou.json) as
    markdown tables (:func:`segflow.lifecycle.run_card.version_description`). Returns the new
    ``ModelVersion``, or the version already registered from ``run_id`` with the same three
    artifacts (:func:`registered_from_run`; it gets the alias ``challenger`` back unless it is
    the champion): one training run's served model is registered once.
    """
    import mlflow

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    if not Path(model_path).is_file():
        raise SegflowError(f"{model_path}: checkpoint not found; run the train stage")
    check_run(run_id)
    client = mlflow.MlflowClient()
    name = registered_name(dataset, prefix)
    # The register stage run again for the same training run (a gate param changed, DVC
    # re-ran it): the model it would register is already a version. Registering it again would
    # fill the registry with copies and let the gate judge a model against itself.
    existing = registered_from_run(name, run_id, _served_digests(model_path, serving, classes))
    if existing is not None:
        console.print(
            f"register: {name} v{existing.version} is already run {run_id}'s model (the same "
            "checkpoint, serving spec and classes): not registered again"
        )
        if CHAMPION not in existing.aliases:
            client.set_registered_model_alias(name, CHALLENGER, existing.version)
        return client.get_model_version(name, existing.version)
    # Reopening the finished training run attaches the model to the run that made it.
    with mlflow.start_run(run_id=run_id):
        model_uri, digests = _log_served_model(model_path, serving, classes, MODEL_NAME)
    tags = {
        "dataset": dataset,
        TEST_MIOU: repr(float(test_miou)),
        TEST_SPLIT_HASH: test_split_hash,
        DATA_HASH: data_hash,
        "metrics": json.dumps(metrics, sort_keys=True),
        "serving": json.dumps(serving, sort_keys=True),
        "classes": json.dumps(classes),
        **digests,
    }
    version = mlflow.register_model(model_uri, name, tags=tags)
    description = version_description(
        name, version.version, metrics, per_class, run_id=run_id, dataset=dataset,
        data_hash=data_hash, test_split_hash=test_split_hash, serving=serving,
    )  # fmt: skip
    client.update_model_version(name, version.version, description=description)
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


@dataclass(frozen=True)
class CheckedModel:
    """The artifacts of a segflow model, downloaded and matched against their recorded sha256."""

    #: What was loaded, for messages: ``models:/<name>/<version>`` or ``models:/m-<id>``.
    source: str
    #: Local copy of the checkpoint (plain tensors; read it with ``weights_only=True``).
    checkpoint: Path
    serving: dict
    classes: list[dict]
    #: The recorded sha256 each artifact matched (checkpoint, serving, classes).
    digests: dict[str, str] = field(default_factory=dict)


def fetch_checked(model_uri: str, dst: str | Path) -> CheckedModel:
    """Download a model's checkpoint, serving spec and class table into ``dst``, checked.

    The one way segflow loads a logged or registered model (``segflow predict``, the gate):
    nothing else of the model directory is downloaded, and its code is never imported. Each of
    the three artifacts must match the sha256 recorded when it was logged (tags
    ``segflow.sha256.<artifact>``); a changed file is refused in one line naming it.

    URIs (:data:`URI_FORMS`): a registered version (``models:/<name>@<alias>``, resolved to its
    version first, or ``models:/<name>/<version>``) carries its digests as version tags; a
    logged model, ``models:/m-<id>`` (``model_uri`` in models/run.json) or the run-relative
    ``runs:/<run id>/<name>``, carries them as tags of the logged model, which is what MLflow 3
    resolves a ``runs:/`` URI to (a run can hold several models, each with its own artifacts).

    A model without digests is refused, with a message saying to register it again: it was
    logged before segflow recorded them, and its artifacts cannot be told from changed ones.
    Accepting it would make the check optional for anyone who can delete a tag. The digests
    catch an artifact store changed behind the registry's back (a bucket more jobs can write
    than the tracking server); whoever controls both can swap a model consistently, but even
    then no code of theirs runs: the weights are plain tensors and the network is the installed
    segflow's.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    dst = Path(dst)
    try:
        source, base, tags = _resolve(model_uri)
        label = model_uri if source == model_uri else f"{model_uri} ({source})"
        missing = [key for key in ARTIFACTS if DIGEST_TAG.format(key) not in tags]
        if missing:
            raise SegflowError(
                f"{label}: no artifact digests (tag {DIGEST_TAG.format(missing[0])}): it was "
                "logged before segflow recorded them, so its artifacts cannot be checked; "
                "register it again (dvc repro register)"
            )

        def download(path: str, into: Path) -> Path:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{base}/{path}", dst_path=str(into)
            )
            return Path(local)

        paths = _artifact_paths(download("MLmodel", dst / "MLmodel"), label)
        files = {key: download(paths[key], dst / key) for key in ARTIFACTS}
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegflowError(f"{model_uri}: cannot load the model ({first})") from None
    for key in ARTIFACTS:
        tag = DIGEST_TAG.format(key)
        if sha256_file(files[key]) != tags[tag].strip().lower():
            raise SegflowError(
                f"{label}: artifact {key} ({paths[key]}) does not match its recorded sha256 "
                f"(tag {tag}); refusing a changed artifact"
            )
    serving, classes = (
        _read_json(files[key], f"{label}: artifact {key}") for key in (SERVING, CLASSES)
    )
    if not isinstance(serving, dict) or not isinstance(classes, list):
        raise SegflowError(f"{label}: not a segflow segmentation model (serving spec, class table)")
    digests = {key: tags[DIGEST_TAG.format(key)].strip().lower() for key in ARTIFACTS}
    return CheckedModel(source, files[CHECKPOINT], serving, classes, digests)


def attach_files(version, files: dict[str, Path], artifact_path: str) -> dict[str, str]:
    """Log ``files`` (``{key: local file}``) beside a registered version's model, checked later.

    They go into the artifacts of the logged model the version points at, under
    ``artifact_path`` (``models:/<name>/<version>/<artifact_path>/<file name>``), and the sha256
    of each becomes a tag ``segflow.sha256.<key>`` of the version and of the logged model, as
    for the model's own three artifacts: :func:`fetch_files_checked` refuses a changed file.
    Used for the ONNX export a deployment takes from the registry. Returns the digest tags.
    """
    import shutil

    import mlflow

    client = mlflow.MlflowClient()
    # The logged model behind the version (its source, models:/m-<id>, where model_id is unset).
    found = re.fullmatch(r"models:/(m-[0-9a-f]+)", str(version.source or ""))
    model_id = version.model_id or (found[1] if found else None)
    if model_id is None:
        raise SegflowError(f"{version.name} v{version.version}: no logged model behind it")
    digests = {DIGEST_TAG.format(key): sha256_file(path) for key, path in files.items()}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files.values():
            shutil.copyfile(path, Path(tmp) / Path(path).name)
        client.log_model_artifacts(model_id, tmp, artifact_path)
    client.set_logged_model_tags(model_id, digests)
    for tag, value in digests.items():
        client.set_model_version_tag(version.name, str(version.version), tag, value)
    return digests


def fetch_files_checked(
    model_uri: str, files: dict[str, str], dst: str | Path
) -> dict[str, Path] | None:
    """Download files that :func:`attach_files` logged (``{key: path inside the model}``) into
    ``dst``, each checked against its recorded sha256; None when the model records none of
    them (attached to no version before it, or its export failed at registration)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from segflow.tracking import quiet_mlflow

    quiet_mlflow()
    dst = Path(dst)
    try:
        source, base, tags = _resolve(model_uri)
        if not all(DIGEST_TAG.format(key) in tags for key in files):
            return None
        local = {
            key: Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{base}/{path}", dst_path=str(dst / key)
                )
            )
            for key, path in files.items()
        }
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SegflowError(f"{model_uri}: cannot download its files ({first})") from None
    for key, path in local.items():
        tag = DIGEST_TAG.format(key)
        if sha256_file(path) != tags[tag].strip().lower():
            raise SegflowError(
                f"{model_uri} ({source}): {files[key]} does not match its recorded sha256 "
                f"(tag {tag}); refusing a changed file"
            )
    return local


def _resolve(model_uri: str) -> tuple[str, str, dict[str, str]]:
    """(the model's own URI, the artifact URI its files are under, its tags)."""
    import mlflow

    client = mlflow.MlflowClient()
    if m := re.fullmatch(r"models:/([^/@]+)@([^/@]+)", model_uri):
        version = client.get_model_version_by_alias(m[1], m[2])
    elif m := re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri):
        version = client.get_model_version(m[1], m[2])
    elif m := re.fullmatch(r"models:/(m-[0-9a-f]+)", model_uri):
        logged = client.get_logged_model(m[1])
        return model_uri, logged.artifact_location.rstrip("/"), dict(logged.tags)
    elif m := re.fullmatch(r"runs:/([0-9a-f]+)/([A-Za-z0-9_.-]+)", model_uri):
        logged = _logged_model_of_run(client, m[1], m[2], model_uri)
        source = f"models:/{logged.model_id}"
        return source, logged.artifact_location.rstrip("/"), dict(logged.tags)
    else:
        raise SegflowError(f"{model_uri}: not a model URI segflow loads ({URI_FORMS})")
    source = f"models:/{version.name}/{version.version}"
    return source, source, dict(version.tags)


def _logged_model_of_run(client, run_id: str, name: str, model_uri: str):
    experiment = client.get_run(run_id).info.experiment_id
    token = None
    while True:
        page = client.search_logged_models(
            [experiment], filter_string=f"name = '{name}'", page_token=token
        )
        found = next((m for m in page if m.source_run_id == run_id), None)
        if found is not None:
            return found
        token = page.token
        if not token:
            raise SegflowError(f"{model_uri}: run {run_id} logged no model named {name!r}")


def _artifact_paths(mlmodel: Path, label: str) -> dict[str, str]:
    """Where the MLmodel file says the three artifacts are: relative paths inside the model."""
    import yaml

    try:
        flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["python_function"]
        listed = {key: str(value["path"]) for key, value in flavor["artifacts"].items()}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise SegflowError(
            f"{label}: not a segflow model (its MLmodel lists no artifacts)"
        ) from None
    paths = {}
    for key in ARTIFACTS:
        path = listed.get(key)
        if path is None:
            raise SegflowError(f"{label}: no {key} artifact; not a segflow model")
        parts = path.split("/")
        if path.startswith("/") or "\\" in path or ":" in path or ".." in parts or "" in parts:
            raise SegflowError(
                f"{label}: MLmodel puts artifact {key} at {path!r}, outside the model"
            )
        paths[key] = path
    return paths


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SegflowError(f"{what}: not JSON ({exc})") from None


def load_for_predict(model_uri: str):
    """(Predictor, class table) of a logged or registered model, checked by
    :func:`fetch_checked` and built by the installed segflow; errors a user can cause are
    SegflowErrors naming the URI."""
    from segflow.evaluate.serving import ServingSpec, load_predictor

    with tempfile.TemporaryDirectory(prefix="segflow-model-") as tmp:
        model = fetch_checked(model_uri, tmp)
        spec = ServingSpec.from_dict(model.serving, f"{model.source} serving spec")
        return load_predictor(model.checkpoint, spec), model.classes


def per_class_iou(report_dir: Path | None) -> list[dict] | None:
    """reports/eval/per_class_iou.json (``[{class, iou, iou_crf}]``), None when absent."""
    path = None if report_dir is None else Path(report_dir) / "per_class_iou.json"
    if path is None or not path.is_file():
        return None
    return _read_json(path, str(path))


def log_evaluation(
    run_id: str, metrics: dict, metrics_file: Path, report_dir: Path | None = None
) -> None:
    """Attach the evaluate stage's numbers, report and sample images to the training run.

    Metrics are named so the plain name is the served number
    (:func:`segflow.lifecycle.run_card.run_test_metrics`); the report's sample figures (worst,
    median, best test image) are logged as images too, so the run's charts show them."""
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    values = run_test_metrics(metrics, per_class_iou(report_dir))
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
    client.log_artifact(run_id, str(metrics_file), "evaluation")
    if report_dir is not None and Path(report_dir).is_dir():
        client.log_artifacts(run_id, str(report_dir), "evaluation/report")
        log_sample_images(run_id, Path(report_dir))


def log_sample_images(run_id: str, report_dir: Path) -> None:
    """The report's sample figures as the run's images ``test_sample_<role>`` (worst, median,
    best), read from its report_data.json; a report without one logs none."""
    import cv2
    import mlflow

    data_file = report_dir / "report_data.json"
    if not data_file.is_file():
        return
    client = mlflow.MlflowClient()
    for i, sample in enumerate(_read_json(data_file, str(data_file)).get("samples", [])):
        image = cv2.imread(str(report_dir / sample["path"]), cv2.IMREAD_COLOR)
        if image is None:
            continue
        # "worst of 12 test images: ..." -> worst; "rank 4 (1 = worst) of ..." -> rank_4
        role = (sample.get("caption") or "").split(" of ", 1)[0].split(" (")[0] or f"{i}"
        key = f"test_sample_{re.sub(r'[^A-Za-z0-9_]+', '_', role)}"
        client.log_image(run_id, cv2.cvtColor(image, cv2.COLOR_BGR2RGB), key=key, step=0)
