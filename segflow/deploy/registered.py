"""The ONNX export as part of a registered version, so a deployment takes it from the registry.

The register stage calls :func:`attach_onnx` right after registering a version: the exported
file and its spec go beside the model (``models:/<name>/<version>/onnx/model.onnx`` and
``.../onnx/export.json``) with their sha256 as tags (``segflow.sha256.onnx``,
``segflow.sha256.onnx_spec``), and :func:`fetch_onnx` downloads them checked, like the model's
own artifacts. A deployment then runs exactly the bytes that were registered, not a re-export
made later by another segflow or torch.

An export that fails does not stop the registration: the model is already registered and the
promotion gate still has to judge it. The reason is one log line and the version's tag
``segflow.onnx.error``; ``segflow export`` then exports from the checked checkpoint itself and
says the same reason again.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from segflow.deploy.export import (
    MODEL_FILE,
    SPEC_FILE,
    Source,
    copy_export,
    export_model,
    first_line,
)
from segflow.errors import SegflowError
from segflow.evaluate.serving import ServingSpec
from segflow.lifecycle.registration import (
    ARTIFACTS,
    DIGEST_TAG,
    attach_files,
    fetch_files_checked,
)
from segflow.logs import console

#: Where the export sits inside the registered model, and the keys of its digest tags.
ARTIFACT_PATH = "onnx"
ONNX, ONNX_SPEC = "onnx", "onnx_spec"
FILES = {ONNX: f"{ARTIFACT_PATH}/{MODEL_FILE['onnx']}", ONNX_SPEC: f"{ARTIFACT_PATH}/{SPEC_FILE}"}
ERROR_TAG = "segflow.onnx.error"


def registered_onnx(version) -> dict | None:
    """The record of the ONNX export already attached to ``version`` (its digest tags), or
    None: a version registered again by a re-run register stage keeps the export it has."""
    digests = {key: version.tags.get(DIGEST_TAG.format(key)) for key in FILES}
    if not all(digests.values()):
        return None
    return {"files": FILES, "sha256": digests}


def attach_onnx(version, checkpoint: Path, serving: dict, classes: list[dict]) -> dict:
    """Export the version's served model to ONNX and log it beside the model, checked.

    Returns the record for reports/registry.json: the files and their sha256, or the reason
    there is none (also a log line and the version tag :data:`ERROR_TAG`); never raises for a
    model that cannot be exported.
    """
    import mlflow

    from segflow.models.checkpoint import load_model

    uri = f"models:/{version.name}/{version.version}"
    try:
        source = Source(
            uri,
            load_model(checkpoint),
            ServingSpec.from_dict(serving, f"{uri} serving spec"),
            classes,
            {key: version.tags.get(DIGEST_TAG.format(key), "") for key in ARTIFACTS},
            uri,
        )
        with tempfile.TemporaryDirectory(prefix="segflow-onnx-") as tmp:
            model = export_model(source, "onnx", Path(tmp))
            digests = attach_files(
                version, {ONNX: model, ONNX_SPEC: model.with_name(SPEC_FILE)}, ARTIFACT_PATH
            )
    except Exception as exc:  # noqa: BLE001 - any failure: registered without it, said why
        reason = str(exc) if isinstance(exc, SegflowError) else first_line(exc)
        mlflow.MlflowClient().set_model_version_tag(
            version.name, str(version.version), ERROR_TAG, reason[:5000]
        )
        console.print(f"register: {uri} has no ONNX export: {reason}")
        return {"error": reason}
    return {"files": FILES, "sha256": {key: digests[DIGEST_TAG.format(key)] for key in FILES}}


def fetch_onnx(model_uri: str, out_dir: Path) -> Path | None:
    """The registered ONNX export of ``model_uri`` into ``out_dir`` (checked against its
    digests); None when the version has none (registered before, or its export failed)."""
    with tempfile.TemporaryDirectory(prefix="segflow-onnx-") as tmp:
        files = fetch_files_checked(model_uri, FILES, tmp)
        if files is None:
            return None
        names = {MODEL_FILE["onnx"]: files[ONNX], SPEC_FILE: files[ONNX_SPEC]}
        return copy_export(names, out_dir)
