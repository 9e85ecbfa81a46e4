"""Plain image files (the chips of an image-folder data set, photos to caption)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from geobimors.errors import InputError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"})
"""File suffixes read as images, lower case."""

MAX_COMMON_SIDE = 1024
"""The longest side, in px, of the common size a folder's images are read at.

Every model input is far smaller (64-448 px), so larger photos gain nothing but memory: one batch of
64 drone photos of 8000 x 6000 px would take 9 GB.
"""


def _refuse_bomb(path: str | os.PathLike[str], exc: Image.DecompressionBombError) -> InputError:
    # PIL's message holds the pixel count; say what to do with a genuinely huge photo.
    found = re.search(r"\((\d+) pixels\)", str(exc))
    count = f"{int(found.group(1)):,} pixels" if found else "more pixels than PIL decodes"
    return InputError(
        f"image {path} declares {count}, too many to decode safely (a decompression bomb?); "
        "if it is genuine, cut the part you need (gdal_translate -srcwin) or map it as a scene"
    )


@contextlib.contextmanager
def _opened(path: str | os.PathLike[str]) -> Iterator[Image.Image]:
    """``Image.open``, with what can go wrong while opening or decoding turned into one-line errors."""
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as exc:
        raise _refuse_bomb(path, exc) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file, from its header (no pixels are decoded).

    Raises:
        InputError: (one line) if the file is not an image or declares a decompression bomb.
    """
    with _opened(path) as im:
        return im.size


def read_rgb(path: str | os.PathLike[str], size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB, resized to ``size`` (width, height) when given."""
    with _opened(path) as im:
        rgb = im.convert("RGB")
        if size is not None and rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb)


class ImageFiles:
    """Image files read on demand, as one (N, H, W, 3) uint8 array of a common size.

    Indexing (an int, a slice, indexes or a boolean mask) reads only the images asked for, so
    evaluating or embedding a folder of any size holds one batch of pixels at a time;
    ``np.asarray`` reads them all. Each image is resized to ``size`` unless it has that size.

    Attributes:
        paths: the image files, in order.
        size: the common (width, height).
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: Sequence[str | os.PathLike[str]], size: tuple[int, int]) -> None:
        self.paths = [str(p) for p in paths]
        self.size = size

    @classmethod
    def open(cls, paths: Sequence[str | os.PathLike[str]], max_side: int = MAX_COMMON_SIDE) -> ImageFiles:
        """The files at the first one's size (its longer side at most ``max_side``), every header checked.

        Raises:
            InputError: (one line) naming the first file that is not an image or is a decompression bomb.
        """
        sizes = [image_size(p) for p in paths]  # headers only: fails now, before any model work
        if not sizes:
            return cls([], (0, 0))
        width, height = sizes[0]
        scale = min(1.0, max_side / max(width, height))
        return cls(paths, (max(1, round(width * scale)), max(1, round(height * scale))))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, 3), as the array would have."""
        return (len(self.paths), self.size[1], self.size[0], 3)

    def _selected(self, index: int | slice | Sequence[int] | np.ndarray) -> list[str]:
        if isinstance(index, slice):
            return self.paths[index]
        chosen = np.asarray(index)
        if chosen.dtype != bool:
            chosen = chosen.astype(np.intp)  # an empty list is float to numpy
        return [self.paths[i] for i in np.arange(len(self.paths))[chosen].tolist()]

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # numpy-style indexing of several axes: the first one picks images
            if not index or index[0] is Ellipsis:
                return self[:][index]
            picked = self[index[0]]
            return picked[index[1:]] if isinstance(index[0], int | np.integer) else picked[(slice(None), *index[1:])]
        if isinstance(index, int | np.integer):
            return read_rgb(self.paths[int(index)], self.size)
        paths = self._selected(index)
        if not paths:
            return np.zeros((0, *self.shape[1:]), dtype=np.uint8)
        return np.stack([read_rgb(p, self.size) for p in paths])

    def take(self, index: slice | Sequence[int] | np.ndarray) -> ImageFiles:
        """Some of the files, still unread."""
        return ImageFiles(self._selected(index), self.size)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        pixels = self[:]
        return pixels if dtype is None else pixels.astype(dtype)


Images = np.ndarray | ImageFiles
"""(N, H, W, 3) uint8 images: in memory, or files read on demand."""
