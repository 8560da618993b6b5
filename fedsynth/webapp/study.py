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

A study has one phase (the default: real or synthetic, optionally pneumonia yes/no) or two
(``study_phases=2``, the protocol of reader studies of synthetic radiographs): phase 1 grades
every image blind (a class of :data:`CLASS_NAMES`, a confidence 1-5, a comment), never told
that some images are synthetic; phase 2, open once every image is graded, shows the same
images in the same order for real or synthetic (and a comment). Grades go to a ``grades``
table; a phase-2 answer goes to ``answers`` as before, with a row in ``phase2_answers`` (its
comment) marking it as given in phase 2. Both tables are created only for a two-phase study,
so a one-phase database keeps its schema and opens either way. The
two-phase statistics are in :mod:`fedsynth.webapp.phases`.
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
STUDY_PHASES = (1, 2)  # one phase (real or synthetic) or two (blind grading, then real or synthetic)
GRADES = CLASS_NAMES  # what a phase-1 grade may be
CONFIDENCE_MIN, CONFIDENCE_MAX = 1, 5
COMMENT_MAX = 1000  # characters, after NFKC normalization
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


class PhaseError(StudyError):
    """A grade or an answer of the other phase than the one the reader is in (409)."""

    def __init__(self, message: str):
        super().__init__(message, status=409)


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

# two-phase studies only (created when a store opens with phases=2; a one-phase database gains them then)
PHASE_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS grades (
    reader      TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    grade       TEXT NOT NULL CHECK (grade IN ({", ".join(f"'{c}'" for c in GRADES)})),
    confidence  INTEGER CHECK (confidence IS NULL OR (typeof(confidence) = 'integer'
                                                      AND confidence BETWEEN {CONFIDENCE_MIN} AND {CONFIDENCE_MAX})),
    comment     TEXT CHECK (comment IS NULL OR length(comment) BETWEEN 1 AND {COMMENT_MAX}),
    answered_at TEXT NOT NULL,
    PRIMARY KEY (reader, image_id)
)""",
    f"""CREATE TABLE IF NOT EXISTS phase2_answers (  -- the answers given in phase 2, with their comment
    reader   TEXT NOT NULL,
    image_id TEXT NOT NULL,
    comment  TEXT CHECK (comment IS NULL OR length(comment) BETWEEN 1 AND {COMMENT_MAX}),
    PRIMARY KEY (reader, image_id),
    FOREIGN KEY (reader, image_id) REFERENCES answers (reader, image_id)
)""",
)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Answer:
    reader: str
    image_id: str
    answer: str
    pneumonia: bool | None
    answered_at: str
    comment: str | None = None  # two-phase studies: the reader's phase-2 comment
    phase: int = 1  # 2: given in phase 2 of a two-phase study (after grading every image)


@dataclass(frozen=True)
class Grade:
    """A phase-1 grade: the class the reader saw, how sure they were (1-5), a comment."""

    reader: str
    image_id: str
    grade: str
    confidence: int | None
    comment: str | None
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
    """The answers table in a SQLite file (stdlib sqlite3; one connection per call); with
    ``phases=2`` also the phase-1 grades and the phase-2 comments.

    ``reader`` is the reader's key (:func:`reader_key`), the name their invitation binds them to."""

    def __init__(self, path: str | Path, phases: int = 1):
        if phases not in STUDY_PHASES:
            raise DataError(f"a reader study has 1 or 2 phases, not {phases!r}")
        self.path = Path(path)
        self.phases = phases
        try:
            _private_db(self.path)
            with self._connect() as db:
                db.execute(SCHEMA)
                if phases == 2:
                    for statement in PHASE_SCHEMA:
                        db.execute(statement)
        except (OSError, sqlite3.Error) as err:
            raise DataError(f"cannot open the reader-study database {self.path}: {err}") from None

    def _connect(self):
        return _connect(self.path)

    def add(self, reader: str, image_id: str, answer: str, pneumonia: bool | None, *,
            shown_as: str | None = None, comment: str | None = None, phase: int = 1) -> Answer:
        """Store a first answer; a second answer to the same image raises StudyError (409).
        ``shown_as``: the reader's name as shown, for the message. ``phase=2``: an answer of
        phase 2 of a two-phase study, stored with its ``comment`` (already checked by
        :func:`fedsynth.webapp.phases.clean_comment`) in the same transaction."""
        if answer not in ANSWERS:
            raise StudyError(f"answer must be 'real' or 'synthetic', not {answer!r}")
        if (phase == 2 or comment is not None) and self.phases != 2:
            raise StudyError("phase-2 answers and their comments are taken in two-phase studies only")
        row = Answer(reader, image_id, answer, pneumonia, _now(), comment, phase)
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO answers (reader, image_id, answer, pneumonia, answered_at) VALUES (?, ?, ?, ?, ?)",
                    (row.reader, row.image_id, row.answer, None if pneumonia is None else int(pneumonia),
                     row.answered_at),
                )
                if phase == 2:
                    db.execute("INSERT INTO phase2_answers (reader, image_id, comment) VALUES (?, ?, ?)",
                               (reader, image_id, comment))
        except sqlite3.IntegrityError:
            raise StudyError(f"{shown_as or reader} has already answered image {image_id}; the first answer is kept",
                             status=409) from None
        return row

    def add_grade(self, reader: str, image_id: str, grade: str, confidence: int | None, comment: str | None, *,
                  shown_as: str | None = None) -> Grade:
        """Store a first phase-1 grade; a second grade of the same image raises StudyError (409)."""
        if self.phases != 2:
            raise StudyError("grades are taken in two-phase studies only")
        if grade not in GRADES:
            raise StudyError(f"grade must be one of {', '.join(GRADES)}, not {grade!r}")
        row = Grade(reader, image_id, grade, confidence, comment, _now())
        try:
            with self._connect() as db:
                db.execute("INSERT INTO grades (reader, image_id, grade, confidence, comment, answered_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (reader, image_id, grade, confidence, comment, row.answered_at))
        except sqlite3.IntegrityError as err:
            if "UNIQUE" not in str(err) and "PRIMARY KEY" not in str(err):
                raise StudyError(f"this grade breaks a rule of the grades table ({err})") from None
            raise StudyError(f"{shown_as or reader} has already graded image {image_id}; the first grade is kept",
                             status=409) from None
        return row

    def graded(self, reader: str) -> set[str]:
        if self.phases != 2:
            return set()
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT image_id FROM grades WHERE reader = ?", (reader,))}

    def all_grades(self) -> list[Grade]:
        if self.phases != 2:
            return []
        with self._connect() as db:
            rows = db.execute("SELECT reader, image_id, grade, confidence, comment, answered_at FROM grades "
                              "ORDER BY reader, answered_at, image_id").fetchall()
        return [Grade(*r) for r in rows]

    def answered(self, reader: str) -> set[str]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT image_id FROM answers WHERE reader = ?", (reader,))}

    def all(self) -> list[Answer]:
        extra, join = "NULL, 1", ""
        if self.phases == 2:
            extra = "p.comment, CASE WHEN p.reader IS NULL THEN 1 ELSE 2 END"
            join = "LEFT JOIN phase2_answers p ON p.reader = a.reader AND p.image_id = a.image_id"
        with self._connect() as db:
            rows = db.execute(f"SELECT a.reader, a.image_id, a.answer, a.pneumonia, a.answered_at, {extra} "
                              f"FROM answers a {join} ORDER BY a.reader, a.answered_at, a.image_id").fetchall()
        return [Answer(r[0], r[1], r[2], None if r[3] is None else bool(r[3]), r[4], r[5], r[6]) for r in rows]


# ---- invitations -----------------------------------------------------------------------------

def _first_open(study: StudySet, done: set[str]) -> tuple[StudyImage | None, int]:
    n_done = sum(im.id in done for im in study.images)
    for im in study.images:
        if im.id not in done:
            return im, n_done
    return None, n_done


def next_image(study: StudySet, store: AnswerStore, reader: str) -> tuple[StudyImage | None, int]:
    """The reader's first unanswered image in the study order (None when done), and how many
    of the study's images they have answered."""
    return _first_open(study, store.answered(reader))


def next_step(study: StudySet, store: AnswerStore, reader: str) -> tuple[int, StudyImage | None, int]:
    """The reader's phase (1 or 2), their next image in it (None when the study is done) and how
    many of the study's images they have done in that phase. A one-phase study is phase 1
    throughout; a two-phase study is phase 1 until the reader has graded every image."""
    if store.phases == 1:
        return (1, *next_image(study, store, reader))
    image, n_graded = _first_open(study, store.graded(reader))
    if image is not None:
        return 1, image, n_graded
    return (2, *next_image(study, store, reader))


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


def one_phase_results(study: StudySet, answers: list[Answer], most_mistaken: int = MOST_MISTAKEN,
                      names: dict[str, str] | None = None) -> dict:
    """Per reader and over all readers; the images most often mistaken across readers.

    ``names`` maps a reader's key to the name shown (:meth:`TokenStore.names`). Answers to
    images that are not in the current study set (the set changed since) are counted under
    ``ignored_answers`` and left out of every figure. A two-phase study's results build on
    these (:func:`fedsynth.webapp.phases.study_results`).
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
        "phases": 1,
    }
