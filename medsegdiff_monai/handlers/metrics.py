# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Evaluation handlers: HD95 in millimetres from each case's voxel spacing, per-region columns in the reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.metrics.metric import reinit__is_reduced

from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import HausdorffDistance, MetricsSaver
from monai.handlers.utils import write_metrics_reports
from monai.utils import string_list_all_gather

__all__ = ["PhysicalHausdorffDistance", "RegionMetricsSaver"]

logger = logging.getLogger(__name__)


def _cases(x: Any) -> list[tuple[torch.Tensor, list[float] | None]]:
    """Split ``y_pred`` or ``y`` into ``(batch-first tensor of one case, its voxel spacing or None)`` pairs.

    Accepts a list of channel-first tensors or a batch-first tensor (ignite's ``Metric`` turns a list into
    batches of one, whose ``MetaTensor`` keeps the item's 4x4 affine without being marked as a batch, so MONAI's
    ``decollate_batch`` would split the affine too; hence the explicit handling here).
    """
    if isinstance(x, (list, tuple)):
        items = [torch.as_tensor(item)[None] if not isinstance(item, MetaTensor) else item[None] for item in x]
        return [case for item in items for case in _cases(item)]
    n = x.shape[0]
    if not isinstance(x, MetaTensor):
        return [(x[i : i + 1], None) for i in range(n)]
    affine = x.affine
    affines = [affine[i] for i in range(n)] if affine.ndim == 3 else [affine] * n
    plain = x.as_tensor()
    return [(plain[i : i + 1], [float(s) for s in affine_to_spacing(a, r=x.ndim - 2)]) for i, a in enumerate(affines)]


class PhysicalHausdorffDistance(HausdorffDistance):
    """:class:`monai.handlers.HausdorffDistance` in physical units: each case's voxel spacing, from its metadata.

    MONAI's ``HausdorffDistanceMetric`` takes a ``spacing`` argument, but MONAI 1.6.1's Ignite handler calls the
    metric without it, so its distances are in voxels, whatever the images' spacing. This handler passes, for
    every case, the spacing of the label (``y``), or of the prediction when the label is not a ``MetaTensor``,
    computed from its affine: millimetres for NIfTI images, and correct for anisotropic voxels (e.g. 1x1x3 mm)
    and for cases of different spacings in one evaluation. For plain tensors it falls back to voxels, as MONAI's
    handler. In this bundle's ``evaluate.json`` the label is the label in its original geometry, so the spacing
    is the original NIfTI file's. Arguments are those of ``HausdorffDistance``; ``distance_metric`` must stay
    ``"euclidean"`` for the spacing to be used (MONAI ignores it otherwise).
    """

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        """Compute the metric of every case of a batch with that case's spacing.

        Args:
            output: ``(y_pred, y)``, batch-first tensors or lists of channel-first tensors.

        Raises:
            ValueError: when ``output`` is not a pair.
        """
        if len(output) != 2:
            raise ValueError(f"output must have length 2, got {len(output)}.")
        y_pred, y = output
        for (pred, pred_spacing), (label, label_spacing) in zip(_cases(y_pred), _cases(y)):
            # one call per case: a batch given to the metric would get one spacing for all its cases
            self.metric_fn(pred, label, spacing=label_spacing if label_spacing is not None else pred_spacing)


class RegionMetricsSaver(MetricsSaver):
    """:class:`monai.handlers.MetricsSaver` whose per-case and summary reports name their class columns.

    MONAI's ``write_metrics_reports`` accepts ``class_labels`` but MONAI 1.6.1's ``MetricsSaver`` does not pass
    any, so the per-class columns of ``<metric>_raw.csv`` and the rows of ``<metric>_summary.csv`` are
    ``class0, class1, ...``. This subclass passes ``class_labels`` (e.g. ``["WT", "TC", "ET"]`` for
    ``--regions wt_tc_et``). A metric whose number of classes differs from ``len(class_labels)`` keeps MONAI's
    names, with a warning. ``__call__`` is MONAI's, re-implemented only to pass the labels; the other arguments
    are those of ``MetricsSaver``.

    Args:
        class_labels: the names of the metric channels, in order (``None``: MONAI's ``class0, class1, ...``).
        kwargs: the arguments of ``MetricsSaver``.
    """

    def __init__(self, *args: Any, class_labels: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_labels = None if class_labels is None else [str(c) for c in class_labels]

    def __call__(self, engine: Engine) -> None:
        """Write the reports at the end of the evaluation (on ``save_rank``), as ``MetricsSaver`` does.

        Args:
            engine: the evaluator.

        Raises:
            ValueError: when ``save_rank`` is not below the distributed world size.
        """
        ws = idist.get_world_size()
        if self.save_rank >= ws:
            raise ValueError("target save rank is greater than the distributed group size.")
        images = string_list_all_gather(strings=self._filenames) if ws > 1 else self._filenames
        if idist.get_rank() != self.save_rank:
            return
        metrics: dict = {}
        if self.metrics is not None and len(engine.state.metrics) > 0:
            metrics = {k: v for k, v in engine.state.metrics.items() if k in self.metrics or "*" in self.metrics}
        details: dict = {}
        if self.metric_details is not None and len(getattr(engine.state, "metric_details", {})) > 0:
            details = {k: v for k, v in engine.state.metric_details.items()
                       if k in self.metric_details or "*" in self.metric_details}
        labelled, unlabelled = {}, {}
        for k, v in details.items():
            n = v.shape[1] if getattr(v, "ndim", 0) >= 2 else 1
            if self.class_labels is not None and n != len(self.class_labels):
                logger.warning(f"{k}: {n} class column(s), not the {len(self.class_labels)} of class_labels "
                               f"{self.class_labels}: written as class0, class1, ...")
                unlabelled[k] = v
            else:
                labelled[k] = v
        common = {"save_dir": self.save_dir, "images": None if len(images) == 0 else images,
                  "summary_ops": self.summary_ops, "deli": self.deli, "output_type": self.output_type}
        write_metrics_reports(metrics=metrics, metric_details=labelled, class_labels=self.class_labels, **common)
        if unlabelled:
            write_metrics_reports(metrics=None, metric_details=unlabelled, **common)
