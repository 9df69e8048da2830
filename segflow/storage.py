"""Where Ray Train and Tune keep runs: a local directory, or an object store every node reaches.

On one machine the default ``ray_results/`` is enough. On a cluster whose nodes share no disk,
a Ray Train worker on another node writes the checkpoints, and the driver (or a restarted
worker) reads them back: the storage must be an object store, ``s3://bucket/prefix`` (or
``gs://``). params.yaml's schema already refused every other URI
(:func:`segflow.config.check_storage_uri`); this module opens one.

S3 is opened the way a cluster's nodes are pointed at MinIO or S3: ``AWS_ENDPOINT_URL`` (unset:
AWS itself) and the ``AWS_*`` credentials in the environment. The filesystem is built here,
with short connect/request timeouts and few retries, and handed to Ray
(``RunConfig(storage_filesystem=...)``), so an unreachable endpoint fails the stage in seconds
with one line (:func:`check_storage`) instead of AWS's default minutes of retries.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segflow.errors import SegflowError

#: Seconds: connecting to the endpoint, and one request (a checkpoint part is one request). A
#: dead endpoint fails within ~30 s: connect timeout x attempts, plus the SDK's short backoff.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
#: Attempts per request (AWS's standard strategy backs off between them).
S3_ATTEMPTS = 3


def is_uri(storage_path: str) -> bool:
    return "://" in storage_path


def open_storage(storage_path: str) -> tuple[Any, str]:
    """``(filesystem, path)`` for ``RunConfig(storage_filesystem=fs, storage_path=path)``, and
    for any object under an object-store location (the shards, segflow.data.store).

    A local path: ``(None, the absolute path)``; Ray opens it itself. A URI: its pyarrow
    filesystem and the path inside it (``bucket/prefix``). S3's endpoint comes from
    ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (``http://host:port``, or a bare
    ``host:port`` meaning https).
    """
    if not is_uri(storage_path):
        return None, str(Path(storage_path).expanduser().resolve())
    import pyarrow.fs as pafs

    scheme, _, path = storage_path.partition("://")
    path = path.rstrip("/")
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return _s3(endpoint, tuple(os.environ.get(name) for name in _AWS_SETTINGS)), path
    fs, inner = pafs.FileSystem.from_uri(storage_path)
    return fs, inner.rstrip("/")


#: What the AWS SDK reads from the environment: a client is reused only while they are unchanged.
_AWS_SETTINGS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION")  # fmt: skip


@functools.lru_cache(maxsize=4)
def _s3(endpoint: str | None, settings: tuple) -> Any:
    """One S3 client per endpoint and credentials (creating one costs milliseconds, and a
    verify or a download touches every object); ``settings`` only keys the cache."""
    import pyarrow.fs as pafs

    options: dict[str, str] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc, scheme=parts.scheme)
    return pafs.S3FileSystem(
        connect_timeout=CONNECT_TIMEOUT_S,
        request_timeout=REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS),
        **options,
    )


def check_storage(storage_path: str, field: str) -> None:
    """Fail now, in one line naming ``field``, when an object-store ``storage_path`` cannot be
    reached or its bucket does not exist: Ray would otherwise retry inside every worker.
    A local path is always usable (Ray creates it)."""
    if not is_uri(storage_path):
        return
    fs, path = open_storage(storage_path)
    bucket = path.split("/", 1)[0]
    import pyarrow.fs as pafs

    try:
        found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SegflowError(f"params.yaml: {field}: {storage_path!r}: {reason}") from None
    if not found:
        where = os.environ.get("AWS_ENDPOINT_URL", "") if storage_path.startswith("s3:") else ""
        raise SegflowError(
            f"params.yaml: {field}: {storage_path!r}: no bucket {bucket!r}"
            + (f" at {where}" if where else "")
            + " (or it is unreachable with these credentials)"
        )


def display(storage_path: str, path: str) -> str:
    """A path inside ``storage_path``'s filesystem as the user writes it (``s3://...``)."""
    if not is_uri(storage_path):
        return path
    return f"{storage_path.partition('://')[0]}://{path}"
