"""The composition root: one machine runs the server and every site (Flower's simulation engine)."""

from fedsynth.simulation.engine import simulate

__all__ = ["simulate"]
