"""Per-file failure during ingestion (the file is skipped and its reason reported), and the
size limits every reader checks from a file's header before it decodes a single pixel."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# One image may hold at most this many pixels (rows x columns x frames). The largest
# radiographs (detector panels, full-field mammograms) are 10-30 megapixels, so 64 MP
# never refuses a real X-ray; a hostile header (a 1 KB DICOM or PNG announcing 8200 x 8200
# or 100000 x 100000) would otherwise make the decoder allocate gigabytes before anything
# else can look at the image. Every reader takes a ``max_pixels`` override.
MAX_PIXELS = 64_000_000

# An npz bundle's arrays may hold at most this many bytes once decompressed (the sum over
# the arrays read, from their .npy headers). Real bundles are far smaller (Kermany at
# 128 px: 96 MB; PneumoniaMNIST at 224 px: 0.3 GB); a header that announces hundreds of
# GiB is refused before numpy allocates anything. ``load_source`` takes an override.
MAX_NPZ_BYTES = 2 * 2**30


class UnreadableImage(Exception):
    """One file cannot be used as an image; ``str(err)`` is the reason shown to the user."""


class TooManyPixels(UnreadableImage):
    """The header announces more pixels than ``max_pixels``: refused before decoding."""


def describe_pixels(n: int) -> str:
    if n < 1_000_000:
        return f"{n} pixels"
    mp = n / 1e6
    return f"{mp:.3g} megapixels" if mp < 1000 else f"{mp:,.0f} megapixels"


def check_pixel_count(n_pixels: int, what: str, max_pixels: int | None) -> None:
    """Raise TooManyPixels when ``n_pixels`` (from a header) exceeds the limit; ``what``
    says where the count came from (e.g. "image is 9000 x 9000 pixels")."""
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    if n_pixels > limit:
        raise TooManyPixels(f"{what} ({describe_pixels(n_pixels)}); at most {describe_pixels(limit)} are accepted")


def pixel_limit(max_pixels: int | None) -> int:
    return MAX_PIXELS if max_pixels is None else int(max_pixels)


@contextmanager
def pil_bomb_guard() -> Iterator[None]:
    """Inside this block Pillow's DecompressionBombWarning is raised as an exception, like its
    DecompressionBombError, so a decoder (Pillow itself, or pydicom's Pillow plugin) stops
    before it decodes an oversized image instead of warning and going on. The warnings filter
    is process-wide: a concurrent block can at worst keep or drop this one filter, which
    only changes whether such a warning is raised or printed."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


PIL_BOMB_MESSAGE = "could be decompression bomb"  # in Pillow's DecompressionBombError/Warning


def pil_bomb_reason(err: BaseException, max_pixels: int | None, what: str = "image") -> str:
    """The skip reason for Pillow's own refusal (its message gives the pixel count)."""
    match = re.search(r"\((\d+) pixels\)", str(err))
    count = f" ({describe_pixels(int(match.group(1)))})" if match else ""
    return f"{what} has far too many pixels{count}; at most {describe_pixels(pixel_limit(max_pixels))} are accepted"
