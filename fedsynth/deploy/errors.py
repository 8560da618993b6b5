"""Errors of the deployment helpers (shown by the CLI as one line, exit code 2)."""

from fedsynth.errors import FedsynthError


class DeployError(FedsynthError):
    """Certificates or keys cannot be written or read (existing files, bad names, bad keys)."""
