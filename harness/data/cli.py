"""``simgap data info`` and ``simgap data prepare``."""

from __future__ import annotations

import argparse
import json

from tabulate import tabulate

from harness.data.cache import cache_dir
from harness.data.sources import DEFAULT_SIZE, load_source, source_info


def _cmd_info(args: argparse.Namespace) -> int:
    rows = source_info(args.data_root, extra=args.source or ())
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    heads = ["source", "available", "images", "train", "test", "native size", "classes", "origin"]
    table = [
        [r["source"], "yes" if r["available"] else "no", r["images"],
         "-" if r["train"] is None else r["train"], "-" if r["test"] is None else r["test"],
         r["native_size"], r["classes"], r["origin"]]
        for r in rows
    ]  # fmt: skip
    print(tabulate(table, headers=heads, disable_numparse=True))
    print(f"\nimages are loaded at {DEFAULT_SIZE}x{DEFAULT_SIZE} by default; cache: {cache_dir()}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    data = load_source("fashion-mnist", size=args.size, data_root=args.data_root)
    print(f"fashion-mnist: {len(data)} images at {data.size}x{data.size} from {data.origin}")
    print(f"cache: {cache_dir()}")
    return 0


def add_cli(subparsers) -> None:
    """Register ``simgap data info`` and ``simgap data prepare``."""
    data = subparsers.add_parser("data", help="image sources: list them, prepare caches")
    data.set_defaults(func=lambda _args: data.print_help() or 0)
    sub = data.add_subparsers(dest="data_command", metavar="ACTION")
    info = sub.add_parser("info", help="list the image sources found, their sizes and origins")
    info.add_argument("--data-root", help="folder with Fashion-MNIST files (else $SIMGAP_DATA)")
    info.add_argument("--source", action="append", metavar="NAME",
                      help="also describe this source, e.g. folder:PATH (repeatable)")  # fmt: skip
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=_cmd_info)
    prep = sub.add_parser("prepare", help="unpack Fashion-MNIST and cache resized tensors")
    prep.add_argument("--data-root", help="folder with Fashion-MNIST files (else $SIMGAP_DATA)")
    prep.add_argument("--size", type=int, default=DEFAULT_SIZE, help="image size n (default: 32)")
    prep.set_defaults(func=_cmd_prepare)
