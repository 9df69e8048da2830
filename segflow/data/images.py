"""Image files as untrusted input: the pixel count comes from the header before any decode.

A PNG of a few kilobytes can say it is 40000 x 40000; decoding it asks for 4.8 GB (a
*decompression bomb*), and a real 30000 x 30000 PNG of 2.7 MB took 10.7 GB of RSS through
validate and shard. Both are refused here, in one line naming the file and its size, before any
decoder runs: Pillow's ``Image.open`` is lazy and reads only the header (PNG IHDR, JPEG SOF, BMP
and TIFF headers...), so the size is known for the cost of a few hundred bytes.

Every reader of dataset images and masks (ingest's header read, the adapters' ``read_image`` /
``read_mask_values``, which validate and shard call, and ``segflow predict``) goes through
:func:`checked_bytes` or :func:`check_pixels`, with ``dataset.max_pixels`` as the limit.

Pillow has its own guard (``Image.MAX_IMAGE_PIXELS``): it warns above ~89.5 M pixels and raises
``DecompressionBombError`` above twice that (~179 M). segflow leaves that global
alone; ``dataset.max_pixels`` may not exceed Pillow's hard limit (the schema says so), so a
``DecompressionBombError`` always means "over dataset.max_pixels" and is reported as such.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from segflow.config import DatasetParams
from segflow.errors import SegflowError

#: The limit when no params.yaml says otherwise (``segflow predict``, code without params).
DEFAULT_MAX_PIXELS: int = DatasetParams.model_fields["max_pixels"].default


def header_size(
    source: Path | BinaryIO, path: Path, max_pixels: int, what: str = "image"
) -> tuple[int, int] | None:
    """(height, width) from the image header of ``source`` (a path or an open file), or None.

    None: Pillow cannot read the header (not an image, or corrupt); the caller decides whether
    that is fatal (ingest leaves it to validation, which reports every bad file). An image
    Pillow itself refuses as a bomb is refused here; ``path`` names the file.
    """
    try:
        with Image.open(source) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:  # Pillow's size check ran first: its count
        raise SegflowError(
            f"{path}: {what} is {_pixels_said(exc)} by its header, more than dataset.max_pixels "
            f"{max_pixels:,}; refused before decoding"
        ) from None
    except (OSError, ValueError, SyntaxError):  # PIL's types for unknown or corrupt headers
        return None
    return height, width


def check_pixels(path: Path, height: int, width: int, max_pixels: int, what: str = "image") -> None:
    """Refuse an image whose header says more than ``max_pixels`` pixels, naming its size."""
    if height * width > max_pixels:
        raise SegflowError(
            f"{path}: {what} is {width}x{height} ({height * width:,} pixels) by its header, more "
            f"than dataset.max_pixels {max_pixels:,}; refused before decoding"
        )


def checked_bytes(path: Path, max_pixels: int, what: str = "image") -> np.ndarray:
    """The bytes of image file ``path`` (uint8), once its header says at most ``max_pixels``.

    The header and the bytes come from one open file, so the file that is checked is the file
    that is decoded, even if the path is swapped in between.
    """
    with open(path, "rb") as fh:
        size = header_size(fh, path, max_pixels, what)
        if size is None:
            raise SegflowError(
                f"{path}: {what} is not decodable (its header is unreadable: corrupt or not "
                "an image file)"
            )
        check_pixels(path, *size, max_pixels, what)
        fh.seek(0)
        return np.frombuffer(fh.read(), dtype=np.uint8)


def one_line(exc: BaseException) -> str:
    """A decoder's error as one line: OpenCV's ``cv2.error`` spans lines and names no file."""
    return " ".join((getattr(exc, "err", None) or str(exc)).split()) or type(exc).__name__


def _pixels_said(exc: Image.DecompressionBombError) -> str:
    """The count in Pillow's "Image size (N pixels) exceeds limit of M pixels, ...", as text."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,} pixels" if found else f"over Pillow's limit ({exc})"
