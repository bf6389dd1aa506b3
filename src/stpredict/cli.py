"""The ``stpredict`` command: ``stpredict predict MODEL_DIR IMAGE [--spots F] [--mpp X] -o OUT``.

``predict`` runs :func:`stpredict.wsi.predict.predict_image`: the fold models of a trained
experiment folder (``results/experiments/{experiment}``, or one ``folds/{fold}`` folder) on one
H&E image, at its given spots or on every tissue tile, into an ``.h5ad``. An expected failure
(bad input, a model that cannot match the image) prints one line ``stpredict error: ...`` and
exits with status 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser (subcommand ``predict``)."""
    parser = argparse.ArgumentParser(
        prog="stpredict",
        description="Predict spatial gene expression from H&E images with trained models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "predict",
        help="predict one image with a trained model folder",
        description="Predict gene expression on one H&E image (its spots, or every tissue "
        "tile) with the fold models of a trained experiment, into an AnnData .h5ad.",
    )
    p.add_argument("model_dir", help="results/experiments/{experiment} or one folds/{fold}")
    p.add_argument("image", help="the H&E image (pyramidal TIFF, TIFF, JPEG, PNG)")
    p.add_argument("-o", "--out", required=True, help="the .h5ad to write")
    p.add_argument("--spots", help="TSV/CSV with columns x, y (full-res px) and optional id")
    p.add_argument("--mpp", type=float, help="µm per pixel of the image (default: its tags)")
    p.add_argument("--slide-id", help="name of the image in the output (default: file name)")
    p.add_argument("--store", help="keep the patch store here (path without suffix)")
    p.add_argument("--tile-um", type=float, help="tile pitch in µm (default: field of view)")
    p.add_argument("--tta", type=int, choices=(1, 4, 8), help="default: the experiment's")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return the exit status."""
    from stpredict.errors import StpredictError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        from stpredict.wsi.predict import predict_image

        adata = predict_image(
            args.model_dir,
            args.image,
            spots=args.spots,
            mpp=args.mpp,
            out=args.out,
            slide_id=args.slide_id,
            store=args.store,
            tile_um=args.tile_um,
            batch_size=args.batch_size,
            tta=args.tta,
            device=args.device,
            progress=not args.quiet,
        )
    except StpredictError as exc:
        print(f"stpredict error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {adata.n_obs} x {adata.n_vars} predicted")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
