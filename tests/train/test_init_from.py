"""train.init_from: another run's trained weights start the network (mmsegmentation's
load_from), e.g. the CRF-as-RNN paper's second stage: the CRF trained on a fixed network."""

from __future__ import annotations

import pytest
import torch

from segflow.errors import SegflowError
from segflow.models.checkpoint import read_checkpoint
from segflow.train.loop import fit
from segflow.train.run import preflight
from segflow.train.state import BEST
from tests.train.conftest import tiny_params


def test_a_crf_head_trains_on_the_network_of_an_earlier_run_which_stays_fixed(shards, tmp_path):
    fit(tiny_params(epochs=1), shards, tmp_path / "first", echo=None)
    trained = read_checkpoint(tmp_path / "first" / BEST)["model"]

    crf = {"iterations": 2, "window": 3, "freeze_net": True}
    second = tiny_params(epochs=1, crf_rnn=crf, init_from=str(tmp_path / "first" / BEST))
    state = fit(second, shards, tmp_path / "second", echo=None)

    weights = state.model.state_dict()
    assert all(torch.equal(weights[f"net.{k}"], v) for k, v in trained.items())
    potts = torch.ones(2, 2) - torch.eye(2)
    assert not torch.equal(weights["crf.compatibility"], potts)  # the CRF trained


def test_a_missing_or_misfit_checkpoint_is_one_line_before_training(shards, tmp_path):
    with pytest.raises(SegflowError, match=r"^/nowhere/best.pt: checkpoint not found"):
        preflight(tiny_params(init_from="/nowhere/best.pt"), shards)

    fit(tiny_params(epochs=1), shards, tmp_path / "first", echo=None)
    wider = tiny_params(model_options={"width": 8, "batch_norm": False},
                        init_from=str(tmp_path / "first" / BEST))  # fmt: skip
    with pytest.raises(SegflowError, match=r"best.pt: weights do not fit .* tensors differ\)$"):
        preflight(wider, shards)
