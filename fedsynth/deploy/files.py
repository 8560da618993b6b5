"""Writing secrets and public files without ever replacing one silently."""

from __future__ import annotations

import os
from pathlib import Path

from fedsynth.deploy.errors import DeployError

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def refuse_existing(paths: list[Path]) -> None:
    """Raise before anything is written if any target exists (all or nothing)."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise DeployError(
            "refusing to overwrite existing file(s): " + ", ".join(existing)
            + "; move them away or choose another --out folder"
        )


def write_file(path: Path, data: bytes, private: bool) -> Path:
    """Create ``path`` exclusively; private files get mode 0600 from the start (no umask race)."""
    mode = PRIVATE_MODE if private else PUBLIC_MODE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise DeployError(f"refusing to overwrite existing file: {path}") from None
    except OSError as err:
        raise DeployError(f"cannot write {path}: {err.strerror or err}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask; make it exact
    return path


def prepare_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DeployError(f"{out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeployError(f"cannot create folder {out}: {err.strerror or err}") from None
    return out
