"""The evaluation report: every file written, links resolve, tables complete, PNG layouts."""

from __future__ import annotations

import csv
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segflow.data.datasets.base import ClassInfo
from segflow.evaluate.metrics import ConfusionMatrix
from segflow.evaluate.report import (
    COLUMNS,
    GAP_PX,
    HEADER_PX,
    MAX_PANEL_WIDTH,
    MIN_PANEL_WIDTH,
    Provenance,
    QualitativeSample,
    colorize,
    confusion_rows,
    panel_origin,
    panel_size,
    pick_samples,
    registry_text,
    render_registered,
    write_report,
)

CLASSES = [
    ClassInfo(0, "road", (128, 64, 128)),
    ClassInfo(1, "sky", (70, 130, 180)),
    ClassInfo(2, "car", (0, 0, 142)),
    ClassInfo(3, "bicyclist", (119, 11, 32)),  # never in truth nor prediction below
]
SPEED = {
    "ms_per_image_median": 12.5,
    "peak_memory_mb": 321.0,
    "memory_measure": "cpu_peak_rss_increase",
    "device": "cpu",
    "image_size": [24, 32],
    "batch_size": 1,
    "mode": "single",
    "repeats": 5,
    "warmup": 1,
}


def scene(seed: int, height: int = 24, width: int = 32):
    rng = np.random.default_rng(seed)
    label = np.zeros((height, width), np.uint8)
    label[: height // 3] = 1
    label[height // 2 :, width // 4 : width // 2] = 2
    label[0, :4] = 255
    pred = label.copy()
    pred[pred == 255] = 0
    flip = rng.random(label.shape) < 0.2
    pred[flip] = rng.integers(0, 3, int(flip.sum()))
    crf = label.copy()
    crf[crf == 255] = 0
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return image, label, pred, crf


def make_inputs(with_crf: bool = True, ids=("a", "b")):
    cm_b, cm_a = ConfusionMatrix(len(CLASSES)), ConfusionMatrix(len(CLASSES))
    samples = []
    for i, sid in enumerate(ids):
        image, label, pred, crf = scene(i)
        cm_b.update(torch.from_numpy(label), torch.from_numpy(pred))
        cm_a.update(torch.from_numpy(label), torch.from_numpy(crf))
        samples.append(QualitativeSample(sid, image, label, pred, crf if with_crf else None))
    after = cm_a.compute() if with_crf else None
    cm_after = cm_a.mat.numpy() if with_crf else None
    return cm_b.compute(), after, cm_b.mat.numpy(), cm_after, samples


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def iou_of(cm: np.ndarray) -> np.ndarray:
    """IoU per class straight from the confusion matrix (rows = truth), NaN for an empty union:
    the numbers every per-class table must show, computed here without segflow's metrics."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    return np.array([t / u if u else np.nan for t, u in zip(tp, union, strict=True)])


def as_percent(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.2f} %"


def hex_of(color) -> str:
    return "#" + "".join(f"{v:02x}" for v in color)


def md_class_rows(md: str) -> dict[str, list[str]]:
    """The per-class markdown table: class name -> cells (id, colour, class, IoU, IoU (CRF),
    CRF change, ...)."""
    lines = md.split("## Per class", 1)[1].split("##", 1)[0].splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]  # [0] is the header
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]] for row in rows]
    return {c[2]: c for c in cells}


class _Tables(HTMLParser):
    """The text of every table cell, table by table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.in_cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self.in_cell = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False

    def handle_data(self, data):
        if self.in_cell:
            self.tables[-1][-1][-1] += data


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


PROTOCOL = "Scored once on `test` at the masks' native size & <no> resizing."
EXTRA = {"protocol.json": {"split": "test", "scales": [0.5, 1.0], "crf": None}}


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    before, after, cm_b, cm_a, samples = make_inputs()
    out = tmp_path / "eval"
    write_report(
        out, CLASSES, before, after, cm_b, cm_a, samples, SPEED, "test <report>", PROTOCOL, EXTRA
    )
    return out


def test_all_report_files_are_written_and_nothing_else(report_dir: Path):
    expected = {
        "report.md",
        "index.html",
        "confusion_matrix.png",
        "per_class_iou.png",
        "per_class_iou.csv",
        "per_class_iou.json",
        "confusion.csv",
        "confusion_crf.csv",
        "confusion_counts.csv",
        "samples/a.png",
        "samples/b.png",
        "legend.png",
        "report_data.json",
        "protocol.json",
    }
    written = {p.relative_to(report_dir).as_posix() for p in report_dir.rglob("*") if p.is_file()}
    assert written == expected
    assert not list(report_dir.parent.glob(".eval.*"))  # no temp directory left behind


def test_extra_files_are_the_json_they_were_given(report_dir: Path):
    assert json.loads((report_dir / "protocol.json").read_text()) == EXTRA["protocol.json"]


def test_title_and_protocol_open_both_pages_escaped_in_the_html(report_dir: Path):
    md = (report_dir / "report.md").read_text()
    assert md.startswith("# test <report>\n\n")
    assert f"\n\n{PROTOCOL}\n\n## Summary" in md  # after the header, before the numbers
    page = (report_dir / "index.html").read_text()
    assert "<title>test &lt;report&gt;</title>" in page
    assert "<h1>test &lt;report&gt;</h1>" in page
    assert "<p>Scored once on <code>test</code> at the masks&#x27; native size &amp; " in page


def test_html_tables_hold_the_same_cells_as_the_markdown_tables(report_dir: Path):
    md = (report_dir / "report.md").read_text()
    parser = _Tables()
    parser.feed((report_dir / "index.html").read_text())
    header, summary, per_class = parser.tables
    assert [row[0] for row in header][:3] == ["model", "training", "MLflow run"]
    # mDice and mFscore are one number: one row, and a note says why
    assert summary[0] == ["metric", "without CRF", "with CRF"] and len(summary) == 1 + 7
    assert "mean Dice = mean F-score (mDice, mFscore)" in [row[0] for row in summary]
    assert "2TP / (2TP + FP + FN), which is the Dice coefficient" in md
    assert [row[2] for row in per_class[1:]] == [c.name for c in CLASSES]
    assert {row[2]: row for row in per_class[1:]} == md_class_rows(md)


def test_html_is_self_contained_and_references_only_files_that_exist(report_dir: Path):
    text = (report_dir / "index.html").read_text()
    parser = _Links()
    parser.feed(text)
    assert "samples/a.png" in parser.refs and "confusion_matrix.png" in parser.refs
    for ref in parser.refs:
        assert not re.match(r"^[a-z]+:|^/", ref), f"not a relative path: {ref}"
        assert (report_dir / ref).is_file(), ref
    assert "<style>" in text and "<link" not in text and "<script" not in text


def test_markdown_table_has_a_row_per_class_with_the_ious_of_the_confusion_matrices(
    report_dir: Path,
):
    _, _, cm_b, cm_a, _ = make_inputs()
    md = (report_dir / "report.md").read_text()
    rows = md_class_rows(md)
    assert list(rows) == [c.name for c in CLASSES]
    for c, iou, iou_crf in zip(CLASSES, iou_of(cm_b), iou_of(cm_a), strict=True):
        cells = [str(c.id), hex_of(c.color), c.name, as_percent(iou), as_percent(iou_crf)]
        assert rows[c.name][:5] == cells
    # bicyclist is absent from truth and prediction: undefined, shown as dashes
    assert rows["bicyclist"][3:8] == ["-", "-", "-", "-", "-"]
    # the CRF column of the example is perfect on road, and the change is in points
    assert rows["road"][4] == "100.00 %"
    assert rows["road"][5] == f"{100 * (1 - iou_of(cm_b)[0]):+.2f} pp"
    for key in ("pixel accuracy (PA)", "mean accuracy (MPA)", "mean IoU (mIoU)", "(FWIoU)"):
        assert key in md
    assert "12.5 ms per image" in md and "321.0 MiB" in md
    for ref in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (report_dir / ref).is_file(), ref


def test_small_samples_are_enlarged_to_a_readable_grid_of_captioned_panels(report_dir: Path):
    # a 32-pixel-wide image is drawn 10x (nearest neighbour) to reach MIN_PANEL_WIDTH
    assert panel_size(24, 32) == (240, 320) and MIN_PANEL_WIDTH <= 320
    png = cv2.imread(str(report_dir / "samples" / "a.png"), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(png, cv2.COLOR_BGR2RGB)
    assert rgb.shape[1] == COLUMNS * 320 + (COLUMNS - 1) * GAP_PX
    image, label, _, crf = scene(0)
    big = np.repeat(np.repeat(image, 10, axis=0), 10, axis=1)
    y, x = panel_origin(0, (240, 320), titled=False)
    assert y == HEADER_PX
    np.testing.assert_array_equal(rgb[y : y + 240, x : x + 320], big)
    y, x = panel_origin(1, (240, 320), titled=False)
    truth = rgb[y : y + 240, x : x + 320]
    np.testing.assert_array_equal(truth[:10, :40], np.zeros((10, 40, 3)))  # ignore drawn black
    np.testing.assert_array_equal(truth[-1, -1], CLASSES[0].color)
    # six panels (two rows of three) with a CRF: the second row starts with the overlay
    y, x = panel_origin(3, (240, 320), titled=False)
    assert (y, x) == (2 * HEADER_PX + 240 + GAP_PX, 0)
    assert rgb.shape[0] > 2 * (HEADER_PX + 240) + GAP_PX  # the legend strip below


def test_overlay_and_errors_panels_show_the_served_prediction(tmp_path: Path):
    before, after, cm_b, cm_a, samples = make_inputs(ids=("a",))
    out = tmp_path / "r"
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples, {}, crf_served=True)
    rgb = cv2.cvtColor(cv2.imread(str(out / "samples" / "a.png")), cv2.COLOR_BGR2RGB)
    image, label, _, crf = scene(0)
    size = (240, 320)
    up = lambda a: np.repeat(np.repeat(a, 10, axis=0), 10, axis=1)  # noqa: E731
    y, x = panel_origin(2, size, titled=False)  # the served prediction is the CRF's
    np.testing.assert_array_equal(rgb[y : y + 240, x : x + 320], up(colorize(crf, CLASSES)))
    y, x = panel_origin(3, size, titled=False)
    blend = np.rint(0.5 * image.astype(np.float32) + 0.5 * colorize(crf, CLASSES)).astype(np.uint8)
    np.testing.assert_array_equal(rgb[y : y + 240, x : x + 320], up(blend))
    y, x = panel_origin(4, size, titled=False)
    errors = rgb[y : y + 240 : 10, x : x + 320 : 10]
    wrong = (label != 255) & (label != crf)
    assert (errors[wrong] == [255, 0, 0]).all()
    assert not (errors[~wrong] == [255, 0, 0]).all(axis=-1).any()


def test_sample_without_crf_has_five_panels(tmp_path: Path):
    before, _, cm_b, _, samples = make_inputs(with_crf=False, ids=("x",))
    write_report(tmp_path / "r", CLASSES, before, None, cm_b, None, samples, {}, "no crf")
    png = cv2.imread(str(tmp_path / "r" / "samples" / "x.png"))
    assert png.shape[1] == 3 * 320 + 2 * GAP_PX
    y, x = panel_origin(5, (240, 320), titled=False)  # the sixth panel's place stays white
    assert (png[y : y + 240, x : x + 320] == 255).all()
    assert not (tmp_path / "r" / "confusion_crf.csv").exists()
    md = (tmp_path / "r" / "report.md").read_text()
    assert "no CRF" in md and "not measured" in md


def test_wide_images_are_shrunk_to_the_panel_width_limit(tmp_path: Path):
    image, label, pred, _ = scene(0, height=40, width=2 * MAX_PANEL_WIDTH)
    cm = ConfusionMatrix(len(CLASSES))
    cm.update(torch.from_numpy(label), torch.from_numpy(pred))
    sample = QualitativeSample("wide", image, label, pred)
    write_report(tmp_path / "r", CLASSES, cm.compute(), None, cm.mat.numpy(), None, [sample], {})
    png = cv2.imread(str(tmp_path / "r" / "samples" / "wide.png"))
    assert panel_size(40, 2 * MAX_PANEL_WIDTH) == (20, MAX_PANEL_WIDTH)
    assert png.shape[1] == 3 * MAX_PANEL_WIDTH + 2 * GAP_PX


def test_figures_decode_and_grow_with_the_crf_panel(report_dir: Path, tmp_path: Path):
    before, _, cm_b, _, samples = make_inputs(with_crf=False)
    write_report(tmp_path / "r", CLASSES, before, None, cm_b, None, samples, SPEED)
    for name in ("confusion_matrix.png", "per_class_iou.png"):
        png = cv2.imread(str(report_dir / name))
        assert png is not None and png.shape[0] > 200 and png.shape[1] > 300, name
    two = cv2.imread(str(report_dir / "confusion_matrix.png"))
    one = cv2.imread(str(tmp_path / "r" / "confusion_matrix.png"))
    assert two.shape[0] == one.shape[0] and two.shape[1] > 1.5 * one.shape[1] - 100


def test_iou_tables_hold_both_columns_with_nan_as_empty_or_null(report_dir: Path):
    _, _, cm_b, cm_a, _ = make_inputs()
    rows = read_csv(report_dir / "per_class_iou.csv")
    data = json.loads((report_dir / "per_class_iou.json").read_text())
    assert [r["class"] for r in rows] == [c.name for c in CLASSES]
    assert [r["class"] for r in data] == [c.name for c in CLASSES]
    for row, item, iou, iou_crf in zip(rows, data, iou_of(cm_b), iou_of(cm_a), strict=True):
        for key, value in (("iou", iou), ("iou_crf", iou_crf)):
            if np.isnan(value):
                assert row[key] == "" and item[key] is None, (row, item)
            else:  # six places in both files
                assert float(row[key]) == item[key] == round(value, 6), (row, item)
    assert data[3] == {"class": "bicyclist", "iou": None, "iou_crf": None}
    assert float(rows[0]["iou_crf"]) == 1.0


def test_iou_tables_without_crf_leave_the_crf_column_empty(tmp_path: Path):
    before, _, cm_b, _, samples = make_inputs(with_crf=False)
    write_report(tmp_path / "r", CLASSES, before, None, cm_b, None, samples, {})
    rows = read_csv(tmp_path / "r" / "per_class_iou.csv")
    assert [r["iou_crf"] for r in rows] == [""] * len(CLASSES)
    assert float(rows[0]["iou"]) == round(iou_of(cm_b)[0], 6)


def test_confusion_counts_csv_is_exact(report_dir: Path):
    _, _, cm_b, cm_a, _ = make_inputs()
    rows = read_csv(report_dir / "confusion_counts.csv")
    names = [c.name for c in CLASSES]
    got = np.zeros_like(cm_b)
    got_crf = np.zeros_like(cm_a)
    for r in rows:
        i, j = names.index(r["actual"]), names.index(r["predicted"])
        got[i, j] = int(r["count"])
        got_crf[i, j] = int(r["count_crf"])
        assert got[i, j] or got_crf[i, j], r  # only pairs seen in either matrix
    np.testing.assert_array_equal(got, cm_b)
    np.testing.assert_array_equal(got_crf, cm_a)


@pytest.mark.parametrize("name", ["confusion.csv", "confusion_crf.csv"])
def test_long_confusion_table_reproduces_the_row_normalised_matrix(report_dir: Path, name: str):
    _, _, cm_before, cm_after, _ = make_inputs()
    cm_b = cm_before if name == "confusion.csv" else cm_after
    rows = read_csv(report_dir / name)
    names = [c.name for c in CLASSES]
    counts = np.zeros(cm_b.shape)
    for r in rows:
        counts[names.index(r["actual"]), names.index(r["predicted"])] += 1
    present = cm_b.sum(1) > 0
    per_class = counts[present].sum(1)
    assert (per_class == per_class[0]).all()  # the same number of rows per true class
    expected = cm_b[present] / cm_b[present].sum(1, keepdims=True)
    np.testing.assert_allclose(
        counts[present] / per_class[:, None], expected, atol=1 / per_class[0]
    )


def test_confusion_rows_allocates_by_largest_remainder():
    rows = confusion_rows(np.array([[1, 1, 1], [0, 0, 0], [0, 3, 1]]), rows_per_class=4)
    # row 0: 4/3 each -> 1, 1, 1 and one leftover to the first largest remainder (class 0)
    # row 1: no truth pixels, no rows; row 2: 0, 3, 1 exactly
    assert rows == [(0, 0), (0, 0), (0, 1), (0, 2), (2, 1), (2, 1), (2, 1), (2, 2)]


def test_colorize_draws_ignore_and_unknown_labels_black():
    out = colorize(np.array([[0, 2, 255, 9]], np.uint8), CLASSES)
    assert out.tolist() == [[[128, 64, 128], [0, 0, 142], [0, 0, 0], [0, 0, 0]]]


def test_sample_ids_with_slashes_become_file_names_the_html_links(tmp_path: Path):
    before, after, cm_b, cm_a, samples = make_inputs(ids=("city/frame 1", "city_frame_1"))
    write_report(tmp_path / "r", CLASSES, before, after, cm_b, cm_a, samples, SPEED)
    parser = _Links()
    parser.feed((tmp_path / "r" / "index.html").read_text())
    pngs = [ref for ref in parser.refs if ref.startswith("samples/")]
    assert len(set(pngs)) == 2
    assert all((tmp_path / "r" / ref).is_file() for ref in pngs)


def test_rewriting_replaces_the_old_report_and_a_failure_keeps_it(tmp_path: Path):
    before, after, cm_b, cm_a, samples = make_inputs()
    out = tmp_path / "eval"
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples, SPEED, "first")
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples[:1], SPEED, "second")
    assert not (out / "samples" / "b.png").exists()
    bad = QualitativeSample("bad", samples[0].image, samples[0].label, np.zeros((3, 3), np.uint8))
    with pytest.raises(ValueError, match="bad"):
        write_report(out, CLASSES, before, after, cm_b, cm_a, [bad], SPEED, "third")
    assert "# second" in (out / "report.md").read_text()


class _Legend(HTMLParser):
    """(swatch colour, class name) of every item of the page's <ul class='legend'>."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[list[str]] = []
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "ul" and attrs.get("class") == "legend":
            self.depth = 1
        elif self.depth and tag == "li":
            self.items.append(["", ""])
        elif self.depth and tag == "span" and "background:" in (attrs.get("style") or ""):
            self.items[-1][0] = attrs["style"].split("background:")[1]

    def handle_endtag(self, tag):
        if tag == "ul":
            self.depth = 0

    def handle_data(self, data):
        if self.depth and self.items:
            self.items[-1][1] += data


def test_legend_names_every_class_with_its_colour_in_the_table_the_samples_and_a_png(
    report_dir: Path,
):
    page = (report_dir / "index.html").read_text()
    legend = _Legend()
    legend.feed(page)
    # every class of the table, present in the images or not, with its own colour
    assert legend.items == [[hex_of(c.color), c.name] for c in CLASSES]
    assert page.index("<h2>Samples</h2>") < page.index("class='legend'")
    tables = _Tables()
    tables.feed(page)
    per_class = tables.tables[-1]
    assert per_class[0][1] == "colour"
    assert [(row[1], row[2]) for row in per_class[1:]] == [
        (hex_of(c.color), c.name) for c in CLASSES
    ]
    for c in CLASSES:  # a swatch beside each row's colour
        assert f"<span class='swatch' style='background:{hex_of(c.color)}'></span>" in page
    # legend.png: a swatch of each class's exact colour
    png = cv2.cvtColor(cv2.imread(str(report_dir / "legend.png")), cv2.COLOR_BGR2RGB)
    colours = {tuple(int(v) for v in px) for px in png.reshape(-1, 3)}
    assert all(tuple(c.color) in colours for c in CLASSES)
    assert (
        "![legend: the colour of each class](legend.png)" in (report_dir / "report.md").read_text()
    )


PROVENANCE = Provenance(
    model="deeplabv3plus", backbone="resnet18", epochs=12, best_epoch=9, selected_on="val",
    mlflow_run_id="0123456789abcdef0123456789abcdef", mlflow_run_name="deeplabv3plus-resnet18-x",
    git_commit="35f225c0ffee", dataset="camvid", shards_hash="sha256:abcd", evaluated="2026-12-07",
)  # fmt: skip


def header_rows(page: str) -> dict[str, str]:
    tables = _Tables()
    tables.feed(page)
    return dict(tables.tables[0])


def test_header_names_the_model_run_commit_data_and_after_registration_the_version(
    tmp_path: Path,
):
    before, after, cm_b, cm_a, samples = make_inputs()
    out = tmp_path / "eval"
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples, SPEED, provenance=PROVENANCE)
    rows = header_rows((out / "index.html").read_text())
    assert rows["model"] == "deeplabv3plus, backbone resnet18"
    assert rows["training"] == "12 epochs; the weights scored are epoch 9's (best by val mIoU)"
    assert rows["MLflow run"] == "0123456789abcdef0123456789abcdef (deeplabv3plus-resnet18-x)"
    assert rows["git commit"] == "35f225c0ffee"
    assert rows["data"] == "camvid, shards content hash sha256:abcd"
    assert rows["registry"].startswith("not yet registered")  # the evaluate stage's copy
    md = (out / "report.md").read_text()
    assert "| git commit | 35f225c0ffee |" in md

    registered = render_registered(
        out, tmp_path / "logged", registry_text("segflow-camvid", 3, ["champion"])
    )
    for page in ((registered / "index.html").read_text(), (registered / "report.md").read_text()):
        assert "segflow-camvid version 3 (aliases at registration: champion)" in page
        assert "0123456789abcdef0123456789abcdef" in page and "35f225c0ffee" in page
    assert "not yet registered" in (out / "index.html").read_text()  # the original unchanged
    assert (registered / "samples" / "a.png").is_file()


def test_a_fact_that_was_not_recorded_says_so():
    rows = dict(Provenance().rows())
    assert rows["model"] == rows["MLflow run"] == rows["git commit"] == "not recorded"


def test_samples_are_the_worst_median_and_best_images_by_their_own_miou():
    mious = [0.7, float("nan"), 0.2, 0.9, 0.5, 0.4, 0.8]  # image 1 has no scored pixel
    picks = pick_samples(mious, 3)
    order = sorted((m, i) for i, m in enumerate(mious) if m == m)
    # six scored images: the median is the lower of the two middle ones
    assert [p.index for p in picks] == [order[0][1], order[(len(order) - 1) // 2][1], order[-1][1]]
    assert [p.index for p in picks] == [2, 4, 3]
    assert [p.role for p in picks] == ["worst", "median", "best"]
    assert picks[0].caption("f001", "test") == "worst of 6 test images: f001, mIoU 20.00 %"
    assert [p.index for p in pick_samples(mious, 2)] == [2, 3]
    # more than three: the median stays, the others spread over the ranks between
    many = [i / 11 for i in range(12)]  # image i has rank i
    assert [p.rank for p in pick_samples(many, 4)] == [0, 5, 7, 11]
    roles = [p.role for p in pick_samples(many, 4)]
    assert roles == ["worst", "median", "rank 8 (1 = worst)", "best"]
    assert [p.rank for p in pick_samples(many, 5)] == [0, 2, 5, 8, 11]
    assert [p.index for p in pick_samples(mious, 1)] == [4]
    assert pick_samples(mious, 0) == [] and pick_samples([float("nan")], 3) == []
    assert [p.index for p in pick_samples([0.5, 0.5, 0.5], 3)] == [0, 1, 2]  # ties: in order


def test_a_class_the_served_crf_makes_worse_is_flagged(tmp_path: Path):
    before, after, cm_b, cm_a, samples = make_inputs()
    after = {**after, "iou": list(after["iou"])}
    after["iou"][2] = before["iou"][2] - 0.0255  # car: the CRF costs 2.55 points
    out = tmp_path / "r"
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples, {}, crf_served=True)
    md = (out / "report.md").read_text()
    assert md_class_rows(md)["car"][5] == "-2.55 pp worse"
    assert not md_class_rows(md)["road"][5].endswith("worse")
    assert "The served CRF lowers the IoU of 1 of 4 classes (marked worse): car (" in md
    assert "<tr class='worse'>" in (out / "index.html").read_text()
    write_report(out, CLASSES, before, after, cm_b, cm_a, samples, {}, crf_served=False)
    md = (out / "report.md").read_text()  # not served: said, not flagged
    assert "worse" not in md_class_rows(md)["car"][5]
    assert "The CRF (not served) would lower the IoU of: car" in md


def test_training_curve_is_drawn_from_the_curve_rows_and_no_developer_section_remains(
    tmp_path: Path,
):
    before, _, cm_b, _, samples = make_inputs(with_crf=False)
    curve = [
        {"epoch": str(e), "train_loss": str(1 / e), "val_miou": str(0.1 * e), "lr": "0.01"}
        for e in range(1, 5)
    ]
    out = tmp_path / "r"
    write_report(out, CLASSES, before, None, cm_b, None, samples, {}, curve=curve,
                 provenance=Provenance(best_epoch=3))  # fmt: skip
    png = cv2.imread(str(out / "training_curve.png"))
    assert png is not None and png.shape[1] > 800
    md = (out / "report.md").read_text()
    assert "![training curve](training_curve.png)" in md
    assert "DVC plots" not in md and "DVC plots" not in (out / "index.html").read_text()
    write_report(out, CLASSES, before, None, cm_b, None, samples, {})
    assert not (out / "training_curve.png").exists()
    assert "No training curve" in (out / "report.md").read_text()
