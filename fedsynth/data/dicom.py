"""Read one DICOM radiograph into a [0, 1] grayscale array.

Pipeline (DICOM PS3.3 C.11): stored values -> Modality LUT / rescale -> VOI LUT or
window -> MONOCHROME1 inverted so that 0 is always black -> scaled to [0, 1]. The header
is checked before any pixel is decoded (pixel count, frames). Only pixels come out: no
header field (patient, study, device, dates) is returned or copied anywhere, so nothing
identifying can travel with the image.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from fedsynth.data.errors import (
    PIL_BOMB_MESSAGE,
    TooManyPixels,
    UnreadableImage,
    check_pixel_count,
    pil_bomb_guard,
    pil_bomb_reason,
    pixel_limit,
)


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _voi_output_range(ds, pixel_representation: int, bits_stored: int) -> tuple[float, float] | None:
    """Output range of the dataset's VOI transform, or None when it has none.

    Pushing the extreme stored values through the same modality + VOI transforms gives
    the window's own bounds, so a windowed image keeps the contrast the window defines
    instead of being re-stretched to its own min and max.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if not has_voi:
        return None
    if pixel_representation == 0:
        lo, hi = 0, 2**bits_stored - 1
    else:
        lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    extremes = np.array([lo, hi], dtype=np.int64)
    out = apply_voi_lut(apply_modality_lut(extremes, ds), ds).astype(np.float64)
    a, b = float(out.min()), float(out.max())
    return (a, b) if b > a else None


def _count(ds, keyword: str, default: int | None) -> int | None:
    """A header count (Rows, Columns, NumberOfFrames, SamplesPerPixel) as a positive int.

    Absent or empty means ``default``; anything else that is not a positive whole number
    ("abc", -3, 1.5, 0, several values) makes the file unusable, with the value in the reason.
    """
    if keyword not in ds:
        return default
    try:
        value = ds[keyword].value
    except Exception as err:  # a value pydicom cannot even convert
        raise UnreadableImage(f"malformed {keyword} in the DICOM header ({type(err).__name__}: {err})") from None
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        return default
    text = str(value).strip()
    if isinstance(value, int) and not isinstance(value, bool):  # US, or an IS pydicom could parse
        number = int(value)
    elif re.fullmatch(r"\+?\d{1,12}", text):
        number = int(text)
    else:
        number = 0
    if number < 1:
        raise UnreadableImage(f"malformed {keyword} {text[:40]!r} in the DICOM header (expected a positive integer)")
    return number


def _check_header(ds, max_pixels: int | None) -> None:
    """Refuse, from the header alone, what would be too large or cannot be one radiograph."""
    frames = _count(ds, "NumberOfFrames", 1)
    rows, columns = _count(ds, "Rows", None), _count(ds, "Columns", None)
    samples = _count(ds, "SamplesPerPixel", 1)
    if rows is not None and columns is not None:
        what = f"DICOM is {rows} x {columns} pixels"
        if frames > 1:
            what += f" x {frames} frames"
        if samples > 1:
            what += f" x {samples} samples"
        check_pixel_count(rows * columns * frames * samples, what, max_pixels)
    if frames > 1:
        raise UnreadableImage(f"multi-frame DICOM ({frames} frames); expected one radiograph")


def _refuse_deflate_bomb(path: Path, max_pixels: int | None) -> None:
    """A Deflated Explicit VR file is inflated whole by pydicom before anything is parsed: inflate
    it here first, as a stream, and stop at a bound (the pixel limit at 4 bytes a pixel, plus
    16 MiB of header), so that a small file cannot expand to gigabytes."""
    bound = 4 * pixel_limit(max_pixels) + 16 * 2**20
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble  # pydicom 3's own meta reader
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        with path.open("rb") as fh:
            read_preamble(fh, False)
            meta = _read_file_meta_info(fh)
            if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
                return
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            total = 0
            while chunk := fh.read(2**20):
                while chunk:
                    total += len(inflater.decompress(chunk, 2**20))
                    chunk = inflater.unconsumed_tail
                    if total > bound:
                        raise UnreadableImage(
                            f"deflated DICOM inflates to more than {bound // 2**20} MiB; refused before decoding"
                        )
    except UnreadableImage:
        raise
    except Exception:  # not readable this way (no preamble, garbled meta): dcmread below gives the reason
        return


def read_dicom(path: Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode ``path`` to float32 (H, W) in [0, 1]; raise UnreadableImage with a reason.

    The header is read and checked first, without the pixel data (size against
    ``max_pixels``, default :data:`MAX_PIXELS`; frames; photometric), so that nothing is
    decoded for a file that announces too many pixels.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    def read(stop_before_pixels: bool):
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError as err:
            raise UnreadableImage(f"not a DICOM file ({err})") from None
        except Exception as err:  # truncated or garbled files raise many kinds of errors
            raise UnreadableImage(f"corrupt DICOM ({type(err).__name__}: {err})") from None

    _refuse_deflate_bomb(path, max_pixels)
    _check_header(read(stop_before_pixels=True), max_pixels)
    ds = read(stop_before_pixels=False)
    _check_header(ds, max_pixels)  # the same checks on what is decoded (the file may have changed)

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableImage("DICOM has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableImage(f"photometric interpretation {photometric} is not grayscale")

    try:
        with pil_bomb_guard():  # a compressed frame whose own header is larger than the DICOM's
            stored = ds.pixel_array
    except Exception as err:
        # pydicom passes Pillow's refusal on inside an error of its own
        bomb = isinstance(err, (Image.DecompressionBombError, Image.DecompressionBombWarning))
        if bomb or PIL_BOMB_MESSAGE in str(err):
            raise TooManyPixels(pil_bomb_reason(err, max_pixels, "the compressed frame")) from None
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise UnreadableImage(f"cannot decode pixel data (transfer syntax {name}): {err}") from None
    if stored.ndim != 2:
        raise UnreadableImage(f"pixel data has shape {stored.shape}; expected one 2-D frame")

    try:
        values = apply_voi_lut(apply_modality_lut(stored, ds), ds).astype(np.float64)
        bits = int(ds.get("BitsStored", 8 * stored.itemsize))
        span = _voi_output_range(ds, int(ds.get("PixelRepresentation", 0)), bits)
    except Exception as err:
        raise UnreadableImage(f"invalid modality/VOI LUT ({err})") from None

    if not np.isfinite(values).all():
        raise UnreadableImage("pixel data has non-finite values")
    lo, hi = span if span is not None else (float(values.min()), float(values.max()))
    if hi <= lo:
        raise UnreadableImage("image is blank (a single grey level)")
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":  # 0 means white in MONOCHROME1
        scaled = 1.0 - scaled
    return scaled.astype(np.float32)
