from __future__ import annotations

import json
import math

import pytest

from segflow.errors import SegflowError
from segflow.postprocess.crf import CRFParams
from segflow.tune.crf_search import default_space, read_best, to_param_space, write_best


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
        ({"sigma_beta": [5.0, -1.0]}, "grid", r"space.sigma_beta.*> 0"),
        ({"iterations": (0, 5)}, "optuna", r"space.iterations"),
        ({"sigma_alpha": (50.0, 30.0)}, "optuna", "low < high"),
        ({"sigma_x": [1.0]}, "grid", "unknown"),
        ({"w_gauss": []}, "grid", "empty"),
        ({"w_gauss": [3.0]}, "random", "search"),
    ],
)
def test_bad_spaces_fail_before_any_trial_naming_the_field(space, search, match):
    with pytest.raises(SegflowError, match=match):
        to_param_space(space, search)


def test_best_params_round_trip_through_json_with_nan_as_null(tmp_path):
    path = tmp_path / "reports" / "crf_params.json"
    best = CRFParams(w_bilateral=5.0, sigma_alpha=80.0, sigma_beta=4.0)
    write_best(path, best, {"miou": 0.7, "iou": [0.7, math.nan]})
    data = json.loads(path.read_text())
    assert data["metrics"]["iou"] == [0.7, None]
    assert data["params"]["iterations"] == 10
    assert read_best(path) == best
    assert [p.name for p in path.parent.iterdir()] == ["crf_params.json"]  # no temp left


def test_read_best_names_a_missing_or_bad_file(tmp_path):
    with pytest.raises(SegflowError, match="crf_params.json"):
        read_best(tmp_path / "crf_params.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": {"sigma_beta": -2}}))
    with pytest.raises(SegflowError, match=r"bad.json.*sigma_beta"):
        read_best(bad)
