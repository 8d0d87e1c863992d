"""``deepstart data list | show | make``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from deepstart.cli.args import VALID_PCT, _add_data_args, _pairs
from deepstart.config import DataConfig, default_of

# deepstart.data.shapes.SHAPES, written out: importing it here would load scikit-image for
# every command (tests/test_cli_help.py checks that the two agree).
SHAPE_NAMES = "circle, square, triangle, star, cross, ellipse, pentagon, hexagon, ring"


def add_parsers(sub: Any) -> None:
    """Register ``data`` and its actions on the top-level subparsers."""
    d = sub.add_parser("data", help="list, inspect and make datasets")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    dl = dsub.add_parser("list", help="the datasets deepstart knows and where they are found")
    dl.add_argument("--data-dir", help="also look here")
    dl.set_defaults(func=cmd_data_list)
    ds = dsub.add_parser("show", help="split sizes, classes, mean/std and a PNG sample grid")
    ds.add_argument("name", help="dataset name or folder path")
    ds.add_argument("--out", help="PNG path for the sample grid (default <name>-samples.png)")
    ds.add_argument("--per-class", type=int, default=8, help="sample pictures per class")
    ds.add_argument("--seed", type=int, default=0, help="seed of the split and of the samples")
    _add_data_args(ds, required=False)
    ds.set_defaults(func=cmd_data_show)
    dm = dsub.add_parser("make", help="write a generated dataset as class folders of PNGs")
    dm.add_argument("kind", choices=("shapes",), help="what to generate: shapes")
    dm.add_argument("--out", required=True, help="directory to write train/ and test/ into")
    dm.add_argument("--n-train", type=int, default=3000, help="training images", metavar="N")
    dm.add_argument("--n-test", type=int, default=600, help="test images", metavar="N")
    dm.add_argument("--size", type=int, default=32, help="image side in pixels", metavar="N")
    dm.add_argument(
        "--classes",
        default="circle,square,triangle",
        help=f"comma-separated shapes, of {SHAPE_NAMES}",
    )
    dm.add_argument(
        "--channels", type=int, choices=(1, 3), default=1, help="1 (grey) or 3 (colour)"
    )
    dm.add_argument("--seed", type=int, default=0, help="the images are a function of it")
    dm.set_defaults(func=cmd_data_make)


def cmd_data_list(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from deepstart.data.catalog import list_datasets, locate

    table = Table(title="datasets")
    for col in ("name", "description", "found"):
        table.add_column(col)
    for info in list_datasets():
        table.add_row(info.name, info.description, locate(info.name, a.data_dir))
    Console().print(table)
    print("looked in: --data-dir, $DEEPSTART_DATA, then the cache; see docs/datasets.md")
    return 0


def cmd_data_show(a: argparse.Namespace) -> int:
    from deepstart.data.catalog import load_dataset
    from deepstart.interpret.plots import sample_grid
    from deepstart.run.build import describe

    data = load_dataset(
        a.name if a.data is None else a.data,
        data_dir=a.data_dir,
        valid_pct=VALID_PCT if a.valid_pct is None else a.valid_pct,
        seed=a.seed,
        size=a.size,
        channels=a.channels,
        resize=a.resize or default_of(DataConfig, "resize"),  # None: not typed
        normalize=a.normalize or "standardize",
        **_pairs(a.data_opt, "--data-opt"),
    )
    print(describe(data))
    for note in data.notes:
        print(f"  note: {note}")
    summary = data.summary()
    width = max(len("class"), *(len(c) for c in data.classes))
    print(f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in summary["class_counts"]))
    for i, name in enumerate(data.classes):
        counts = "  ".join(f"{v[i]:>6}" for v in summary["class_counts"].values())
        print(f"{name:<{width}}  {counts}")
    out = Path(a.out or f"{Path(data.name).name}-samples.png")
    sample_grid(data.train, out, per_class=a.per_class, seed=a.seed, title=data.name)
    print(f"sample grid: {out}")
    return 0


def cmd_data_make(a: argparse.Namespace) -> int:
    from deepstart.data.shapes import write_shapes_folder

    classes = tuple(c.strip() for c in a.classes.split(",") if c.strip())
    out = write_shapes_folder(
        a.out,
        n_train=a.n_train,
        n_test=a.n_test,
        size=a.size,
        classes=classes,
        seed=a.seed,
        channels=a.channels,
    )
    print(f"wrote {a.n_train} train + {a.n_test} test PNGs of {', '.join(classes)} to {out}")
    print(f"train on it: deepstart train --data folder --data-dir {out}")
    return 0
