# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""PNG overlays of a prediction on an MRI (or a 2D photograph): which slices to show, how to orient them, and the
figure itself.

Pure functions on numpy arrays (volumes with the slices along the last axis), used by
:class:`~medsegdiff_monai.transforms.SaveOverlayd`. Drawing needs matplotlib (``pip install matplotlib``, part of
the package's ``bundle`` extra), imported only when called.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DisplayPlan",
    "import_matplotlib",
    "select_slices",
    "choose_slices",
    "display_plan",
    "orient_slice",
    "intensity_window",
    "slice_dice",
    "render_overlay",
]

_GT_COLOUR = "#00e000"  # green: blend_images' "brg" colour map at 1.0
_TITLE_HEIGHT, _HEADER_HEIGHT, _COLOURBAR_WIDTH = 0.2, 0.4, 0.5  # inches


class DisplayPlan(NamedTuple):
    """How to show a 2D slice (:func:`display_plan`): transpose it, then flip rows and/or columns; the aspect
    ratio (height / width of a pixel) keeps anisotropic voxels true to size."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    aspect: float = 1.0


def import_matplotlib() -> tuple[Any, Any, Any]:
    """Import matplotlib's object-oriented API, the Agg canvas and MONAI's ``blend_images`` (which needs pyplot).

    Returns:
        ``(Figure, FigureCanvasAgg, blend_images)``.

    Raises:
        ImportError: saying how to install matplotlib.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from monai.visualize import blend_images
    except ImportError as e:  # pragma: no cover - exercised by a test that hides matplotlib
        raise ImportError(
            "SaveOverlayd needs matplotlib to draw PNG overlays: `pip install matplotlib` (or install this package "
            "with the bundle extra: `pip install medsegdiff-monai[bundle]`)."
        ) from e
    return Figure, FigureCanvasAgg, blend_images


def select_slices(areas: Sequence[float] | np.ndarray, num_slices: int, min_gap: int | None = None,
                  min_area_fraction: float = 0.1) -> list[int]:
    """Pick ``num_slices`` slices with a large foreground area that are spread out, not neighbours.

    Candidates are the slices whose area is at least ``min_area_fraction`` of the largest (so a few stray voxels
    far from the tumour do not pull a nearly empty slice into the picture). They are taken by decreasing area,
    skipping any closer than ``min_gap`` to one already taken; the gap defaults to the extent of the candidates
    (first to last) divided by ``num_slices`` and is halved until enough slices are found. When there are fewer
    candidates than asked for, the other foreground slices follow by decreasing area, then the slices closest to
    the chosen ones. Without any foreground, the slices are evenly spaced.

    Args:
        areas: foreground area (voxel count) of every slice, shape (D,).
        num_slices: how many slices to pick (at most D are returned).
        min_gap: the initial minimum distance between picked slices (None: automatic).
        min_area_fraction: candidates have at least this fraction of the largest area (0: every foreground slice).

    Returns:
        the picked slice indices, ascending.

    Example: a tumour on slices 20-79 whose area peaks on slice 50 and falls off evenly on both sides, above a
    tenth of the peak on slices 22-78, gives ``[31, 50, 69]`` for 3 slices (gap 57 // 3 = 19).
    """
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    n = areas.size
    k = min(int(num_slices), n)
    if k <= 0:
        return []
    fg = np.flatnonzero(areas > 0)
    if fg.size == 0:
        return sorted({round((i + 0.5) * n / k - 0.5) for i in range(k)})
    candidates = fg[areas[fg] >= float(min_area_fraction) * areas.max()]
    order = candidates[np.argsort(-areas[candidates], kind="stable")]  # largest first, ties by slice index
    gap = max(1, int(min_gap) if min_gap is not None else (int(candidates[-1] - candidates[0]) + 1) // k)
    chosen: list[int] = []
    while True:
        for z in order:
            if len(chosen) == k:
                break
            if all(abs(int(z) - c) >= gap for c in chosen):
                chosen.append(int(z))
        if len(chosen) == k or gap == 1:
            break
        gap = max(1, gap // 2)
    rest_fg = [int(z) for z in fg[np.argsort(-areas[fg], kind="stable")] if int(z) not in chosen]
    chosen += rest_fg[: k - len(chosen)]
    if len(chosen) < k:  # fewer foreground slices than asked for: add their neighbours
        rest = sorted(set(range(n)) - set(chosen), key=lambda z: (min(abs(z - c) for c in chosen), z))
        chosen += rest[: k - len(chosen)]
    return sorted(chosen)


def choose_slices(image: np.ndarray, pred: np.ndarray, label: np.ndarray | None,
                  num_slices: int) -> tuple[list[int], str]:
    """The slices to draw and why: those with the largest ground-truth area, else the largest predicted area,
    else evenly spaced over the slices holding image data (:func:`select_slices`).

    Args:
        image: (H, W, D) image channel, slices along the last axis.
        pred: (H, W, D) binary prediction.
        label: (H, W, D) binary ground truth or None.
        num_slices: how many slices.

    Returns:
        ``(slice indices, reason)``, the reason being ``"ground truth"``, ``"prediction"`` or ``"evenly spaced"``.
    """
    for mask, reason in ((label, "ground truth"), (pred, "prediction")):
        if mask is not None:
            areas = mask.reshape(-1, mask.shape[-1]).sum(0)
            if areas.any():
                return select_slices(areas, num_slices), reason
    has_image = np.flatnonzero(np.abs(image).reshape(-1, image.shape[-1]).max(0) > 0)
    lo, hi = (int(has_image[0]), int(has_image[-1])) if has_image.size else (0, image.shape[-1] - 1)
    return [lo + z for z in select_slices(np.zeros(hi - lo + 1), num_slices)], "evenly spaced"


def display_plan(affine: np.ndarray | None, axes: tuple[int, int], radiological: bool = True) -> DisplayPlan:
    """How to show a slice whose in-plane spatial axes are ``axes``, from the volume's affine.

    In the radiological convention the patient's right is on the left of the picture and anterior (axial) or
    superior (coronal, sagittal) at the top, whatever the storage order; the aspect ratio follows the voxel spacing.

    Args:
        affine: the (4, 4) voxel-to-world affine, or None (the array as stored, square pixels).
        axes: the two in-plane spatial axes, e.g. ``(0, 1)`` for axial slices of a (H, W, D) volume.
        radiological: orient by the affine (True), or keep the stored orientation and only the aspect (False).
    """
    if affine is None:
        return DisplayPlan()
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not radiological:
        return DisplayPlan(aspect=float(spacing[axes[0]] / spacing[axes[1]]))
    import nibabel.orientations as nio

    codes = nio.aff2axcodes(affine)
    family = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    fam = [family.get(codes[a], 3) for a in axes]
    # the horizontal axis is left-right if in plane (axial, coronal), else anterior-posterior (sagittal)
    h = 0 if fam[0] == 0 else 1 if fam[1] == 0 else 0 if fam[0] == 1 else 1
    horizontal, vertical = axes[h], axes[1 - h]
    want_col = {0: "L", 1: "P"}.get(fam[h])  # increasing column: to the patient's left / posterior
    want_row = {1: "P", 2: "I"}.get(fam[1 - h])  # increasing row: posterior (anterior on top) / inferior
    return DisplayPlan(h == 0, want_row is not None and codes[vertical] != want_row,
                       want_col is not None and codes[horizontal] != want_col,
                       float(spacing[vertical] / spacing[horizontal]))


def orient_slice(s: np.ndarray, plan: DisplayPlan) -> np.ndarray:
    """A 2D slice as displayed under ``plan`` (:func:`display_plan`), contiguous."""
    s = s.T if plan.transpose else s
    s = s[::-1] if plan.flip_rows else s
    return np.ascontiguousarray(s[:, ::-1] if plan.flip_cols else s)


def intensity_window(image: np.ndarray) -> np.ndarray:
    """Grey values in [0, 1] for a whole case: the 0.5-99.5 percentiles of the non-zero voxels map to 0 and 1,
    and the background (zero) stays black.

    Args:
        image: an image channel of any shape.

    Returns:
        float32 of the same shape.
    """
    body = image[image != 0]
    lo, hi = np.percentile(body, (0.5, 99.5)) if body.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    return np.where(image != 0, np.clip((image - lo) / (hi - lo), 0.0, 1.0), 0.0).astype(np.float32)


def slice_dice(pred: np.ndarray, label: np.ndarray) -> float | None:
    """The Dice of two binary masks, None when both are empty."""
    total = int(pred.sum()) + int(label.sum())
    return None if total == 0 else 2.0 * float(np.logical_and(pred, label).sum()) / total


def render_overlay(
    path: str | os.PathLike,
    grey: np.ndarray,
    pred: np.ndarray,
    slices: Sequence[int],
    label: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
    plan: DisplayPlan | None = None,
    title: str = "",
    region: str = "WT",
    modality: str = "image",
    threshold: float = 0.5,
    reason: str = "ground truth",
    dpi: int = 100,
    panel_size: float = 2.5,
    alpha: float = 0.4,
) -> None:
    """Draw the overlay figure of one case and write it as a PNG.

    One row per slice; the columns are the image, the image with the ground truth filled and outlined in green
    (when ``label`` is given), the image with the prediction in red, the ground-truth outline and the slice's Dice,
    and the uncertainty heat map with one colour bar for the case (when ``uncertainty`` is given).

    Args:
        path: the PNG file (its folder must exist).
        grey: (H, W, D) image in [0, 1] (:func:`intensity_window`), slices along the last axis, drawn in grey; or
            (3, H, W, D) an RGB image (e.g. a photograph), drawn in colour.
        pred: (H, W, D) binary prediction.
        slices: the slice indices drawn (rows), e.g. from :func:`choose_slices`.
        label: (H, W, D) binary ground truth, or None.
        uncertainty: (H, W, D) uncertainty map, or None.
        plan: the display orientation (:func:`display_plan`); None shows the arrays as stored.
        title: the first line of the figure title (the case name).
        region: the region's name in the titles, e.g. ``"WT"``.
        modality: the image's name in the titles, e.g. ``"FLAIR"``.
        threshold: the prediction threshold, for the legend.
        reason: why these slices (see :func:`choose_slices`), for the legend.
        dpi: resolution (pixels per inch).
        panel_size: the longer side of one panel in inches.
        alpha: opacity of the filled overlays.
    """
    Figure, FigureCanvasAgg, blend_images = import_matplotlib()
    plan = plan if plan is not None else DisplayPlan()
    u_max = float(uncertainty.max()) if uncertainty is not None and uncertainty.size else 0.0
    u_max = u_max if u_max > 0 else 1.0
    aspect = plan.aspect
    columns = ["image"] + (["label"] if label is not None else []) + ["pred"]
    columns += ["unc"] if uncertainty is not None else []
    nrows, ncols = len(slices), len(columns)
    # panels as wide and high as the displayed slice (its longer side panel_size), plus a line for the title
    rgb = grey.ndim == 4
    shown = orient_slice((grey[0] if rgb else grey)[..., 0], plan).shape
    ratio = shown[0] * aspect / shown[1]  # displayed height / width
    width, height = (panel_size, panel_size * ratio) if ratio <= 1 else (panel_size / ratio, panel_size)
    fig = Figure(figsize=(ncols * width + (_COLOURBAR_WIDTH if uncertainty is not None else 0.0),
                          nrows * (height + _TITLE_HEIGHT) + _HEADER_HEIGHT), dpi=dpi,
                 layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    legend = "green: ground truth, " if label is not None else ""
    why = "evenly spaced slices" if reason == "evenly spaced" else f"slices with the largest {reason} area"
    info = textwrap.fill(f"{region} | {legend}red: prediction >= {threshold:g} | {why}",
                         width=max(30, int(ncols * panel_size * 15)))
    fig.suptitle(f"{title}\n{info}", fontsize=8)

    def show(ax: Any, picture: np.ndarray, text: str, **kwargs: Any) -> Any:
        im = ax.imshow(orient_slice(picture, plan) if picture.ndim == 2 else
                       np.stack([orient_slice(c, plan) for c in picture], -1), aspect=aspect, **kwargs)
        ax.set_title(text, fontsize=8)
        ax.set_axis_off()
        return im

    def outline(ax: Any, mask: np.ndarray, colour: str) -> None:
        if mask.any() and not mask.all():
            limits = ax.get_xlim(), ax.get_ylim()
            ax.contour(orient_slice(mask.astype(np.float32), plan), levels=[0.5], colors=[colour], linewidths=0.8)
            ax.set_xlim(limits[0])
            ax.set_ylim(limits[1])

    for row, z in zip(axes, slices):
        g, p = grey[..., z], pred[..., z]
        base = g if rgb else g[None]  # (3, H, W) or (1, H, W), as blend_images takes them
        for ax, col in zip(row, columns):
            if col == "image":
                show(ax, g, f"{modality}, slice {z}", cmap="gray", vmin=0.0, vmax=1.0)
            elif col == "label":
                m = label[..., z]
                show(ax, blend_images(base, m[None].astype(np.float32), alpha=alpha, cmap="brg",
                                      rescale_arrays=False), f"ground truth ({region})")
                outline(ax, m, _GT_COLOUR)
            elif col == "pred":
                text = f"prediction ({region})"
                if label is not None:
                    dice = slice_dice(p, label[..., z])
                    text += f", Dice {dice:.2f}" if dice is not None else ", Dice - (both empty)"
                show(ax, blend_images(base, p[None].astype(np.float32), alpha=alpha, cmap="hsv",
                                      rescale_arrays=False), text)
                if label is not None:
                    outline(ax, label[..., z], _GT_COLOUR)
            else:
                heat = show(ax, uncertainty[..., z], "uncertainty", cmap="magma", vmin=0.0, vmax=u_max)
    if uncertainty is not None:  # one scale for the case: one colour bar for the column
        fig.colorbar(heat, ax=list(axes[:, -1]), fraction=0.05, pad=0.02, shrink=0.9).ax.tick_params(labelsize=6)
    fig.savefig(os.fspath(path), dpi=dpi, facecolor="white")
