# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""A ``SupervisedEvaluator`` that resumes an interrupted evaluation: cases already written are not sampled again."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.data import decollate_batch
from monai.engines import SupervisedEvaluator
from monai.transforms import EnsureChannelFirst, LoadImage

from ..transforms.dictionary import LabelToRegionsd
from ..data.case_ids import case_id_from_path

__all__ = ["ResumableEvaluator"]

logger = logging.getLogger(__name__)


class ResumableEvaluator(SupervisedEvaluator):
    """:class:`monai.engines.SupervisedEvaluator` that, with ``resume=True``, does not sample cases whose
    prediction is already written, and computes their metrics from the written prediction.

    For every batch whose cases all have a valid ``<output_dir>/<case>_<output_postfix>.nii.gz`` (and, for each
    of ``extra_postfixes``, a readable ``<case>_<postfix>.nii.gz``), the network and the post-processing are
    skipped: the written label map is read, converted back to region masks (``LabelToRegionsd`` with the item's
    label convention, the inverse of the ``RegionsToLabeld`` that wrote it), and given to the metrics as
    ``pred_key`` with the original label ``original_label_key`` as ``label_key``, the keys the metric handlers
    read in ``evaluate.json``. A prediction is valid when it reads completely (a truncated file fails) and has
    the label's spatial shape; otherwise the case is sampled again and its files replaced. The metrics are then
    those of the written prediction: for ``"wt"``, and for nested ``"wt_tc_et"`` predictions, exactly those of the
    first run; for a non-nested ``"wt_tc_et"`` prediction, those of the label map that was written (where a voxel
    in ET counts as TC and WT).

    Written because MONAI's evaluators always run the network on every case: there is no per-iteration skip, and
    Ignite's resumable state (``Engine.state_dict``) restores epoch counts, not which cases of an epoch are done.
    Every other argument is ``SupervisedEvaluator``'s. ``last_resumed`` tells handlers (e.g.
    :class:`~medsegdiff_monai.handlers.ProgressLogger`) whether the last iteration was read back, and
    ``num_resumed`` counts such cases.

    Args:
        args: ``SupervisedEvaluator``'s positional arguments.
        resume: skip cases with a valid written prediction. False: exactly ``SupervisedEvaluator``.
        output_dir: the folder the predictions are written to (the ``SaveImaged`` ``output_dir``).
        regions: the region set of the predictions (``"wt"`` or ``"wt_tc_et"``).
        output_postfix: postfix of the written label map.
        extra_postfixes: postfixes of other files each finished case has (e.g. ``["uncertainty"]``).
        image_key: the item key of the image (its file name gives the case id, as ``case_name_formatter``).
        label_key: the key the metrics read the label from.
        original_label_key: the item key of the label in its original geometry (what the metrics compare with).
        pred_key: the key the metrics read the prediction masks from.
        kwargs: ``SupervisedEvaluator``'s keyword arguments.
    """

    def __init__(
        self,
        *args: Any,
        resume: bool = False,
        output_dir: str | os.PathLike | None = None,
        regions: str | Sequence[str] = "wt",
        output_postfix: str = "seg",
        extra_postfixes: Sequence[str] = (),
        image_key: str = "image",
        label_key: str = "label",
        original_label_key: str = "label_original",
        pred_key: str = "pred_mask",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if resume and output_dir is None:
            raise ValueError("ResumableEvaluator: resume=True needs `output_dir`, where the predictions are written.")
        self.resume = bool(resume)
        self.output_dir = None if output_dir is None else os.fspath(output_dir)
        self.output_postfix = str(output_postfix)
        self.extra_postfixes = [str(p) for p in extra_postfixes]
        self.image_key, self.label_key, self.pred_key = image_key, label_key, pred_key
        self.original_label_key = original_label_key
        self.to_regions = LabelToRegionsd(keys=pred_key, regions=regions, convention="brats")
        self.loader = LoadImage(reader="NibabelReader", image_only=True)
        self.channel_first = EnsureChannelFirst()
        self.last_resumed = False
        self.num_resumed = 0

    def written_path(self, item: dict, postfix: str | None = None) -> str:
        """The file ``SaveImaged`` with ``case_name_formatter`` writes for this item."""
        image = item[self.image_key]
        meta = getattr(image, "meta", {}) or {}
        name = meta.get("filename_or_obj") or item.get("case_id")
        if not name:
            raise ValueError(f"ResumableEvaluator: item has no file name in `{self.image_key}` metadata nor a case_id.")
        case = case_id_from_path(name)
        return os.path.join(str(self.output_dir), f"{case}_{postfix or self.output_postfix}.nii.gz")

    def _read_back(self, item: dict) -> dict | None:
        """The metric inputs of a finished case from its written files, or None when it must be computed."""
        path = self.written_path(item)
        if not os.path.isfile(path) or any(not os.path.isfile(self.written_path(item, p)) for p in self.extra_postfixes):
            return None
        label = item.get(self.original_label_key)
        try:
            seg = self.channel_first(self.loader(path))  # reads the whole file: a truncated file raises
            for postfix in self.extra_postfixes:
                self.loader(self.written_path(item, postfix))
        except Exception as err:  # noqa: BLE001 - any unreadable file means: compute the case again
            logger.warning("%s: unreadable (%s): the case is computed again.", path, err)
            return None
        if label is not None and tuple(seg.shape[1:]) != tuple(label.shape[1:]):
            logger.warning("%s: shape %s, not the label's %s: the case is computed again.", path,
                           tuple(seg.shape[1:]), tuple(label.shape[1:]))
            return None
        data = {self.pred_key: seg, "label_convention": item.get("label_convention"), "case_id": item.get("case_id")}
        if data["label_convention"] is None:
            del data["label_convention"]
        pred = self.to_regions(data)[self.pred_key]
        out = {self.pred_key: pred}
        if label is not None:
            out[self.label_key] = label
        return out

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict | list:
        """Read finished cases back (``resume``); run ``SupervisedEvaluator``'s iteration for the others."""
        self.last_resumed = False
        if self.resume and batchdata is not None:
            items = decollate_batch(batchdata, detach=True)
            outputs = [self._read_back(item) for item in items]
            if outputs and all(o is not None for o in outputs):
                self.last_resumed = True
                self.num_resumed += len(items)
                engine.state.batch = items
                engine.state.output = outputs
                return outputs
        return super()._iteration(engine, batchdata)
