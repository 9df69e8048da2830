"""What a reader of the MLflow UI sees of a scored model: the run's test metrics, by name, and
the registered version's description.

Names. ``reports/metrics.json`` holds each metric twice, without the CRF (``miou``) and with it
(``miou_crf``); which one the registered model returns depends on crf_tune's choice. In MLflow
the plain name is always the served number, so a run and its registered version never show two
values under one name:

- ``test_<metric>``: what the served model scores (with the CRF when it is served): the
  number the version's ``test_miou`` tag and the gate report carry;
- ``test_<metric>_network``: the network alone (argmax of its output, no CRF);
- ``test_<metric>_crf``: with the CRF, served or not (for information when it is not);
- ``test_iou_<class>``: each class's IoU on the served path (class names made metric-safe);
- other numbers (``ms_per_image``, ``peak_memory_mb``, ``num_images``) keep their names.
"""

from __future__ import annotations

import math
import re

from segflow.evaluate.scores import METRIC_KEYS

#: The version description's metric rows: label, metrics.json short name.
_DESCRIBED = [
    ("mIoU", "miou"),
    ("pixel accuracy", "pa"),
    ("mean accuracy", "mpa"),
    ("frequency-weighted IoU", "fwiou"),
    ("mDice (= mF-score)", "mdice"),
    ("mean precision", "mprecision"),
    ("mean recall", "mrecall"),
]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def metric_key(name: str) -> str:
    """A class name as part of an MLflow metric name (letters, digits, ``_ - .`` only)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip()) or "unnamed"


def served_value(metrics: dict, short: str) -> float | None:
    """``metrics[short]`` of the served path (``<short>_crf`` when the CRF is served)."""
    return _number(metrics.get(f"{short}_crf" if metrics.get("crf_applied") else short))


def run_test_metrics(metrics: dict, per_class: list[dict] | None = None) -> dict[str, float]:
    """The run's ``test_*`` metrics (see the module doc); undefined values are left out.

    ``per_class`` is reports/eval/per_class_iou.json: ``[{class, iou, iou_crf}]``."""
    out: dict[str, float] = {}
    paired = {f"{short}{suffix}" for short in METRIC_KEYS for suffix in ("", "_crf")}
    for short in METRIC_KEYS:
        named = {
            f"test_{short}": served_value(metrics, short),
            f"test_{short}_network": _number(metrics.get(short)),
            f"test_{short}_crf": _number(metrics.get(f"{short}_crf")),
        }
        out.update({k: v for k, v in named.items() if v is not None})
    for key, value in metrics.items():
        number = _number(value)
        if key not in paired and number is not None:
            out[f"test_{key}"] = number
    column = "iou_crf" if metrics.get("crf_applied") else "iou"
    for row in per_class or []:
        value = _number(row.get(column))
        if value is not None:
            out[f"test_iou_{metric_key(str(row.get('class')))}"] = value
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def version_description(
    name: str,
    version: str | int,
    metrics: dict,
    per_class: list[dict] | None,
    *,
    run_id: str,
    dataset: str,
    data_hash: str,
    test_split_hash: str,
    serving: dict,
) -> str:
    """Markdown for the registered version's description: what it is, how to load it, and the
    served path's test metrics and per-class IoU as tables (all in %)."""
    crf = bool(metrics.get("crf_applied"))
    served = "the network, then the dense CRF" if crf else "the network alone (no CRF)"
    mode = serving.get("mode", "single")
    lines = [
        f"**{name} v{version}**: semantic segmentation of {dataset}, an H x W x 3 uint8 RGB "
        "image in, an H x W uint8 label map of the class ids out.",
        "",
        f"Served path: {served}, {mode} inference. Trained in MLflow run `{run_id}` on shards "
        f"`{data_hash[:16]}`. Load it with `segflow predict IMAGE --model "
        f'models:/{name}/{version}` or `mlflow.pyfunc.load_model("models:/{name}/{version}")`.',
        "",
        f"| test metric (served path, {metrics.get('num_images', '?')} images) | value |",
        "|:---|---:|",
    ]
    lines += [f"| {label} | {_pct(served_value(metrics, key))} |" for label, key in _DESCRIBED]
    if crf:
        network = _pct(_number(metrics.get("miou")))
        lines.append(f"| mIoU of the network alone (no CRF) | {network} |")
    if _number(metrics.get("ms_per_image")) is not None:
        lines.append(f"| time per image | {metrics['ms_per_image']:.1f} ms |")
    column = "iou_crf" if crf else "iou"
    if per_class:
        lines += ["", "| class | IoU (served) |", "|:---|---:|"]
        lines += [f"| {row.get('class')} | {_pct(_number(row.get(column)))} |" for row in per_class]
    lines += [
        "",
        f"mDice and mF-score are one number (F1 over pixels is Dice). Test split hash "
        f"`{test_split_hash[:16]}`. The full evaluation report is in the run's artifacts "
        "(evaluation/report/index.html).",
    ]
    return "\n".join(lines) + "\n"
