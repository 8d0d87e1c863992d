"""Using a trained run: evaluate, interpret, report, export, predict and serve."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deepstart.cli.args import _add_data_args, _data_config
from deepstart.errors import DeepstartError

SPLITS = ("test", "valid", "train")
SPLIT_HELP = "the split to score (test falls back to valid when the data has no test split)"
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps"


def add_parsers(sub: Any) -> None:
    """Register evaluate, interpret, report, export, predict and serve."""
    e = sub.add_parser("evaluate", help="score a run's model: accuracy, loss, per class")
    e.add_argument("run_dir", help="a run directory written by deepstart train")
    _add_data_args(e, required=False)
    e.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser(
        "interpret", help="what a run's model gets wrong: confusion, per-class F1, top losses"
    )
    i.add_argument("run_dir", help="a run directory written by deepstart train")
    _add_data_args(i, required=False)
    i.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    i.add_argument("--device", default="auto", help=DEVICE_HELP)
    i.add_argument("--top", type=int, default=16, help="pictures per grid")
    i.add_argument("--out", help="directory for the PNGs (default RUN_DIR/plots)")
    i.add_argument("--json", action="store_true", help="print the tables as JSON")
    i.set_defaults(func=cmd_interpret)

    r = sub.add_parser("report", help="(re)write RUN_DIR/report.html: the whole run on one page")
    r.add_argument("run_dir", help="a run directory written by deepstart train")
    r.add_argument("--split", default="test", choices=SPLITS, help=SPLIT_HELP)
    r.add_argument("--device", default="auto", help=DEVICE_HELP)
    r.add_argument(
        "--layer", help="conv layer for feature maps and filters (default: first / last conv)"
    )
    r.set_defaults(func=cmd_report)

    x = sub.add_parser(
        "export",
        help="ship a run's model: a bundle (.zip or folder) and/or an ONNX file",
        description="Write RUN_DIR's model as a bundle (model.safetensors, model.json and the "
        "training config.json) in a .zip or a folder, and/or as ONNX (needs deepstart[onnx]): "
        "input float32 (N, C, H, W) in 0-255 pixel units, normalisation inside the graph, "
        "checked against PyTorch on random inputs.",
    )
    x.add_argument("run_dir", help="a run directory (or a bundle) to export")
    x.add_argument("--out", help="bundle to write: NAME.zip, or else a folder")
    x.add_argument("--onnx", metavar="FILE", help="also (or only) write an ONNX file")
    x.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "predict",
        help="classify image files with a bundle, run dir or .onnx file",
        description="Predict image files (PNG, JPEG, BMP, GIF, WebP, TIFF), folders (searched "
        "recursively) and globs with the bundle's own preprocessing. Unreadable files are "
        "reported and the rest predicted; the exit status is 1 if any file failed.",
    )
    p.add_argument(
        "bundle",
        help="a .zip or folder bundle, a run directory, a .onnx file, or a model with "
        "published weights (efficientnet_lite0, resnet50:imagenet-v1: its ImageNet classes)",
    )
    p.add_argument("images", nargs="+", help="image files, folders or globs ('*.jpg')")
    p.add_argument("--top-k", type=int, default=3, help="classes shown per image (3)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    fmt.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass (64)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.set_defaults(func=cmd_predict)
    sv = sub.add_parser(
        "serve",
        help="a local web app to try a model: draw or drop an image, see what it thinks",
        description="Serve a page with a drawing canvas (grey, small models), an image upload, "
        "the top-k predictions with a Grad-CAM or saliency heat map, and the model card; plus "
        "a JSON API (POST /api/predict, GET /api/model, schema at /openapi.json). Needs "
        "pip install 'deepstart[serve]'. See docs/serve.md.",
    )
    sv.add_argument(
        "bundle",
        help="a .zip or folder bundle, a run directory, a .onnx file, or a model with "
        "published weights (efficientnet_lite0, resnet50:imagenet-v1: its ImageNet classes)",
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: only here)")
    sv.add_argument("--port", type=int, default=8000, help="TCP port (8000)")
    sv.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    sv.add_argument(
        "--threads",
        type=int,
        help="PyTorch threads per prediction (1); cores/threads predictions run at once",
    )
    sv.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest image file accepted (10)"
    )
    sv.set_defaults(func=cmd_serve)


def cmd_evaluate(a: argparse.Namespace) -> int:
    from deepstart.run.runner import evaluate_run, format_eval

    data = _data_config(a) if a.data else None
    # Mismatch warnings ("test images are centred at ...") go to stderr under --json, so
    # stdout stays one JSON document (they are in its "input_warnings" too).
    log = (lambda m: print(m, file=sys.stderr)) if a.json else print
    res = evaluate_run(a.run_dir, data=data, split=a.split, device=a.device, log=log)
    if a.json:
        print(json.dumps(res, indent=2))
        return 0
    print(format_eval(res))
    width = max(len(p["class"]) for p in res["per_class"])
    for p in res["per_class"]:
        print(f"  {p['class']:<{width}}  {p['accuracy']:.4f}  ({p['n']} images)")
    return 0


def cmd_interpret(a: argparse.Namespace) -> int:
    from deepstart.interpret.analysis import Interpretation
    from deepstart.interpret.plots import write_interpretation_plots
    from deepstart.run.runner import load_run_learner

    data = _data_config(a) if a.data else None
    learn = load_run_learner(a.run_dir, data=data, device=a.device)
    interp = Interpretation.from_learner(learn, a.split)
    out = Path(a.out) if a.out else Path(a.run_dir) / "plots"
    written = write_interpretation_plots(interp, out, top=a.top)
    if a.json:
        print(json.dumps(interp.summary(top=a.top), indent=2, default=str))
        return 0
    print(interp.text_summary(top=min(a.top, 10)))
    print("plots: " + ", ".join(str(p) for p in written))
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from deepstart.report import build_report

    path = build_report(a.run_dir, split=a.split, device=a.device, layer=a.layer)
    print(f"report: {path}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    from deepstart.ship.bundle import export_bundle, load_bundle

    if not a.out and not a.onnx:
        raise DeepstartError("say what to write: --out model.zip (or a folder), --onnx FILE")
    if a.out:
        out = export_bundle(a.run_dir, a.out)
        print(f"bundle: {out}")
    if a.onnx:
        res = load_bundle(a.run_dir).export_onnx(a.onnx)
        print(f"onnx: {res.path} (exported in {res.seconds:.1f} s)")
        print(
            f"parity with PyTorch: max abs diff {res.max_abs_diff:.2e} over logits up to "
            f"{res.max_abs_logit:.2f} (random inputs, batches of 1 and 7)"
        )
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from rich.console import Console

    from deepstart.ship.bundle import load_bundle
    from deepstart.ship.predict import predictions_csv, predictions_json, predictions_table

    bundle = load_bundle(a.bundle, device=a.device)
    preds = bundle.predict(
        a.images,
        top_k=a.top_k,
        batch_size=a.batch_size,
        log=lambda msg: print(f"warning: {msg}", file=sys.stderr),
    )
    k = max(1, min(a.top_k, len(bundle.classes)))
    if a.json:
        print(predictions_json(preds))
    elif a.csv:
        print(predictions_csv(preds, k), end="")
    else:
        Console().print(predictions_table(preds, k))
    failed = [p for p in preds if p.error]
    for p in failed:
        print(f"deepstart: {p.source}: {p.error}", file=sys.stderr)
    if failed:
        print(f"deepstart: {len(failed)} of {len(preds)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def cmd_serve(a: argparse.Namespace) -> int:
    from deepstart.serve import run

    if a.max_upload_mb <= 0:
        raise DeepstartError(f"--max-upload-mb must be positive, got {a.max_upload_mb}")
    run(
        a.bundle,
        host=a.host,
        port=a.port,
        device=a.device,
        threads=a.threads,
        max_upload_bytes=int(a.max_upload_mb * 2**20),
    )
    return 0
