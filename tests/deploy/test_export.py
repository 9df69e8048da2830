"""The exported model does what the served path does: labels measured pixel by pixel.

Each export runs on real onnxruntime (or TorchScript) and is compared with
:class:`segflow.evaluate.serving.Predictor` on the val images at their native size (twice the
training scale: the graph's resize and the logits' resize back both run), on sizes it never saw,
on a batch, and through the CRF outside the graph. The bar is the issue's: at least 99.9% of the
pixels of every image.
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from segflow.deploy.export import (
    MODEL_FILE,
    SPEC_FILE,
    Source,
    export_model,
    labels_of,
    load_runner,
    load_source,
)
from segflow.errors import SegflowError
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.postprocess.crf_params import CRFParams
from tests.deploy.conftest import HALF

#: Each export takes seconds to tens of seconds: not for `make test-fast`.
pytestmark = pytest.mark.integration

PARITY = 0.999


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    source = load_source(str(trained.checkpoint), trained.serving_file(out))
    return export_model(source, "onnx", out / "export")


def test_onnxruntime_labels_equal_the_served_paths_on_every_val_image(trained, onnx_export):
    served = load_predictor(trained.checkpoint, trained.spec, "cpu")
    run = load_runner(onnx_export, "onnx")
    images = trained.val_images()
    assert len(images) == 4 and images[0].shape[:2] == (2 * HALF[0], 2 * HALF[1])
    classes = set()
    for i, image in enumerate(images):
        expected = served.labels(image)
        got = run(image[None])[0]
        assert got.dtype == np.uint8
        assert agreement(got, expected) >= PARITY, f"val image {i}"
        classes |= set(np.unique(expected).tolist())
    assert len(classes) >= 2  # a trained model, not a constant one


def test_the_onnx_graph_takes_any_size_and_a_batch(trained, onnx_export):
    served = load_predictor(trained.checkpoint, trained.spec, "cpu")
    run = load_runner(onnx_export, "onnx")
    scene = trained.val_images()[0]
    # larger (area), smaller (linear), wider than tall (mixed), and the training scale itself
    for height, width in ((61, 83), (11, 17), (12, 60), (100, 30), HALF):
        image = cv2.resize(scene, (width, height), interpolation=cv2.INTER_LINEAR)
        got = run(image[None])[0]
        assert agreement(got, served.labels(image)) >= PARITY, (height, width)
    batch = np.stack(trained.val_images()[:2])
    labels = run(batch)
    assert labels.shape == batch.shape[:3]
    for image, got in zip(batch, labels, strict=True):
        assert agreement(got, served.labels(image)) >= PARITY


def test_export_json_says_what_a_deployment_needs(trained, onnx_export):
    spec = json.loads((onnx_export.parent / SPEC_FILE).read_text())
    assert onnx_export.name == MODEL_FILE["onnx"] == spec["file"]
    assert spec["input"] == {
        "name": "image", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
        "shape": ["batch", "height", "width", 3],
        "what": "images of any size, as decoded (no resize, no normalisation)",
    }  # fmt: skip
    assert spec["output"]["name"] == "labels" and spec["output"]["dtype"] == "uint8"
    assert spec["in_graph"]["resize_to"] == list(HALF)
    assert spec["in_graph"]["normalization"]["mean"] == list(trained.spec.mean)
    assert spec["crf"]["apply"] is False
    assert spec["classes"] == trained.classes
    assert spec["opset"] == 18 and spec["segflow_version"] and spec["torch_version"]
    assert spec["source"]["model"] == str(trained.checkpoint)
    assert len(spec["source"]["sha256"]["checkpoint"]) == 64
    assert spec["check"]["min_label_agreement"] >= PARITY


def test_torchscript_labels_equal_the_served_paths_on_every_val_image(trained, tmp_path):
    source = load_source(str(trained.checkpoint), trained.serving_file(tmp_path))
    path = export_model(source, "torchscript", tmp_path / "ts")
    served = load_predictor(trained.checkpoint, trained.spec, "cpu")
    module = torch.jit.load(str(path))  # what a C++ or Python deployment loads
    for i, image in enumerate(trained.val_images()):
        with torch.no_grad():
            got = module(torch.from_numpy(image[None]))[0].numpy()
        assert agreement(got, served.labels(image)) >= PARITY, f"val image {i}"


def test_with_a_crf_the_export_gives_probabilities_and_its_spec_the_crf_to_apply(trained, tmp_path):
    """The CRF stays outside the graph; export.json's recipe reproduces the served labels."""
    crf = CRFParams(w_bilateral=5.0, sigma_alpha=30.0, sigma_beta=3.0, iterations=5)
    spec = dataclasses.replace(trained.spec, crf=crf)
    source = load_source(str(trained.checkpoint), trained.serving_file(tmp_path, spec))
    path = export_model(source, "torchscript", tmp_path / "ts")
    written = json.loads((path.parent / SPEC_FILE).read_text())
    assert written["output"]["name"] == "probs" and written["output"]["layout"] == "NCHW"
    assert written["crf"]["apply"] is True and written["crf"]["params"] == crf.to_dict()
    served = load_predictor(trained.checkpoint, spec, "cpu")
    run = load_runner(path, "torchscript")
    for i, image in enumerate(trained.val_images()):
        probs = run(image[None])[0]
        assert probs.shape == (len(trained.classes), *image.shape[:2])
        assert agreement(labels_of(image, probs, written), served.labels(image)) >= PARITY, i


def test_sliding_windows_at_the_training_scale_are_part_of_the_graph(trained, tmp_path):
    spec = dataclasses.replace(trained.spec, mode="sliding", options={"crop": [8, 16]})
    source = load_source(str(trained.checkpoint), trained.serving_file(tmp_path, spec))
    path = export_model(source, "onnx", tmp_path / "sliding")
    served = load_predictor(trained.checkpoint, spec, "cpu")
    run = load_runner(path, "onnx")
    scene = trained.val_images()[0]
    for image in [*trained.val_images(), cv2.resize(scene, (70, 50))]:
        assert agreement(run(image[None])[0], served.labels(image)) >= PARITY


def test_what_cannot_be_exported_is_one_line_saying_why(trained, tmp_path):
    network = load_predictor(trained.checkpoint, trained.spec, "cpu").network
    own_size = ServingSpec(mode="sliding", options={"crop": [8, 16]})  # no training scale
    with pytest.raises(SegflowError, match="number of windows that depends on each image"):
        export_model(Source("m", network, own_size, [], {}), "onnx", tmp_path)
    crf = dataclasses.replace(trained.spec, crf=CRFParams())
    with pytest.raises(SegflowError, match="applies a dense CRF .* export without --argmax"):
        export_model(Source("m", network, crf, [], {}), "onnx", tmp_path, argmax=True)
    with pytest.raises(SegflowError, match="--format 'tflite': one of onnx, torchscript"):
        export_model(Source("m", network, trained.spec, [], {}), "tflite", tmp_path)

    class DataDependent(nn.Module):  # a branch on pixel values: no fixed graph exists
        def forward(self, x):
            return network(x) if x.mean() > 0 else -network(x)

    # U-Net pads its input to a multiple of 16 only when it must: a trace at one size holds
    # that branch, so TorchScript at the image's own size fails at another; ONNX does not.
    own_scale = Source("unet.pt", network, ServingSpec(), [], {})
    refusal = r"unet.pt: the torchscript export fails on a \d+x\d+ image .* its input's size"
    with pytest.raises(SegflowError, match=refusal + ": --format onnx exports it"):
        export_model(own_scale, "torchscript", tmp_path)
    with pytest.raises(SegflowError) as caught:
        export_model(Source("odd.pt", DataDependent(), trained.spec, [], {}), "onnx", tmp_path)
    message = str(caught.value)
    assert message.startswith("odd.pt: cannot export to ONNX (") and "\n" not in message
    assert len(message) < 450
    assert not list(tmp_path.iterdir())  # nothing half-written
