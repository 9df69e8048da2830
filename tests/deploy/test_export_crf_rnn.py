"""A network with a CRF-as-RNN head (train.crf_rnn) trains, reloads from its checkpoint and
exports: the ONNX graph holds the mean-field iterations and labels as the served path does."""

from __future__ import annotations

import numpy as np
import pytest

from segflow.deploy.export import export_model, load_runner, load_source
from segflow.evaluate.serving import load_predictor
from segflow.models.checkpoint import model_from_payload, read_checkpoint
from segflow.models.crf_rnn import CRFasRNN
from tests.deploy.conftest import Trained, train_band_model

pytestmark = pytest.mark.integration  # a training run and an export: seconds each


@pytest.fixture(scope="module")
def trained_with_crf(tmp_path_factory) -> Trained:
    crf = {"iterations": 3, "window": 5, "downsample": 2}
    return train_band_model(tmp_path_factory.mktemp("crf_rnn_model"), epochs=6, crf_rnn=crf)


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
