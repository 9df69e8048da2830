"""Confusion-matrix metrics: hand-computed values, sklearn agreement, absent classes, ignore."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from segflow.evaluate.metrics import ConfusionMatrix, format_table, metrics_from_confusion

# Five classes. Rows = truth, columns = prediction; the label pairs below produce exactly:
#
#            p0  p1  p2  p3  p4   | gt
#       t0 [  3   1   0   0   0 ] |  4
#       t1 [  0   2   1   0   0 ] |  3
#       t2 [  0   0   1   1   0 ] |  2
#       t3 [  0   0   0   0   0 ] |  0   class 3: predicted once, never in the truth
#       t4 [  0   0   0   0   0 ] |  0   class 4: neither in truth nor predicted
#   pred sum  3   3   2   1   0     total 9 scored pixels (+2 pixels labelled 255)
PAIRS = [(0, 0)] * 3 + [(0, 1)] + [(1, 1)] * 2 + [(1, 2)] + [(2, 2)] + [(2, 3)]
IGNORED = [(255, 0), (255, 4)]


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    target, pred = zip(*(PAIRS + IGNORED), strict=True)
    return torch.tensor([target]), torch.tensor([pred])


def test_hand_computed_example_gives_the_textbook_values():
    target, pred = hand_example()
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    m = cm.compute()

    # PA = trace / total = (3 + 2 + 1) / 9
    assert m["pixel_accuracy"] == pytest.approx(6 / 9)
    # per-class accuracy = tp / gt = 3/4, 2/3, 1/2, undefined, undefined
    # MPA = (3/4 + 2/3 + 1/2) / 3 = 0.638889
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)
    assert m["class_accuracy"][:3] == pytest.approx([3 / 4, 2 / 3, 1 / 2])
    assert math.isnan(m["class_accuracy"][3]) and math.isnan(m["class_accuracy"][4])
    # union = gt + pred - tp = 4+3-3=4, 3+3-2=4, 2+2-1=3, 0+1-0=1, 0
    # IoU = 3/4, 2/4, 1/3, 0/1 = 0, undefined
    assert m["iou"][:4] == pytest.approx([3 / 4, 2 / 4, 1 / 3, 0.0])
    assert math.isnan(m["iou"][4])
    # mIoU over the 4 defined classes = (0.75 + 0.5 + 0.3333 + 0) / 4 = 0.395833
    assert m["miou"] == pytest.approx((3 / 4 + 2 / 4 + 1 / 3 + 0) / 4)
    # FWIoU = sum(gt/total * IoU) = 4/9*3/4 + 3/9*2/4 + 2/9*1/3 + 0/9*0 = 0.574074
    assert m["fwiou"] == pytest.approx(4 / 9 * 3 / 4 + 3 / 9 * 2 / 4 + 2 / 9 * 1 / 3)
    # pixel share = gt / total
    assert m["pixel_share"] == pytest.approx([4 / 9, 3 / 9, 2 / 9, 0, 0])


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_the_means():
    mat = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 never seen
    with_absent = metrics_from_confusion(mat)
    without = metrics_from_confusion(mat[:2, :2])
    assert math.isnan(with_absent["iou"][2]) and math.isnan(with_absent["class_accuracy"][2])
    for key in ("pixel_accuracy", "mean_accuracy", "miou", "fwiou"):
        assert with_absent[key] == pytest.approx(without[key]), key


def test_class_predicted_but_absent_from_truth_has_iou_zero_and_lowers_miou():
    mat = np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]])
    mat_false_positive = mat.copy()
    mat_false_positive[0, 0] -= 1
    mat_false_positive[0, 2] += 1  # one class-0 pixel predicted as class 2
    m = metrics_from_confusion(mat_false_positive)
    assert m["iou"][2] == 0.0
    assert math.isnan(m["class_accuracy"][2])  # no truth pixels: recall undefined
    assert m["miou"] == pytest.approx((m["iou"][0] + m["iou"][1] + 0.0) / 3)


def test_pixels_labelled_255_are_not_counted_whatever_the_prediction():
    target, pred = hand_example()
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    assert int(cm.mat.sum()) == len(PAIRS)
    cm2 = ConfusionMatrix(5)
    cm2.update(target, torch.where(target == 255, torch.tensor(3), pred))
    assert torch.equal(cm.mat, cm2.mat)


def test_matrix_equals_sklearn_on_random_labels_with_ignore():
    rng = np.random.default_rng(0)
    num_classes = 7
    target = rng.integers(0, num_classes, (3, 41, 37))
    target[rng.random(target.shape) < 0.1] = 255
    pred = rng.integers(0, num_classes, target.shape)
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.from_numpy(target), torch.from_numpy(pred))

    keep = target != 255
    expected = sk_confusion_matrix(target[keep], pred[keep], labels=list(range(num_classes)))
    np.testing.assert_array_equal(cm.mat.numpy(), expected)

    m = cm.compute()
    tp = np.diag(expected)
    union = expected.sum(0) + expected.sum(1) - tp
    assert m["iou"] == pytest.approx(list(tp / union))
    assert m["pixel_accuracy"] == pytest.approx(tp.sum() / keep.sum())


def test_accumulating_batches_equals_one_update_of_everything():
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.integers(0, 5, (6, 16, 20)))
    target[target == 4] = 255
    pred = torch.from_numpy(rng.integers(0, 5, (6, 16, 20)))
    whole = ConfusionMatrix(5)
    whole.update(target, pred)
    batched = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        batched.update(target[i : i + 2], pred[i : i + 2])
    assert torch.equal(whole.mat, batched.mat)
    assert batched.compute()["miou"] == whole.compute()["miou"]


def test_reset_clears_the_counts():
    target, pred = hand_example()
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    cm.reset()
    assert int(cm.mat.sum()) == 0


def test_empty_matrix_gives_nan_summary_not_an_error():
    m = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert all(math.isnan(m[k]) for k in ("pixel_accuracy", "mean_accuracy", "miou", "fwiou"))


def test_format_table_lists_every_class_with_percentages_and_dashes_for_undefined():
    target, pred = hand_example()
    cm = ConfusionMatrix(5)
    cm.update(target, pred)
    names = ["road", "sky", "car", "bicycle", "sign"]
    text = format_table(cm.compute(), names)
    lines = text.splitlines()
    assert len(lines) == 1 + len(names) + 1
    assert lines[1].split() == ["road", "75.00", "75.00", "44.44"]
    assert lines[5].split() == ["sign", "-", "-", "0.00"]
    assert "mIoU 39.58" in lines[-1]
