"""Optimization passes over jaxlite IR (one module per pass); see ``pipeline``."""

from jaxlite.passes.pipeline import DEFAULT_PIPELINE, PASSES, parse, run

__all__ = ["DEFAULT_PIPELINE", "PASSES", "parse", "run"]
