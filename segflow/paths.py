"""Where each stage reads and writes, relative to the repo root; mirrors the outs in dvc.yaml."""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
SYNTHETIC = Path("data/synthetic")
DATASET_CHECK = Path("data/dataset.json")
MANIFEST = Path("data/manifest.parquet")
VALIDATION = Path("reports/validation")
VALIDATION_SUMMARY = VALIDATION / "summary.json"
SHARDS = Path("data/shards")
MODELS = Path("models")
BEST_MODEL = MODELS / "best.pt"
RUN_INFO = MODELS / "run.json"
TRAIN_METRICS = Path("reports/train_metrics.json")
TRAIN_CURVE = Path("reports/train_curve.csv")
BEST_TRAIN_PARAMS = Path("reports/best_train_params.yaml")
DECISION_PROBS = Path("data/probs/decision")  # dev, else val: where crf_tune decides
CRF_PARAMS = Path("reports/crf_params.json")
METRICS = Path("reports/metrics.json")
EVAL_REPORT = Path("reports/eval")
IMAGE_COUNTS = Path("reports/eval_image_counts.npz")
REGISTRY_RECORD = Path("reports/registry.json")
GATE_REPORT = Path("reports/gate.md")
RETRAIN_LOG = Path("reports/retrain_log.jsonl")
RETRAIN_LOCK = Path("reports/retrain.lock")
SEARCH = Path("reports/search")
GENOTYPE = SEARCH / "genotype.json"
SEARCH_HISTORY = SEARCH / "history"
#: The serving spec evaluate scored with, inside the report directory (register reads it).
SERVING_SPEC = EVAL_REPORT / "serving.json"
