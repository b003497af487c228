"""evalharness: a simulation evaluation harness for generalist robot policies."""

__version__ = "0.1.0"
