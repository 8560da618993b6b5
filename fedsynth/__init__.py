"""fedsynth: federated, privacy-focused synthetic chest X-rays for pneumonia classification."""

__version__ = "0.1.0"
