"""``segflow export``: the served model as an ONNX or TorchScript file, with its spec beside it.

A deployment outside Python (onnxruntime in a C++ service, TensorRT, a phone) needs the network
*and* everything the served path does around it, or its labels quietly differ from the scored
ones. So the file holds :class:`segflow.deploy.graph.ServedGraph` (training-scale resize,
normalisation, the scored inference mode, logits back at the image's size, optionally argmax),
and ``export.json`` beside it says the rest: the input's name, dtype and layout, the classes,
whether the dense CRF (which stays outside: it is iterative mean-field on the CPU) is applied
after it and with which settings, the source model and the sha256 of what it was built from.

Before an export is written, it is checked against the PyTorch served path on two images of
sizes it was not traced at; a file whose labels differ on more than 1% of their pixels is not
written (:data:`MIN_AGREEMENT`). A model the exporter cannot take is one line saying why.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), the
exporter PyTorch maintains. TorchScript is ``torch.jit.script`` of the same graph module with the
network *traced* once per size it runs at: the zoo's networks are not scriptable, and a trace
records the Python branches of one input size (U-Net pads to a multiple of 16 only when it must),
so every traced size is one the graph really uses; with no training scale in the spec the
network runs at the image's own size and the trace is checked at other sizes before it is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segflow.deploy.graph import INPUT, LABELS, PROBS, ServedGraph
from segflow.errors import SegflowError
from segflow.evaluate.serving import Predictor, ServingSpec
from segflow.io import atomic_path
from segflow.lifecycle.registration import (
    CHECKPOINT,
    SERVING,
    URI_FORMS,
    fetch_checked,
    sha256_file,
)

FORMATS = ("onnx", "torchscript")
#: The file each format is written to, and the spec beside it.
MODEL_FILE = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
SPEC_FILE = "export.json"
#: ONNX opset: 18 runs on onnxruntime >= 1.14 and TensorRT 8.6+/10.
OPSET = 18
#: Share of pixels whose labels must equal the served path's on each of the exporter's own
#: check images. A broken export (a trace that does not generalise, a wrong op) disagrees on
#: most pixels; the check images are random, where an untrained or unfamiliar model has
#: near-ties, and OpenCV's uint8 linear resize (images smaller than the training scale) rounds
#: its 11-bit fixed-point weights a grey level away from the graph's float ones. The issue's bar,
#: 99.9% on every val image, is measured by the tests and benchmarks/export.py.
MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class Source:
    """A model to export: its network (eval mode), serving spec and classes, and where they
    came from (a model URI or a local checkpoint, with the sha256 of each file)."""

    name: str
    network: nn.Module
    spec: ServingSpec
    classes: list[dict]
    digests: dict[str, str]
    resolved: str | None = None


def load_source(model: str, serving: Path | None = None) -> Source:
    """The model behind ``model``: a model URI (checked by
    :func:`segflow.lifecycle.registration.fetch_checked`, built by the installed segflow) or a
    local checkpoint with the serving spec evaluate wrote (``serving``)."""
    from segflow.models.checkpoint import load_model, model_from_payload, read_checkpoint

    if is_model_uri(model):
        if serving is not None:
            raise SegflowError(
                f"--serving {serving}: only for a local checkpoint; {model} carries its own"
            )
        with tempfile.TemporaryDirectory(prefix="segflow-export-") as tmp:
            checked = fetch_checked(model, tmp)
            spec = ServingSpec.from_dict(checked.serving, f"{checked.source} serving spec")
            network = load_model(checked.checkpoint)
        return Source(model, network, spec, checked.classes, checked.digests, checked.source)
    checkpoint = Path(model)
    serving = serving or Path("reports/eval/serving.json")
    if not checkpoint.is_file():
        raise SegflowError(f"{checkpoint}: no such checkpoint (nor a model URI: {URI_FORMS})")
    if not serving.is_file():
        raise SegflowError(
            f"{serving}: no serving spec for {checkpoint} (the evaluate stage writes "
            "reports/eval/serving.json; --serving names another)"
        )
    try:
        spec_dict = json.loads(serving.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SegflowError(f"{serving}: not JSON ({exc})") from None
    spec = ServingSpec.from_dict(spec_dict, str(serving))
    payload = read_checkpoint(checkpoint)
    network = model_from_payload(payload, checkpoint)
    classes = payload.get("classes") or []
    digests = {CHECKPOINT: sha256_file(checkpoint), SERVING: sha256_file(serving)}
    return Source(str(checkpoint), network, spec, list(classes), digests)


def is_model_uri(model: str) -> bool:
    """A model URI (registry, logged model, run), as opposed to a local checkpoint path."""
    return model.startswith(("models:/", "runs:/"))


def default_argmax(spec: ServingSpec) -> bool:
    """Labels out, unless the served model applies a CRF, which needs the probabilities."""
    return spec.crf is None


def build_graph(source: Source, argmax: bool | None = None) -> ServedGraph:
    """The graph to export; ``argmax`` None: :func:`default_argmax`."""
    argmax = default_argmax(source.spec) if argmax is None else argmax
    if argmax and source.spec.crf is not None:
        raise SegflowError(
            f"{source.name}: --argmax: the served model applies a dense CRF to the "
            "probabilities after the network; export without --argmax (the CRF runs outside)"
        )
    return ServedGraph(source.network, replace(source.spec, crf=None), argmax).eval()


def export_model(source: Source, fmt: str, out_dir: Path, argmax: bool | None = None) -> Path:
    """Write ``out_dir/<model file>`` and ``out_dir/export.json``; returns the model file.

    The file is checked against the PyTorch served path first (:func:`check_agreement`), and
    both files are written atomically, so ``out_dir`` never holds a half-written or an
    unchecked export.
    """
    if fmt not in FORMATS:
        raise SegflowError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    graph = build_graph(source, argmax)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / MODEL_FILE[fmt]
    with atomic_path(target) as tmp, _quiet():
        if fmt == "onnx":
            to_onnx(graph, tmp, source.name)
        else:
            to_torchscript(graph, tmp, source.name)
        runner = load_runner(tmp, fmt)
        agreement = check_agreement(graph, runner, source.spec, source.name, fmt)
    spec = export_spec(source, graph, fmt, target, agreement)
    with atomic_path(out_dir / SPEC_FILE) as tmp:
        tmp.write_text(json.dumps(spec, indent=2) + "\n")
    return target


def example_input(graph: ServedGraph) -> torch.Tensor:
    """A batch of 2 at a size no other dimension has: torch.export specialises sizes 0 and 1,
    and a height equal to another size could be taken for the same symbol."""
    h, w = (graph.height, graph.width) if graph.has_size else (64, 96)
    return torch.randint(0, 256, (2, h + 13, w + 27, 3), dtype=torch.uint8)


def to_onnx(graph: ServedGraph, path: Path, name: str) -> None:
    """``torch.onnx.export(dynamo=True)`` with batch, height and width dynamic."""
    from torch.export import Dim

    dims = {0: Dim.DYNAMIC, 1: Dim.DYNAMIC, 2: Dim.DYNAMIC}
    try:
        program = torch.onnx.export(
            graph,
            (example_input(graph),),
            dynamo=True,
            input_names=[INPUT],
            output_names=[LABELS if graph.argmax else PROBS],
            dynamic_shapes=(dims,),
            opset_version=OPSET,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    except SegflowError:
        raise
    except Exception as exc:  # the exporter's errors are many types; each means "cannot"
        raise SegflowError(f"{name}: cannot export to ONNX ({first_line(exc)})") from None


def to_torchscript(graph: ServedGraph, path: Path, name: str) -> None:
    """``torch.jit.script`` of the graph, the network traced at each size it runs at."""
    sizes = graph.network_sizes()
    network = graph.networks[0]
    try:
        with torch.no_grad():
            traced = [
                torch.jit.trace(network, torch.zeros(1, 3, *(size or (64, 96))), check_trace=False)
                for size in (sizes or [None])
            ]
        scripted = _scripted_copy(graph, traced)
        scripted.save(str(path))
    except SegflowError:
        raise
    except Exception as exc:
        raise SegflowError(f"{name}: cannot export to TorchScript ({first_line(exc)})") from None


def _scripted_copy(graph: ServedGraph, traced: list) -> torch.jit.ScriptModule:
    """Script a shallow copy whose network entries are the traces (the graph stays eager)."""
    import copy

    clone = copy.copy(graph)
    clone._modules = dict(graph._modules)
    copies = len(graph.networks)
    clone.networks = nn.ModuleList(traced if len(traced) == copies else traced * copies)
    return torch.jit.script(clone)


class Runner:
    """Runs an exported file: uint8 N x H x W x 3 in, the graph's output (numpy) out."""

    def __init__(self, path: Path, fmt: str):
        self.fmt = fmt
        if fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(path), options, providers=ort.get_available_providers()
            )
        else:
            self.module = torch.jit.load(str(path), map_location="cpu").eval()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.fmt == "onnx":
            return self.session.run(None, {INPUT: images})[0]
        with torch.no_grad():
            return self.module(torch.from_numpy(images)).numpy()


def load_runner(path: Path, fmt: str) -> Runner:
    return Runner(path, fmt)


def check_images(graph: ServedGraph) -> list[np.ndarray]:
    """Two smooth random images at sizes the export was not traced at: one larger than the
    training scale and one smaller, odd sizes, so both resize paths and the dynamic shapes run."""
    import cv2

    h, w = (graph.height, graph.width) if graph.has_size else (48, 64)
    rng = np.random.default_rng(0)
    images = []
    for height, width in ((h * 3 // 2 + 5, w * 3 // 2 + 7), (max(h * 2 // 3 + 3, 8), w + 1)):
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        images.append(cv2.GaussianBlur(noise, (0, 0), 2.0))
    return images


def check_agreement(
    graph: ServedGraph, run: Runner, spec: ServingSpec, name: str, fmt: str
) -> float:
    """The smallest share of pixels on which the exported file's labels equal the PyTorch
    served path's (before any CRF), over :func:`check_images`; below MIN_AGREEMENT refuses."""
    predictor = Predictor(graph.networks[0], replace(spec, crf=None), "cpu")
    worst = 1.0
    for image in check_images(graph):
        served = predictor.probs(image).argmax(axis=0)
        try:
            out = run(image[None])[0]
        except Exception as exc:  # a trace that holds one size's branches fails on another
            hint = (
                "; the network was traced at one size and branches on its input's size: "
                "--format onnx exports it"
                if fmt == "torchscript" and not graph.has_size
                else ""
            )
            raise SegflowError(
                f"{name}: the {fmt} export fails on a {image.shape[0]}x{image.shape[1]} image "
                f"({first_line(exc)}){hint}; not written"
            ) from None
        labels = out if graph.argmax else out.argmax(axis=0)
        share = float((labels == served).mean())
        worst = min(worst, share)
        if share < MIN_AGREEMENT:
            raise SegflowError(
                f"{name}: the {fmt} export's labels equal the served path's on only "
                f"{100 * share:.2f}% of a {image.shape[0]}x{image.shape[1]} image's pixels "
                f"(at least {100 * MIN_AGREEMENT:.1f}% needed); not written"
            )
    return worst


def export_spec(
    source: Source, graph: ServedGraph, fmt: str, target: Path, agreement: float
) -> dict:
    """What export.json says: everything a deployment needs besides the file."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("segflow")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    spec = source.spec
    crf = spec.crf
    output = (
        {"name": LABELS, "dtype": "uint8", "layout": "NHW", "shape": ["batch", "height", "width"]}
        if graph.argmax
        else {
            "name": PROBS,
            "dtype": "float32",
            "layout": "NCHW",
            "shape": ["batch", len(source.classes) or "classes", "height", "width"],
            "what": "softmax probabilities at the input's size",
        }
    )
    return {
        "format": fmt,
        "file": target.name,
        "sha256": sha256_file(target),
        "opset": OPSET if fmt == "onnx" else None,
        "input": {
            "name": INPUT,
            "dtype": "uint8",
            "layout": "NHWC",
            "channels": "RGB",
            "shape": ["batch", "height", "width", 3],
            "what": "images of any size, as decoded (no resize, no normalisation)",
        },
        "output": output,
        "in_graph": {
            "resize_to": list(spec.input_size) if spec.input_size else None,
            "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
            "inference": {"mode": spec.mode, "options": spec.options},
            "argmax": graph.argmax,
        },
        "crf": {
            "apply": crf is not None,
            "params": crf.to_dict() if crf is not None else None,
            "prob_dtype": spec.prob_dtype,
            "how": (
                "quantise the probabilities as prob_dtype, then segflow.postprocess.crf."
                "dense_crf(RGB image, probabilities, params), then argmax"
                if crf is not None
                else "the served model applies no CRF"
            ),
        },
        "classes": source.classes,
        "source": {
            "model": source.name,
            "resolved": source.resolved,
            "sha256": source.digests,
        },
        "serving": spec.to_dict(),
        "check": {"min_label_agreement": round(agreement, 6), "images": 2},
        "segflow_version": version,
        "torch_version": torch.__version__.split("+")[0],
    }


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and warnings (torchvision absent, deprecations) are
    noise for a user; ``segflow -v`` shows them."""
    from segflow.logs import is_verbose

    if is_verbose():
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (at most 300
    characters; the exporters' messages run to pages)."""
    text = " ".join(str(exc).strip().split("\n")[0].split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def copy_export(files: dict[str, Path], out_dir: Path) -> Path:
    """Put downloaded (checked) export files into ``out_dir`` atomically; the model file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(path, tmp)
    return out_dir / MODEL_FILE["onnx"]


def labels_of(image: np.ndarray, output: np.ndarray, spec: dict) -> np.ndarray:
    """The served label map from one image's graph output, as export.json says: the labels
    themselves, or the probabilities through the dense CRF (when ``crf.apply``) and argmax.

    What a Python deployment runs after the exported file, and what the tests check against
    the served path: the CRF reads the probabilities quantised as evaluate stored them.
    """
    from segflow.postprocess.crf import dense_crf
    from segflow.postprocess.crf_params import CRFParams
    from segflow.postprocess.probs import dequantize, quantize

    if spec["output"]["name"] == LABELS:
        return output
    crf = spec["crf"]
    if crf["apply"]:
        stored = quantize(output, crf["prob_dtype"])
        output = dense_crf(image, dequantize(stored), CRFParams.from_dict(crf["params"]))
    return output.argmax(axis=0).astype(np.uint8)
