"""jaxlite's version (a leaf module: every layer may import it)."""

__version__ = "0.2.0"
