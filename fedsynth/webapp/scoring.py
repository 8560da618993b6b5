"""Score one uploaded X-ray: stream it to a temp file (size-limited), decode, preprocess
exactly as in training, classify, explain with Grad-CAM; the temp file is always removed.
"""

from __future__ import annotations

import io
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fedsynth.classifier.gradcam import grad_cam
from fedsynth.classifier.train import Classifier
from fedsynth.data.errors import MAX_PIXELS, TooManyPixels, UnreadableImage
from fedsynth.data.ingest import read_image_file
from fedsynth.data.preprocess import prepare

UPLOAD_FIELD = "file"
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries a form adds around the file
# MAX_PIXELS (imported above) is ingestion's one pixel limit: checked from the header of every format
# (PNG/JPEG/TIFF/BMP, DICOM) before any pixel is decoded, so decompression bombs are refused (413)
VIEW_SIZE = 320  # pixels: what the page shows of a 32-256 px model input
HEAT_ALPHA = 0.5  # weight of the heat map where it is strongest
ACCEPT = ".png,.jpg,.jpeg,.dcm,.dicom,image/png,image/jpeg,application/dicom"
_SUFFIX_RE = re.compile(r"^\.[a-z0-9]{1,8}$")


class UploadError(Exception):
    """The upload cannot be scored; ``status`` is the HTTP status, the message is for the user."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def safe_suffix(filename: str | None) -> str:
    """The original file's suffix, lower-cased, when it is a plain one (".png", ".dcm", ...)."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if _SUFFIX_RE.match(suffix) else ""


@dataclass
class Score:
    probability: float
    threshold: float
    prediction: str
    resolution: int
    image: np.ndarray  # the preprocessed model input (S, S) in [0, 1]
    heatmap: np.ndarray  # Grad-CAM (S, S) in [0, 1]
    # unlike the classifier's training images (Classifier.is_ood); None: the classifier has no OOD reference
    out_of_distribution: bool | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None


class Scorer:
    """The run's classifier behind a lock (Grad-CAM hooks the shared model)."""

    def __init__(self, classifier: Classifier):
        self.classifier = classifier
        self._lock = threading.Lock()

    def score_file(self, path: Path) -> Score:
        """Decode ``path`` (PNG/JPEG/DICOM) and score it; UploadError (422) when it is not usable,
        (413) when its header announces more than MAX_PIXELS pixels (nothing is decoded then)."""
        try:
            image = read_image_file(path, max_pixels=MAX_PIXELS)
        except TooManyPixels as err:
            raise UploadError(str(err), 413) from None
        except UnreadableImage as err:
            raise UploadError(str(err), 422) from None
        except Exception as err:  # a decoder failing in a way ingest does not name
            raise UploadError(f"cannot read the image ({type(err).__name__}: {err})", 422) from None
        return self.score_image(image)

    def score_image(self, image: np.ndarray) -> Score:
        clf = self.classifier
        prepared = prepare(image, clf.resolution)  # the one preprocessing path, as in training
        with self._lock:
            prob = float(clf.predict_proba(prepared[None])[0])
            distances = clf.ood_scores(prepared[None])
            heat = grad_cam(clf, prepared)
        ood = None if distances is None else float(distances[0])
        limit = None if distances is None else float(clf.ood["threshold"])
        return Score(prob, clf.threshold, "pneumonia" if prob >= clf.threshold else "normal", clf.resolution,
                     prepared, heat, None if ood is None else ood > limit, ood, limit)


class UploadSink:
    """Receives the file part of a multipart form into a NamedTemporaryFile, counting bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self.filename: str | None = None
        self.file = None  # the NamedTemporaryFile, once the file part has begun
        self.path: Path | None = None
        self._part_is_file = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    # python-multipart callbacks
    def on_part_begin(self) -> None:
        self._disposition = b""
        self._part_is_file = False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != UPLOAD_FIELD or b"filename" not in options:
            return
        if self.file is not None:
            raise UploadError("upload one file at a time", 400)
        self.filename = options[b"filename"].decode("utf-8", "replace")
        self.file = tempfile.NamedTemporaryFile(prefix="fedsynth-upload-", suffix=safe_suffix(self.filename),
                                                delete=False)
        self.path = Path(self.file.name)
        self._part_is_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._part_is_file:
            return
        self.size += end - start
        if self.size > self.max_bytes:
            raise UploadError(f"file is larger than the {_mb(self.max_bytes)} limit", 413)
        self.file.write(data[start:end])

    def on_part_end(self) -> None:
        self._part_is_file = False

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()

    def remove(self) -> None:
        self.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


async def receive_upload(request, max_bytes: int) -> UploadSink:
    """Stream a multipart/form-data body into an UploadSink; stops reading at the size limit.

    The caller must call ``sink.remove()`` in a ``finally`` (also on error): raise paths here
    remove the temp file themselves.
    """
    from python_multipart import MultipartParser
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UploadError(f"send the image as multipart/form-data in a field named {UPLOAD_FIELD!r}", 400)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes + MULTIPART_OVERHEAD:
        raise UploadError(f"file is larger than the {_mb(max_bytes)} limit", 413)
    sink = UploadSink(max_bytes)
    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": sink.on_part_begin, "on_part_data": sink.on_part_data, "on_part_end": sink.on_part_end,
        "on_header_field": sink.on_header_field, "on_header_value": sink.on_header_value,
        "on_header_end": sink.on_header_end, "on_headers_finished": sink.on_headers_finished,
    })
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_OVERHEAD:
                raise UploadError(f"file is larger than the {_mb(max_bytes)} limit", 413)
            parser.write(chunk)
        parser.finalize()
    except UploadError:
        sink.remove()
        raise
    except Exception as err:  # malformed multipart body
        sink.remove()
        raise UploadError(f"malformed upload ({type(err).__name__}: {err})", 400) from None
    sink.close()
    if sink.file is None:
        sink.remove()
        raise UploadError(f"no file uploaded (send it in a form field named {UPLOAD_FIELD!r})", 400)
    if sink.size == 0:
        sink.remove()
        raise UploadError(f"the uploaded file {sink.filename!r} is empty" if sink.filename else
                          "the uploaded file is empty", 400)
    return sink


# ---- pictures --------------------------------------------------------------------------------


def png_bytes(rgb_or_gray: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="PNG")
    return buf.getvalue()


def upscale(image: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """[0, 1] float (S, S) -> uint8 (size, size), bicubic."""
    img = Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))


def _heat_view(heatmap: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize((size, size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img), 0, 1)


def heat_rgb(heatmap: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """The heat map alone, colour-mapped (jet), uint8 (size, size, 3)."""
    from matplotlib import colormaps

    return (colormaps["jet"](_heat_view(heatmap, size))[..., :3] * 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray, size: int = VIEW_SIZE) -> np.ndarray:
    """The heat map over the image: coloured where Grad-CAM is high, the X-ray shows through elsewhere."""
    from matplotlib import colormaps

    gray = upscale(image, size).astype(np.float32)[..., None].repeat(3, axis=2) / 255
    heat = _heat_view(heatmap, size)
    alpha = HEAT_ALPHA * heat[..., None]
    return (np.clip((1 - alpha) * gray + alpha * colormaps["jet"](heat)[..., :3], 0, 1) * 255).astype(np.uint8)
