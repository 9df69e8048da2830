"""The evaluation report: markdown, self-contained HTML, figures and DVC-plot tables.

:func:`write_report` fills one directory, swapped in atomically (a failed report leaves the
previous one whole):

- ``report.md`` and ``index.html``: the same content; per-class table (IoU without / with CRF,
  accuracy, pixel share), summary metrics, speed and memory, figures, samples. The HTML has its
  CSS inline and refers to images by relative path only, so the directory can be copied or
  logged as an MLflow artifact and still open offline.
- ``confusion_matrix.png``: row-normalised heat maps (before / after CRF), rows = truth.
- ``per_class_iou.png``: IoU per class, bars before vs after CRF.
- ``samples/<id>.png``: image | ground truth | prediction | prediction with CRF, in the dataset's
  colours; ignore (255) and any label outside the class table drawn black.
- ``per_class_iou.csv`` / ``.json``: ``class, iou, iou_crf`` (NaN written as empty / null).
- ``confusion_counts.csv``: exact ``actual, predicted, count[, count_crf]`` for every pair seen.
- ``confusion.csv`` (and ``confusion_crf.csv``): a long ``actual, predicted`` table for DVC's
  confusion templates (why it is long and how its rows are drawn: :mod:`.tables`).

One module per job; imports go one way (write -> figures, render, tables; figures, render ->
tables); outside the package only segflow.data and segflow.io are imported:

- :mod:`.write`: :func:`write_report`, which lays out the directory and calls the others.
- :mod:`.figures`: the PNGs (sample panels, confusion heat map, IoU bars) and :func:`colorize`.
- :mod:`.tables`: the numbers as tables: the per-class and summary tables both renderers show,
  the CSV/JSON files for DVC plots, the long confusion table, how a metric is written.
- :mod:`.render`: those tables and the text around them as markdown and as HTML.
"""

from segflow.evaluate.report.figures import (
    GAP_PX,
    HEADER_PX,
    MAX_PANEL_WIDTH,
    QualitativeSample,
    colorize,
)
from segflow.evaluate.report.tables import confusion_rows
from segflow.evaluate.report.write import write_report

__all__ = [
    "GAP_PX",
    "HEADER_PX",
    "MAX_PANEL_WIDTH",
    "QualitativeSample",
    "colorize",
    "confusion_rows",
    "write_report",
]
