"""The evaluation report: markdown, self-contained HTML, figures and DVC-plot tables.

:func:`write_report` fills one directory, swapped in atomically (a failed report leaves the
previous one whole):

- ``report.md`` and ``index.html``: the same content; a header naming the model and its
  provenance (architecture, training, MLflow run, git commit, shards hash, date, registry),
  summary metrics, speed and memory, the per-class table (colour swatch, IoU without / with
  CRF and the change, classes a served CRF makes worse marked), the samples with a legend of
  every class, the training curve and the figures. Every metric is in % with its unit. The
  HTML has its CSS inline and refers to images by relative path only, so the directory can be
  copied or logged as an MLflow artifact and still open offline.
- ``report_data.json``: what the pages say, so :func:`render_registered` can render a copy
  that names the registry version (the register stage logs that copy to the MLflow run).
- ``samples/<id>.png``: the worst, median and best test images by their own mIoU (chosen by
  :func:`pick_samples`): image, truth, served prediction, overlay, errors and the other
  prediction, in the dataset's colours; ignore (255) and any label outside the class table
  drawn black. ``legend.png``: every class's colour.
- ``confusion_matrix.png``: row-normalised heat maps in % (before / after CRF), rows = truth.
- ``per_class_iou.png``: IoU per class in %, bars before vs after CRF.
- ``training_curve.png``: train loss, val mIoU and LR per epoch (from reports/train_curve.csv).
- ``per_class_iou.csv`` / ``.json``: ``class, iou, iou_crf`` (NaN written as empty / null).
- ``confusion_counts.csv``: exact ``actual, predicted, count[, count_crf]`` for every pair seen.
- ``confusion.csv`` (and ``confusion_crf.csv``): a long ``actual, predicted`` table for DVC's
  confusion templates (why it is long and how its rows are drawn: :mod:`.tables`).

One module per job; imports go one way (write -> figures, render, tables, header; figures,
render -> tables, header); outside the package only segflow.data, segflow.errors and
segflow.io are imported:

- :mod:`.write`: :func:`write_report`, which lays out the directory and calls the others, and
  :func:`render_registered`.
- :mod:`.figures`: the PNGs (sample figures, legend, confusion heat map, IoU bars, training
  curve) and :func:`colorize`.
- :mod:`.tables`: the numbers as tables: the per-class and summary tables both renderers show,
  the CSV/JSON files for DVC plots, the long confusion table, how a metric is written.
- :mod:`.header`: the model's identity and provenance (:class:`Provenance`).
- :mod:`.samples`: which images the report shows (:func:`pick_samples`).
- :mod:`.render`: those tables and the text around them as markdown and as HTML.
"""

from segflow.evaluate.report.figures import (
    COLUMNS,
    GAP_PX,
    HEADER_PX,
    MAX_PANEL_WIDTH,
    MIN_PANEL_WIDTH,
    TITLE_PX,
    QualitativeSample,
    colorize,
    panel_origin,
    panel_size,
)
from segflow.evaluate.report.header import REGISTRY_PENDING, Provenance, registry_text
from segflow.evaluate.report.samples import PickedSample, pick_samples
from segflow.evaluate.report.tables import confusion_rows
from segflow.evaluate.report.write import REPORT_DATA, render_registered, write_report

__all__ = [
    "COLUMNS",
    "GAP_PX",
    "HEADER_PX",
    "MAX_PANEL_WIDTH",
    "MIN_PANEL_WIDTH",
    "REGISTRY_PENDING",
    "REPORT_DATA",
    "TITLE_PX",
    "PickedSample",
    "Provenance",
    "QualitativeSample",
    "colorize",
    "confusion_rows",
    "panel_origin",
    "panel_size",
    "pick_samples",
    "registry_text",
    "render_registered",
    "write_report",
]
