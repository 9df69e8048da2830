"""The genotype file: the paper's architecture, and errors that name the file and the field."""

from __future__ import annotations

import json

import pytest

from segflow.errors import SegflowError
from segflow.models.genotype import PAPER_GENOTYPE, load_genotype, parse_genotype


def _write(tmp_path, data) -> str:
    path = tmp_path / "genotype.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_the_paper_genotype_round_trips_through_a_file(tmp_path):
    path = _write(tmp_path, PAPER_GENOTYPE.to_json())
    assert load_genotype(path) == PAPER_GENOTYPE
    assert PAPER_GENOTYPE.path == (4, 4, 4, 8, 16, 8, 16, 16, 32, 32, 16, 8)


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        (
            lambda g: g["cell"][2].__setitem__(0, ["conv_7x7", 0]),
            "cell[2][0]",
            "unknown op 'conv_7x7'",
        ),
        (
            lambda g: g["cell"][1].__setitem__(1, ["zero", 0]),
            "cell[1][1]",
            "zero op (no edge) cannot be a kept branch",
        ),
        (lambda g: g["cell"][0].__setitem__(0, ["skip", 2]), "cell[0][0]", "input 2"),
        (lambda g: g["cell"].__setitem__(3, [["skip", 0]]), "cell[3]", "two [op, input]"),
        (lambda g: g["path"].__setitem__(4, 32), "path[4]", "impossible stride jump 8 -> 32"),
        (lambda g: g["path"].__setitem__(0, 16), "path[0]", "stride 4 or 8"),
        (lambda g: g["path"].__setitem__(2, 12), "path[2]", "stride 12"),
        (lambda g: g.__setitem__("paths", []), "unknown field(s) paths", ""),
    ],
)
def test_a_bad_genotype_is_an_error_naming_the_file_and_the_field(tmp_path, change, field, rule):
    data = PAPER_GENOTYPE.to_json()
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(SegflowError) as err:
        load_genotype(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and field in message and rule in message


def test_a_genotype_file_that_is_not_json_or_missing_names_the_file(tmp_path):
    path = _write(tmp_path, '{"cell": [')
    with pytest.raises(SegflowError, match=rf"^{path}: not valid JSON"):
        load_genotype(path)
    with pytest.raises(SegflowError, match="genotype file not found"):
        load_genotype(tmp_path / "nope.json")
    with pytest.raises(SegflowError, match="train.model_options.genotype: must be a JSON object"):
        parse_genotype([1, 2], "train.model_options.genotype")
