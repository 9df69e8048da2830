"""Groups (sequences, patients) and the development split held out of train by group."""

from __future__ import annotations

import pytest

from segflow.config import parse_params
from segflow.data.groups import DEV_SPLIT, decision_split, gate_split, group_of, hold_out
from segflow.errors import SegflowError

CAMVID = "^([^_]+)_"


def test_a_sample_s_group_is_the_pattern_s_first_group_and_an_unmatched_id_is_its_own():
    assert group_of("0016E5_07959", CAMVID) == "0016E5"
    assert group_of("Seq05VD_f00000", CAMVID) == "Seq05VD"
    assert group_of("lonely", CAMVID) == "lonely"


def test_held_out_groups_leave_train_for_dev_and_nothing_else_moves():
    ids = ["A_1", "A_2", "B_1", "B_2", "C_1", "A_3", "B_3"]
    splits = ["train", "train", "train", "train", "train", "val", "test"]
    moved = hold_out(splits, ids, CAMVID, ["B"])
    assert moved == ["train", "train", "dev", "dev", "train", "val", "test"]
    # dev shares no group with train; val and test are as they were
    train = {group_of(i, CAMVID) for i, s in zip(ids, moved, strict=True) if s == "train"}
    dev = {group_of(i, CAMVID) for i, s in zip(ids, moved, strict=True) if s == DEV_SPLIT}
    assert dev == {"B"} and not dev & train


def test_a_held_out_group_that_names_no_train_sample_is_one_line_listing_the_groups():
    with pytest.raises(SegflowError, match=r"\['Z'\] name no train sample .* groups: A, B"):
        hold_out(["train", "train"], ["A_1", "B_1"], CAMVID, ["Z"])
    with pytest.raises(SegflowError, match="holds out every train group"):
        hold_out(["train", "train"], ["A_1", "B_1"], CAMVID, ["A", "B"])


def test_decisions_are_made_on_dev_when_there_is_one_else_val():
    assert decision_split(["train", "val", "test"]) == "val"
    assert decision_split(["train", "dev", "val", "test"]) == "dev"
    assert gate_split("auto", ["train", "dev", "val"]) == "dev"
    assert gate_split("val", ["train", "dev", "val"]) == "val"
    with pytest.raises(SegflowError, match="gate.split: 'auto' resolves to 'val'"):
        gate_split("auto", ["train", "test"])


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"dataset": {"holdout_groups": ["B"]}}, "holdout_groups needs group_pattern"),
        ({"dataset": {"group_pattern": "^[^_]+_"}}, "group_pattern: needs a group"),
        ({"dataset": {"group_pattern": "^(["}}, "group_pattern: not a regular expression"),
        ({"gate": {"split": "test"}}, "gate.split: 'test' is the split the model is scored on"),
        ({"gate": {"split": "train"}}, "gate.split: 'train' is the split the model trains on"),
    ],
)
def test_group_and_gate_params_are_checked_when_params_yaml_is_read(section, message):
    with pytest.raises(SegflowError, match=message):
        parse_params(section)
