from __future__ import annotations

import numpy as np
import pytest

from segflow.errors import SegflowError
from segflow.evaluate.crf_split import crf_over_split_serial
from segflow.postprocess.crf import dense_crf, refine_labels
from segflow.postprocess.crf_params import CRFParams
from tests.postprocess.scenes import edge_scene, write_scenes


def boundary_errors(pred: np.ndarray, label: np.ndarray, edge: int, band: int = 10) -> int:
    near = slice(edge - band, edge + band)
    return int((pred[:, near] != label[:, near]).sum())


def test_crf_moves_a_blurred_misplaced_boundary_onto_the_colour_edge():
    image, label, probs = edge_scene(edge=20, shift=6)
    before = boundary_errors(probs.argmax(axis=0), label, edge=20)
    after = boundary_errors(refine_labels(image, probs, CRFParams()), label, edge=20)
    assert before == 6 * 32  # six wrong columns of 32 rows
    assert after <= before // 4


def test_crf_output_is_a_distribution_per_pixel_and_deterministic():
    image, _, probs = edge_scene(seed=3)
    first = dense_crf(image, probs, CRFParams())
    second = dense_crf(image, probs.copy(), CRFParams())
    assert first.dtype == np.float32 and first.shape == probs.shape
    np.testing.assert_allclose(first.sum(axis=0), 1.0, atol=1e-4)
    assert np.array_equal(first, second)


def test_without_a_bilateral_term_the_colour_edge_is_not_found():
    # The Gaussian kernel alone only smooths: it cannot see the image, so the shift stays.
    image, label, probs = edge_scene(edge=20, shift=6)
    params = CRFParams(w_bilateral=0.0)
    after = boundary_errors(refine_labels(image, probs, params), label, edge=20)
    assert after >= 5 * 32


@pytest.mark.parametrize(
    "field, value",
    [
        ("sigma_alpha", -1.0),
        ("sigma_beta", 0.0),
        ("sigma_gamma", float("nan")),
        ("w_bilateral", -0.5),
        ("iterations", 0),
        ("iterations", 2.5),
        ("w_gauss", True),
        ("sigma_beta", "5"),
    ],
)
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(SegflowError, match=f"crf.{field}"):
        CRFParams.from_dict({field: value})


def test_params_round_trip_through_a_dict_and_reject_unknown_fields():
    params = CRFParams(w_bilateral=5, sigma_alpha=80, iterations=5)
    assert CRFParams.from_dict(params.to_dict()) == params
    assert CRFParams.from_dict({"iterations": 4.0}).iterations == 4
    # Tune's samplers hand out numpy scalars; to_dict gives plain JSON-ready numbers.
    tuned = CRFParams.from_dict({"sigma_beta": np.float32(4.5), "iterations": np.int64(7)})
    assert tuned.to_dict()["sigma_beta"] == 4.5 and type(tuned.to_dict()["iterations"]) is int
    with pytest.raises(SegflowError, match="sigma_x"):
        CRFParams.from_dict({"sigma_x": 3})


def test_dense_crf_rejects_mismatched_inputs():
    image, _, probs = edge_scene()
    with pytest.raises(SegflowError, match="H, W"):
        dense_crf(image, probs[:, :10])
    with pytest.raises(SegflowError, match="uint8"):
        dense_crf(image.astype(np.float32), probs)


def test_serial_split_scores_with_and_without_crf(tmp_path):
    prob_dir = write_scenes(tmp_path / "probs")
    raw = crf_over_split_serial(prob_dir, None, num_classes=2)
    refined = crf_over_split_serial(prob_dir, CRFParams(), num_classes=2)
    assert raw.num_images == refined.num_images == 3
    assert raw.confusion.sum() == refined.confusion.sum() == 3 * 32 * 48
    assert raw.confusion.dtype == np.int64
    # Every scene has six wrong columns before the CRF.
    assert raw.confusion[1, 0] == 3 * 6 * 32 and raw.confusion[0, 1] == 0
    assert refined.metrics["miou"] > raw.metrics["miou"] + 0.1
    with pytest.raises(SegflowError, match="expected 3"):
        crf_over_split_serial(prob_dir, None, num_classes=3)
