"""The report's text, rendered twice: ``report.md`` and a self-contained ``index.html``.

:class:`Content` holds everything the two pages say (the tables come from :mod:`.tables`, the
speed sentence, the notes, the DVC snippet) and renders it once as markdown and once as HTML, so
the two pages carry the same content in the same order. The HTML has its CSS inline, no
scripts, and refers to images by relative path only, so the directory opens offline wherever
it is copied or logged.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

from segflow.data.datasets.base import ClassInfo
from segflow.evaluate.report.tables import class_table, summary_table

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
th { background: #f0f0f0; }
.num { text-align: right; } .text { text-align: left; }
img { max-width: 100%; display: block; margin: 1em 0; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #555; }
.note { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 1em; }
"""

#: Columns of text (left-aligned); every other column holds numbers (right-aligned).
_TEXT_COLUMNS = ("class", "metric")


class Content:
    """The report's tables and text, rendered once as markdown and once as HTML.

    ``sample_files`` are (sample id, relative PNG path) pairs; ``out_dir`` is where the report
    will live, named in the DVC snippet so it can be pasted into dvc.yaml as it is."""

    CONFUSION_NOTE = (
        "`confusion.csv` is a long `actual,predicted` table for DVC's confusion templates, which "
        "count rows: each true class gets the same number of rows, split over the predicted "
        "classes in proportion to its pixels, so `confusion_normalized` with `y: actual` draws "
        "the row-normalised matrix. Exact pixel counts per (actual, predicted) pair are in "
        "`confusion_counts.csv`."
    )
    NAN_NOTE = (
        "A dash marks a class absent from both ground truth and prediction: it is not scored "
        "and is left out of the means. A class predicted but absent from the ground truth has "
        "IoU 0. Pixels labelled 255 are not scored."
    )

    def __init__(
        self,
        title: str,
        classes: Sequence[ClassInfo],
        before: dict,
        after: dict | None,
        speed: dict,
        sample_files: Sequence[tuple[str, str]],
        out_dir: Path,
        protocol: str = "",
    ) -> None:
        self.title = title
        self.protocol = protocol
        self.classes = classes
        self.before, self.after = before, after
        self.speed = speed
        self.samples = sample_files
        self.out_dir = out_dir

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

    def dvc_snippet(self) -> str:
        """The ``plots:`` entries of dvc.yaml that draw this report's tables."""
        d = self.out_dir.as_posix()
        return (
            "plots:\n"
            f"  - {d}/per_class_iou.csv:\n"
            "      template: bar_horizontal\n"
            "      x: iou          # iou_crf for the CRF column\n"
            "      y: class\n"
            f"  - {d}/confusion.csv:\n"
            "      template: confusion_normalized\n"
            "      x: predicted\n"
            "      y: actual\n"
        )

    def markdown(self) -> str:
        """``report.md``."""
        lines = [f"# {self.title}", ""]
        lines += [self.protocol, ""] if self.protocol else []
        lines += ["## Summary", ""]
        lines += _md_table(*summary_table(self.before, self.after))
        lines += ["", self.speed_text(), "", "## Per class", ""]
        lines += _md_table(*class_table(self.classes, self.before, self.after))
        lines += ["", self.NAN_NOTE, "", "## Figures", ""]
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
        lines += ["![IoU per class](per_class_iou.png)", ""]
        if self.samples:
            lines += ["## Samples", ""]
            for sid, path in self.samples:
                lines += [f"![{sid}]({path})", ""]
        lines += ["## DVC plots", "", self.CONFUSION_NOTE, "", "```yaml"]
        lines += [self.dvc_snippet().rstrip("\n")]
        lines += ["```", ""]
        return "\n".join(lines)

    def html(self) -> str:
        """``index.html``: the markdown's content, every piece of text escaped."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        body += [f"<p>{_code_spans(e(self.protocol))}</p>"] if self.protocol else []
        body += ["<h2>Summary</h2>", _html_table(*summary_table(self.before, self.after))]
        body += [f"<p>{e(self.speed_text())}</p>", "<h2>Per class</h2>"]
        body += [_html_table(*class_table(self.classes, self.before, self.after))]
        body += [f"<p class='note'>{e(self.NAN_NOTE)}</p>"]
        body += ["<h2>Figures</h2>"]
        body += ['<img src="confusion_matrix.png" alt="confusion matrix">']
        body += ['<img src="per_class_iou.png" alt="IoU per class">']
        if self.samples:
            body += ["<h2>Samples</h2>"]
            body += [
                f'<figure><img src="{e(path)}" alt="{e(sid)}"><figcaption>{e(sid)}</figcaption>'
                "</figure>"
                for sid, path in self.samples
            ]
        body += ["<h2>DVC plots</h2>", f"<p>{_code_spans(e(self.CONFUSION_NOTE))}</p>"]
        body += [f"<pre>{e(self.dvc_snippet())}</pre>"]
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
    e = html.escape
    cls = ["text" if h in _TEXT_COLUMNS else "num" for h in header]
    head = "".join(f"<th class='{k}'>{e(h)}</th>" for k, h in zip(cls, header, strict=True))
    body = "".join(
        "<tr>"
        + "".join(f"<td class='{k}'>{e(c)}</td>" for k, c in zip(cls, r, strict=True))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _code_spans(text: str) -> str:
    """Markdown `code` spans as <code> in the HTML (applied after escaping the text)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
