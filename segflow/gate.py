"""The promotion gate's evidence: the champion re-scored on today's test split, and the report.

The champion's registered score was measured on the test split of its day; after a data update
the split may hold other images, and a score on other images says nothing about which model is
better. So the gate scores the champion again, here, on exactly the images the new model was
scored on (same shards, same inference mode), serving what it serves (its own CRF settings and
normalisation, read from its registered version), and hands both models' per-image counts to
the paired bootstrap of :mod:`segflow.evaluate.bootstrap`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.errors import SegflowError


def _normalisation(version, params: Params) -> tuple[list[float], list[float]]:
    """mean/std the version's pyfunc model normalises with: its tags, else its training run's
    params (versions registered before the tags existed), else an error."""
    import mlflow

    if "mean" in version.tags and "std" in version.tags:
        return json.loads(version.tags["mean"]), json.loads(version.tags["std"])
    logged = mlflow.MlflowClient().get_run(version.run_id).data.params
    if "loader.mean" in logged and "loader.std" in logged:
        return json.loads(logged["loader.mean"]), json.loads(logged["loader.std"])
    raise SegflowError(
        f"{version.name} v{version.version}: no mean/std tags and no loader params on its run"
    )


def score_version(version, params: Params, shard_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(sample ids, per-image counts N x 3 x C) of registered ``version`` on the test split.

    The version's model directory is downloaded from the tracking server (or store), its
    checkpoint loaded with this code, and the split predicted in ``params.evaluate``'s mode;
    when the version applies a CRF (tag ``crf_params``), the counts are those after the CRF.
    """
    import mlflow
    from mlflow.models import Model

    from segflow.data.shards import read_index
    from segflow.evaluate.predict_split import predict_split
    from segflow.postprocess.crf import CRFParams, crf_over_split
    from segflow.train.loop import default_device, load_model

    num_classes = int(read_index(Path(shard_dir))["num_classes"])
    mean, std = _normalisation(version, params)
    crf = json.loads(version.tags.get("crf_params", "null"))
    device = default_device()
    with tempfile.TemporaryDirectory(prefix="segflow-champion-") as tmp:
        uri = f"models:/{version.name}/{version.version}"
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        artifacts = Model.load(str(local)).flavors["python_function"].get("artifacts", {})
        if "checkpoint" not in artifacts:
            raise SegflowError(f"{uri}: no checkpoint artifact; not a segflow model")
        model = load_model(local / artifacts["checkpoint"]["path"], map_location=str(device))
        loader = params.loader.model_copy(update={"mean": mean, "std": std})
        pred = predict_split(
            model, shard_dir, params.dataset.test_split, Path(tmp) / "probs", num_classes,
            params.evaluate, loader, dtype=params.crf.prob_dtype, device=device,
        )  # fmt: skip
        if crf is None:
            return pred.sample_ids, pred.image_counts
        refined = crf_over_split(
            Path(tmp) / "probs", CRFParams.from_dict(crf), num_classes,
            images_per_task=params.crf.images_per_task, ids=pred.file_ids,
        )  # fmt: skip
        return pred.sample_ids, refined.image_counts


def gate_markdown(record: dict) -> str:
    """The gate's part of the evaluation report: both scores, the interval, the decision."""
    d = record["decision"]
    lines = [
        f"# Promotion gate: {record['name']} v{record['version']}",
        "",
        f"**{d['decision']}**: {d['reason']}",
        "",
    ]
    boot = d.get("bootstrap")
    if boot is not None:
        pct = round(100 * boot["confidence"])
        lines += [
            f"Both models scored on the same {boot['num_images']} test images "
            f"(split hash `{str(d['test_split_hash'])[:12]}`); paired bootstrap over those "
            f"images, {boot['samples']} resamples, seed {boot['seed']}.",
            "",
            "| | value |",
            "|---|---|",
            f"| new model v{d['version']} mIoU | {boot['new_miou']:.4f} |",
            f"| champion v{d['champion_before']} mIoU | {boot['old_miou']:.4f} |",
            f"| difference (new - champion) | {boot['diff']:+.4f} |",
            f"| {pct}% interval of the difference | [{boot['low']:+.4f}, {boot['high']:+.4f}] |",
            f"| min_gain (lower bound must exceed) | {d['min_gain']:.4f} |",
            "",
        ]
    lines.append(f"Champion after the gate: v{d['champion_after']}.")
    return "\n".join(lines) + "\n"
