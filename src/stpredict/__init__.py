"""stpredict: predict spatially resolved gene expression from H&E histology."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
