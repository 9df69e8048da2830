"""A checkpoint does not decide how big a model is built.

A checkpoint is a file someone else may have written. Its ``num_classes`` and ``train_params``
used to be trusted: 10**6 classes built a 1 GB head before anything looked at the weights, and a
tensor of the wrong shape ended in ``load_state_dict``'s 65-line traceback. Now the description
passes the model registry's limits (at most 255 classes, known model and options, short option
lists), the network is laid out on the meta device (no memory) and compared with the file's
tensors, and only a model whose every tensor the file already holds is built. Every refusal is
one line naming the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segflow.config import TrainParams
from segflow.data.datasets.base import IGNORE_INDEX
from segflow.errors import SegflowError
from segflow.models import build
from segflow.models.checkpoint import build_model, load_model
from segflow.models.registry import MAX_CLASSES, MAX_OPTION_ITEMS

SMALL_UNET = TrainParams(
    model="unet", backbone=None, output_stride=None, model_options={"width": 4}
)
NUM_CLASSES = 3


def save(path: Path, state: dict, train_params: dict, num_classes: object) -> Path:
    """A checkpoint in the train stage's format (the fields model loading reads)."""
    payload = {
        "model": state,
        "train_params": train_params,
        "num_classes": num_classes,
        "classes": [],
        "epoch": 1,
    }
    torch.save(payload, path)
    return path


@pytest.fixture
def trained() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model(SMALL_UNET, NUM_CLASSES).state_dict()


@pytest.fixture
def good(tmp_path, trained) -> Path:
    return save(tmp_path / "best.pt", trained, SMALL_UNET.model_dump(mode="json"), NUM_CLASSES)


def refusal(path: Path, *expected: str) -> str:
    with pytest.raises(SegflowError) as err:
        load_model(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for text in expected:
        assert text in message, message
    return message


def test_a_good_checkpoint_loads_its_weights_into_the_model_it_describes(good, trained):
    model = load_model(good)

    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


@pytest.mark.integration
def test_a_million_classes_is_refused_in_one_line_before_any_model_is_built(tmp_path):
    """Measured in a fresh process: its peak RSS is its own, not an earlier test's."""
    ckpt = save(tmp_path / "huge.pt", {}, TrainParams().model_dump(mode="json"), 10**6)
    probe = f"""
import json, resource, time
from segflow.errors import SegflowError
from segflow.models import list_models
from segflow.models.checkpoint import load_model
list_models()  # import every architecture first: only the load itself is measured
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
try:
    load_model({str(ckpt)!r})
    message = None
except SegflowError as exc:
    message = str(exc)
seconds = time.perf_counter() - started
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak
print(json.dumps({{"message": message, "seconds": seconds, "grew_mib": grew / 1024}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])

    message = result["message"]
    assert message is not None and "\n" not in message
    assert str(ckpt) in message and "num_classes must be in 1..255 (got 1000000)" in message
    assert result["seconds"] < 0.5
    assert result["grew_mib"] < 100


@pytest.mark.parametrize("num_classes", [0, -3, MAX_CLASSES + 1, True, 3.0, "21", None])
def test_num_classes_outside_the_zoo_or_not_an_integer_is_refused(tmp_path, trained, num_classes):
    ckpt = save(tmp_path / "c.pt", trained, SMALL_UNET.model_dump(mode="json"), num_classes)
    refusal(ckpt, "num_classes")


def test_the_class_cap_is_the_largest_table_an_8_bit_mask_can_label():
    assert MAX_CLASSES == IGNORE_INDEX  # train ids 0..254, and 255 is ignore
    assert build("unet", MAX_CLASSES, width=4).classifier.out_channels == MAX_CLASSES
    with pytest.raises(SegflowError, match=r"num_classes must be in 1\.\.255"):
        build("unet", MAX_CLASSES + 1, width=4)


def test_a_tensor_of_the_wrong_shape_is_one_line_naming_the_key_and_both_shapes(tmp_path, trained):
    key = next(k for k, v in trained.items() if v.ndim == 4 and k.startswith("down"))
    right = tuple(trained[key].shape)
    wrong = (right[0] + 1, *right[1:])
    state = {**trained, key: torch.zeros(wrong)}
    ckpt = save(tmp_path / "bad.pt", state, SMALL_UNET.model_dump(mode="json"), NUM_CLASSES)

    refusal(ckpt, key, str(wrong), str(right), "unet, 3 classes")


def test_a_missing_or_an_extra_tensor_is_one_line_naming_it(tmp_path, trained):
    params = SMALL_UNET.model_dump(mode="json")
    dropped = next(iter(trained))
    missing = save(
        tmp_path / "missing.pt", {k: v for k, v in trained.items() if k != dropped}, params, 3
    )
    extra = save(
        tmp_path / "extra.pt", {**trained, "stowaway.weight": torch.zeros(2, 2)}, params, 3
    )

    refusal(missing, dropped, "is missing")
    refusal(extra, "stowaway.weight", "not in the model", "(2, 2)")


def test_options_that_describe_a_bigger_model_than_the_weights_are_refused(tmp_path, trained):
    """Width 4096 would be a 10 GB U-Net: laid out on the meta device, it only fails to match."""
    wide = SMALL_UNET.model_copy(update={"model_options": {"width": 4096}})
    ckpt = save(tmp_path / "wide.pt", trained, wide.model_dump(mode="json"), NUM_CLASSES)

    refusal(ckpt, "weights do not fit", "in the checkpoint", "in the model")


@pytest.mark.parametrize(
    ("train_params", "expected"),
    [
        ({"model": "resnet_of_doom"}, "unknown; known models"),
        ({"model": "unet", "backbone": None, "model_options": {"wdith": 4}}, "unknown option"),
        ({"model": "unet", "backbone": None, "model_options": {"width": 10**12}}, "unet"),
        ({"model": "unet", "backbone": None, "model_options": {"width": "wide"}}, "unet"),
        (
            {"model": "deeplabv3", "model_options": {"rates": [1] * (MAX_OPTION_ITEMS + 1)}},
            f"option rates has {MAX_OPTION_ITEMS + 1} items",
        ),
        ({"model": "unet", "epochs": "many"}, "train_params.epochs"),
        ({"model": "unet", "no_such_field": 1}, "train_params.no_such_field"),
    ],
)
def test_a_model_description_outside_the_zoo_is_one_line(tmp_path, trained, train_params, expected):
    ckpt = save(tmp_path / "odd.pt", trained, train_params, NUM_CLASSES)
    refusal(ckpt, expected)


def test_a_payload_whose_weights_are_not_a_state_dict_is_refused(tmp_path):
    ckpt = save(tmp_path / "odd.pt", [1, 2, 3], SMALL_UNET.model_dump(mode="json"), NUM_CLASSES)
    refusal(ckpt, "state_dict")
