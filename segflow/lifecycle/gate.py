"""The promotion gate: the champion re-scored on today's test split, the paired bootstrap, the
decision.

The champion's registered score was measured on the test split of its day; after a data update
the split may hold other images, and a score on other images says nothing about which model is
better. So the gate scores the champion again, here, on exactly the images the new model was
scored on (same shards, at their original resolution), serving what it serves (its own
registered serving spec: inference mode, scale, normalisation, CRF), and hands both models'
per-image counts to the paired bootstrap of :mod:`segflow.evaluate.bootstrap`. ``champion``
moves to the new version only if the lower bound of the interval of the mIoU difference
exceeds ``register.min_gain``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import paired_bootstrap
from segflow.lifecycle.registration import CHAMPION, champion_version, fetch_checked


def score_version(version, params: Params, shard_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(sample ids, per-image counts N x 3 x C) of registered ``version`` on the test split,
    through the version's own serving spec (counts after its CRF when it applies one).

    The champion's artifacts are checked against their registered sha256
    (:func:`segflow.lifecycle.registration.fetch_checked`) and its network is built by the
    installed segflow: a changed artifact is a SegflowError, which :func:`run_gate` records as
    the reason the champion could not be scored."""
    from segflow.data.shards import read_index
    from segflow.evaluate.crf_split import crf_over_split
    from segflow.evaluate.predict_split import predict_split
    from segflow.evaluate.serving import ServingSpec, load_predictor

    num_classes = int(read_index(Path(shard_dir))["num_classes"])
    with tempfile.TemporaryDirectory(prefix="segflow-champion-") as tmp:
        model = fetch_checked(f"models:/{version.name}/{version.version}", Path(tmp) / "model")
        spec = ServingSpec.from_dict(model.serving, f"{model.source} serving spec")
        predictor = load_predictor(model.checkpoint, dataclasses.replace(spec, crf=None))
        probs = Path(tmp) / "probs"
        split = params.dataset.test_split
        pred = predict_split(predictor, shard_dir, split, probs, num_classes)
        if spec.crf is None:
            return pred.sample_ids, pred.image_counts
        refined = crf_over_split(
            probs, spec.crf, num_classes, images_per_task=params.crf.images_per_task,
            ids=pred.file_ids,
        )  # fmt: skip
        return pred.sample_ids, refined.image_counts


def decide(
    name: str,
    version: str | int,
    new_counts: np.ndarray,
    current,
    old_counts: np.ndarray | None,
    refusal: str | None,
    min_gain: float,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    test_split_hash: str = "unknown",
) -> dict:
    """Move ``champion`` to ``version`` only if it is measurably better than ``current``.

    ``new_counts`` and ``old_counts`` are both models' per-image counts on the same test images
    (N x 3 x C, see evaluate.bootstrap); ``refusal`` says why the champion could not be scored.
    Decisions: ``promoted`` (no champion yet, or the lower bound of the ``confidence`` interval
    of the paired-bootstrap mIoU difference is above ``min_gain``), ``kept`` (not measurably
    better, or already champion), ``refused`` (the champion cannot be scored on these images,
    or its artifacts fail their digest check).
    The decision and its figures are recorded as ``gate.*`` tags on ``version`` and returned.
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = str(version)
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
    elif old_counts is None:
        verdict = "refused"
        reason = f"champion v{current.version} cannot be scored: {refusal}"
    else:
        boot = paired_bootstrap(new_counts, old_counts, samples, confidence, seed)
        decision["bootstrap"] = boot.to_dict()
        interval = f"{round(100 * confidence)}% interval [{boot.low:+.4f}, {boot.high:+.4f}]"
        scores = (
            f"mIoU {boot.new_miou:.4f} vs champion v{current.version}'s {boot.old_miou:.4f} "
            f"on the same {boot.num_images} images ({boot.diff:+.4f}, {interval})"
        )
        if math.isfinite(boot.low) and boot.low > min_gain:
            verdict, reason = "promoted", f"{scores}: lower bound above min_gain {min_gain}"
        else:
            verdict, reason = "kept", f"{scores}: lower bound not above min_gain {min_gain}"
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


def run_gate(
    version,
    ids: list[str],
    new_counts: np.ndarray,
    params: Params,
    shard_dir: str | Path,
    test_split_hash: str,
) -> dict:
    """Score the current champion of ``version.name`` on the test split and :func:`decide`."""
    current = champion_version(version.name)
    old_counts, refusal = None, None
    if current is not None and str(current.version) != str(version.version):
        try:
            champion_ids, old_counts = score_version(current, params, shard_dir)
            if champion_ids != ids:
                old_counts, refusal = None, "the test images differ from the evaluated ones"
        except SegflowError as exc:
            refusal = str(exc)
    g = params.register
    return decide(
        version.name, version.version, new_counts, current, old_counts, refusal, g.min_gain,
        g.confidence, g.bootstrap_samples, params.seed, test_split_hash,
    )  # fmt: skip


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
