"""Where the shards live: a local directory or an object-store prefix, and each node's cache.

The one module that knows about filesystems. A shard location is a local path or a URI
(``s3://bucket/prefix``, ``gs://bucket/prefix``; :func:`segflow.config.check_shard_uri`).
Everything else in segflow sees shards as a local directory: a reader calls
:func:`local_shards` on its own node (a Ray worker on another machine cannot see the driver's
disk), which returns the directory itself for a local location, and for a remote one a cache
directory on that node, filled once per content hash.

Layout in the object store (written by :func:`publish_shards`)::

    <prefix>/index.json                               written last: the version readers see
    <prefix>/<content_hash>/<split>/<split>-00000.arrow

Why the objects sit under their content hash (not overwritten in place, not a temp key then a
copy): S3 has no rename, and a copy costs a second full transfer; one PUT is already atomic per
object (a reader sees the whole object or none). What has to be atomic is the *set* of files,
and a versioned prefix gives that: while a new version uploads, the old ``index.json`` still
names only old, untouched objects, so a failed upload leaves the previous shards valid, and a
reader in the middle of an epoch never sees a mix. ``index.json`` names the prefix it lists
(``objects``) and the URI (``uri``).

The cache (``SEGFLOW_CACHE_DIR``, default ``~/.cache/segflow/shards``) holds
``<content_hash>/`` in the local layout, so the loader memory-maps it as it does a local shard
directory. A file is downloaded to a temp name, its sha256 compared with the index's as it
streams, then renamed into place, and a ``.<name>.verified`` marker written: later calls check
only the size and the marker (no re-hash each epoch). One node's concurrent readers (training
workers, DataLoader processes, Ray tasks) take a file lock on the version's directory, so each
file is downloaded once and nobody maps a half-written one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from segflow.config import SHARD_URI_SCHEMES, check_shard_uri
from segflow.errors import SegflowError
from segflow.io import atomic_path, write_json
from segflow.storage import is_uri, open_storage

INDEX_NAME = "index.json"
CACHE_ENV = "SEGFLOW_CACHE_DIR"
#: Marks an index.json that only points to shards stored at its ``uri``.
POINTER_KEY = "pointer"
DEFAULT_CACHE = Path("~/.cache/segflow/shards")
CHUNK = 8 << 20

log = logging.getLogger(__name__)


@dataclass
class CacheStats:
    """What :func:`fetch_shards` did: files already cached, files and bytes downloaded."""

    hits: int = 0
    downloads: int = 0
    bytes: int = 0


def is_remote(location: str | Path) -> bool:
    """True for an object-store URI (``s3://``, ``gs://``), False for a local path."""
    return isinstance(location, str) and is_uri(location)


def location(value: str | Path) -> str:
    """The canonical form of a shard location: an absolute local path (a relative one is
    relative to the working directory, the project root for a stage) or the checked URI."""
    if is_remote(value):
        try:
            return check_shard_uri(str(value))
        except ValueError as exc:
            raise SegflowError(f"{value}: not a shard location: {exc}") from None
    return os.path.abspath(value)


def follow(where: str | Path) -> str | Path:
    """``where``, or the ``uri`` its index.json points to when it is a pointer (data/shards
    when the shards live elsewhere), so ``segflow shards`` and readers given data/shards work."""
    if is_remote(where):
        return where
    index_path = Path(where) / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        return where
    return index["uri"] if isinstance(index, dict) and index.get(POINTER_KEY) else where


def join(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI alike (``Path`` would fold ``s3://``)."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts if p)])


def filesystem(uri: str) -> tuple:
    """(pyarrow FileSystem, path inside it) for a location or an object under one: the one
    opening of an object store that checkpoints use too (:func:`segflow.storage.open_storage`:
    bounded timeouts and attempts, the endpoint from ``AWS_ENDPOINT_URL``)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme = uri.split("://", 1)[0]
    if scheme not in SHARD_URI_SCHEMES:
        raise SegflowError(
            f"{uri}: scheme {scheme}:// is not one of {', '.join(SHARD_URI_SCHEMES)}"
        )
    return open_storage(uri)


def store_error(uri: str, exc: BaseException, fix: str = "") -> SegflowError:
    """One line naming ``uri`` for what the object store said (the SDK's text is long)."""
    text = str(exc)
    tail = f"; {fix}" if fix else ""
    if re.search(r"ACCESS_DENIED|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|"
                 r"credentials|Forbidden|403", text):  # fmt: skip
        reason = "access denied: check the AWS_* credentials (or the bucket's policy)"
        tail = ""  # rerunning a stage does not help
    elif re.search(r"NETWORK_CONNECTION|Could not connect|curlCode|timed out", text):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        reason = f"cannot reach the object store{f' at {endpoint}' if endpoint else ''}"
        tail = ""
    elif isinstance(exc, FileNotFoundError) or "NO_SUCH" in text or "NoSuch" in text:
        bucket = _missing_bucket(uri)
        reason = f"bucket {bucket!r} does not exist" if bucket else "no such object"
    else:
        reason = text.splitlines()[0] if text else type(exc).__name__
    return SegflowError(f"{uri}: {reason}{tail}")


def _missing_bucket(uri: str) -> str | None:
    """The bucket of ``uri`` if the store says it does not exist (None: it does, or local)."""
    if not is_remote(uri):
        return None
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    try:
        missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        return None
    return bucket if missing else None


def read_bytes(uri: str, fix: str = "") -> bytes:
    """The whole object or file at ``uri``; a failure is one line naming it."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except OSError as exc:
        raise store_error(uri, exc, fix) from None


def read_index(where: str | Path, fix: str) -> dict:
    """``<where>/index.json`` (local directory or object-store prefix) as a dict."""
    uri = join(where, INDEX_NAME)
    if not is_remote(where) and not Path(uri).is_file():
        raise SegflowError(f"{uri}: not found; {fix}")
    try:
        return json.loads(read_bytes(uri, fix))
    except json.JSONDecodeError as exc:
        raise SegflowError(f"{uri}: not valid JSON ({exc}); {fix}") from None


def object_uri(where: str | Path, index: dict, rel: str) -> str:
    """Where the file ``rel`` of ``index`` is: beside the index locally, under the version's
    prefix (``objects``) in an object store."""
    return join(where, index.get("objects", "") if is_remote(where) else "", rel)


def files_of(index: dict) -> list[dict]:
    """Every file entry (path, rows, bytes, sha256) of every split, in index order."""
    return [f for split in index.get("splits", {}).values() for f in split.get("files", [])]


def cache_root() -> Path:
    """This node's shard cache: ``$SEGFLOW_CACHE_DIR`` or ``~/.cache/segflow/shards``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def local_shards(where: str | Path, split: str | None = None) -> Path:
    """A local directory with the shards of ``where``: itself if local, else this node's cache
    of the current version, with ``split``'s files (every split's if None) downloaded on first
    use (see :func:`fetch_shards`)."""
    return fetch_shards(where, None if split is None else [split])[0]


def fetch_shards(
    where: str | Path, splits: list[str] | None = None, fix: str = "run dvc repro shard"
) -> tuple[Path, CacheStats]:
    """:func:`local_shards` and what it cost: files found cached, downloaded, bytes moved.

    The remote ``index.json`` is read on every call (one small GET: it says which version is
    current); a file already in the cache with the index's size and a verification marker is
    not fetched again.
    """
    stats = CacheStats()
    where = follow(where)
    if not is_remote(where):
        return Path(where), stats
    uri = location(where)
    index = read_index(uri, fix)
    version = str(index.get("content_hash") or "")
    if not re.fullmatch(r"[0-9a-f]{64}", version):
        raise SegflowError(f"{join(uri, INDEX_NAME)}: no valid content_hash; {fix}")
    root = cache_root() / version
    root.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        wanted = index.get("splits", {}) if splits is None else splits
        for entry in files_of({"splits": {s: index["splits"].get(s, {}) for s in wanted}}):
            target = root / entry["path"]
            if _verified(target, entry):
                stats.hits += 1
                continue
            _download(object_uri(uri, index, entry["path"]), target, entry, uri, fix)
            stats.downloads += 1
            stats.bytes += int(entry["bytes"])
        if not (root / INDEX_NAME).is_file():
            write_json(root / INDEX_NAME, index)
    if stats.downloads:
        log.info(
            "shards %s: %d files (%.1f MB) downloaded to %s in %.1f s, %d already cached",
            uri, stats.downloads, stats.bytes / 1e6, root, time.monotonic() - start, stats.hits,
        )  # fmt: skip
    return root, stats


def _marker(target: Path) -> Path:
    return target.with_name(f".{target.name}.verified")


def _verified(target: Path, entry: dict) -> bool:
    """Cheap per-epoch check: right size, and the marker written after its sha256 matched."""
    marker = _marker(target)
    try:
        return (
            target.stat().st_size == int(entry["bytes"])
            and marker.read_text().strip() == entry["sha256"]
        )
    except OSError:
        return False


def _download(source: str, target: Path, entry: dict, uri: str, fix: str) -> None:
    """Stream ``source`` to a temp file beside ``target``, hashing as it goes; rename it into
    place only if the sha256 is the index's, then write the marker."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _marker(target).unlink(missing_ok=True)
    fs, path = filesystem(source)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with fs.open_input_stream(path) as stream:
                    while block := stream.read(CHUNK):
                        digest.update(block)
                        out.write(block)
            except OSError as exc:
                raise store_error(source, exc, fix) from None
        if digest.hexdigest() != entry["sha256"]:
            raise SegflowError(
                f"{source}: content differs from the sha256 in {join(uri, INDEX_NAME)}; "
                f"the object is damaged; {fix}"
            )
        os.replace(tmp, target)
        with atomic_path(_marker(target)) as tmp_marker:
            tmp_marker.write_text(entry["sha256"])
    finally:
        Path(tmp).unlink(missing_ok=True)


def publish_shards(local_dir: Path, uri: str, index: dict) -> dict:
    """Upload the shards built in ``local_dir`` to ``uri``; return the index written there.

    Objects go to ``<uri>/<content_hash>/...`` (an object already there with the right size is
    kept: re-running the stage on the same data uploads nothing), ``index.json`` last.
    """
    uri = location(uri)
    fix = "check shard.uri and the object store, then rerun dvc repro shard"
    version = str(index["content_hash"])
    remote = {**index, "uri": uri, "objects": version}
    import pyarrow.fs as pafs

    for entry in files_of(index):
        target = object_uri(uri, remote, entry["path"])
        fs, path = filesystem(target)
        with open(local_dir / entry["path"], "rb") as src:  # a local error stays a local one
            try:
                info = fs.get_file_info(path)
                if info.type == pafs.FileType.File and info.size == int(entry["bytes"]):
                    continue
                with fs.open_output_stream(path) as dst:
                    while block := src.read(CHUNK):
                        dst.write(block)
            except OSError as exc:
                raise store_error(target, exc, fix) from None
    index_uri = join(uri, INDEX_NAME)
    fs, path = filesystem(index_uri)
    try:
        with fs.open_output_stream(path) as dst:
            dst.write(json.dumps(remote, indent=2).encode() + b"\n")
    except OSError as exc:
        raise store_error(index_uri, exc, fix) from None
    return remote


def object_size(uri: str, fix: str) -> int | None:
    """The size the store reports for ``uri`` (None: there is no such object)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise store_error(uri, exc, fix) from None
    return info.size if info.type == pafs.FileType.File else None


def open_object(uri: str, fix: str):
    """A random-access file on ``uri`` (ranged GETs on an object store: the footer costs one)."""
    fs, path = filesystem(uri)
    try:
        return fs.open_input_file(path)
    except OSError as exc:
        raise store_error(uri, exc, fix) from None


def sha256_object(uri: str, fix: str) -> str:
    """sha256 of the object at ``uri``, streamed (never held whole in memory)."""
    fs, path = filesystem(uri)
    digest = hashlib.sha256()
    try:
        with fs.open_input_stream(path) as stream:
            while block := stream.read(CHUNK):
                digest.update(block)
    except OSError as exc:
        raise store_error(uri, exc, fix) from None
    return digest.hexdigest()


def list_objects(uri: str, suffix: str, fix: str) -> list[str]:
    """URIs of the objects (or files) under ``uri`` whose name ends in ``suffix``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise store_error(uri, exc, fix) from None
    base = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    return sorted(base + i.path for i in infos if i.path.endswith(suffix))
