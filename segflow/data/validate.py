"""The validate stage's checks: a Great Expectations suite over per-sample statistics.

Every rule is one GX expectation whose description is the rule's name, so the Data Docs page,
``results.json`` and the failure lines all speak of the same rules. The checks run on three small
tables derived from :func:`sample_stats`: ``samples`` (one row per sample), ``splits`` (one row
per expected split) and ``classes`` (one row per class, with its pixels over train).

Outputs under ``out_dir`` (written together, atomically, on success *and* on failure, because
the report is how a user sees what failed; the stage decides to stop the pipeline):

- ``results.json``: the raw GX validation results, ``{table: result.to_json_dict()}``
- ``summary.json``: success, pass/fail per rule, the failure lines, counts
- ``data_docs/index.html``: the GX Data Docs site
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from segflow.data.datasets.base import ClassInfo, DatasetAdapter
from segflow.data.manifest import Manifest
from segflow.data.sample_stats import pixel_column, sample_stats
from segflow.errors import SegflowError
from segflow.io import atomic_dir, write_json

DATA_DOCS_DIR = "data_docs"
#: A failure line names at most this many offenders; summary.json and results.json list all.
MAX_LISTED = 20


@dataclass
class ValidationResult:
    success: bool
    #: One line per failed rule: the rule, how many offenders, and which (ids, files, values).
    failures: list[str]
    #: Per split, the share of mask pixels that are ignored (255 after the value mapping).
    ignored_share: dict[str, float]


@dataclass(frozen=True)
class Rule:
    """One check: a GX expectation on one table, and how to name its offenders."""

    name: str
    table: str
    expectation: str  # class name in gx.expectations
    kwargs: dict[str, Any]
    noun: tuple[str, str]  # what an offender is (one, many), for the failure line
    describe: Callable[[pd.DataFrame], list[str]]  # offending rows -> one item per offender
    hint: str = ""  # how to fix it, once at the end of the failure line


def _per_row(fmt: Callable[[Any], str]) -> Callable[[pd.DataFrame], list[str]]:
    return lambda rows: [fmt(r) for r in rows.itertuples()]


def _duplicate_ids(rows: pd.DataFrame) -> list[str]:
    return [
        f"{sid} ({len(g)} rows: "
        + ", ".join(f"{r.split} {r.image_path}" for r in g.itertuples())
        + ")"
        for sid, g in rows.groupby("id", sort=False)
    ]


def _ids_in_splits(rows: pd.DataFrame) -> list[str]:
    return [f"{sid} (in {g['id_in_splits'].iloc[0]})" for sid, g in rows.groupby("id", sort=False)]


def _shared_images(rows: pd.DataFrame) -> list[str]:
    return [
        f"sha256 {sha[:12]} in "
        + ", ".join(f"{r.id} ({r.split}: {r.image_path})" for r in g.itertuples())
        for sha, g in rows.groupby("image_sha256", sort=False)
    ]


def _empty_splits(rows: pd.DataFrame) -> list[str]:
    return [
        f"{r.split!r} (required, but the manifest has no rows for it)" for r in rows.itertuples()
    ]


SAMPLE = ("sample", "samples")
ID = ("id", "ids")
#: Every stored mask value is a class's (its id, or a folder dataset's ``value:``) or an ignore
#: value (255 unless a folder class table says otherwise): what the class table defines.
MASK_VALUES_RULE = "mask values defined by the class table (class values or ignore)"


def _must_be_null(name: str, column: str, noun: tuple[str, str], describe) -> Rule:
    """A samples rule: ``column`` says what is wrong with a sample, and is null when nothing is.

    This puts the offending value itself (the decode error, the bad labels) in the GX report.
    """
    return _must_be_null_in("samples", name, column, noun, describe)


def _must_be_null_in(
    table: str, name: str, column: str, noun: tuple[str, str], describe, hint: str = ""
) -> Rule:
    return Rule(name, table, "ExpectColumnValuesToBeNull", {"column": column}, noun, describe, hint)


RULES: list[Rule] = [
    _must_be_null(
        "image decodable", "image_error", SAMPLE, _per_row(lambda r: f"{r.id} ({r.image_error})"),
    ),
    _must_be_null(
        "mask decodable", "mask_error", SAMPLE, _per_row(lambda r: f"{r.id} ({r.mask_error})"),
    ),
    _must_be_null(
        "image and mask the same size", "size_mismatch", SAMPLE,
        _per_row(lambda r: f"{r.id} ({r.mask_path}: {r.size_mismatch})"),
    ),
    _must_be_null(
        MASK_VALUES_RULE, "labels_outside_table", SAMPLE,
        _per_row(lambda r: f"{r.id} ({r.mask_path}: values [{r.labels_outside_table}])"),
    ),
    Rule(
        "ids unique", "samples", "ExpectColumnValuesToBeUnique", {"column": "id"}, ID,
        _duplicate_ids,
    ),
    _must_be_null("splits disjoint (no id in two splits)", "id_in_splits", ID, _ids_in_splits),
    _must_be_null(
        "splits disjoint (no identical image sha256 in two splits)", "image_in_splits",
        ("image", "images"), _shared_images,
    ),
    Rule(
        "every split non-empty", "splits", "ExpectColumnValuesToBeBetween",
        {"column": "n_samples", "min_value": 1}, ("split", "splits"), _empty_splits,
    ),
    _must_be_null_in(
        "splits", "ignored pixels at most dataset.max_ignored_share", "too_many_ignored",
        ("split", "splits"), _per_row(lambda r: f"{r.split} ({r.too_many_ignored})"),
        hint="; a folder dataset's class table maps stored mask values to classes with `value:`",
    ),
    Rule(
        "every class present in train", "classes", "ExpectColumnValuesToBeBetween",
        {"column": "train_pixels", "min_value": 1},
        ("class with no train pixels", "classes with no train pixels"),
        _per_row(lambda r: f"{r.class_id} {r.class_name}"),
    ),
]  # fmt: skip

#: Columns GX reports for each offending row (and that map results back to table rows).
INDEX_COLUMNS = {
    "samples": ["row", "id", "split"],
    "splits": ["row", "split"],
    "classes": ["row", "class_id", "class_name"],
}


def validate(
    manifest: Manifest,
    adapter: DatasetAdapter,
    out_dir: Path,
    required_splits: Sequence[str] = ("train",),
    num_workers: int | None = None,
    max_ignored_share: float = 0.5,
) -> ValidationResult:
    """Check every sample of ``manifest`` against :data:`RULES` and write the report to ``out_dir``.

    ``required_splits`` are splits that must have samples even if the manifest never names them.
    ``num_workers`` threads decode the files (default: one per CPU, at most 8). A split whose
    share of ignored (255) pixels exceeds ``max_ignored_share`` fails: most often the mask
    values are not the ones the class table expects (0/255 binary masks), and training would
    quietly learn from a fraction of the labels.
    """
    out_dir = Path(out_dir).resolve()  # GX's Data Docs site needs an absolute directory
    workers = num_workers or min(8, os.cpu_count() or 1)
    stats = sample_stats(manifest, adapter, num_workers=workers)
    tables = {
        "samples": samples_table(stats),
        "splits": splits_table(manifest, required_splits, stats, max_ignored_share),
        "classes": classes_table(stats, manifest.classes),
    }
    with atomic_dir(out_dir) as tmp:
        gx_results = run_expectations(tables, docs_dir=tmp / DATA_DOCS_DIR)
        outcomes = [_outcome(rule, gx_results[rule.table], tables[rule.table]) for rule in RULES]
        failures = [o["line"] for o in outcomes if not o["success"]]
        success = not failures
        write_json(tmp / "results.json", {t: r.to_json_dict() for t, r in gx_results.items()})
        write_json(
            tmp / "summary.json",
            {
                "success": success,
                "rules": {
                    o["rule"]: {k: v for k, v in o.items() if k not in ("rule", "line")}
                    for o in outcomes
                },
                "failures": failures,
                "counts": _counts(stats, tables),
                "data_docs": f"{DATA_DOCS_DIR}/index.html",
            },
        )
    return ValidationResult(
        success=success,
        failures=failures,
        ignored_share=_ignored_shares(tables["splits"]),
    )


def samples_table(stats: pd.DataFrame) -> pd.DataFrame:
    """One row per sample; each checked column is null when the sample passes that rule."""
    t = stats[
        ["id", "split", "image_path", "mask_path", "image_sha256", "image_error", "mask_error"]
    ]
    t = t.assign(row=range(len(t)))
    sizes = stats[["image_height", "image_width", "mask_height", "mask_width"]]
    mismatch = sizes.notna().all(axis=1) & (
        (sizes["image_height"] != sizes["mask_height"])
        | (sizes["image_width"] != sizes["mask_width"])
    )
    t["size_mismatch"] = [
        f"image {s.image_height}x{s.image_width}, mask {s.mask_height}x{s.mask_width}"
        if bad
        else None
        for s, bad in zip(sizes.itertuples(), mismatch.fillna(False), strict=True)
    ]
    t["labels_outside_table"] = [
        ", ".join(map(str, v)) if isinstance(v, list) and v else None
        for v in stats["labels_outside_table"]
    ]
    t["id_in_splits"] = _other_splits(stats, "id")
    t["image_in_splits"] = _other_splits(stats, "image_sha256")
    return t


def _other_splits(stats: pd.DataFrame, key: str) -> list[str | None]:
    """Per row: the splits its ``key`` value occurs in when that is more than one, else None."""
    splits = stats.groupby(key, sort=False)["split"].agg(lambda s: sorted(set(s)))
    return [", ".join(splits[k]) if len(splits[k]) > 1 else None for k in stats[key]]


def splits_table(
    manifest: Manifest,
    required_splits: Iterable[str],
    stats: pd.DataFrame,
    max_ignored_share: float = 0.5,
) -> pd.DataFrame:
    """One row per expected split (those in the manifest plus the required ones).

    ``too_many_ignored`` is null unless the split's share of ignored pixels is above
    ``max_ignored_share``; then it names the share and every stored mask value found, with its
    share, so the user sees which value the class table should map.
    """
    counts = manifest.frame["split"].value_counts()
    required = list(required_splits)
    names = sorted(set(counts.index) | set(required))
    ignored, excess = [], []
    for name in names:
        rows = stats[(stats["split"] == name) & stats["mask_values"].notna()]
        values: dict[int, int] = {}
        for found in rows["mask_values"]:
            for value, pixels in found.items():
                values[value] = values.get(value, 0) + pixels
        total = sum(values.values())
        share = int(rows["pixels_ignore"].sum()) / total if total else 0.0
        ignored.append(share)
        excess.append(
            _ignored_message(share, max_ignored_share, values, manifest)
            if share > max_ignored_share
            else None
        )
    return pd.DataFrame(
        {
            "row": range(len(names)),
            "split": names,
            "n_samples": [int(counts.get(n, 0)) for n in names],
            "required": [n in required for n in names],
            "ignored_share": ignored,
            "too_many_ignored": excess,
        }
    )


def _ignored_shares(splits: pd.DataFrame) -> dict[str, float]:
    return {
        s: round(float(v), 6) for s, v in zip(splits["split"], splits["ignored_share"], strict=True)
    }


def _ignored_message(share: float, limit: float, values: dict[int, int], manifest: Manifest) -> str:
    total = sum(values.values())
    found = ", ".join(f"{v} ({100 * n / total:.1f}%)" for v, n in sorted(values.items()))
    message = (
        f"{100 * share:.1f}% of mask pixels ignored, limit {100 * limit:g}%; "
        f"mask values found: {found}"
    )
    if manifest.ignore_values is not None:  # a class table the user wrote says what is ignored
        message += f"; ignored: {', '.join(map(str, manifest.ignore_values)) or 'none'}"
    return message


def classes_table(stats: pd.DataFrame, classes: list[ClassInfo]) -> pd.DataFrame:
    """One row per class: pixels and samples that contain it, over the train split."""
    train = stats[stats["split"] == "train"]
    pixels = [train[pixel_column(c.id)].fillna(0) for c in classes]
    return pd.DataFrame(
        {
            "row": range(len(classes)),
            "class_id": [c.id for c in classes],
            "class_name": [c.name for c in classes],
            "train_pixels": [int(p.sum()) for p in pixels],
            "train_samples": [int((p > 0).sum()) for p in pixels],
        }
    )


def run_expectations(tables: dict[str, pd.DataFrame], docs_dir: Path) -> dict[str, Any]:
    """Run one GX suite per table in a throw-away context; build the Data Docs into ``docs_dir``.

    Returns ``{table: ExpectationSuiteValidationResult}``.
    """
    # Imported here: GX takes seconds to import, and `segflow --help` should not pay for it.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars={"globally": False, "metric_calculations": False},
        data_docs_sites={
            "segflow": {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("segflow")
    run_id = RunIdentifier(run_name="segflow-validate", run_time=datetime.now(UTC))
    results = {}
    for table, frame in tables.items():
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for rule in (r for r in RULES if r.table == table):
            cls = getattr(gx.expectations, rule.expectation)
            suite.add_expectation(
                cls(**rule.kwargs, description=rule.name, meta={"rule": rule.name})
            )
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=table, data=batch, suite=suite)
        )
        results[table] = definition.run(
            batch_parameters={"dataframe": frame},
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": INDEX_COLUMNS[table],
            },
            run_id=run_id,
        )
    context.build_data_docs(site_names=["segflow"])
    return results


def _outcome(rule: Rule, suite_result: Any, table: pd.DataFrame) -> dict:
    """The pass/fail of ``rule`` and, when it failed, its failure line and offenders."""
    (result,) = [r for r in suite_result.results if r.expectation_config.meta["rule"] == rule.name]
    outcome: dict = {
        "rule": rule.name,
        "success": bool(result.success),
        "expectation": rule.expectation,
    }
    if result.success:
        return outcome
    rows = sorted({int(u["row"]) for u in result.result.get("unexpected_index_list") or []})
    if not rows:
        # GX could not evaluate the check (an error, not a data finding): fail and say why.
        outcome["line"] = (
            f"{rule.name}: the check raised: {_exception_messages(result.exception_info)}"
        )
        return outcome
    items = rule.describe(table.iloc[rows])
    listed = ", ".join(items[:MAX_LISTED])
    more = f", and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    outcome["offenders"] = items
    noun = rule.noun[0] if len(items) == 1 else rule.noun[1]
    outcome["line"] = f"{rule.name}: {len(items)} {noun}: {listed}{more}{rule.hint}"
    return outcome


def _exception_messages(info: dict | None) -> str:
    """GX keeps one exception at the top level, or one per failed metric: collect them all."""
    if not info:
        return "no details from Great Expectations"
    if "exception_message" in info:
        return str(info["exception_message"])
    return "; ".join(str(v["exception_message"]) for v in info.values() if isinstance(v, dict))


def _counts(stats: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict:
    classes = tables["classes"]
    return {
        "samples": len(stats),
        "splits": dict(
            zip(tables["splits"]["split"], tables["splits"]["n_samples"].map(int), strict=True)
        ),
        "images_not_decodable": int(stats["image_error"].notna().sum()),
        "masks_not_decodable": int(stats["mask_error"].notna().sum()),
        "train_pixels_per_class": dict(
            zip(classes["class_name"], classes["train_pixels"].map(int), strict=True)
        ),
        "ignored_share": _ignored_shares(tables["splits"]),
    }


def require_passed(summary_path: Path) -> None:
    """Stop a downstream stage unless the last validation report says every rule passed.

    DVC already stops the pipeline when validate fails; this guards a stage script that is run
    by hand after a failed validation.
    """
    summary_path = Path(summary_path)
    if not summary_path.is_file():
        raise SegflowError(f"{summary_path}: no validation report; run dvc repro validate first")
    summary = json.loads(summary_path.read_text())
    if not summary.get("success"):
        failed = "; ".join(summary.get("failures", [])[:3])
        raise SegflowError(f"{summary_path}: the data failed validation ({failed})")
