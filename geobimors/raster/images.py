"""Plain image files (the chips of an image-folder data set, photos to caption)."""

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
"""File suffixes read as images, lower case."""
