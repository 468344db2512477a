"""napari-sam2: segment and track cells in time-lapse movies and volumes with SAM 2.

Importing this package is light: torch and napari load only when a function needs them.
"""

__version__ = "0.1.0"
__all__ = ["__version__", "propagate", "segment"]


def __getattr__(name: str):
    if name in ("segment", "propagate"):
        from napari_sam2 import api

        return getattr(api, name)
    raise AttributeError(f"module 'napari_sam2' has no attribute {name!r}")
