"""params.yaml is validated against one schema; every error names the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segflow.config import Params, load_params, parse_params
from segflow.errors import SegflowError

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_params_file_is_valid_and_uses_the_synthetic_default():
    params = load_params(REPO / "params.yaml")
    assert params.dataset.name == "synthetic"
    assert params.dataset.root == "data/synthetic"


def test_an_empty_file_gives_the_defaults():
    assert parse_params({}) == Params()


def test_an_unknown_dataset_name_is_an_error_naming_the_field():
    with pytest.raises(SegflowError, match=r"params.yaml: dataset.name: .*'foo'"):
        parse_params({"dataset": {"name": "foo", "root": "/x"}})


def test_an_unknown_key_is_an_error_not_silently_ignored():
    with pytest.raises(SegflowError, match=r"loader.crop_hieght: Extra inputs are not permitted"):
        parse_params({"loader": {"crop_hieght": 96}})


def test_out_of_range_values_name_the_field_and_the_bound():
    with pytest.raises(SegflowError, match=r"loader.crop_height: Input should be greater than 0"):
        parse_params({"loader": {"crop_height": 0}})
    with pytest.raises(SegflowError, match=r"loader: Value error, scale_min must not exceed"):
        parse_params({"loader": {"scale_min": 2.0, "scale_max": 1.0}})


def test_resize_needs_both_sides():
    with pytest.raises(SegflowError, match=r"shard: .*set together"):
        parse_params({"shard": {"resize_height": 64}})


@pytest.mark.parametrize(
    "uri, rule",
    [
        ("ftp://host/shards", r"scheme ftp:// is not one of s3, gs"),
        ("s3://", r"names no bucket"),
        ("s3:///prefix", r"names no bucket"),
        ("gs://Not_A_Bucket/p", r"names no bucket"),
        ("", r"must name a directory or an s3:// or gs:// prefix"),
    ],
)
def test_shard_uri_is_a_local_path_or_a_bucket_of_a_known_object_store(uri, rule):
    with pytest.raises(SegflowError, match=rf"params.yaml: shard.uri: .*{rule}"):
        parse_params({"shard": {"uri": uri}})


def test_shard_uri_keeps_a_local_path_as_written_and_drops_a_trailing_slash():
    assert parse_params({}).shard.uri == "data/shards"
    assert parse_params({"shard": {"uri": "../shared/shards"}}).shard.uri == "../shared/shards"
    assert parse_params({"shard": {"uri": "s3://my-bucket/camvid/"}}).shard.uri == (
        "s3://my-bucket/camvid"
    )


def test_the_synthetic_dataset_lives_where_the_synthesize_stage_writes_it():
    with pytest.raises(SegflowError, match=r"dataset.root must be data/synthetic"):
        parse_params({"dataset": {"name": "synthetic", "root": "/elsewhere"}})


def test_the_data_root_environment_variable_overrides_params(monkeypatch):
    params = parse_params({"dataset": {"name": "camvid", "root": "/from/params"}})
    monkeypatch.setenv("SEGFLOW_DATA_ROOT", "/from/env")
    assert params.dataset.resolved_root() == Path("/from/env")


def test_a_missing_or_malformed_params_file_names_the_file(tmp_path):
    with pytest.raises(SegflowError, match=r"nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    with pytest.raises(SegflowError, match=r"bad.yaml: not valid YAML"):
        load_params(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SegflowError, match=r"list.yaml: top level must be a mapping"):
        load_params(listy)
