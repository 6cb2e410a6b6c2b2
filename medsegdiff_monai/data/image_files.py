# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""2D image files (PNG, JPEG, BMP, TIFF; RGB or greyscale): names, headers and checks, read with Pillow.

The 2D counterpart of :mod:`~medsegdiff_monai.data.nifti`: everything here only reads. Headers (size, mode) are
cheap; ``read_data`` decodes the pixels too, which finds truncated and corrupt files.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .conventions import DataError

__all__ = ["IMAGE_SUFFIXES", "ConvertImageMode", "image_pair_problems", "inspect_image", "is_image_name"]

#: image file extensions read (lower case; matching is case-insensitive)
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Pillow modes of one-channel images; a mask in another mode (RGB ...) must have three equal channels
_ONE_CHANNEL_MODES = ("1", "L", "P", "I", "I;16", "F")


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether a file name has one of :data:`IMAGE_SUFFIXES` and is not hidden (``.*``, macOS ``._*``)."""
    base = os.path.basename(os.fspath(name))
    return base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith(".")


def inspect_image(path: str | os.PathLike, read_data: bool = False) -> tuple[tuple[int, int], str]:
    """The (height, width) and Pillow mode of an image file.

    Args:
        path: the image file.
        read_data: decode the pixels too (finds truncated and corrupt files; slower).

    Raises:
        DataError: naming the file when it is missing or cannot be read.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            if read_data:
                im.load()
            return (im.height, im.width), im.mode
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found.") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {' '.join(str(e).split())}).") from e


def image_pair_problems(item: dict[str, Any], read_data: bool = False) -> list[str]:
    """Check one 2D case: the image (and its mask) readable, the mask of the image's height and width.

    Args:
        item: ``{"image": path, "label": path (optional)}``.
        read_data: decode the pixels too (finds truncated files; slower), and check that the mask is one
            channel or grey RGB.

    Returns:
        the problems, each naming the file; empty when fine.
    """
    try:
        size, _ = inspect_image(item["image"], read_data)
    except DataError as e:
        return [str(e)]
    if not item.get("label"):
        return []
    try:
        mask_size, mode = inspect_image(item["label"], read_data)
    except DataError as e:
        return [str(e)]
    if mask_size != size:
        return [(f"{item['label']}: mask is {mask_size[0]}x{mask_size[1]} (height x width), its image "
                 f"{item['image']} is {size[0]}x{size[1]}; masks must have their image's size.")]
    if read_data and mode not in _ONE_CHANNEL_MODES:
        from PIL import Image

        with Image.open(item["label"]) as im:
            rgb = np.asarray(im.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            return [(f"{item['label']}: mask is a colour ({mode}) image; masks must be one channel (binary or "
                     "one value per class).")]
    return []


class ConvertImageMode:
    """A Pillow image converter for ``monai.data.PILReader(converter=...)``: every image gets ``channels``
    channels, whatever its file holds (greyscale files become RGB for ``channels=3``, RGB becomes luminance for
    ``channels=1``; RGBA and palette images lose their alpha / palette). 16-bit and float greyscale images are
    scaled to 0-255 by their maximum first (Pillow's own conversion would clip them). A class, not a lambda,
    so that DataLoader workers can pickle it.

    Args:
        channels: 1 (greyscale, mode "L") or 3 (mode "RGB").
    """

    def __init__(self, channels: int = 3) -> None:
        if int(channels) not in (1, 3):
            raise ValueError(f"ConvertImageMode: channels must be 1 or 3, got {channels!r}.")
        self.mode = "L" if int(channels) == 1 else "RGB"

    def __call__(self, image: Any) -> Any:
        from PIL import Image

        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(image, dtype=np.float32)
            top = float(arr.max()) if arr.size else 0.0
            image = Image.fromarray((arr * (255.0 / top) if top > 0 else arr).clip(0, 255).astype(np.uint8))
        return image if image.mode == self.mode else image.convert(self.mode)
