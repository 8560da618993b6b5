"""Errors a user can cause. The CLI prints their message, never a traceback."""


class FedsynthError(Exception):
    """Base of every error whose message is meant for the user."""


class ConfigError(FedsynthError):
    """A run or site config is missing, malformed or inconsistent."""


class DataError(FedsynthError):
    """Input data cannot be used (no usable image, bad labels, wrong arrays)."""


class FederationError(FedsynthError):
    """The federation cannot go on (too few sites left, no release to pool)."""
