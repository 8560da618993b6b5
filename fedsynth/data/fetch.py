"""Download public datasets for users with internet access.

PneumoniaMNIST (MedMNIST v2/MedMNIST+) is the Kermany pediatric set, centre-cropped and
resized; the URLs and MD5 checksums are those the ``medmnist`` package records (INFO
in medmnist/info.py, Zenodo record 10519652). The file is verified before it is moved
into place, so a failed or tampered download never leaves a file behind. The
downloaded npz is read as is by :func:`fedsynth.data.ingest.load_source`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fedsynth.errors import DataError

_ZENODO = "https://zenodo.org/records/10519652/files"
PNEUMONIAMNIST: dict[int, tuple[str, str]] = {
    28: (f"{_ZENODO}/pneumoniamnist.npz?download=1", "28209eda62fecd6e6a2d98b1501bb15f"),
    64: (f"{_ZENODO}/pneumoniamnist_64.npz?download=1", "8f4eceb4ccffa70c672198ea285246c6"),
    128: (f"{_ZENODO}/pneumoniamnist_128.npz?download=1", "05b46931834c231683c68f40c47b2971"),
    224: (f"{_ZENODO}/pneumoniamnist_224.npz?download=1", "d6a3c71de1b945ea11211b03746c1fe1"),
}


def pneumoniamnist_filename(size: int) -> str:
    return "pneumoniamnist.npz" if size == 28 else f"pneumoniamnist_{size}.npz"


def download(
    url: str,
    dest: Path,
    md5: str,
    *,
    timeout: float = 60.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Stream ``url`` to ``dest``, verifying its MD5; nothing is left at ``dest`` on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "fedsynth"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                total = resp.headers.get("Content-Length")
                total_n = int(total) if total and total.isdigit() else None
                done = 0
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if on_progress:
                        on_progress(done, total_n)
        if digest.hexdigest() != md5:
            raise DataError(
                f"checksum mismatch for {url}: got MD5 {digest.hexdigest()}, expected {md5}; the file was discarded"
            )
        tmp.replace(dest)
        return dest
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError, ValueError) as err:
        raise DataError(f"download of {url} failed: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_pneumoniamnist(
    size: int,
    out_dir: str | Path,
    *,
    url: str | None = None,
    md5: str | None = None,
    timeout: float = 60.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download PneumoniaMNIST at ``size`` px into ``out_dir`` (skipped if a verified copy exists)."""
    if size not in PNEUMONIAMNIST:
        raise DataError(f"size must be one of {sorted(PNEUMONIAMNIST)}; got {size}")
    default_url, default_md5 = PNEUMONIAMNIST[size]
    url, md5 = url or default_url, md5 or default_md5
    dest = Path(out_dir) / pneumoniamnist_filename(size)
    if dest.is_file():
        existing = hashlib.md5(dest.read_bytes()).hexdigest()
        if existing == md5:
            return dest
        raise DataError(f"{dest} exists with a different checksum ({existing}); move it away first")
    return download(url, dest, md5, timeout=timeout, on_progress=on_progress)
