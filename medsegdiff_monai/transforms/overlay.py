# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""PNG overlays of a case's prediction on its MRI, for a person to look at after evaluation or inference.

:class:`SaveOverlayd` writes one picture per case: a few axial slices (rows), each shown as the image, the image
with the ground truth, the image with the prediction (and the slice's Dice) and the uncertainty map. It is meant
for a MONAI bundle's evaluation postprocessing, after ``DecollateBatchd`` (one case per call), and needs
matplotlib (``pip install matplotlib``, part of the package's ``bundle`` extra), which is imported only when the
transform is created.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.conventions import MODALITIES, REGION_SETS
from ..data.nifti import NIFTI_SUFFIXES
from .dictionary import case_name

__all__ = ["SaveOverlayd", "SaveOverlayD", "SaveOverlayDict", "select_slices", "overlay_file_stem"]

_GT_COLOUR = "#00e000"  # green: blend_images' "brg" colour map at 1.0
_PRED_COLOUR = "#ff0018"  # red: "hsv" at 1.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_TITLE_HEIGHT, _HEADER_HEIGHT, _COLOURBAR_WIDTH = 0.2, 0.4, 0.5  # inches


def _import_matplotlib() -> tuple[Any, Any, Any]:
    """Import matplotlib's object-oriented API, the Agg canvas and MONAI's ``blend_images`` (which needs pyplot)."""
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


def overlay_file_stem(name: str | os.PathLike | None) -> str | None:
    """A file-name-safe case name: the base name without ``.nii``/``.nii.gz``, odd characters replaced by ``_``.

    Args:
        name: a case id or an image path (e.g. ``/data/BraTS2021_00000/BraTS2021_00000_flair.nii.gz``).

    Returns:
        e.g. ``"BraTS2021_00000_flair"``, or None when nothing usable is left.
    """
    if name is None:
        return None
    base = os.path.basename(os.path.normpath(os.fspath(name)))
    for suffix in NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    base = _SAFE_NAME.sub("_", base).strip("._")
    return base or None


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
        return sorted({int(round((i + 0.5) * n / k - 0.5)) for i in range(k)})
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


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, MetaTensor):
        value = value.as_tensor()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16, torch.bool) else value).numpy()
    return np.asarray(value)


def _dice(pred: np.ndarray, gt: np.ndarray) -> float | None:
    total = int(pred.sum()) + int(gt.sum())
    return None if total == 0 else 2.0 * float(np.logical_and(pred, gt).sum()) / total


class SaveOverlayd(MapTransform):
    """Write a PNG per case showing chosen slices of the image with the ground truth, prediction and uncertainty.

    One row per slice, columns (a column is left out when its data is absent):

    1. the image channel ``image_channel`` (default FLAIR, channel 3 of t1, t1ce, t2, flair) in grey, titled with
       the slice index (0-based, along ``slice_axis``);
    2. the image with the ground truth filled and outlined in green (if ``label_key`` is in the data);
    3. the image with the prediction (``pred >= threshold``) in red, the ground-truth outline in green and the Dice
       of that slice in the title (if there is a label; "Dice -" when both are empty);
    4. the uncertainty map as a heat map with a colour bar, one scale for the case (if ``uncertainty_key`` is set
       and in the data).

    The slices are the ones with the largest ground-truth area in region ``channel``, else the largest predicted
    area, else evenly spaced over the slices holding image data, and they are spread out (see
    :func:`select_slices`). Slices are displayed in the radiological convention read from the image affine
    (patient's right on the left of the picture, anterior or superior at the top, true pixel aspect ratio).

    The file is ``<output_dir>/<case>_<output_postfix>.png``; the case name is ``data[case_key]``, else the image's
    ``meta["filename_or_obj"]`` without ``.nii``/``.nii.gz``, else a running number. ``output_dir`` is created.
    Cases without tumour or without label are drawn too. The data is returned unchanged.

    All arrays are channel-first, one case (use after ``DecollateBatchd``), on the same grid:

    - image: (C, H, W, D) MRI, e.g. the preprocessed or the original (after ``Invertd``) image;
    - pred: (R, H, W, D) binary masks or probabilities, R regions (1: WT; 3: WT, TC, ET);
    - label: (R, H, W, D) region masks, optional;
    - uncertainty: (R, H, W, D) or (1, H, W, D), optional.

    A 2D case (C, H, W) is drawn as its single slice.

    Args:
        image_key: key of the image.
        pred_key: key of the prediction.
        label_key: key of the ground truth; None, or a key missing from the data, draws no ground truth.
        uncertainty_key: key of an uncertainty map (e.g. the per-voxel spread of diffusion samples); None or a
            missing key draws no uncertainty column.
        output_dir: folder of the PNG files.
        num_slices: rows (slices) per picture.
        image_channel: the image channel drawn (3 = FLAIR in this package's t1, t1ce, t2, flair order).
        channel: the region channel of pred/label/uncertainty drawn (0 = WT).
        threshold: prediction values ``>= threshold`` are inside the region.
        slice_axis: the spatial axis slices are taken along (0, 1, 2 or negative; -1 = the last, axial for BraTS).
        case_key: item key of the case name.
        output_postfix: appended to the case name (``<case>_<postfix>.png``); empty for ``<case>.png``.
        dpi: resolution of the picture (pixels per inch).
        panel_size: the longer side of one image panel in inches (the other follows the slice's shape and voxel
            spacing); the picture is about ``columns x panel_size`` inches wide and ``rows x panel_size`` high.
        alpha: opacity of the filled ground-truth and prediction overlays.
        radiological: orient slices from the affine (True) or show the array as stored, rows being the first
            in-plane axis (False).

    Raises:
        ImportError: when matplotlib is not installed (at construction).
    """

    def __init__(self, image_key: str = "image", pred_key: str = "pred", label_key: str | None = "label",
                 uncertainty_key: str | None = None, output_dir: str | os.PathLike = "./overlays",
                 num_slices: int = 3, image_channel: int = 3, channel: int = 0, threshold: float = 0.5,
                 slice_axis: int = -1, case_key: str | None = "case_id", output_postfix: str = "overlay",
                 dpi: int = 100, panel_size: float = 2.5, alpha: float = 0.4, radiological: bool = True) -> None:
        super().__init__(keys=[image_key, pred_key], allow_missing_keys=False)
        if int(num_slices) < 1:
            raise ValueError(f"SaveOverlayd: num_slices must be at least 1, got {num_slices}.")
        if int(dpi) < 10 or float(panel_size) <= 0:
            raise ValueError(f"SaveOverlayd: dpi must be at least 10 and panel_size positive, got {dpi}, {panel_size}.")
        _import_matplotlib()  # fail at construction (bundle parsing), not after a whole evaluation
        self.image_key = image_key
        self.pred_key = pred_key
        self.label_key = label_key
        self.uncertainty_key = uncertainty_key
        self.output_dir = os.fspath(output_dir)
        self.num_slices = int(num_slices)
        self.image_channel = int(image_channel)
        self.channel = int(channel)
        self.threshold = float(threshold)
        self.slice_axis = int(slice_axis)
        self.case_key = case_key
        self.output_postfix = str(output_postfix or "")
        self.dpi = int(dpi)
        self.panel_size = float(panel_size)
        self.alpha = float(alpha)
        self.radiological = bool(radiological)
        self._unnamed = 0

    # --- reading the data -------------------------------------------------------------------------------------------
    def _volume(self, d: Mapping[Hashable, Any], key: str | None, role: str, required: bool) -> np.ndarray | None:
        """``d[key]`` as a numpy (C, *spatial3) array (a view where possible), or None for an absent optional key."""
        if key is None or (not required and (key not in d or d[key] is None)):
            return None
        if key not in d:
            raise KeyError(f"SaveOverlayd: the {role} key {key!r} is not in the data (keys: "
                           f"{sorted(str(k) for k in d)}); set {role}_key to the right key.")
        arr = _to_numpy(d[key])
        if arr.ndim == 3:  # (C, H, W): a 2D case, one slice
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ValueError(f"SaveOverlayd: {role} {key!r} should be one case, channel first, (C, H, W, D); got "
                             f"shape {arr.shape}. Use it after DecollateBatchd.")
        return arr

    def _channel(self, arr: np.ndarray, key: str, role: str, index: int, broadcast: bool = False) -> np.ndarray:
        """One channel of a (C, *spatial) array as finite float32, NaN/inf as 0."""
        if broadcast and arr.shape[0] == 1:
            index = 0
        if not -arr.shape[0] <= index < arr.shape[0]:
            raise ValueError(f"SaveOverlayd: {role} {key!r} has {arr.shape[0]} channel(s), channel {index} was asked "
                             f"for; check {'image_channel' if role == 'image' else 'channel'}.")
        return np.nan_to_num(arr[index].astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)

    def _affine(self, d: Mapping[Hashable, Any]) -> np.ndarray | None:
        for key in (self.image_key, self.pred_key):
            value = d.get(key)
            if isinstance(value, MetaTensor):
                affine = np.asarray(_to_numpy(value.affine), dtype=np.float64)
                if affine.shape == (4, 4) and np.isfinite(affine).all():
                    return affine
        return None

    def case_file(self, data: Mapping[Hashable, Any]) -> tuple[str, str]:
        """The case name and PNG path of a case (the name from ``data[case_key]`` or the image file name).

        Returns:
            ``(case, path)``, e.g. ``("BraTS2021_00000", "<output_dir>/BraTS2021_00000_overlay.png")``.
        """
        stem = overlay_file_stem(case_name(data, self.case_key, self.image_key))
        if stem is None:
            stem = f"case_{self._unnamed:04d}"
            self._unnamed += 1
        postfix = f"_{self.output_postfix}" if self.output_postfix else ""
        return stem, os.path.join(self.output_dir, f"{stem}{postfix}.png")

    def choose_slices(self, image: np.ndarray, pred: np.ndarray, label: np.ndarray | None) -> tuple[list[int], str]:
        """The slices to draw and why.

        Args:
            image: (H, W, D) image channel, slices along the last axis.
            pred: (H, W, D) binary prediction.
            label: (H, W, D) binary ground truth or None.

        Returns:
            ``(slice indices, reason)``, the reason being ``"ground truth"``, ``"prediction"`` or ``"evenly spaced"``.
        """
        for mask, reason in ((label, "ground truth"), (pred, "prediction")):
            if mask is not None:
                areas = mask.reshape(-1, mask.shape[-1]).sum(0)
                if areas.any():
                    return select_slices(areas, self.num_slices), reason
        has_image = np.flatnonzero(np.abs(image).reshape(-1, image.shape[-1]).max(0) > 0)
        lo, hi = (int(has_image[0]), int(has_image[-1])) if has_image.size else (0, image.shape[-1] - 1)
        return [lo + z for z in select_slices(np.zeros(hi - lo + 1), self.num_slices)], "evenly spaced"

    # --- drawing ----------------------------------------------------------------------------------------------------
    def _display(self, affine: np.ndarray | None, axes: tuple[int, int]) -> tuple[bool, bool, bool, float]:
        """How to show a slice with in-plane spatial axes ``axes``: (transpose, flip rows, flip columns, aspect)."""
        if affine is None:
            return False, False, False, 1.0
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        if not self.radiological:
            return False, False, False, float(spacing[axes[0]] / spacing[axes[1]])
        import nibabel.orientations as nio

        codes = nio.aff2axcodes(affine)
        family = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        fam = [family.get(codes[a], 3) for a in axes]
        # the horizontal axis is left-right if in plane (axial, coronal), else anterior-posterior (sagittal)
        h = 0 if fam[0] == 0 else 1 if fam[1] == 0 else 0 if fam[0] == 1 else 1
        horizontal, vertical = axes[h], axes[1 - h]
        want_col = {0: "L", 1: "P"}.get(fam[h])  # increasing column: to the patient's left / posterior
        want_row = {1: "P", 2: "I"}.get(fam[1 - h])  # increasing row: posterior (anterior on top) / inferior
        return (h == 0, want_row is not None and codes[vertical] != want_row,
                want_col is not None and codes[horizontal] != want_col,
                float(spacing[vertical] / spacing[horizontal]))

    @staticmethod
    def _orient(s: np.ndarray, plan: tuple[bool, bool, bool, float]) -> np.ndarray:
        transpose, flip_rows, flip_cols, _ = plan
        s = s.T if transpose else s
        s = s[::-1] if flip_rows else s
        return np.ascontiguousarray(s[:, ::-1] if flip_cols else s)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        Figure, FigureCanvasAgg, blend_images = _import_matplotlib()
        image = self._volume(data, self.image_key, "image", required=True)
        pred = self._volume(data, self.pred_key, "pred", required=True)
        label = self._volume(data, self.label_key, "label", required=False)
        unc = self._volume(data, self.uncertainty_key, "uncertainty", required=False)
        spatial = image.shape[1:]
        for key, role, arr in ((self.pred_key, "pred", pred), (self.label_key, "label", label),
                               (self.uncertainty_key, "uncertainty", unc)):
            if arr is not None and arr.shape[1:] != spatial:
                raise ValueError(f"SaveOverlayd: {role} {key!r} has spatial shape {arr.shape[1:]}, the image "
                                 f"{self.image_key!r} {spatial}; draw them on the same grid (e.g. both after Invertd).")
        axis = 2 if getattr(data[self.image_key], "ndim", 4) == 3 else self.slice_axis  # 2D: its one slice
        if not -3 <= axis < 3:
            raise ValueError(f"SaveOverlayd: slice_axis must be a spatial axis (0, 1, 2 or negative), got {axis}.")
        axis %= 3
        in_plane = tuple(a for a in range(3) if a != axis)

        def slices_last(arr: np.ndarray) -> np.ndarray:
            return np.moveaxis(arr, axis, -1)

        img = slices_last(self._channel(image, self.image_key, "image", self.image_channel))
        prd = slices_last(self._channel(pred, self.pred_key, "pred", self.channel)) >= self.threshold
        gt = None if label is None else slices_last(self._channel(label, self.label_key, "label", self.channel)) > 0.5
        unc_map = None if unc is None else slices_last(
            self._channel(unc, self.uncertainty_key, "uncertainty", self.channel, broadcast=True))
        zs, reason = self.choose_slices(img, prd, gt)

        # one intensity window for the case: 0.5-99.5 percentiles of the non-zero voxels; background stays black
        body = img[img != 0]
        lo, hi = np.percentile(body, (0.5, 99.5)) if body.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        grey = np.where(img != 0, np.clip((img - lo) / (hi - lo), 0.0, 1.0), 0.0).astype(np.float32)
        u_max = float(unc_map.max()) if unc_map is not None and unc_map.size else 0.0
        u_max = u_max if u_max > 0 else 1.0

        plan = self._display(self._affine(data), in_plane)
        aspect = plan[3]
        n_regions = pred.shape[0]
        regions = REGION_SETS["wt_tc_et"] if n_regions == 3 else REGION_SETS["wt"] if n_regions == 1 else ()
        region = regions[self.channel].upper() if -len(regions) <= self.channel < len(regions) \
            else f"channel {self.channel}"
        modality = MODALITIES[self.image_channel].upper() if image.shape[0] == len(MODALITIES) \
            else f"image channel {self.image_channel % image.shape[0]}"

        columns = ["image"] + (["label"] if gt is not None else []) + ["pred"]
        columns += ["unc"] if unc_map is not None else []
        nrows, ncols = len(zs), len(columns)
        # panels as wide and high as the displayed slice (its longer side panel_size), plus a line for the title
        shown = self._orient(grey[..., 0], plan).shape
        ratio = shown[0] * aspect / shown[1]  # displayed height / width
        width, height = (self.panel_size, self.panel_size * ratio) if ratio <= 1 else \
            (self.panel_size / ratio, self.panel_size)
        fig = Figure(figsize=(ncols * width + (_COLOURBAR_WIDTH if unc_map is not None else 0.0),
                              nrows * (height + _TITLE_HEIGHT) + _HEADER_HEIGHT), dpi=self.dpi,
                     layout="constrained", facecolor="white")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        case, path = self.case_file(data)
        legend = "green: ground truth, " if gt is not None else ""
        why = "evenly spaced slices" if reason == "evenly spaced" else f"slices with the largest {reason} area"
        info = textwrap.fill(f"{region} | {legend}red: prediction >= {self.threshold:g} | {why}",
                             width=max(30, int(ncols * self.panel_size * 15)))
        fig.suptitle(f"{case}\n{info}", fontsize=8)

        def show(ax: Any, picture: np.ndarray, title: str, **kwargs: Any) -> Any:
            im = ax.imshow(self._orient(picture, plan) if picture.ndim == 2 else
                           np.stack([self._orient(c, plan) for c in picture], -1), aspect=aspect, **kwargs)
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
            return im

        def outline(ax: Any, mask: np.ndarray, colour: str) -> None:
            if mask.any() and not mask.all():
                limits = ax.get_xlim(), ax.get_ylim()
                ax.contour(self._orient(mask.astype(np.float32), plan), levels=[0.5], colors=[colour],
                           linewidths=0.8)
                ax.set_xlim(limits[0])
                ax.set_ylim(limits[1])

        for row, z in zip(axes, zs):
            g, p = grey[..., z], prd[..., z]
            for ax, col in zip(row, columns):
                if col == "image":
                    show(ax, g, f"{modality}, slice {z}", cmap="gray", vmin=0.0, vmax=1.0)
                elif col == "label":
                    m = gt[..., z]
                    show(ax, blend_images(g[None], m[None].astype(np.float32), alpha=self.alpha, cmap="brg",
                                          rescale_arrays=False), f"ground truth ({region})")
                    outline(ax, m, _GT_COLOUR)
                elif col == "pred":
                    title = f"prediction ({region})"
                    if gt is not None:
                        dice = _dice(p, gt[..., z])
                        title += f", Dice {dice:.2f}" if dice is not None else ", Dice - (both empty)"
                    show(ax, blend_images(g[None], p[None].astype(np.float32), alpha=self.alpha, cmap="hsv",
                                          rescale_arrays=False), title)
                    if gt is not None:
                        outline(ax, gt[..., z], _GT_COLOUR)
                else:
                    heat = show(ax, unc_map[..., z], "uncertainty", cmap="magma", vmin=0.0, vmax=u_max)
        if unc_map is not None:  # one scale for the case: one colour bar for the column
            fig.colorbar(heat, ax=list(axes[:, -1]), fraction=0.05, pad=0.02, shrink=0.9).ax.tick_params(labelsize=6)
        os.makedirs(self.output_dir, exist_ok=True)
        fig.savefig(path, dpi=self.dpi, facecolor="white")
        return data


SaveOverlayD = SaveOverlayDict = SaveOverlayd
