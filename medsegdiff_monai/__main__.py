# Copyright (c) medsegdiff-monai contributors
# Licensed under the Apache License, Version 2.0
"""The ``medsegdiff-monai`` command line (also ``python -m medsegdiff_monai``), built with ``fire``.

Run ``medsegdiff-monai --help`` for the commands and ``medsegdiff-monai COMMAND --help`` for their options.
User errors (bad data, bad arguments, existing outputs) end with a one-line message on stderr and exit status 1;
fire's own usage errors exit with status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["Commands", "main"]


class CommandError(Exception):
    """A command failed for a reason the user can fix; the message is printed as one line."""


class Commands:
    """MedSegDiff (diffusion segmentation) with MONAI: data tools for BraTS 2020/2021, MSD Task01 and 2D image folders."""

    def make_demo_data(
        self,
        output_dir: str,
        num_cases: int = 8,
        seed: int = 0,
        shape: Sequence[int] | None = None,
        overwrite: bool = False,
        layout: str = "brats2021",
    ) -> None:
        """Write a synthetic BraTS-like demo data set (BraTS 2021 file layout, or 2D images) into OUTPUT_DIR.

        Args:
            output_dir: the folder to write; existing cases are kept unless --overwrite.
            num_cases: number of cases.
            seed: random seed; the same seed writes the same data.
            shape: volume shape x,y,z, e.g. --shape 96,96,64 (default); for image2d the largest image height,width
                (default 96,128).
            overwrite: replace existing case folders.
            layout: brats2021 (default), brats2020, msd, or image2d (2D images/ and masks/ folders, ISIC-like).
        """
        from .data import make_demo_data

        two_d = layout == "image2d"
        shape = _shape(shape, 2 if two_d else 3) if shape is not None else (96, 128) if two_d else (96, 96, 64)
        written = make_demo_data(output_dir, num_cases=num_cases, seed=seed, shape=shape,
                                 overwrite=overwrite, layout=layout)
        print(f"wrote {len(written)} synthetic case(s) ({layout} layout) to {os.path.abspath(output_dir)}")

    def make_datalist(
        self,
        data_dir: str,
        output_json: str,
        val_fraction: float = 0.2,
        test_fraction: float = 0.0,
        seed: int = 0,
        layout: str = "auto",
        absolute_paths: bool = False,
        overwrite: bool = False,
        skip_bad_cases: bool = False,
    ) -> None:
        """Write a MONAI datalist JSON (training/validation/test, split by case) for a BraTS, MSD or 2D image folder.

        Args:
            data_dir: the data folder (BraTS case folders, MSD Task01_BrainTumour with dataset.json, or 2D images and
                masks folders, whose train/test folders are kept), or a CSV file of image,mask pairs.
            output_json: the JSON file to write; paths in it are relative to its folder.
            val_fraction: fraction of labeled cases for validation.
            test_fraction: fraction of labeled cases held out for testing (unlabeled cases always go to test).
            seed: split seed.
            layout: auto, brats2021, brats2020, brats, msd or image2d.
            absolute_paths: write absolute paths.
            overwrite: replace an existing OUTPUT_JSON.
            skip_bad_cases: leave out cases with problems (with a warning) instead of failing.
        """
        from .data import write_datalist

        dl = write_datalist(data_dir, output_json, val_fraction=val_fraction, test_fraction=test_fraction,
                            seed=seed, layout=layout, absolute_paths=absolute_paths, overwrite=overwrite,
                            on_error="skip" if skip_bad_cases else "raise")
        print(f"wrote {output_json}: layout {dl['layout']}, labels {dl['label_convention']}, "
              f"{dl['numTraining']} training, {dl['numValidation']} validation, {dl['numTest']} test case(s)")

    def check_data(self, data_dir: str, layout: str = "auto", quick: bool = False) -> None:
        """Validate a BraTS or MSD data folder (or 2D images and masks) and report every case's problems (read-only).

        Args:
            data_dir: the data folder (or a CSV file of 2D image,mask pairs).
            layout: auto, brats2021, brats2020, brats, msd or image2d.
            quick: check names and NIfTI (or image) headers only, without reading the voxel data.
        """
        from .data import check_dataset

        def progress(case_id: str, problems: list[str]) -> None:
            if problems:
                for p in problems:
                    print(f"{case_id}: {p}")
            else:
                print(f"{case_id}: ok")

        found, report = check_dataset(data_dir, layout=layout, read_data=not quick, progress=progress)
        bad = sorted(c for c, p in report.items() if p)
        print(f"{len(report)} case(s) checked ({found} layout), {len(bad)} with problems")
        if bad:
            raise CommandError(f"{len(bad)} of {len(report)} case(s) in {data_dir} have problems: "
                               f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")

    def predict(
        self,
        input_dir: str,
        output_dir: str,
        bundle_dir: str | None = None,
        ckpt_path: str | None = None,
        configs: Sequence[str] | str = (),
        layout: str = "auto",
        device: str | None = None,
        overwrite: bool = False,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        num_ensemble: int | None = None,
        amp_dtype: str | None = None,
    ) -> None:
        """Segment every case of a BraTS, MSD or 2D image folder (labels not needed) with the bundle's inference.json.

        Writes ``<case>_seg.nii.gz`` per case into OUTPUT_DIR, in the geometry (shape, affine) of the case's
        images (for 2D images with --configs ...image2d.json: ``<image>_seg.png`` in each image's size). Existing
        predictions are never replaced unless --overwrite.

        Args:
            input_dir: the folder of cases (BraTS 2020/2021 case folders, MSD Task01 imagesTr/imagesTs, or 2D images
                with --configs bundle/configs/image2d.json).
            output_dir: where to write the predictions.
            bundle_dir: the bundle folder (default: the bundle/ folder next to this package in a source checkout).
            ckpt_path: the weights (default: BUNDLE_DIR/models/model.pt).
            configs: config files merged after inference.json, e.g. bundle/configs/demo.json for a model trained
                with the demo overlay (its preset and image size), then bundle/configs/image2d.json for 2D images.
            layout: auto, brats2021, brats2020, brats, msd or image2d.
            device: e.g. cpu or cuda:0 (default: cuda:0 if available, else cpu).
            overwrite: replace existing predictions.
            sampler: ddpm, ddim or dpmpp_2m (default: the bundle's).
            num_inference_steps: denoising steps (default: the bundle's).
            num_ensemble: ensemble members per slice (default: the bundle's).
            amp_dtype: float32, bfloat16 or float16 (the network under autocast), or auto: bfloat16 when a timed
                probe call shows it is faster on this machine (default: the bundle's, auto).
        """
        import torch
        from monai.bundle import ConfigWorkflow

        from .data import find_cases, is_image_name
        from .utils import check_checkpoint

        overrides = {"sampler": sampler, "num_inference_steps": num_inference_steps, "num_ensemble": num_ensemble,
                     "amp_dtype": amp_dtype}
        explicit = {"amp_dtype": None} if amp_dtype is not None and str(amp_dtype).lower() == "float32" else {}
        bundle = _bundle_dir(bundle_dir)
        ckpt = os.path.abspath(ckpt_path) if ckpt_path else os.path.join(bundle, "models", "model.pt")
        if not os.path.isfile(ckpt):
            raise CommandError(f"no model weights at {ckpt}: train the bundle first or pass --ckpt_path")
        extra = [configs] if isinstance(configs, str) else list(configs)
        for path in extra:
            if not os.path.isfile(path):
                raise CommandError(f"--configs: no such config file {path}")
        cases = find_cases(input_dir, layout=layout)  # DataError names the folder / case on bad input
        out = os.path.abspath(output_dir)
        ext = ".png" if cases and is_image_name(str(cases[0]["image"])) else ".nii.gz"  # 2D images: PNG masks
        existing = [c["case_id"] for c in cases if os.path.exists(os.path.join(out, f"{c['case_id']}_seg{ext}"))]
        if existing and not overwrite:
            raise CommandError(
                f"{len(existing)} prediction(s) already in {out} (e.g. {existing[0]}_seg{ext}); "
                "pass --overwrite to replace them or choose another OUTPUT_DIR"
            )
        if os.path.abspath(input_dir) == out:
            raise CommandError("OUTPUT_DIR must not be INPUT_DIR: input files are never written over")
        check_checkpoint(ckpt)  # a truncated or corrupt file: one line naming it, before the network is built
        workflow = ConfigWorkflow(
            config_file=[os.path.join(bundle, "configs", "inference.json"), *extra],
            meta_file=os.path.join(bundle, "configs", "metadata.json"),
            workflow_type="infer",
            bundle_root=bundle,
            datalist=cases,
            output_dir=out,
            ckpt_path=ckpt,
            **({"device": torch.device(device)} if device else {}),
            **{k: v for k, v in overrides.items() if v is not None},
            **explicit,  # float32: no autocast
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        print(f"wrote {len(cases)} prediction(s) to {out}")


def _bundle_dir(bundle_dir: str | None) -> str:
    """The bundle folder: the argument, or bundle/ next to the package in a source checkout."""
    if bundle_dir is None:
        bundle_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundle")
        if not os.path.isdir(bundle_dir):
            raise CommandError("no bundle/ next to the package (installed from a wheel?): pass --bundle_dir")
    bundle_dir = os.path.abspath(bundle_dir)
    if not os.path.isfile(os.path.join(bundle_dir, "configs", "inference.json")):
        raise CommandError(f"--bundle_dir {bundle_dir} is not a bundle: configs/inference.json is missing")
    return bundle_dir


def _shape(shape: Sequence[int] | int | str, n: int = 3) -> tuple[int, ...]:
    example, count = ("96,96,64", "three") if n == 3 else ("96,128", "two")
    if isinstance(shape, str):
        shape = [s for s in shape.replace("x", ",").strip("()[] ").split(",") if s.strip()]
    if isinstance(shape, int):
        shape = (shape,) * n
    try:
        out = tuple(int(s) for s in shape)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise CommandError(f"--shape must be {count} integers such as {example}, got {shape!r}") from e
    if len(out) != n:
        raise CommandError(f"--shape must be {count} integers such as {example}, got {shape!r}")
    return out


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: the arguments (without the program name); None reads ``sys.argv``.

    Returns:
        the exit status: 0 on success, 1 on a user error (message on stderr), 2 on a usage error.
    """
    import contextlib
    import io

    import fire

    from .data import DataError

    args = list(sys.argv[1:] if argv is None else argv)
    wants_help = any(a in ("--help", "-h") for a in args)
    captured = io.StringIO()
    try:
        # fire prints help on stderr; help that was asked for belongs on stdout
        with contextlib.redirect_stderr(captured) if wants_help else contextlib.nullcontext():
            fire.Fire(Commands(), command=args, name="medsegdiff-monai")
    except fire.core.FireExit as e:  # --help (0) or a usage error (2); fire has printed its message
        if wants_help:
            text = "".join(line for line in captured.getvalue().splitlines(keepends=True)
                           if not line.startswith("INFO: Showing help"))
            (sys.stdout if e.code == 0 else sys.stderr).write(text.lstrip("\n"))
        return int(e.code or 0)
    except (CommandError, DataError, FileExistsError, FileNotFoundError, NotADirectoryError,
            PermissionError, ValueError) as e:
        print(f"medsegdiff-monai: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("medsegdiff-monai: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
