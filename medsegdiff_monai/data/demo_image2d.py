# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""A synthetic 2D image-folder demo data set, dermoscopy-like, in the ISIC layout (``images/``, ``masks/``).

Each image is a patch of skin (a smooth skin tone with shading, texture and a few hairs) with one pigmented
lesion: a dark brown blob with an irregular, star-shaped outline and a lighter rim; its mask is the lesion (0/255).
Image sizes vary (non-square, from about half to the full ``max_size``), and the files mix the formats of real
data sets: most are RGB PNG, some RGB JPEG, some greyscale PNG (ultrasound-like). Image ``i`` depends only on
``(seed, i)``. Writing 12 images takes well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .conventions import DataError

__all__ = ["make_demo_image", "make_demo_images"]


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth random field in about [-1, 1]: coarse noise, bilinearly upsampled."""
    from PIL import Image

    coarse = rng.standard_normal((max(2, shape[0] // cells + 2), max(2, shape[1] // cells + 2))).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.BILINEAR))


def make_demo_image(size: Sequence[int], seed: int | np.random.SeedSequence = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic dermoscopy-like image and its lesion mask.

    Args:
        size: (height, width).
        seed: the seed.

    Returns:
        ``(image, mask)``: (H, W, 3) uint8 RGB and (H, W) uint8 with 255 inside the lesion, 0 outside.
    """
    rng = np.random.default_rng(seed)
    h, w = (int(s) for s in size)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    skin = np.array([205, 160, 135], np.float32) * rng.uniform(0.85, 1.1)
    shade = 1.0 - 0.25 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) + 0.04 * _smooth(rng, (h, w), 8)
    image = skin[None, None] * shade[..., None]
    # the lesion: a radius that varies with the angle (a few harmonics) around a random centre
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    radius = rng.uniform(0.15, 0.3) * min(h, w)
    angle = np.arctan2(yy - cy, xx - cx)
    edge = radius * (1 + sum(rng.uniform(0, 0.15) * np.cos(k * angle + rng.uniform(0, 2 * np.pi))
                             for k in (2, 3, 5)))
    dist = np.hypot(yy - cy, xx - cx) / edge  # < 1 inside
    mask = dist < 1.0
    brown = np.array([95, 55, 35], np.float32) * rng.uniform(0.7, 1.2)
    weight = np.clip((1.0 - dist) * 6.0, 0.0, 1.0) * (0.75 + 0.25 * np.clip(1.0 - dist, 0, 1))
    weight *= 1.0 + 0.15 * _smooth(rng, (h, w), 5)
    image = image * (1 - weight[..., None]) + brown[None, None] * weight[..., None]
    for _ in range(int(rng.integers(0, 4))):  # hairs: thin dark lines across the picture
        y0, y1 = rng.uniform(0, h, 2)
        near = np.abs((xx / w) * (y1 - y0) + y0 - yy) < 0.6
        image[near] *= 0.45
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), (mask * 255).astype(np.uint8)


def make_demo_images(
    output_dir: str | os.PathLike,
    num_cases: int = 12,
    seed: int = 0,
    max_size: Sequence[int] = (96, 128),
    overwrite: bool = False,
) -> list[str]:
    """Write the synthetic 2D demo data set: ``images/demo_NNNN.{png,jpg}`` and
    ``masks/demo_NNNN_segmentation.png`` (ISIC's mask naming).

    Every fifth image (i % 5 == 3) is an RGB JPEG and every fifth (i % 5 == 4) a greyscale PNG; the others are
    RGB PNG. Heights and widths are drawn independently between half of ``max_size`` and ``max_size``.

    Args:
        output_dir: the folder to write (created if needed).
        num_cases: number of images.
        seed: the seed; the same seed writes the same data.
        max_size: the largest (height, width).
        overwrite: replace existing files; otherwise an existing ``images/`` or ``masks/`` file is an error.

    Returns:
        the paths of the images written.

    Raises:
        FileExistsError: when a file exists and ``overwrite`` is False (nothing is written then).
        ValueError: on bad arguments.
    """
    from PIL import Image

    num_cases = int(num_cases)
    max_size = tuple(int(s) for s in max_size)
    if num_cases < 1:
        raise ValueError(f"num_cases must be at least 1, got {num_cases}.")
    if len(max_size) != 2 or min(max_size) < 16:
        raise ValueError(f"max_size must be a height and a width of at least 16, got {max_size}.")
    root = Path(output_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, expected a folder to write the demo data into.")
    names = [(f"demo_{i:04d}", ".jpg" if i % 5 == 3 else ".png") for i in range(num_cases)]
    targets = [root / "images" / f"{n}{ext}" for n, ext in names] + [
        root / "masks" / f"{n}_segmentation.png" for n, _ in names]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]}: already exists ({len(existing)} existing file(s)); pass "
                              "overwrite=True / --overwrite to replace them.")
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    written = []
    for i, ((name, ext), child) in enumerate(zip(names, np.random.SeedSequence(int(seed)).spawn(num_cases))):
        rng = np.random.default_rng(child)
        size = [int(rng.integers(s // 2, s + 1)) for s in max_size]
        image, mask = make_demo_image(size, rng.integers(2**32))
        picture = Image.fromarray(image)
        if i % 5 == 4:
            picture = picture.convert("L")
        path = root / "images" / f"{name}{ext}"
        picture.save(path, **({"quality": 95} if ext == ".jpg" else {}))
        Image.fromarray(mask).save(root / "masks" / f"{name}_segmentation.png")
        written.append(str(path))
    return written
