"""Shards on an object store (moto's S3 server on 127.0.0.1): publishing, the per-node cache,
verification and the one-line errors. GETs are counted in the server's own request log."""

from __future__ import annotations

import itertools
import pickle
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from segflow.config import parse_params
from segflow.data.loader import ShardDataset
from segflow.data.shards import read_index, verify_shards
from segflow.data.store import fetch_shards, filesystem, object_uri, publish_shards, read_bytes
from segflow.errors import SegflowError
from tests.data.test_shards import shard
from tests.project import BIN, CODE_UNDER_TEST
from tests.services import S3Server, free_port

pytestmark = pytest.mark.integration

_names = itertools.count()


@pytest.fixture
def bucket(s3_env) -> str:
    """A fresh bucket per test (``s3://segflow-test-N``), so each test counts its own GETs."""
    return s3_env.create_bucket(f"segflow-test-{next(_names)}")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """This node's shard cache, in the test's temp dir."""
    monkeypatch.setenv("SEGFLOW_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def arrow_gets(server: S3Server, uri: str) -> list[str]:
    """The GETs of .arrow objects under ``uri`` the server has seen so far."""
    return [p for p in server.requests("GET", "/" + uri[5:]) if p.endswith(".arrow")]


def publish(root, uri: str, **kwargs) -> dict:
    """Build tiny shards in ``root/shards`` and upload them, as the shard stage does."""
    _, index = shard(root, **kwargs)
    return publish_shards(root / "shards", uri, index)


def overwrite(uri: str, data: bytes) -> None:
    fs, path = filesystem(uri)
    with fs.open_output_stream(path) as out:
        out.write(data)


def test_objects_go_under_their_content_hash_and_the_index_is_written_last(
    s3_env, bucket, tmp_path
):
    uri = f"{bucket}/tiny"
    remote = publish(tmp_path, uri)
    writes = s3_env.requests("(?:PUT|POST)", "/" + uri[5:])  # in the order the server saw
    index_writes = [n for n, p in enumerate(writes) if p.endswith("/tiny/index.json")]
    objects = [p for p in writes if p.endswith(".arrow")]
    assert index_writes and min(index_writes) > max(writes.index(p) for p in objects)
    files = [f for s in remote["splits"].values() for f in s["files"]]
    assert set(objects) == {f"/{uri[5:]}/{remote['content_hash']}/{f['path']}" for f in files}
    assert remote["uri"] == uri and remote["objects"] == remote["content_hash"]
    assert read_index(uri) == remote
    assert verify_shards(uri, full_hash=True) == remote


def test_a_failed_upload_leaves_the_previous_version_the_one_readers_see(
    s3_env, bucket, tmp_path, cache
):
    uri = f"{bucket}/tiny"
    first = publish(tmp_path / "v1", uri)
    _, second = shard(tmp_path / "v2", counts={"train": 9, "val": 3})
    (tmp_path / "v2" / "shards" / second["splits"]["val"]["files"][0]["path"]).unlink()
    with pytest.raises(FileNotFoundError):
        publish_shards(tmp_path / "v2" / "shards", uri, second)  # train uploaded, val not
    assert read_index(uri)["content_hash"] == first["content_hash"] != second["content_hash"]
    assert verify_shards(uri, full_hash=True)["content_hash"] == first["content_hash"]
    assert fetch_shards(uri)[0] == cache / first["content_hash"]


def test_a_node_downloads_each_file_once_and_reads_the_same_samples(
    s3_env, bucket, tmp_path, cache
):
    uri = f"{bucket}/tiny"
    remote = publish(tmp_path, uri)
    files = [f for s in remote["splits"].values() for f in s["files"]]
    local, stats = fetch_shards(uri)
    assert local == cache / remote["content_hash"]
    assert (stats.hits, stats.downloads, stats.bytes) == (
        0,
        len(files),
        sum(f["bytes"] for f in files),
    )
    for f in files:
        assert (local / f["path"]).read_bytes() == (tmp_path / "shards" / f["path"]).read_bytes()
    downloaded = arrow_gets(s3_env, uri)
    assert sorted(downloaded) == sorted(
        f"/{uri[5:]}/{remote['objects']}/{f['path']}" for f in files
    )

    from_store = [s["id"] for s in ShardDataset(uri, "train")]  # a second reader, then a third
    again = fetch_shards(uri)[1]
    assert from_store == [s["id"] for s in ShardDataset(tmp_path / "shards", "train")]
    assert (again.hits, again.downloads) == (len(files), 0)
    assert arrow_gets(s3_env, uri) == downloaded  # nothing fetched again


def test_concurrent_readers_on_one_node_download_each_file_once(s3_env, bucket, tmp_path, cache):
    uri = f"{bucket}/tiny"
    remote = publish(tmp_path, uri)
    with ThreadPoolExecutor(4) as pool:  # each opens the lock file itself, as processes do
        results = list(pool.map(lambda _: fetch_shards(uri), range(4)))
    files = [f for s in remote["splits"].values() for f in s["files"]]
    assert sum(stats.downloads for _, stats in results) == len(files)
    assert len(arrow_gets(s3_env, uri)) == len(files)
    assert verify_shards(results[0][0], full_hash=True)["content_hash"] == remote["content_hash"]


def test_a_dataset_unpickled_on_another_node_fetches_its_own_copy(s3_env, bucket, tmp_path, cache):
    """A Ray Data task gets the training ShardDataset pickled; on a node without the driver's
    cache (here: the cache removed) it fetches the split from the store before reading."""
    uri = f"{bucket}/tiny"
    publish(tmp_path, uri)
    dataset = ShardDataset(uri, "val")
    expected = [s["id"] for s in dataset]
    shutil.rmtree(cache)
    elsewhere = pickle.loads(pickle.dumps(dataset))
    assert [s["id"] for s in elsewhere.samples_at(range(len(expected)))] == expected
    assert all(path.is_file() for path, _ in elsewhere.files)


def test_a_damaged_object_is_named_by_verify_and_by_the_cache(s3_env, bucket, tmp_path, cache):
    uri = f"{bucket}/tiny"
    remote = publish(tmp_path, uri)
    key = object_uri(uri, remote, remote["splits"]["train"]["files"][1]["path"])
    data = bytearray(read_bytes(key))
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside an image: same size, footer intact
    overwrite(key, bytes(data))

    verify_shards(uri)  # the cheap check sees sizes and footers only
    with pytest.raises(SegflowError, match=rf"^{re.escape(key)}: content differs from the sha256"):
        verify_shards(uri, full_hash=True)
    with pytest.raises(SegflowError, match=rf"^{re.escape(key)}: .*the object is damaged"):
        fetch_shards(uri)
    version = cache / remote["content_hash"]
    assert not (version / remote["splits"]["train"]["files"][1]["path"]).exists()
    assert not list(version.rglob("*.part"))  # no half-written download left behind

    cli = subprocess.run(
        [str(BIN / "segflow"), "shards", "--verify", uri],
        capture_output=True, text=True, timeout=120,
        env={"PATH": f"{BIN}:/usr/bin:/bin", "COLUMNS": "300", **s3_env.env(), **CODE_UNDER_TEST},
    )  # fmt: skip
    out = (cli.stdout + cli.stderr).strip()
    assert cli.returncode == 1 and len(out.splitlines()) == 1 and key in out, out

    overwrite(key, bytes(data[:-100]))  # truncated: the cheap check names it too
    with pytest.raises(SegflowError, match=rf"^{re.escape(key)}: shard is \d+ bytes"):
        verify_shards(uri)


def test_store_errors_are_one_line_naming_the_uri(s3_env, bucket, monkeypatch):
    with pytest.raises(SegflowError, match=r"^s3://no-such-bucket/p/index.json: bucket "
                       r"'no-such-bucket' does not exist; run the shard stage"):  # fmt: skip
        read_index("s3://no-such-bucket/p")
    with pytest.raises(SegflowError, match=rf"^{bucket}/none/index.json: no such object; run"):
        read_index(f"{bucket}/none")
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    start = time.monotonic()
    with pytest.raises(SegflowError, match=rf"^{bucket}/p/index.json: cannot reach the object "
                       rf"store at {re.escape(dead)}$"):  # fmt: skip
        read_index(f"{bucket}/p")
    assert time.monotonic() - start < 30


def test_rejected_credentials_are_one_line_naming_the_uri(tmp_path, monkeypatch):
    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # moto then checks every key
    server = S3Server(tmp_path / "s3").start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SegflowError, match=r"^s3://any/p/index.json: access denied: check "
                           r"the AWS_\* credentials"):  # fmt: skip
            read_index("s3://any/p")
    finally:
        server.stop()


def test_training_with_the_local_shards_removed_reads_them_from_the_object_store(
    s3_env, bucket, tmp_path, cache, monkeypatch
):
    """The issue's test: the shard stage publishes to s3://, the local data/shards holds only
    the pointer; with data/ removed, a training (local launcher, 2 epochs) fetches the train and
    val shards from the store, each once, into this node's cache; a second one fetches nothing."""
    from segflow.stages import ingest, synthesize
    from segflow.stages import shard as shard_stage
    from segflow.train.run import train_local

    uri = f"{bucket}/synthetic"
    params = parse_params({
        "synthetic": {"num_train": 4, "num_val": 2, "num_test": 2, "height": 32, "width": 48},
        "shard": {"uri": uri},
        "loader": {"crop_height": 32, "crop_width": 48, "scale_min": 1.0, "scale_max": 1.0},
        "train": {"launcher": "local", "model": "unet", "backbone": None, "output_stride": None,
                  "model_options": {"width": 4, "batch_norm": False}, "epochs": 2,
                  "batch_size": 2, "storage_path": str(tmp_path / "runs"), "bf16": False},
    })  # fmt: skip
    monkeypatch.chdir(tmp_path)
    synthesize.main(params)
    ingest.main(params)
    # Validation (Great Expectations) is not what this test is about: its report, passed.
    (tmp_path / "reports" / "validation").mkdir(parents=True)
    (tmp_path / "reports" / "validation" / "summary.json").write_text('{"success": true}')
    shard_stage.main(params)

    pointer = read_index(tmp_path / "data" / "shards")
    assert [p.name for p in (tmp_path / "data" / "shards").iterdir()] == ["index.json"]
    assert pointer["uri"] == uri and pointer["pointer"] is True
    assert pointer["content_hash"] == read_index(uri)["content_hash"]
    files = [f for s in pointer["splits"].values() for f in s["files"]]
    wanted = sorted(f"/{uri[5:]}/{pointer['objects']}/{f['path']}" for f in files)
    assert arrow_gets(s3_env, uri) == []  # the stage only uploaded
    shutil.rmtree(tmp_path / "data")  # no local shards, no pointer, no source images

    outcome = train_local(params, uri, tmp_path / "models", echo=lambda line: None)
    assert len(outcome.history) == 2
    train_and_val = [p for p in wanted if "/test/" not in p]
    assert sorted(arrow_gets(s3_env, uri)) == train_and_val  # each once, for both epochs
    cached = {p.relative_to(cache).as_posix() for p in cache.rglob("*.arrow")}
    assert cached == {
        f"{pointer['content_hash']}/{f['path']}" for f in files if "test" not in f["path"]
    }

    train_local(params, uri, tmp_path / "models-again", echo=lambda line: None)
    assert sorted(arrow_gets(s3_env, uri)) == train_and_val
