# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""``batch_transform`` for handlers: the case ids of an evaluator's batch, named as the bundle names its files."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..data.case_ids import case_id_from_path

__all__ = ["CaseIds"]


class CaseIds:
    """The case id of every item of ``engine.state.batch``, for the ``batch_transform`` of a handler.

    The id comes from the image's file name (``filename_or_obj`` in its metadata) through
    :func:`~medsegdiff_monai.data.case_id_from_path`, the function that also names the written predictions
    (:func:`~medsegdiff_monai.data.case_name_formatter`) and finds them again on resume, so the rows of the
    metric reports, the progress lines and the files agree; an item without a file name falls back to its
    ``case_id``. Replaces config lambdas such as ``lambda batch: [item['case_id'] for item in batch]``.

    Args:
        image_key: the item key of the image.
        meta_key: None to return the ids; a key name (``"filename_or_obj"`` for ``MetricsSaver``) to return
            ``[{meta_key: id}, ...]``, the per-item metadata MONAI's ``MetricsSaver`` reads its row names from.

    Example::

        ProgressLogger(batch_transform=CaseIds())
        MetricsSaver(save_dir, batch_transform=CaseIds(meta_key="filename_or_obj"))
    """

    def __init__(self, image_key: str = "image", meta_key: str | None = None) -> None:
        self.image_key = image_key
        self.meta_key = meta_key

    def case_id(self, item: Mapping) -> str:
        """The case id of one decollated item.

        Raises:
            ValueError: when the item has neither an image file name nor a ``case_id``.
        """
        meta = getattr(item.get(self.image_key), "meta", None) or {}
        name = meta.get("filename_or_obj")
        if name:
            return case_id_from_path(name)
        if item.get("case_id") is not None:
            return str(item["case_id"])
        raise ValueError(f"CaseIds: item has no file name in `{self.image_key}` metadata nor a case_id.")

    def __call__(self, batch: Sequence[Mapping] | Mapping) -> list[Any]:
        items = [batch] if isinstance(batch, Mapping) else list(batch)
        ids = [self.case_id(item) for item in items]
        return ids if self.meta_key is None else [{self.meta_key: i} for i in ids]
