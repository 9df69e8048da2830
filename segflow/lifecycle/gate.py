"""The promotion gate: the champion re-scored on the decision split, the paired bootstrap, the
decision.

The gate decides on a split of its own (``gate.split``: dev, held out of train by group, when
the shards have it; val otherwise), never on the test split: every promotion is a choice, and
choices made on the split whose score the registry then reports drift that score upward with
the number of decisions (the adaptive reuse of a holdout: Dwork et al., Science 2015). The test
split is scored by the evaluate stage for every version and reported beside the decision; the
gate never opens its shards.

The champion's registered score was measured on the data of its day; after a data update the
split may hold other images. So the gate scores the champion again, here, on exactly the images
the new model was scored on (same shards, at their original resolution), serving what it
serves (its own registered serving spec: inference mode, scale, normalisation, CRF), and hands
both models' per-image counts to the paired bootstrap of :mod:`segflow.evaluate.bootstrap`,
resampling whole groups (``dataset.group_pattern``: sequences, patients) when the dataset has
them. Fewer than ``gate.min_images`` images (or fewer than two groups) is "underpowered": the
champion stays. ``champion`` moves to the new version only if the lower bound of the interval
of the mIoU difference exceeds ``gate.min_gain``.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segflow.config import Params
from segflow.data.groups import groups_of
from segflow.errors import SegflowError
from segflow.evaluate.bootstrap import paired_bootstrap
from segflow.lifecycle.registration import (
    CHAMPION,
    TEST_MIOU,
    TEST_SPLIT_HASH,
    champion_version,
    fetch_checked,
)


@dataclass(frozen=True)
class DecisionSplit:
    """What the gate decides on: the split, its content hash, its images in order and their
    groups (None: no group pattern, the images are the unit)."""

    name: str
    hash: str
    ids: list[str]
    groups: list[str] | None
    #: The decision split is also dataset.test_split (test_split: val and no dev split): the
    #: one case where a decision reads the reported split; gate.md and the tags say so.
    is_test: bool = False

    @property
    def num_groups(self) -> int | None:
        return None if self.groups is None else len(set(self.groups))


def decision_split_of(
    name: str, split_hash: str, ids: list[str], group_pattern: str | None, test_split: str
) -> DecisionSplit:
    groups = groups_of(ids, group_pattern) if group_pattern else None
    return DecisionSplit(name, split_hash, list(ids), groups, is_test=name == test_split)


def score_version(
    version, params: Params, shard_dir: str | Path, split: str
) -> tuple[list[str], np.ndarray]:
    """(sample ids, per-image counts N x 3 x C) of registered ``version`` on ``split``,
    through the version's own serving spec (counts after its CRF when it applies one).

    The champion's artifacts are checked against their registered sha256
    (:func:`segflow.lifecycle.registration.fetch_checked`) and its network is built by the
    installed segflow: a changed artifact is a SegflowError, which :func:`run_gate` records as
    the reason the champion could not be scored."""
    from segflow.data.shards import read_index
    from segflow.evaluate.serving import ServingSpec, load_predictor
    from segflow.evaluate.split_scores import score_split

    num_classes = int(read_index(shard_dir)["num_classes"])
    with tempfile.TemporaryDirectory(prefix="segflow-champion-") as tmp:
        model = fetch_checked(f"models:/{version.name}/{version.version}", Path(tmp) / "model")
        spec = ServingSpec.from_dict(model.serving, f"{model.source} serving spec")
        predictor = load_predictor(model.checkpoint, dataclasses.replace(spec, crf=None))
        scores = score_split(
            predictor, spec.crf, shard_dir, split, num_classes, params.crf.images_per_task
        )
        return scores.ids, scores.served


def decide(
    name: str,
    version: str | int,
    new_counts: np.ndarray,
    current,
    old_counts: np.ndarray | None,
    refusal: str | None,
    split: DecisionSplit,
    min_gain: float,
    min_images: int = 20,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
    test: dict | None = None,
) -> dict:
    """Move ``champion`` to ``version`` only if it is measurably better than ``current``.

    ``new_counts`` and ``old_counts`` are both models' per-image counts on the same images of
    the decision ``split`` (N x 3 x C, see evaluate.bootstrap); ``refusal`` says why the
    champion could not be scored. Decisions: ``promoted`` (no champion yet, or the lower bound
    of the ``confidence`` interval of the paired-bootstrap mIoU difference is above
    ``min_gain``), ``kept`` (not measurably better, or already champion), ``underpowered``
    (fewer than ``min_images`` images, or fewer than two groups: the champion stays),
    ``refused`` (the champion cannot be scored on these images, or its artifacts fail their
    digest check). ``test`` holds the test figures, for information only: nothing here reads
    them. The decision and its figures are recorded as ``gate.*`` tags on ``version``.
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = str(version)
    num_images = len(split.ids)
    decision = {
        "name": name,
        "version": version,
        "split": split.name,
        "split_hash": split.hash,
        "split_is_test": split.is_test,
        "num_images": num_images,
        "num_groups": split.num_groups,
        "min_gain": float(min_gain),
        "min_images": int(min_images),
        "champion_before": str(current.version) if current else None,
        "bootstrap": None,
        "test": test or {},
    }
    unit = f"{num_images} {split.name} images" + (
        f" in {split.num_groups} groups" if split.groups is not None else ""
    )
    if current is None:
        verdict, reason = "promoted", "no champion yet: the first model becomes champion"
    elif str(current.version) == version:
        verdict, reason = "kept", f"version {version} is already the champion"
    elif old_counts is None:
        verdict = "refused"
        reason = f"champion v{current.version} cannot be scored: {refusal}"
    elif num_images < min_images or (split.num_groups is not None and split.num_groups < 2):
        verdict = "underpowered"
        reason = (
            f"{unit}: fewer than gate.min_images {min_images} images (or fewer than 2 groups) "
            f"cannot tell the models apart; champion v{current.version} stays"
        )
    else:
        boot = paired_bootstrap(new_counts, old_counts, samples, confidence, seed, split.groups)
        decision["bootstrap"] = boot.to_dict()
        interval = f"{round(100 * confidence)}% interval [{boot.low:+.4f}, {boot.high:+.4f}]"
        scores = (
            f"{split.name} mIoU {boot.new_miou:.4f} vs champion v{current.version}'s "
            f"{boot.old_miou:.4f} on the same {unit} ({boot.diff:+.4f}, {interval})"
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
        "gate.split": split.name,
        "gate.split_hash": split.hash,
        "gate.split_is_test": str(split.is_test).lower(),
        "gate.num_images": str(num_images),
        "gate.num_groups": str(split.num_groups),
        "gate.champion_before": str(decision["champion_before"]),
        "gate.min_gain": repr(float(min_gain)),
        "gate.min_images": str(int(min_images)),
        "gate.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key, value in (decision["bootstrap"] or {}).items():
        tags[f"gate.{key}"] = repr(value)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return decision


def run_gate(
    version,
    new_counts: np.ndarray,
    split: DecisionSplit,
    params: Params,
    shard_dir: str | Path,
    test: dict | None = None,
) -> dict:
    """Score the current champion of ``version.name`` on the decision split and :func:`decide`.

    ``test`` (the new model's test figures, from reports/metrics.json) is reported beside the
    decision with the champion's registered test mIoU; the test shards are never opened."""
    current = champion_version(version.name)
    old_counts, refusal = None, None
    if current is not None and str(current.version) != str(version.version):
        try:
            champion_ids, old_counts = score_version(current, params, shard_dir, split.name)
            if champion_ids != split.ids:
                old_counts, refusal = (
                    None,
                    f"the {split.name} images differ from the evaluated ones",
                )
        except SegflowError as exc:
            refusal = str(exc)
    test = dict(test or {})
    if current is not None:
        test["champion_test_miou"] = _float_or_none(current.tags.get(TEST_MIOU))
        test["champion_test_split_hash"] = current.tags.get(TEST_SPLIT_HASH)
    g = params.gate
    return decide(
        version.name, version.version, new_counts, current, old_counts, refusal, split,
        g.min_gain, g.min_images, g.confidence, g.bootstrap_samples, params.seed, test,
    )  # fmt: skip


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def gate_markdown(record: dict) -> str:
    """The gate's report (reports/gate.md): the decision split and its size, both models'
    scores on it, the interval, the decision, and the test figures beside it for information."""
    d = record["decision"]
    groups = f" in {d['num_groups']} groups" if d.get("num_groups") is not None else ""
    lines = [
        f"# Promotion gate: {record['name']} v{record['version']}",
        "",
        f"**{d['decision']}**: {d['reason']}",
        "",
        f"Decided on the split `{d['split']}` ({d['num_images']} images{groups}, content hash "
        f"`{str(d['split_hash'])[:12]}`). " + _split_note(d),
        "",
    ]
    boot = d.get("bootstrap")
    if boot is not None:
        pct = round(100 * boot["confidence"])
        unit = "groups" if boot.get("num_groups") is not None else "images"
        lines += [
            f"Paired bootstrap over those {unit}, {boot['samples']} resamples, seed "
            f"{boot['seed']}; at least {d['min_images']} images are needed to decide.",
            "",
            "| | value |",
            "|---|---|",
            f"| new model v{d['version']} mIoU on {d['split']} | {boot['new_miou']:.4f} |",
            f"| champion v{d['champion_before']} mIoU on {d['split']} | {boot['old_miou']:.4f} |",
            f"| difference (new - champion) | {boot['diff']:+.4f} |",
            f"| {pct}% interval of the difference | [{boot['low']:+.4f}, {boot['high']:+.4f}] |",
            f"| min_gain (lower bound must exceed) | {d['min_gain']:.4f} |",
            "",
        ]
    test = d.get("test") or {}
    if test:
        lines += [
            "Test split, for information (it decides nothing):",
            "",
            "| | test mIoU (served) |",
            "|---|---|",
            f"| new model v{d['version']} | {_pct(test.get('test_miou'))} |",
        ]
        if d["champion_before"] is not None:
            same = test.get("champion_test_split_hash") == test.get("test_split_hash")
            lines.append(
                f"| champion v{d['champion_before']} (as registered"
                + ("" if same else ", on another version of the test split")
                + f") | {_pct(test.get('champion_test_miou'))} |"
            )
        lines.append("")
    lines.append(f"Champion after the gate: v{d['champion_after']}.")
    return "\n".join(lines) + "\n"


def _split_note(d: dict) -> str:
    if d.get("split_is_test"):
        return (
            f"**`{d['split']}` is also the reported test split** (dataset.test_split): with "
            "no other split to decide on, this decision was made on the split whose score is "
            "reported, which flatters that score; set dataset.holdout_groups (a dev split held "
            "out of train by group) to give the gate a split of its own."
        )
    if d["split"] == "dev":
        return (
            "`dev` is held out of train by group (dataset.holdout_groups) and shares no group "
            "with train; the test split decides nothing."
        )
    return (
        f"`{d['split']}` also chose the best epoch and the CRF; the test split decides nothing "
        "(set dataset.holdout_groups for a split of the gate's own)."
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
