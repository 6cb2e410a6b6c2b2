# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""Datalist builders for BraTS 2020/2021 folders and the MSD Task01_BrainTumour folder.

The result is a MONAI (Medical Segmentation Decathlon style) datalist JSON that
``monai.data.load_decathlon_datalist`` reads::

    {
        "layout": "brats2021", "label_convention": "brats", "modality_order": "t1,t1ce,t2,flair",
        "channels": "t1,t1ce,t2,flair", "labels": {...}, "regions": {...}, "split": {...}, ...,
        "training": [
            {"case_id": "BraTS2021_00000",
             "image": ["BraTS2021_00000/BraTS2021_00000_t1.nii.gz", ..._t1ce, ..._t2, ..._flair],
             "label": "BraTS2021_00000/BraTS2021_00000_seg.nii.gz",
             "label_convention": "brats", "modality_order": "t1,t1ce,t2,flair"},
            ...
        ],
        "validation": [...],
        "test": [... items without "label" for unlabeled cases ...]
    }

For MSD, ``"image"`` is the single 4D file and ``"modality_order"`` is ``"flair,t1,t1ce,t2"`` (dataset.json's
order), so :class:`~medsegdiff_monai.transforms.ReorderModalitiesd` brings the channels to t1, t1ce, t2, flair;
``"label_convention": "msd"`` tells :class:`~medsegdiff_monai.transforms.LabelToRegionsd` that 1 is edema,
2 non-enhancing and 3 enhancing tumour. The per-item keys let one pipeline read mixed datalists; the top-level
keys describe the whole file.

Paths are written relative to the folder of the JSON file (``base_dir``), which is what
``load_decathlon_datalist(path)`` assumes when its ``base_dir`` is None; pass ``absolute_paths=True`` to write
absolute paths instead. The split is by case (one case per patient in BraTS and MSD), never by slice.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .conventions import (
    LABEL_CONVENTIONS,
    MODALITIES,
    MSD_MODALITY_ORDER,
    DataError,
    canonical_modality,
    format_modality_order,
    item_value,
)
from .nifti import NIFTI_SUFFIXES, is_nifti_name

__all__ = [
    "LAYOUTS",
    "detect_layout",
    "find_cases",
    "split_cases",
    "build_datalist",
    "write_datalist",
    "load_datalist",
]

#: accepted values of ``layout``; "brats" is any folder-per-case layout named ``<case>/<case>_<modality>.nii.gz``
LAYOUTS: tuple[str, ...] = ("auto", "brats2021", "brats2020", "brats", "msd")

_CASE_PATTERNS: dict[str, re.Pattern] = {
    "brats2021": re.compile(r"^BraTS2021_\d+$"),
    "brats2020": re.compile(r"^BraTS20_(Training|Validation)_\d+$"),
}
_LAYOUT_NAMES = {"brats2021": "BraTS2021_NNNNN", "brats2020": "BraTS20_Training_NNN or BraTS20_Validation_NNN"}
_BRATS_FILE = re.compile(r"^(?P<case>.+)_(?P<mod>t1|t1ce|t2|flair|seg)\.nii(\.gz)?$", re.IGNORECASE)
_ITEM_META_KEYS = ("case_id", "label_convention", "modality_order")


def _data_dir(data_dir: str | os.PathLike) -> Path:
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise DataError(f"{root}: data folder not found.")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, expected a data folder.")
    return root.resolve()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # also skips macOS "._*" resource forks and ".DS_Store"


def _nifti_files(folder: Path) -> list[Path]:
    try:
        return sorted(f for f in folder.iterdir() if f.is_file() and is_nifti_name(f.name))
    except OSError:
        return []


def _case_dirs(root: Path) -> list[Path]:
    return [d for d in sorted(root.iterdir()) if d.is_dir() and _visible(d) and _nifti_files(d)]


def _no_cases_message(root: Path) -> str:
    msg = (
        f"{root}: no cases found. Expected a BraTS folder (<case>/<case>_{{t1,t1ce,t2,flair,seg}}.nii.gz, e.g. "
        "BraTS2021_00000/BraTS2021_00000_t1.nii.gz) or an MSD Task01_BrainTumour folder (dataset.json, "
        "imagesTr/, labelsTr/, imagesTs/)."
    )
    files = [f.name for f in _nifti_files(root)]
    if any(_BRATS_FILE.match(f) and _BRATS_FILE.match(f).group("case") == root.name for f in files):
        msg += " This looks like a single case folder: pass the folder that contains the case folders."
    else:
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _visible(d)]
        if len(subdirs) == 1:
            msg += f" Did you mean its subfolder {subdirs[0]}?"
    return msg


def detect_layout(data_dir: str | os.PathLike) -> str:
    """Tell which layout a data folder has.

    Args:
        data_dir: the folder holding the case folders (BraTS) or ``dataset.json``/``imagesTr`` (MSD).

    Returns:
        ``"msd"`` for a Task01_BrainTumour folder; ``"brats2021"`` when every case folder is named
        ``BraTS2021_NNNNN``; ``"brats2020"`` when every one is ``BraTS20_{Training,Validation}_NNN``; else
        ``"brats"`` (any folder-per-case layout with ``<case>_<modality>.nii[.gz]`` files).

    Raises:
        DataError: when the folder does not exist or holds no recognisable case.
    """
    root = _data_dir(data_dir)
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "msd"
    names = [d.name for d in _case_dirs(root)]
    if not names:
        raise DataError(_no_cases_message(root))
    for layout, pattern in _CASE_PATTERNS.items():
        if all(pattern.match(n) for n in names):
            return layout
    return "brats"


def _brats_case(folder: Path, convention: str) -> tuple[dict[str, Any], list[str]]:
    """One BraTS case folder -> (item with absolute paths, problems)."""
    name = folder.name
    files = {f.name: f for f in _nifti_files(folder)}
    found: dict[str, Path] = {}
    problems: list[str] = []
    for mod in (*MODALITIES, "seg"):
        hits = [files[f"{name}_{mod}{suffix}"] for suffix in NIFTI_SUFFIXES if f"{name}_{mod}{suffix}" in files]
        if len(hits) > 1:
            problems.append(f"both {hits[0].name} and {hits[1].name} exist in {folder}; keep one.")
        if hits:
            found[mod] = hits[0]
    used = {p.name for p in found.values()}
    foreign: list[str] = []
    for fname in sorted(set(files) - used):
        m = _BRATS_FILE.match(fname)
        if m and m.group("case") != name:
            foreign.append(fname)
        elif "seg" in fname.lower():
            problems.append(
                f"unexpected segmentation file {folder / fname}: rename it to {name}_seg.nii.gz "
                f"(or {name}_seg.nii if it is not compressed)."
            )
        else:
            problems.append(f"unexpected file {folder / fname} (expected {name}_<t1|t1ce|t2|flair|seg>.nii.gz).")
    if foreign:
        problems.append(
            f"case folder name does not match its files: folder {name!r} holds {', '.join(foreign)} "
            f"(expected {name}_<t1|t1ce|t2|flair|seg>.nii.gz)."
        )
    missing = [m for m in MODALITIES if m not in found]
    if missing and not foreign:
        for m in missing:
            problems.append(f"missing modality {m}: {folder / f'{name}_{m}.nii.gz'} not found.")
    item: dict[str, Any] = {"case_id": name, "image": [str(found[m]) for m in MODALITIES if m in found]}
    if "seg" in found:
        item["label"] = str(found["seg"])
    item["label_convention"] = convention
    item["modality_order"] = format_modality_order(MODALITIES)
    return item, problems


def _brats_cases(root: Path, layout: str, convention: str) -> tuple[list[dict], dict[str, list[str]]]:
    dirs = _case_dirs(root)
    if not dirs:
        raise DataError(_no_cases_message(root))
    cases, problems = [], {}
    pattern = _CASE_PATTERNS.get(layout)
    for d in dirs:
        item, probs = _brats_case(d, convention)
        if pattern is not None and not pattern.match(d.name):
            probs.insert(0, f"folder {d} is not named like a {layout} case ({_LAYOUT_NAMES[layout]}).")
        cases.append(item)
        if probs:
            problems[d.name] = probs
    return cases, problems


def _case_id_from_file(path: str) -> str:
    base = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _msd_order_and_convention(meta: dict[str, Any], where: Path) -> tuple[tuple[str, ...], str]:
    order = MSD_MODALITY_ORDER
    if "modality" in meta:
        try:
            modality = {int(k): v for k, v in dict(meta["modality"]).items()}
            order = tuple(canonical_modality(modality[k]) for k in sorted(modality))
        except (ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{where}: cannot read its 'modality' entry ({e}).") from e
        if sorted(order) != sorted(MODALITIES):
            raise DataError(f"{where}: 'modality' lists {order}, expected the four of {MODALITIES}.")
    convention = "msd"
    labels = meta.get("labels")
    if isinstance(labels, dict) and "4" in {str(k) for k in labels}:
        convention = "brats"
    return order, convention


def _msd_cases(root: Path, convention: str | None) -> tuple[list[dict], dict[str, list[str]], str, tuple]:
    ds_file = root / "dataset.json"
    problems: dict[str, list[str]] = {}
    entries: list[tuple[str, str | None]] = []  # (image, label or None)
    meta: dict[str, Any] = {}
    if ds_file.is_file():
        try:
            with open(ds_file) as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{ds_file}: not a readable dataset.json ({e}).") from e
        if not isinstance(meta, dict):
            raise DataError(f"{ds_file}: expected a JSON object.")
        for i, it in enumerate(meta.get("training", [])):
            if not isinstance(it, dict) or "image" not in it:
                raise DataError(f"{ds_file}: training entry {i} has no 'image'.")
            entries.append((str(root / os.path.normpath(it["image"])),
                            str(root / os.path.normpath(it["label"])) if it.get("label") else None))
        for it in meta.get("test", []):
            img = it.get("image") if isinstance(it, dict) else it
            entries.append((str(root / os.path.normpath(img)), None))
    else:  # no dataset.json: scan the folders (skipping macOS "._*" files of the published archive)
        for sub, labeled in (("imagesTr", True), ("imagesTs", False)):
            for f in _nifti_files(root / sub) if (root / sub).is_dir() else []:
                entries.append((str(f), str(root / "labelsTr" / f.name) if labeled else None))
    if not entries:
        raise DataError(_no_cases_message(root))
    order, found_convention = _msd_order_and_convention(meta, ds_file)
    convention = convention or found_convention
    cases = []
    for img, lab in entries:
        cid = _case_id_from_file(img)
        probs = problems.setdefault(cid, [])
        if not os.path.isfile(img):
            probs.append(f"image {img} not found.")
        if lab is not None and not os.path.isfile(lab):
            probs.append(f"label {lab} not found.")
        item: dict[str, Any] = {"case_id": cid, "image": img}
        if lab is not None:
            item["label"] = lab
        item["label_convention"] = convention
        item["modality_order"] = format_modality_order(order)
        cases.append(item)
    return cases, {k: v for k, v in problems.items() if v}, convention, order


def _discover(
    data_dir: str | os.PathLike, layout: str = "auto", label_convention: str | None = None
) -> tuple[str, list[dict], dict[str, list[str]], str, tuple[str, ...]]:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}.")
    if label_convention is not None and label_convention not in LABEL_CONVENTIONS:
        raise ValueError(f"unknown label convention {label_convention!r}; choose one of {sorted(LABEL_CONVENTIONS)}.")
    root = _data_dir(data_dir)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "msd":
        cases, problems, convention, order = _msd_cases(root, label_convention)
    else:
        convention, order = label_convention or "brats", MODALITIES
        cases, problems = _brats_cases(root, layout, convention)
    ids = [c["case_id"] for c in cases]
    for cid in {i for i in ids if ids.count(i) > 1}:
        problems.setdefault(cid, []).append(f"case id {cid!r} occurs {ids.count(cid)} times.")
    return layout, cases, problems, convention, order


def _problem_summary(problems: dict[str, list[str]], limit: int = 3) -> str:
    lines = [f"case {cid}: {p}" for cid, probs in problems.items() for p in probs]
    text = " | ".join(lines[:limit])
    if len(lines) > limit:
        text += f" | ... and {len(lines) - limit} more (run `medsegdiff-monai check_data` for the full report)"
    return f"{len(problems)} case(s) have problems: {text}"


def _apply_on_error(cases: list[dict], problems: dict[str, list[str]], on_error: str) -> list[dict]:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}.")
    if not problems:
        return cases
    if on_error == "raise":
        raise DataError(_problem_summary(problems))
    warnings.warn(f"skipping {_problem_summary(problems, limit=len(problems) * 10)}", stacklevel=3)
    return [c for c in cases if c["case_id"] not in problems]


def find_cases(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    label_convention: str | None = None,
    on_error: str = "raise",
) -> list[dict[str, Any]]:
    """List the cases of a data folder, with absolute paths.

    Only file names and folder structure are checked here (not file contents: see
    :func:`medsegdiff_monai.data.check_dataset`). Hidden files and macOS ``._*`` files are ignored.

    Args:
        data_dir: the data folder.
        layout: one of :data:`LAYOUTS`; ``"auto"`` calls :func:`detect_layout`.
        label_convention: override the convention implied by the layout (``"brats"`` for BraTS folders; for MSD
            ``"msd"`` unless dataset.json's labels include 4).
        on_error: ``"raise"`` a :class:`DataError` summarising every problem, or ``"skip"`` the cases with
            problems (with a warning).

    Returns:
        items ``{"case_id", "image", "label" (labeled cases only), "label_convention", "modality_order"}``,
        sorted by case id.

    Raises:
        DataError: when the folder is missing, holds no case, or (``on_error="raise"``) a case has a problem.
    """
    _, cases, problems, _, _ = _discover(data_dir, layout, label_convention)
    cases = _apply_on_error(cases, problems, on_error)
    return sorted(cases, key=lambda c: c["case_id"])


def _check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")
    return value


def split_cases(
    cases: Sequence[dict[str, Any]], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Split cases into training, validation and test lists, by case (patient), reproducibly.

    Labeled cases are sorted by ``case_id``, shuffled with ``random.Random(seed)`` and cut into
    ``round(n * test_fraction)`` test, ``round(n * val_fraction)`` validation and the rest training cases (at least
    one training case is kept when there is any labeled case). Unlabeled cases (no ``"label"``) always go to
    ``"test"``, for inference. The result does not depend on the order of ``cases``.

    Args:
        cases: items with a unique ``"case_id"``.
        val_fraction: fraction of labeled cases for validation, in [0, 1).
        test_fraction: fraction of labeled cases held out for testing, in [0, 1).
        seed: the shuffle seed.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted by case id.

    Raises:
        ValueError: on fractions outside [0, 1) or summing to 1 or more.
        DataError: on repeated case ids.
    """
    val_fraction = _check_fraction("val_fraction", val_fraction)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}.")
    ids = [c["case_id"] for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"case ids occur more than once: {dup}.")
    key = lambda c: c["case_id"]  # noqa: E731
    labeled = sorted((c for c in cases if c.get("label")), key=key)
    unlabeled = sorted((c for c in cases if not c.get("label")), key=key)
    order = list(labeled)
    random.Random(int(seed)).shuffle(order)
    n = len(order)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    while n and n_test + n_val > n - 1:  # keep at least one training case
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {"training": sorted(train, key=key), "validation": sorted(val, key=key),
            "test": sorted(test, key=key) + unlabeled}


def _rel(path: str, base_dir: Path | None) -> str:
    if base_dir is None:
        return str(Path(path).resolve())
    try:
        return Path(os.path.relpath(Path(path).resolve(), base_dir)).as_posix()
    except ValueError:  # another drive on Windows
        return str(Path(path).resolve())


def _with_paths(item: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    out = dict(item)
    img = item["image"]
    out["image"] = [_rel(p, base_dir) for p in img] if isinstance(img, (list, tuple)) else _rel(img, base_dir)
    if item.get("label"):
        out["label"] = _rel(item["label"], base_dir)
    return {k: out[k] for k in ("case_id", "image", "label", "label_convention", "modality_order") if k in out}


def build_datalist(
    data_dir: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    layout: str = "auto",
    base_dir: str | os.PathLike | None = None,
    label_convention: str | None = None,
    on_error: str = "raise",
) -> dict[str, Any]:
    """Build a MONAI datalist (the JSON content) for a BraTS or MSD folder.

    Args:
        data_dir: the data folder.
        val_fraction: fraction of labeled cases for ``"validation"``.
        test_fraction: fraction of labeled cases for ``"test"`` (they keep their ``"label"``, for evaluation).
        seed: the split seed (see :func:`split_cases`).
        layout: one of :data:`LAYOUTS`.
        base_dir: write paths relative to this folder (normally the folder of the JSON file); None writes
            absolute paths.
        label_convention: override the layout's label convention (see :func:`find_cases`).
        on_error: ``"raise"`` or ``"skip"`` cases with problems (see :func:`find_cases`).

    Returns:
        the datalist as a dict; see the module docstring for its keys.
    """
    if _check_fraction("val_fraction", val_fraction) + _check_fraction("test_fraction", test_fraction) >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}.")
    layout_found, cases, problems, convention, order = _discover(data_dir, layout, label_convention)
    cases = _apply_on_error(cases, problems, on_error)
    if not cases:
        raise DataError(f"{data_dir}: no usable case left.")
    split = split_cases(cases, val_fraction, test_fraction, seed)
    base = Path(base_dir).resolve() if base_dir is not None else None
    conv = LABEL_CONVENTIONS[convention]
    from .. import __version__

    datalist: dict[str, Any] = {
        "name": f"medsegdiff-monai datalist ({layout_found})",
        "description": "BraTS brain tumour segmentation cases; keys follow monai.data.load_decathlon_datalist.",
        "generated_by": f"medsegdiff_monai {__version__}",
        "data_dir": _rel(str(_data_dir(data_dir)), base),
        "base_dir": "relative paths are relative to the folder of this file "
        "(monai.data.load_decathlon_datalist's default base_dir)",
        "layout": layout_found,
        "label_convention": convention,
        "labels": {str(k): v for k, v in conv["labels"].items()},
        "regions": {k: list(v) for k, v in conv["regions"].items()},
        "modality_order": format_modality_order(order),
        "channels": format_modality_order(MODALITIES),
        "split": {"by": "case (patient)", "seed": int(seed), "val_fraction": float(val_fraction),
                  "test_fraction": float(test_fraction)},
        "numTraining": len(split["training"]),
        "numValidation": len(split["validation"]),
        "numTest": len(split["test"]),
    }
    for key in ("training", "validation", "test"):
        datalist[key] = [_with_paths(c, base) for c in split[key]]
    return datalist


def _input_files(datalist: dict[str, Any], base_dir: Path | None) -> set[Path]:
    files: set[Path] = set()
    for key in ("training", "validation", "test"):
        for it in datalist.get(key, []):
            for k in ("image", "label"):
                v = it.get(k)
                for p in (v if isinstance(v, list) else [v] if v else []):
                    files.add(((base_dir / p) if base_dir is not None else Path(p)).resolve())
    return files


def write_datalist(
    data_dir: str | os.PathLike,
    output_json: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    layout: str = "auto",
    label_convention: str | None = None,
    absolute_paths: bool = False,
    overwrite: bool = False,
    on_error: str = "raise",
) -> dict[str, Any]:
    """Build the datalist of a folder (:func:`build_datalist`) and write it as JSON (4-space indent).

    Paths are relative to the JSON file's folder unless ``absolute_paths``. The data folder's own files are never
    written: the output may not be one of the case files or the MSD ``dataset.json``.

    Args:
        data_dir: the data folder.
        output_json: where to write the datalist.
        val_fraction: see :func:`build_datalist`.
        test_fraction: see :func:`build_datalist`.
        seed: see :func:`build_datalist`.
        layout: see :func:`build_datalist`.
        label_convention: see :func:`build_datalist`.
        absolute_paths: write absolute paths.
        overwrite: replace an existing ``output_json``.
        on_error: see :func:`build_datalist`.

    Returns:
        the datalist written.

    Raises:
        FileExistsError: when ``output_json`` exists and ``overwrite`` is False.
        DataError: on data problems, or when ``output_json`` is an input file.
    """
    out = Path(output_json).expanduser().resolve()
    root = _data_dir(data_dir)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; give the path of the JSON file to write.")
    if out == root / "dataset.json":
        raise DataError(f"{out}: is the data set's own dataset.json; write the datalist elsewhere.")
    base = None if absolute_paths else out.parent
    datalist = build_datalist(root, val_fraction, test_fraction, seed, layout, base, label_convention, on_error)
    if out in _input_files(datalist, base):
        raise DataError(f"{out}: is one of the data set's files; write the datalist elsewhere.")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite to replace it).")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".datalist-", suffix=".json", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(datalist, f, indent=4)
            f.write("\n")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return datalist


def load_datalist(
    datalist_json: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Read one list of a datalist with ``monai.data.load_decathlon_datalist``, robustly.

    Two things differ from calling MONAI directly: an empty list gives ``[]`` (MONAI 1.6 raises IndexError on an
    empty ``"test"`` list), and the ``case_id``/``label_convention``/``modality_order`` fields are restored when
    MONAI has joined them with ``base_dir`` because a file of that name exists there
    (see :func:`~medsegdiff_monai.data.conventions.item_value`).

    Args:
        datalist_json: the datalist file.
        key: ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: the folder relative paths start from; None means the JSON file's folder.

    Returns:
        items with absolute (or base_dir-joined) paths.
    """
    from monai.data import load_decathlon_datalist

    path = Path(datalist_json)
    if not path.is_file():
        raise DataError(f"{path}: datalist file not found.")
    try:
        with open(path) as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}).") from e
    if key not in content:
        lists = [k for k, v in content.items() if isinstance(v, list)]
        raise DataError(f"{path}: has no {key!r} list (it has {lists}).")
    if not content[key]:
        return []
    items = load_decathlon_datalist(path, is_segmentation=True, data_list_key=key, base_dir=base_dir)
    for it in items:
        for k in _ITEM_META_KEYS:
            if k in it:
                it[k] = item_value(it[k])
    return items
