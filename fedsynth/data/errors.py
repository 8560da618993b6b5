"""Per-file failure during ingestion: the file is skipped and its reason reported."""


class UnreadableImage(Exception):
    """One file cannot be used as an image; ``str(err)`` is the reason shown to the user."""
