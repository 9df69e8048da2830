"""CRF on or off is decided on val (crf_tune), never on test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segflow.errors import SegflowError
from segflow.evaluate.crf_split import crf_over_split_serial
from segflow.evaluate.scores import served_miou
from segflow.evaluate.serving import ServingSpec
from segflow.postprocess.crf_params import (
    CRFParams,
    decide_crf,
    read_crf_choice,
    write_crf_choice,
)
from segflow.postprocess.probs import save_probs
from tests.postprocess.scenes import write_scenes


def write_thin_lines(directory, count: int = 2):
    """Val scenes the CRF can only hurt: a one-pixel line of class 1 in the background's own
    colour, already predicted right; the CRF's smoothing pulls it into the background."""
    rng = np.random.default_rng(7)
    for i in range(count):
        label = np.zeros((32, 48), np.uint8)
        label[:, 20 + 5 * i] = 1
        image = np.clip(120 + rng.integers(-3, 4, (32, 48, 3)), 0, 255).astype(np.uint8)
        p1 = np.where(label == 1, 0.6, 0.05).astype(np.float32)
        save_probs(directory, f"line_{i}", image, label, np.stack([1 - p1, p1]), "float16")
    return directory


def test_a_crf_that_helps_on_test_but_hurts_on_val_is_not_served(tmp_path):
    params = CRFParams()
    val = write_thin_lines(tmp_path / "val")
    test = write_scenes(tmp_path / "test")
    val_with, val_without = (crf_over_split_serial(val, p, 2) for p in (params, None))
    test_with, test_without = (crf_over_split_serial(test, p, 2) for p in (params, None))
    assert val_with.metrics["miou"] < val_without.metrics["miou"]  # hurts on val
    assert test_with.metrics["miou"] > test_without.metrics["miou"]  # helps on test

    path = tmp_path / "crf_params.json"
    write_crf_choice(path, decide_crf(params, val_with.metrics, val_without.metrics, 2))
    choice = read_crf_choice(path)  # what evaluate and register read

    assert choice.apply is False and choice.served() is None
    assert ServingSpec(crf=choice.served()).crf is None
    # evaluate still reports both test figures; the registered score is the one served
    metrics = {"miou": test_without.metrics["miou"], "miou_crf": test_with.metrics["miou"],
               "crf_applied": choice.apply}  # fmt: skip
    assert served_miou(metrics) == test_without.metrics["miou"]


def test_the_crf_is_served_when_it_helps_on_val():
    helps = decide_crf(CRFParams(), {"miou": 0.61}, {"miou": 0.60}, 12)
    ties = decide_crf(CRFParams(), {"miou": 0.60}, {"miou": 0.60}, 12)
    assert helps.apply and helps.served() == CRFParams()
    assert not ties.apply


def test_a_crf_params_file_of_another_shape_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "crf_params.json"
    path.write_text(json.dumps({"params": {"sigma_beta": 5.0}}))
    with pytest.raises(SegflowError, match="crf_params.json: not a CRF parameters file"):
        read_crf_choice(path)
    good = decide_crf(CRFParams(), {"miou": 0.7}, {"miou": 0.6}, 3).to_dict()
    path.write_text(json.dumps({**good, "params": {**good["params"], "sigma_beta": -1}}))
    with pytest.raises(SegflowError, match=r"crf_params.json: crf.sigma_beta"):
        read_crf_choice(path)
