"""Checkpoints are untrusted input: no checkpoint segflow reads can run code when it is loaded.

``torch.load`` unpickles, and a pickle can call any function while it loads (``__reduce__``).
segflow reads every checkpoint with ``weights_only=True``, PyTorch's restricted unpickler that
builds tensors, numbers, strings and containers and refuses anything else. Two checks: the source
holds no ``torch.load`` without it, and a planted pickle that would create a file is refused, in
one line naming the file, by every path that reads a checkpoint a user or a store can hand in.
"""

from __future__ import annotations

import ast
import pathlib
from pathlib import Path

import pytest
import torch

from segflow.config import Params
from segflow.errors import SegflowError
from segflow.models.checkpoint import load_model
from segflow.search.run import search_local
from segflow.train.loop import fit
from tests.train.conftest import make_shards, tiny_params

PACKAGE = Path(__file__).resolve().parents[2] / "segflow"


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every ``torch.load(...)`` call (or ``load`` imported from torch) that
    does not pass ``weights_only=True`` as a keyword."""
    tree = ast.parse(source, filename)
    aliases = {"torch.load"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "torch":
            aliases |= {a.asname or a.name for a in node.names if a.name == "load"}
        elif isinstance(node, ast.Import):
            aliases |= {f"{a.asname}.load" for a in node.names if a.name == "torch" and a.asname}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in aliases:
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"{filename}:{node.lineno}")
    return found


def test_every_torch_load_in_segflow_passes_weights_only_true():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = [hit for f in files for hit in unsafe_torch_loads(f.read_text(), str(f))]
    assert found == [], "torch.load without weights_only=True"


@pytest.mark.parametrize(
    "call",
    [
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "torch.load(path, **options)",
        "torch.load(path, weights_only=flag)",
        "import torch as t\nt.load(path)",
        "from torch import load\nload(path)",
        "from torch import load as read\nread(path)",
    ],
)
def test_the_source_check_finds_an_unsafe_load(call):
    assert unsafe_torch_loads(f"import torch\n{call}\n") != []
    assert unsafe_torch_loads("import torch\ntorch.load(path, weights_only=True)\n") == []


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code a pickle runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def plant_pickle(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file at ``path`` whose full unpickling creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(marker), "epoch": 1, "num_classes": 3}, path)
    return path


def test_the_planted_pickle_runs_its_code_when_fully_unpickled(tmp_path):
    """The payload is live: without weights_only, loading it creates the marker."""
    marker = tmp_path / "unpickled"
    torch.load(plant_pickle(tmp_path / "last.pt", marker), weights_only=False)
    assert marker.exists()


def assert_refused(caught: pytest.ExceptionInfo, path: Path, marker: Path) -> None:
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not a plain-tensor checkpoint; refusing to unpickle")
    assert not marker.exists()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("pickle_shards"), train=4, val=2)


def test_a_planted_search_checkpoint_is_refused_not_unpickled(shards, tmp_path):
    storage = tmp_path / "search_results"
    marker = tmp_path / "unpickled"
    planted = plant_pickle(storage / "run" / "last.pt", marker)
    params = Params.model_validate(
        {
            "search": {
                "enabled": True, "layers": 3, "filter_multiplier": 1, "blocks": 2, "epochs": 1,
                "warmup_epochs": 0, "batch_size": 2, "crop_height": 32, "crop_width": 32,
                "launcher": "local", "cpus_per_worker": 1, "storage_path": str(storage),
                "run_name": "run",
            }
        }
    )  # fmt: skip
    with pytest.raises(SegflowError) as caught:
        search_local(params, shards, echo=lambda line: None)
    assert_refused(caught, planted, marker)


def test_a_planted_training_checkpoint_is_refused_not_unpickled(shards, tmp_path):
    out = tmp_path / "out"
    marker = tmp_path / "unpickled"
    planted = plant_pickle(out / "last.pt", marker)
    with pytest.raises(SegflowError) as caught:
        fit(tiny_params(tmp_path, epochs=1), shards, out, "cpu", echo=None)
    assert_refused(caught, planted, marker)


def test_a_planted_model_checkpoint_is_refused_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    planted = plant_pickle(tmp_path / "best.pt", marker)
    with pytest.raises(SegflowError) as caught:
        load_model(planted)
    assert_refused(caught, planted, marker)
