"""The report's text, rendered twice: ``report.md`` and a self-contained ``index.html``.

:class:`Content` holds everything the two pages say (the header of :mod:`.header`, the tables of
:mod:`.tables`, the speed sentence, the notes, the samples and figures) and renders it once as
markdown and once as HTML, so the two pages carry the same content in the same order. It is
built from a plain dict (``report_data.json`` in the report directory), so the register stage
can render the pages again with the registry version filled in without recomputing anything.
The HTML has its CSS inline, no scripts, and refers to images by relative path only, so the
directory opens offline wherever it is copied or logged.
"""

from __future__ import annotations

import html
import re

from segflow.data.datasets.base import ClassInfo
from segflow.evaluate.report.header import Provenance
from segflow.evaluate.report.tables import (
    DICE_NOTE,
    class_table,
    crf_regressions,
    hex_colour,
    percent,
    summary_table,
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1240px; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.55em; }
th { background: #f0f0f0; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; } .text { text-align: left; white-space: nowrap; }
table.header th { text-align: left; } table.header td { white-space: normal; }
tr.worse td { background: #fde8e8; }
img { max-width: 100%; display: block; margin: 1em 0; }
figure { margin: 1.5em 0; } figcaption { font-size: 0.95em; color: #333; }
.note { font-size: 0.9em; color: #555; }
.swatch { display: inline-block; width: 1em; height: 1em; border: 1px solid #555;
          vertical-align: middle; margin-right: 0.4em; }
ul.legend { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1.4em; }
"""

#: Columns of text (left-aligned); every other column holds numbers (right-aligned).
_TEXT_COLUMNS = ("class", "metric", "colour", "")


class Content:
    """The report's tables and text, rendered once as markdown and once as HTML.

    ``data`` is what :func:`segflow.evaluate.report.write.write_report` stores as
    ``report_data.json``: title, protocol, classes, the metrics without (``before``) and with
    (``after``, or None) the CRF with NaN as None, ``crf_served``, speed, samples (id, PNG path,
    caption), the provenance and the figures drawn."""

    NAN_NOTE = (
        "A dash marks a class absent from both ground truth and prediction: it is not scored "
        "and is left out of the means. A class predicted but absent from the ground truth has "
        "IoU 0 %. Pixels labelled 255 are not scored. pp: percentage points."
    )

    def __init__(self, data: dict) -> None:
        self.data = data
        self.title = data["title"]
        self.protocol = data.get("protocol", "")
        self.classes = [ClassInfo.from_dict(c) for c in data["classes"]]
        self.before, self.after = data["before"], data.get("after")
        self.crf_served = bool(data.get("crf_served")) and self.after is not None
        self.speed = data.get("speed") or {}
        self.samples = data.get("samples", [])
        self.provenance = Provenance.from_dict(data.get("provenance") or {})
        self.figures = data.get("figures", {})

    def speed_text(self) -> str:
        """One paragraph on speed and memory, saying how each figure was measured; it says
        "not measured" rather than print a number that was not."""
        s = self.speed
        if not s:
            return "Speed and memory were not measured."
        size = "x".join(str(v) for v in s.get("image_size", [])) or "?"
        text = (
            f"{s['ms_per_image_median']:.1f} ms per image (median of {s.get('repeats', '?')} "
            f"timed runs after {s.get('warmup', '?')} warm-up; {s.get('mode', 'single')} "
            f"inference, {size} input, batch {s.get('batch_size', 1)}, on {s.get('device', '?')})."
        )
        if "ms_per_image" in s:
            text += (
                f" Served path ({s.get('served', '?')}, on a "
                f"{'x'.join(str(v) for v in s.get('served_size', []))} image): "
                f"{s['ms_per_image']:.1f} ms per image, of which the network "
                f"{s['ms_per_image_network']:.1f} ms."
            )
        if "peak_memory_mb" in s:
            what = {
                "cuda_max_allocated": "peak allocated GPU memory (weights, input and activations)",
                "cpu_peak_rss_increase": "peak resident memory added by inference (CPU)",
                "cpu_maxrss_growth": "growth of the peak resident memory (CPU, lower bound)",
            }.get(s.get("memory_measure", ""), "peak memory")
            text += f" {what}: {s['peak_memory_mb']:.1f} MiB."
        return text

    def crf_text(self) -> str:
        """Which classes the CRF makes worse; only when it is served is that a warning."""
        worse = crf_regressions(self.classes, self.before, self.after)
        if self.after is None or not worse:
            return ""
        listed = ", ".join(f"{n} ({percent(b)} -> {percent(a)})" for n, b, a in worse)
        if self.crf_served:
            return (
                f"The served CRF lowers the IoU of {len(worse)} of {len(self.classes)} classes "
                f"(marked worse): {listed}. It was chosen for the mean on the decision split; "
                "check these classes before serving it."
            )
        return f"The CRF (not served) would lower the IoU of: {listed}."

    def samples_text(self) -> str:
        if not self.samples:
            return "No samples (evaluate.num_samples_report: 0)."
        return (
            "Test images chosen by their own mIoU, that of the served prediction: the worst, the "
            "median and the best (more in between with evaluate.num_samples_report above 3). "
            "Panels: the image, its ground truth, the served prediction, the served prediction "
            "blended on the image, its errors in red (pixels labelled 255 are not scored), and "
            "the other prediction (with or without the CRF). Each figure's legend lists the "
            "classes in it; every class's colour is below."
        )

    def curve_text(self) -> str:
        if self.figures.get("training_curve"):
            return (
                "Train loss, validation mIoU and learning rate per epoch "
                "(reports/train_curve.csv); the dashed line is the epoch whose weights are scored."
            )
        return "No training curve: reports/train_curve.csv was not found."

    def markdown(self) -> str:
        """``report.md``."""
        lines = [f"# {self.title}", ""]
        lines += _md_table(["", ""], [list(r) for r in self.provenance.rows()])
        lines += [""] + ([self.protocol, ""] if self.protocol else [])
        lines += ["## Summary", ""]
        lines += _md_table(*summary_table(self.before, self.after))
        lines += ["", DICE_NOTE, "", self.speed_text(), "", "## Per class", ""]
        lines += _md_table(*class_table(self.classes, self.before, self.after, self.crf_served))
        lines += ["", self.NAN_NOTE, ""] + ([self.crf_text(), ""] if self.crf_text() else [])
        lines += ["## Samples", "", self.samples_text(), ""]
        for s in self.samples:
            lines += [f"![{s['id']}]({s['path']})", "", f"*{s['caption'] or s['id']}*", ""]
        lines += ["Colours:", "", "![legend: the colour of each class](legend.png)", ""]
        lines += ["## Training", "", self.curve_text(), ""]
        if self.figures.get("training_curve"):
            lines += ["![training curve](training_curve.png)", ""]
        lines += ["## Figures", ""]
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["![IoU per class](per_class_iou.png)", ""]
        return "\n".join(lines)

    def html(self) -> str:
        """``index.html``: the markdown's content, every piece of text escaped."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>", _html_header(self.provenance.rows())]
        body += [f"<p>{_code_spans(e(self.protocol))}</p>"] if self.protocol else []
        body += ["<h2>Summary</h2>", _html_table(*summary_table(self.before, self.after))]
        body += [f"<p class='note'>{e(DICE_NOTE)}</p>", f"<p>{e(self.speed_text())}</p>"]
        body += ["<h2>Per class</h2>"]
        header, rows = class_table(self.classes, self.before, self.after, self.crf_served)
        body += [_html_table(header, rows)]
        body += [f"<p class='note'>{e(self.NAN_NOTE)}</p>"]
        body += [f"<p>{_code_spans(e(self.crf_text()))}</p>"] if self.crf_text() else []
        body += ["<h2>Samples</h2>", f"<p>{_code_spans(e(self.samples_text()))}</p>"]
        body += [
            f'<figure><img src="{e(s["path"])}" alt="{e(s["id"])}">'
            f"<figcaption>{e(s['caption'] or s['id'])}</figcaption></figure>"
            for s in self.samples
        ]
        body += ["<p>Colours:</p>", _html_legend(self.classes)]
        body += ["<h2>Training</h2>", f"<p>{e(self.curve_text())}</p>"]
        if self.figures.get("training_curve"):
            body += ['<img src="training_curve.png" alt="training curve">']
        body += ["<h2>Figures</h2>"]
        body += ['<img src="confusion_matrix.png" alt="confusion matrix">']
        body += ['<img src="per_class_iou.png" alt="IoU per class">']
        return (
            "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
            f"<title>{e(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body)
            + "\n</body>\n</html>\n"
        )


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table; a '|' inside a cell is escaped so it cannot split the cell."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = [":---" if h in _TEXT_COLUMNS else "---:" for h in header]
    return [line(header), "|" + "|".join(align) + "|"] + [line(r) for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    """A table of text cells; a colour cell gets a swatch, a row whose CRF change says
    "worse" is highlighted."""
    e = html.escape
    cls = ["text" if h in _TEXT_COLUMNS else "num" for h in header]
    head = "".join(f"<th class='{k}'>{e(h)}</th>" for k, h in zip(cls, header, strict=True))

    def cell(kind: str, name: str, text: str) -> str:
        swatch = _swatch(text) if name == "colour" else ""
        return f"<td class='{kind}'>{swatch}{e(text)}</td>"

    def row(cells: list[str]) -> str:
        worse = any(c.endswith(" worse") for c in cells)
        cells_html = "".join(cell(k, h, c) for k, h, c in zip(cls, header, cells, strict=True))
        return f"<tr class='worse'>{cells_html}</tr>" if worse else f"<tr>{cells_html}</tr>"

    body = "".join(row(r) for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_header(rows: list[tuple[str, str]]) -> str:
    """The provenance rows as a two-column table, labels as row headers."""
    e = html.escape
    body = "".join(f"<tr><th>{e(label)}</th><td>{e(text)}</td></tr>" for label, text in rows)
    return f"<table class='header'><tbody>{body}</tbody></table>"


def _html_legend(classes: list[ClassInfo]) -> str:
    """Every class: its swatch and name (the colour's hex as the item's title)."""
    items = "".join(
        f"<li title='{hex_colour(c.color)}'>{_swatch(hex_colour(c.color))}"
        f"{html.escape(c.name)}</li>"
        for c in classes
    )
    return f"<ul class='legend'>{items}</ul>"


def _swatch(colour: str) -> str:
    """A coloured square; ``colour`` is ``#rrggbb`` (made by hex_colour, so safe in CSS)."""
    if not re.fullmatch(r"#[0-9a-f]{6}", colour):
        return ""
    return f"<span class='swatch' style='background:{colour}'></span>"


def _code_spans(text: str) -> str:
    """Markdown `code` spans as <code> in the HTML (applied after escaping the text)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
