"""Errors a user can cause. The CLI prints their message, never a traceback."""

import re


class FedsynthError(Exception):
    """Base of every error whose message is meant for the user."""


class ConfigError(FedsynthError):
    """A run or site config is missing, malformed or inconsistent."""


class DataError(FedsynthError):
    """Input data cannot be used (no usable image, bad labels, wrong arrays)."""


class FederationError(FedsynthError):
    """The federation cannot go on (too few sites left, no release to pool)."""


def public_reason(err: BaseException) -> str:
    """What a failure may tell the server: the error's kind and message with every local
    path replaced (paths name the site's folders, keys, ledgers and patients' files). The
    full text stays in the site's own log."""
    text = re.sub(r"(?:[A-Za-z]:)?(?:/|\\)[^\s:'\",;)]+", "<path>", str(err))
    return f"{type(err).__name__}: {text}"
