"""stpredict: predict spatially resolved gene expression from H&E histology."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "predict_image"]


def __getattr__(name: str) -> Any:
    # stpredict.predict_image, imported on first use (torch is not loaded by `import stpredict`)
    if name == "predict_image":
        from stpredict.wsi.predict import predict_image

        return predict_image
    raise AttributeError(f"module 'stpredict' has no attribute {name!r}")
