"""Groups of samples (video sequences, patients, scenes) and the development split they give.

Frames of one video are near-duplicates of each other: a validation split that shares
sequences with train measures how well the model knows those scenes, not how it does on new
ones. CamVid's val is 101 frames of 0016E5, a sequence that also gives 204 of the 367 train
frames, and every choice made on it flattered the recipe by 14 points of test mIoU. So a
dataset can name its groups (``dataset.group_pattern``, a regex whose first group is read from
each sample id) and hold some out of train (``dataset.holdout_groups``): ingest moves those
train samples to the split ``dev``, which then shares no group with train. Model selection
(the best epoch), the CRF choice and the promotion gate use dev when it exists
(:func:`decision_split`), and the gate's bootstrap resamples whole groups.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from segflow.errors import SegflowError

#: The development split held out of train by group.
DEV_SPLIT = "dev"
#: The split decisions fall back to when there is no dev split.
VAL_SPLIT = "val"


def group_of(sample_id: str, pattern: str) -> str:
    """The group of ``sample_id``: the first group of ``pattern``'s first match in it.

    An id the pattern does not match is its own group (a sample alone is the most cautious
    unit: it shares nothing with anything).
    """
    match = re.search(pattern, sample_id)
    return match.group(1) if match and match.group(1) else sample_id


def groups_of(sample_ids: Iterable[str], pattern: str | None) -> list[str]:
    """Each id's group; without a pattern each sample is its own group."""
    return [group_of(i, pattern) if pattern else i for i in sample_ids]


def hold_out(splits: list[str], ids: list[str], pattern: str, groups: list[str]) -> list[str]:
    """``splits`` with the train samples whose group is in ``groups`` moved to ``dev``.

    Every listed group must name train samples: a typo would otherwise leave dev empty and
    train unchanged, silently. The error lists the groups train has.
    """
    train_groups = {group_of(i, pattern) for i, s in zip(ids, splits, strict=True) if s == "train"}
    missing = sorted(set(groups) - train_groups)
    if missing:
        have = ", ".join(sorted(train_groups)[:20]) + (" ..." if len(train_groups) > 20 else "")
        raise SegflowError(
            f"dataset.holdout_groups: {missing} name no train sample (group_pattern "
            f"{pattern!r} gives the train groups: {have})"
        )
    if train_groups <= set(groups):
        raise SegflowError(
            "dataset.holdout_groups: holds out every train group; keep at least one to train on"
        )
    held = set(groups)
    return [
        DEV_SPLIT if s == "train" and group_of(i, pattern) in held else s
        for i, s in zip(ids, splits, strict=True)
    ]


def decision_split(splits: Iterable[str]) -> str:
    """Where choices are made: ``dev`` when the shards have it, else ``val``."""
    return DEV_SPLIT if DEV_SPLIT in set(splits) else VAL_SPLIT


def gate_split(setting: str, splits: Iterable[str]) -> str:
    """The split the promotion gate decides on: ``gate.split``, resolved (``auto``: dev, else
    val) and checked against the splits the shards have."""
    splits = set(splits)
    split = decision_split(splits) if setting == "auto" else setting
    if split not in splits:
        raise SegflowError(
            f"gate.split: {setting!r} resolves to {split!r}, which the shards do not have "
            f"(they have {sorted(splits)}); run dvc repro shard, or name one of them"
        )
    return split
