"""Predicting a split: inference options from params, file names of probability files."""

from __future__ import annotations

import pytest

from segflow.config import EvaluateParams, LoaderParams, parse_params
from segflow.errors import SegflowError
from segflow.evaluate.predict_split import file_ids
from segflow.evaluate.serving import ServingSpec, inference_options
from segflow.postprocess.probs import prob_path


def test_inference_options_follow_the_mode_and_sliding_defaults_to_the_training_crop():
    loader = LoaderParams(crop_height=64, crop_width=96)
    assert inference_options(EvaluateParams(), loader) == {}
    multi = inference_options(EvaluateParams(mode="multiscale", scales=[0.5, 1.0]), loader)
    assert multi == {"scales": [0.5, 1.0], "flip": True}
    sliding = inference_options(EvaluateParams(mode="sliding", overlap=0.5), loader)
    assert sliding == {"crop": [64, 96], "overlap": 0.5}
    own = EvaluateParams(mode="sliding", crop_height=32, crop_width=48)
    assert inference_options(own, loader)["crop"] == [32, 48]


def test_the_serving_spec_round_trips_through_json_with_everything_served():
    params = parse_params({"evaluate": {"mode": "multiscale", "scales": [0.5, 1.0]},
                           "crf": {"prob_dtype": "float16"}})  # fmt: skip
    from segflow.postprocess.crf_params import CRFParams

    spec = ServingSpec.from_params(params, [180, 240], CRFParams(w_bilateral=5.0))
    assert spec.input_size == (180, 240) and spec.prob_dtype == "float16"
    import json

    again = ServingSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert spec.describe() == "multiscale inference at 180x240, CRF on"


def test_file_ids_are_valid_file_names_and_stay_unique():
    names = file_ids(["frankfurt/frame_1", "frankfurt_frame_1", "a b", ".hidden", "0001TP_0"])
    assert names == ["frankfurt_frame_1", "frankfurt_frame_1_1", "a_b", "hidden", "0001TP_0"]
    for name in names:
        prob_path("probs", name)  # raises on a name the probability store refuses


def test_crf_params_hold_a_sweep_space_and_reject_invalid_points():
    params = parse_params({"crf": {"w_bilateral": [4.0], "iterations": [5, 10]}})
    assert params.crf.space() == {
        "w_gauss": 3.0,
        "sigma_gamma": 3.0,
        "w_bilateral": [4.0],
        "sigma_alpha": [30.0, 80.0],
        "sigma_beta": [3.0, 5.0],
        "iterations": [5, 10],
    }
    with pytest.raises(SegflowError, match="crf.sigma_alpha"):
        parse_params({"crf": {"sigma_alpha": [0.0]}})
    with pytest.raises(SegflowError, match="crf.w_bilateral"):
        parse_params({"crf": {"w_bilateral": []}})
    with pytest.raises(SegflowError, match="evaluate.mode"):
        parse_params({"evaluate": {"mode": "tiled"}})
