"""Read one DICOM radiograph into a [0, 1] grayscale array.

Pipeline (DICOM PS3.3 C.11): stored values -> Modality LUT / rescale -> VOI LUT or
window -> MONOCHROME1 inverted so that 0 is always black -> scaled to [0, 1]. Only
pixels come out: no header field (patient, study, device, dates) is returned or
copied anywhere, so nothing identifying can travel with the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedsynth.data.errors import UnreadableImage


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


def read_dicom(path: Path) -> np.ndarray:
    """Decode ``path`` to float32 (H, W) in [0, 1]; raise UnreadableImage with a reason."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(str(path))
    except InvalidDicomError as err:
        raise UnreadableImage(f"not a DICOM file ({err})") from None
    except Exception as err:  # truncated or garbled files raise many kinds of errors
        raise UnreadableImage(f"corrupt DICOM ({type(err).__name__}: {err})") from None

    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UnreadableImage("DICOM has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnreadableImage(f"multi-frame DICOM ({frames} frames); expected one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnreadableImage(f"photometric interpretation {photometric} is not grayscale")

    try:
        stored = ds.pixel_array
    except Exception as err:
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
