"""napari-sam2: segment and track cells in time-lapse movies and volumes with SAM 2."""

__version__ = "0.1.0"
__all__ = ["__version__"]
