"""Pictures of a real run for the README: the evaluation report and a prediction overlay.

Run it in a project after the pipeline has run (``make demo``, or ``dvc repro``):

    python scripts/render_pictures.py              # writes docs/report.png, docs/overlay.png

- ``overlay.png``: a test image, the served model's prediction (models/best.pt with the
  serving spec the evaluate stage scored, reports/eval/serving.json, CRF included when it is
  served) blended over it, its ground truth beside it and a legend of the classes in the
  picture; drawn with the report's own functions, so the colours are the dataset's.
- ``report.png``: a screenshot of reports/eval/index.html taken by headless Chromium when one
  is installed (``--browser``, else ``chromium``, ``chromium-browser`` or ``google-chrome`` on
  PATH); without a browser it is skipped and the script says so.

PNGs are written with the strongest compression and shrunk until each is under ``--max-kb``
(200 KB by default), so they can be committed under docs/.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from segflow.data.datasets.base import ClassInfo
from segflow.data.loader import ShardReader, split_files
from segflow.data.shards import read_index
from segflow.evaluate.report.figures import colorize, legend_strip, overlay
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.io import read_json

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="the project that ran")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    ap.add_argument("--image", type=int, default=0, help="which test image (index)")
    ap.add_argument("--browser", help="a Chromium binary (default: the first on PATH)")
    ap.add_argument("--max-kb", type=int, default=200)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = render_overlay(args.project, args.out / "overlay.png", args.image, args.max_kb)
    print(f"overlay: {path} ({path.stat().st_size // 1024} KB)")
    browser = args.browser or next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("report: no headless Chromium found (chromium, chromium-browser, google-chrome); "
              "no screenshot taken")  # fmt: skip
        return 0
    path = screenshot_report(args.project, args.out / "report.png", browser, args.max_kb)
    print(f"report: {path} ({path.stat().st_size // 1024} KB)")
    return 0


def render_overlay(project: Path, out: Path, which: int, max_kb: int) -> Path:
    """image | prediction over the image | ground truth, captioned, a legend below."""
    index = read_index(project / "data/shards")
    classes = [ClassInfo.from_dict(c) for c in index["classes"]]
    spec = ServingSpec.from_dict(
        read_json(project / "reports/eval/serving.json", "run the evaluate stage"),
        "reports/eval/serving.json",
    )
    predictor = load_predictor(project / "models/best.pt", spec)
    reader = ShardReader(split_files(project / "data/shards", _test_split(project)))
    image, label = reader.decoded(which, native=True)
    pred = predictor.labels(image)
    panels = [
        ("image", image),
        ("prediction over the image", overlay(image, colorize(pred, classes))),
        ("ground truth", colorize(label, classes)),
    ]
    h, w = image.shape[:2]
    scale = max(1, 320 // w)  # small demo images drawn larger, pixels kept sharp
    caption_px, gap = 26, 6
    sheet = np.full((caption_px + h * scale, 3 * w * scale + 2 * gap, 3), 255, np.uint8)
    for i, (caption, panel) in enumerate(panels):
        x = i * (w * scale + gap)
        big = cv2.resize(panel, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
        sheet[caption_px:, x : x + w * scale] = big
        cv2.putText(sheet, caption, (x + 4, caption_px - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.55,
                    (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
    present = set(np.unique(np.concatenate([pred.ravel(), label.ravel()])).tolist())
    legend = legend_strip([c for c in classes if c.id in present], sheet.shape[1])
    return _write_small(out, np.concatenate([sheet, legend]), max_kb)


def _test_split(project: Path) -> str:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    return str((params.get("dataset") or {}).get("test_split") or "test")


def screenshot_report(project: Path, out: Path, browser: str, max_kb: int) -> Path:
    """The report page as headless Chromium draws it, 1200 pixels wide, its top 1500."""
    page = (project / "reports/eval/index.html").resolve()
    if not page.is_file():
        raise SystemExit(f"{page}: not found; run the evaluate stage")
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "report.png"
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp}/profile", f"--screenshot={shot}",
               "--window-size=1200,1500", page.as_uri()]  # fmt: skip
        subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        if not shot.is_file():
            raise SystemExit(f"{browser}: took no screenshot of {page}")
        rgb = cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)
    return _write_small(out, rgb, max_kb)


def _write_small(out: Path, rgb: np.ndarray, max_kb: int) -> Path:
    """Write ``rgb`` as PNG, halving its size until the file is under ``max_kb``."""
    while True:
        ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_PNG_COMPRESSION, 9])  # fmt: skip
        if not ok:
            raise SystemExit(f"{out}: could not encode PNG")
        if len(data) <= max_kb * 1024 or min(rgb.shape[:2]) < 64:
            out.write_bytes(data.tobytes())
            return out
        rgb = cv2.resize(rgb, (rgb.shape[1] * 3 // 4, rgb.shape[0] * 3 // 4),
                         interpolation=cv2.INTER_AREA)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
