# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""PNG overlays of a case's prediction on its MRI, for a person to look at after evaluation or inference.

:class:`SaveOverlayd` writes one picture per case: a few axial slices (rows), each shown as the image, the image
with the ground truth, the image with the prediction (and the slice's Dice) and the uncertainty map. It is meant
for a MONAI bundle's evaluation postprocessing, after ``DecollateBatchd`` (one case per call), and needs
matplotlib (``pip install matplotlib``, part of the package's ``bundle`` extra), which is imported only when the
transform is created. The drawing itself is :mod:`medsegdiff_monai.visualize.overlay`; this transform reads a
case's arrays, picks the channel and the slices, and names the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..data.case_ids import case_id_from_path, strip_nifti_suffix
from ..data.conventions import MODALITIES, REGION_SETS, item_value
from ..visualize.overlay import (
    choose_slices,
    display_plan,
    import_matplotlib,
    intensity_window,
    render_overlay,
    select_slices,
)
from .dictionary import case_name

__all__ = ["SaveOverlayd", "SaveOverlayD", "SaveOverlayDict", "select_slices", "overlay_file_stem"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def overlay_file_stem(name: str | os.PathLike | None) -> str | None:
    """A file-name-safe case name: the base name without ``.nii``/``.nii.gz``, odd characters replaced by ``_``.

    Args:
        name: a case id or an image path (e.g. ``/data/BraTS2021_00000/BraTS2021_00000_flair.nii.gz``).

    Returns:
        e.g. ``"BraTS2021_00000_flair"``, or None when nothing usable is left.
    """
    if name is None:
        return None
    base = _SAFE_NAME.sub("_", strip_nifti_suffix(name)).strip("._")
    return base or None


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, MetaTensor):
        value = value.as_tensor()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16, torch.bool) else value).numpy()
    return np.asarray(value)


class SaveOverlayd(MapTransform):
    """Write a PNG per case showing chosen slices of the image with the ground truth, prediction and uncertainty.

    One row per slice, columns (a column is left out when its data is absent):

    1. the image channel ``image_channel`` (default FLAIR, channel 3 of t1, t1ce, t2, flair) in grey (or, with
       ``image_channel=None``, a 3-channel image such as a photograph in colour), titled with the slice index
       (0-based, along ``slice_axis``);
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
        image_channel: the image channel drawn (3 = FLAIR in this package's t1, t1ce, t2, flair order); None draws
            a 3-channel image as RGB (one intensity window for the three) and any other image's channel 0.
        channel_names: the names of the pred/label channels in titles (None: WT, or WT, TC, ET, by their number).
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
                 num_slices: int = 3, image_channel: int | None = 3, channel: int = 0, threshold: float = 0.5,
                 slice_axis: int = -1, case_key: str | None = "case_id", output_postfix: str = "overlay",
                 dpi: int = 100, panel_size: float = 2.5, alpha: float = 0.4, radiological: bool = True,
                 channel_names: Sequence[str] | None = None) -> None:
        super().__init__(keys=[image_key, pred_key], allow_missing_keys=False)
        if int(num_slices) < 1:
            raise ValueError(f"SaveOverlayd: num_slices must be at least 1, got {num_slices}.")
        if int(dpi) < 10 or float(panel_size) <= 0:
            raise ValueError(f"SaveOverlayd: dpi must be at least 10 and panel_size positive, got {dpi}, {panel_size}.")
        import_matplotlib()  # fail at construction (bundle parsing), not after a whole evaluation
        self.image_key = image_key
        self.pred_key = pred_key
        self.label_key = label_key
        self.uncertainty_key = uncertainty_key
        self.output_dir = os.fspath(output_dir)
        self.num_slices = int(num_slices)
        self.image_channel = None if image_channel is None else int(image_channel)
        self.channel_names = None if channel_names is None else [str(n) for n in channel_names]
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
        if self.case_key and data.get(self.case_key) is not None:
            name = item_value(data[self.case_key])
        else:  # the case id of the image file, as the predictions are named (case_id_from_path)
            fname = case_name(data, None, self.image_key)
            name = case_id_from_path(fname) if fname else None
        stem = overlay_file_stem(name)
        if stem is None:
            stem = f"case_{self._unnamed:04d}"
            self._unnamed += 1
        postfix = f"_{self.output_postfix}" if self.output_postfix else ""
        return stem, os.path.join(self.output_dir, f"{stem}{postfix}.png")

    def choose_slices(self, image: np.ndarray, pred: np.ndarray, label: np.ndarray | None) -> tuple[list[int], str]:
        """The slices to draw and why (:func:`~medsegdiff_monai.visualize.choose_slices` with ``num_slices``).

        Args:
            image: (H, W, D) image channel, slices along the last axis.
            pred: (H, W, D) binary prediction.
            label: (H, W, D) binary ground truth or None.

        Returns:
            ``(slice indices, reason)``, the reason being ``"ground truth"``, ``"prediction"`` or ``"evenly spaced"``.
        """
        return choose_slices(image, pred, label, self.num_slices)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
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

        rgb = self.image_channel is None and image.shape[0] == 3
        image_channel = 0 if self.image_channel is None else self.image_channel
        planes = [slices_last(self._channel(image, self.image_key, "image", c))
                  for c in ((0, 1, 2) if rgb else (image_channel,))]
        img = np.max(np.abs(planes), axis=0) if rgb else planes[0]  # where the image holds data, for the slices
        prd = slices_last(self._channel(pred, self.pred_key, "pred", self.channel)) >= self.threshold
        gt = None if label is None else slices_last(self._channel(label, self.label_key, "label", self.channel)) > 0.5
        unc_map = None if unc is None else slices_last(
            self._channel(unc, self.uncertainty_key, "uncertainty", self.channel, broadcast=True))
        zs, reason = self.choose_slices(img, prd, gt)

        n_regions = pred.shape[0]
        regions = REGION_SETS["wt_tc_et"] if n_regions == 3 else REGION_SETS["wt"] if n_regions == 1 else ()
        regions = self.channel_names if self.channel_names is not None else regions
        region = regions[self.channel].upper() if -len(regions) <= self.channel < len(regions) \
            else f"channel {self.channel}"
        modality = "RGB image" if rgb else MODALITIES[image_channel].upper() if image.shape[0] == len(MODALITIES) \
            else f"image channel {image_channel % image.shape[0]}"
        case, path = self.case_file(data)
        os.makedirs(self.output_dir, exist_ok=True)
        grey = intensity_window(np.stack(planes) if rgb else img)  # (3, H, W, D), one window for all, or (H, W, D)
        render_overlay(path, grey, prd, zs, label=gt, uncertainty=unc_map,
                       plan=display_plan(self._affine(data), in_plane, self.radiological), title=case, region=region,
                       modality=modality, threshold=self.threshold, reason=reason, dpi=self.dpi,
                       panel_size=self.panel_size, alpha=self.alpha)
        return data


SaveOverlayD = SaveOverlayDict = SaveOverlayd
