# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The files of a benchmark report: ``<stem>.json`` (the data), ``<stem>.md`` (rendered from it), ``<stem>.png``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_report_files"]


def write_report_files(out_dir: str | Path, stem: str, report: dict[str, Any], markdown: str,
                       plot: Callable[[dict[str, Any], Path], None] | None = None) -> Path:
    """Write ``report`` as JSON, its ``markdown`` and (with ``plot``) its picture into ``out_dir``.

    Args:
        out_dir: folder, created if missing.
        stem: file name without extension, e.g. "quality".
        report: the benchmark's JSON-serialisable report.
        markdown: the report rendered as markdown.
        plot: ``plot(report, png_path)`` draws the picture; None: no picture.

    Returns:
        the markdown file's path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = out / f"{stem}.md"
    md.write_text(markdown)
    if plot is not None:
        plot(report, out / f"{stem}.png")
    print(f"wrote {md}, .json" + (" and .png" if plot is not None else ""), flush=True)
    return md
