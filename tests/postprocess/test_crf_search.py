from __future__ import annotations

import json
import math

import pytest

from segflow.errors import SegflowError
from segflow.postprocess.crf_params import CRFParams, decide_crf, read_crf_choice, write_crf_choice
from segflow.tune.crf_search import default_space, to_param_space


def test_default_grid_is_deeplabs_cross_validation_grid():
    space = default_space("grid")
    assert space["w_bilateral"] == [3.0, 4.0, 5.0, 6.0]
    assert space["sigma_alpha"] == [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0]
    assert space["sigma_beta"] == [3.0, 4.0, 5.0, 6.0]
    assert (space["w_gauss"], space["sigma_gamma"], space["iterations"]) == (3.0, 3.0, 10)
    grid = to_param_space(space, "grid")
    assert grid["w_bilateral"] == {"grid_search": [3.0, 4.0, 5.0, 6.0]}
    assert default_space("optuna")["sigma_alpha"] == (30.0, 100.0)


@pytest.mark.parametrize(
    "space, search, match",
    [
        ({"w_bilateral": (3.0, 6.0)}, "grid", "needs search 'optuna'"),
        ({"sigma_beta": [5.0, -1.0]}, "grid", r"^crf.sigma_beta: -1.0 must be .*> 0"),
        ({"iterations": (0, 5)}, "optuna", r"^crf.iterations"),
        ({"sigma_alpha": (50.0, 30.0)}, "optuna", "low < high"),
        ({"sigma_x": [1.0]}, "grid", "unknown"),
        ({"w_gauss": []}, "grid", "empty"),
        ({"w_gauss": [3.0]}, "random", "search"),
    ],
)
def test_bad_spaces_fail_before_any_trial_naming_the_field(space, search, match):
    with pytest.raises(SegflowError, match=match):
        to_param_space(space, search)


def test_crf_choice_round_trips_through_json_with_nan_as_null(tmp_path):
    path = tmp_path / "reports" / "crf_params.json"
    best = CRFParams(w_bilateral=5.0, sigma_alpha=80.0, sigma_beta=4.0)
    choice = decide_crf(best, {"miou": 0.7, "iou": [0.7, math.nan]}, {"miou": 0.6}, 12)
    write_crf_choice(path, choice)
    data = json.loads(path.read_text())
    assert data["metrics"]["iou"] == [0.7, None]
    assert data["params"]["iterations"] == 10
    assert data["apply"] is True
    assert data["decided_on"] == {"split": "val", "miou": 0.6, "miou_crf": 0.7, "num_images": 12}
    read = read_crf_choice(path)
    assert read.params == best and read.apply and read.num_images == 12
    assert [p.name for p in path.parent.iterdir()] == ["crf_params.json"]  # no temp left


def test_read_crf_choice_names_a_missing_or_bad_file(tmp_path):
    with pytest.raises(SegflowError, match="crf_params.json"):
        read_crf_choice(tmp_path / "crf_params.json")
    bad = tmp_path / "bad.json"
    good = decide_crf(CRFParams(), {"miou": 0.5}, {"miou": 0.4}, 2).to_dict()
    bad.write_text(json.dumps({**good, "params": {"sigma_beta": -2}}))
    with pytest.raises(SegflowError, match=r"bad.json: crf.sigma_beta"):
        read_crf_choice(bad)
