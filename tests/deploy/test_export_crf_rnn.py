"""A network with a CRF-as-RNN head (train.crf_rnn) trains, reloads from its checkpoint and
exports: the ONNX graph holds the mean-field iterations and labels as the served path does."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.data.manifest import build_manifest
from segflow.data.shards import write_shards
from segflow.deploy.export import export_model, load_runner, load_source
from segflow.evaluate.serving import ServingSpec, load_predictor
from segflow.models.checkpoint import model_from_payload, read_checkpoint
from segflow.models.crf_rnn import CRFasRNN
from segflow.train.loop import fit
from tests.deploy.conftest import HALF, Trained
from tests.train.conftest import BandsAdapter, tiny_params

pytestmark = pytest.mark.integration  # a training run and an export: seconds each


@pytest.fixture(scope="module")
def trained_with_crf(tmp_path_factory) -> Trained:
    root = tmp_path_factory.mktemp("crf_rnn_model")
    adapter = BandsAdapter(root / "raw", {"train": 6, "val": 4})
    shards = root / "shards"
    write_shards(build_manifest(adapter), adapter, shards, rows_per_shard=8, resize=HALF, workers=1)
    params = tiny_params(epochs=6, crf_rnn={"iterations": 3, "window": 5, "downsample": 2})
    loader = params.loader.model_copy(update={"crop_height": HALF[0], "crop_width": HALF[1]})
    fit(params.model_copy(update={"loader": loader}), shards, root / "run", "cpu", echo=None)
    spec = ServingSpec(mean=params.loader.mean, std=params.loader.std, input_size=HALF)
    return Trained(root / "run" / "best.pt", shards, [], spec)


def test_the_checkpoint_rebuilds_the_network_with_its_trained_crf(trained_with_crf):
    payload = read_checkpoint(trained_with_crf.checkpoint)
    model = model_from_payload(payload, trained_with_crf.checkpoint)

    assert isinstance(model, CRFasRNN) and not model.training
    potts = 1.0 - np.eye(model.crf.compatibility.shape[0])
    assert not np.allclose(model.crf.compatibility.detach().numpy(), potts)  # it trained


def test_the_onnx_export_labels_as_the_served_path(trained_with_crf, tmp_path):
    source = load_source(str(trained_with_crf.checkpoint), trained_with_crf.serving_file(tmp_path))
    run = load_runner(export_model(source, "onnx", tmp_path / "export"), "onnx")
    served = load_predictor(trained_with_crf.checkpoint, trained_with_crf.spec, "cpu")

    for image in trained_with_crf.val_images():
        assert (run(image[None])[0] == served.labels(image)).mean() >= 0.999
