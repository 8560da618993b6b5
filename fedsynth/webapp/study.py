"""The reader study: can a reader tell a site's real X-rays from the run's synthetic ones?

The study set is a fixed, seeded, shuffled mix of up to ``study_size // 2`` real images
(the site's own, read with the run's preprocessing) and up to ``study_size // 2``
synthetic images from the run's releases, all at the run's resolution and quantised to
8 bits the same way, so only their content differs. Image ids are a hash of the pixels:
stable across restarts and silent about which kind an image is.

Answers live in one SQLite table, one row per (reader, image): a reader answers each
image once; a second answer to the same image is refused and the first one kept (a
reader study measures the first impression). Nothing about a reader is stored beyond the
name the study's owner invited them under.

Access is by invitation (:mod:`fedsynth.webapp.invitations`, in the same SQLite file): the owner
mints one token per reader (``fedsynth study invite``) and an owner token for the results; the
database keeps only an HMAC-SHA256 of each token under a secret of its own, and a token is
bound to one reader name. Reader names are compared in NFKC + casefold form (``Ann``,
``ANN`` and full-width ``Ａｎｎ`` are one reader) and a name mixing scripts (Latin with
Cyrillic or Greek look-alike letters) is refused.

Results count **synthetic as the positive class**: sensitivity is the share of synthetic
images a reader called synthetic, specificity the share of real images called real.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsynth.data.dataset import CLASS_NAMES, to_uint8
from fedsynth.errors import DataError

ANSWERS = ("real", "synthetic")
DB_FILE = "reader_study.sqlite"  # the study's database in the run directory (answers, readers, token hashes)
READER_NAME_MAX = 40
READER_NAME_RE = re.compile(r"^\w(?:[\w .-]*[\w.-])?$")  # \w: letters (any script), digits, "_"
ID_CHARS = 12
MOST_MISTAKEN = 10
# scripts one name may combine: Japanese mixes kanji and kana, Korean hangul and hanja
_SCRIPT_GROUPS = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "HANGUL": "CJK", "IDEOGRAPHIC": "CJK"}


class StudyError(ValueError):
    """A reader's request cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _scripts(name: str) -> list[str]:
    """The scripts of a name's letters (the first word of each letter's Unicode name: LATIN,
    CYRILLIC, GREEK, ...), in order of appearance; digits, spaces and punctuation have none."""
    found: list[str] = []
    for ch in name:
        if not ch.isalpha():
            continue
        word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
        script = _SCRIPT_GROUPS.get(word, word)
        if script not in found:
            found.append(script)
    return found


def validate_reader(name: str | None) -> str:
    """A reader's name as shown: NFKC-normalized, trimmed, runs of spaces made one; 1-40 letters
    (of one script), digits, spaces, '.', '_' or '-', starting with a letter, digit or '_'.
    Nothing else about a reader is asked for or stored. Raises StudyError (400)."""
    if not isinstance(name, str):
        raise StudyError("enter a reader name")
    name = unicodedata.normalize("NFKC", name).strip()
    if not name:
        raise StudyError("enter a reader name")
    if len(name) > READER_NAME_MAX:
        raise StudyError(f"a reader name has at most {READER_NAME_MAX} characters")
    if not READER_NAME_RE.match(name):
        raise StudyError("a reader name may contain only letters, digits, spaces, '.', '_' and '-', "
                         "and starts with a letter, digit or '_'")
    if len(scripts := _scripts(name)) > 1:
        raise StudyError(f"a reader name must not mix scripts (this one has {' and '.join(scripts)} letters): "
                         "look-alike letters from another alphabet would make a second reader who looks the same")
    return re.sub(" +", " ", name)


def reader_key(name: str) -> str:
    """The form names are stored and compared in: NFKC, casefolded, trimmed, one space between
    words. 'Ann', 'ANN' and 'Ａｎｎ' are one reader. Never raises (any string has a key)."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold())
    return re.sub(" +", " ", folded).strip()


@dataclass(frozen=True)
class StudyImage:
    id: str
    kind: str  # "real" or "synthetic"
    label: int | None  # 0 normal, 1 pneumonia; None when the real data has no labels
    origin: str  # "real" or the releasing site, e.g. "synthetic (site-0)"
    pixels: np.ndarray  # uint8 (S, S)


@dataclass
class StudySet:
    images: list[StudyImage]
    resolution: int

    def __post_init__(self) -> None:
        self.by_id = {im.id: im for im in self.images}

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        return {k: sum(im.kind == k for im in self.images) for k in ANSWERS}


def _image_id(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:ID_CHARS]


def build_study_set(
    real_images: np.ndarray,
    real_labels: np.ndarray | None,
    releases: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    study_size: int,
    seed: int,
) -> StudySet:
    """Draw up to study_size // 2 of each kind (seeded), shuffle them together.

    ``real_images`` are preprocessed floats (N, S, S) in [0, 1]; ``releases`` are what
    :meth:`fedsynth.rundir.RunDir.load_releases` returns (uint8 images, labels by site).
    """
    if study_size < 2:
        raise DataError(f"the reader study needs study_size >= 2, not {study_size}")
    if len(real_images) == 0:
        raise DataError("the reader study needs at least one real image")
    size = int(real_images.shape[1])
    syn_images, syn_labels, syn_origin = [], [], []
    for site, (imgs, labels) in releases.items():
        if imgs.shape[1:] != (size, size):
            raise DataError(f"release {site!r} has {imgs.shape[1]} px images; the real images are {size} px")
        syn_images.append(imgs)
        syn_labels.append(labels)
        syn_origin += [site] * len(imgs)
    if not syn_images or sum(len(s) for s in syn_images) == 0:
        raise DataError("the run directory holds no released synthetic images (releases/*.npz)")
    syn_u8 = np.concatenate(syn_images)
    syn_lab = np.concatenate(syn_labels)
    real_u8 = to_uint8(real_images)

    rng = np.random.default_rng(seed)
    half = study_size // 2
    picked: list[StudyImage] = []
    seen: set[str] = set()
    for kind, pool, labels in (("real", real_u8, real_labels), ("synthetic", syn_u8, syn_lab)):
        n_kind = 0
        for i in rng.permutation(len(pool)):
            if n_kind == half:
                break
            pixels = pool[i]
            image_id = _image_id(pixels)
            if image_id in seen:  # an identical image already drawn: one id, one image
                continue
            seen.add(image_id)
            label = None if labels is None else int(labels[i])
            origin = "real" if kind == "real" else f"synthetic ({syn_origin[i]})"
            picked.append(StudyImage(image_id, kind, label, origin, pixels))
            n_kind += 1
    order = rng.permutation(len(picked))
    return StudySet([picked[i] for i in order], size)


# ---- answers -------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    reader      TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    answer      TEXT NOT NULL CHECK (answer IN ('real', 'synthetic')),
    pneumonia   INTEGER CHECK (pneumonia IN (0, 1)),
    answered_at TEXT NOT NULL,
    PRIMARY KEY (reader, image_id)
)
"""


@dataclass(frozen=True)
class Answer:
    reader: str
    image_id: str
    answer: str
    pneumonia: bool | None
    answered_at: str


def _private_db(path: Path) -> None:
    """Create the database file readable by its owner only (0600): it holds reader names,
    answers and the secret behind the token hashes. An existing file is tightened to 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # an empty file is a new SQLite database
    else:
        try:
            os.chmod(path, 0o600)
        except OSError:  # not ours to change: leave it
            pass


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(path, timeout=10)
    try:
        with db:  # commit on success, roll back on error
            yield db
    finally:
        db.close()


class AnswerStore:
    """The answers table in a SQLite file (stdlib sqlite3; one connection per call).

    ``reader`` is the reader's key (:func:`reader_key`), the name their invitation binds them to."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            _private_db(self.path)
            with self._connect() as db:
                db.execute(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise DataError(f"cannot open the reader-study database {self.path}: {err}") from None

    def _connect(self):
        return _connect(self.path)

    def add(self, reader: str, image_id: str, answer: str, pneumonia: bool | None, *,
            shown_as: str | None = None) -> Answer:
        """Store a first answer; a second answer to the same image raises StudyError (409).
        ``shown_as``: the reader's name as shown, for the message."""
        if answer not in ANSWERS:
            raise StudyError(f"answer must be 'real' or 'synthetic', not {answer!r}")
        row = Answer(reader, image_id, answer, pneumonia, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO answers (reader, image_id, answer, pneumonia, answered_at) VALUES (?, ?, ?, ?, ?)",
                    (row.reader, row.image_id, row.answer, None if pneumonia is None else int(pneumonia),
                     row.answered_at),
                )
        except sqlite3.IntegrityError:
            raise StudyError(f"{shown_as or reader} has already answered image {image_id}; the first answer is kept",
                             status=409) from None
        return row

    def answered(self, reader: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT image_id FROM answers WHERE reader = ?", (reader,))}

    def all(self) -> list[Answer]:
        with self._connect() as db:
            rows = db.execute("SELECT reader, image_id, answer, pneumonia, answered_at FROM answers "
                              "ORDER BY reader, answered_at, image_id").fetchall()
        return [Answer(r[0], r[1], r[2], None if r[3] is None else bool(r[3]), r[4]) for r in rows]


# ---- invitations -----------------------------------------------------------------------------

def next_image(study: StudySet, store: AnswerStore, reader: str) -> tuple[StudyImage | None, int]:
    """The reader's first unanswered image in the study order (None when done), and how many
    of the study's images they have answered."""
    done = store.answered(reader)
    n_done = sum(im.id in done for im in study.images)
    for im in study.images:
        if im.id not in done:
            return im, n_done
    return None, n_done


# ---- results -------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def reader_metrics(rows: list[tuple[StudyImage, Answer]]) -> dict:
    """Synthetic is the positive class."""
    tp = sum(im.kind == "synthetic" and a.answer == "synthetic" for im, a in rows)
    fn = sum(im.kind == "synthetic" and a.answer == "real" for im, a in rows)
    tn = sum(im.kind == "real" and a.answer == "real" for im, a in rows)
    fp = sum(im.kind == "real" and a.answer == "synthetic" for im, a in rows)
    graded = [(im, a) for im, a in rows if a.pneumonia is not None and im.label is not None]
    return {
        "answered": len(rows),
        "correct": tp + tn,
        "accuracy": _ratio(tp + tn, len(rows)),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "confusion": {"synthetic_called_synthetic": tp, "synthetic_called_real": fn,
                      "real_called_real": tn, "real_called_synthetic": fp},
        "pneumonia_answered": len(graded),
        "pneumonia_accuracy": _ratio(sum(a.pneumonia == bool(im.label) for im, a in graded), len(graded)),
    }


def study_results(study: StudySet, answers: list[Answer], most_mistaken: int = MOST_MISTAKEN,
                  names: dict[str, str] | None = None) -> dict:
    """Per reader and over all readers; the images most often mistaken across readers.

    ``names`` maps a reader's key to the name shown (:meth:`TokenStore.names`). Answers to
    images that are not in the current study set (the set changed since) are counted under
    ``ignored_answers`` and left out of every figure.
    """
    names = names or {}
    per_reader: dict[str, list[tuple[StudyImage, Answer]]] = {}
    ignored = 0
    for a in answers:
        im = study.by_id.get(a.image_id)
        if im is None:
            ignored += 1
            continue
        per_reader.setdefault(names.get(a.reader, a.reader), []).append((im, a))
    readers = {name: {**reader_metrics(rows), "complete": len(rows) == len(study)}
               for name, rows in sorted(per_reader.items())}
    everyone = [row for rows in per_reader.values() for row in rows]
    mistakes: dict[str, list[int]] = {}
    for im, a in everyone:
        tally = mistakes.setdefault(im.id, [0, 0])
        tally[0] += a.answer != im.kind
        tally[1] += 1
    ranked = sorted(((wrong, seen, image_id) for image_id, (wrong, seen) in mistakes.items() if wrong),
                    key=lambda t: (-t[0], -t[0] / t[1], t[2]))
    return {
        "positive_class": "synthetic",
        "n_images": len(study),
        "composition": study.counts(),
        "readers": readers,
        "overall": reader_metrics(everyone),
        "most_mistaken": [
            {"image_id": image_id, "truth": study.by_id[image_id].kind, "origin": study.by_id[image_id].origin,
             "label": None if study.by_id[image_id].label is None else CLASS_NAMES[study.by_id[image_id].label],
             "mistaken": wrong, "answers": seen, "error_rate": wrong / seen}
            for wrong, seen, image_id in ranked[:most_mistaken]
        ],
        "ignored_answers": ignored,
    }
