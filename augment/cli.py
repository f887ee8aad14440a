"""``simgap policies list`` and ``simgap policies preview``: the augmentation policies on the
command line."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError
from tabulate import tabulate

from augment.image import ImageAugment
from augment.physics import FAMILIES, SAMPLERS, make_family
from augment.policy import DEFAULT_STRENGTH, available_policies, build_policy, loggable
from harness.data import load_source
from harness.errors import SimgapError
from harness.files import atomic_write
from harness.lab.cli import MASK_HELP
from harness.optics import FourF, OpticsConfig

LIST_STRENGTHS = (0.25, 0.5, 1.0)
#: The image files ``preview`` writes, by suffix (PIL's format names).
PREVIEW_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def _cmd_list(args) -> int:
    config = _optics(args.size)
    rows = [(name, p.kind, ", ".join(p.families) or "-")
            for name, p in ((n, build_policy(n, config=config)) for n in available_policies())]
    print(tabulate(rows, headers=("policy", "kind", "families")))
    print(f"\nphysics ranges by strength s (n = {config.n}, N = {config.N}, "
          f"1 wave W020 = {config.dz_per_wave * 1e3:.1f} mm):")
    rows = []
    for family, cls in SAMPLERS.items():
        for key, knob in cls.KNOBS.items():
            values = [loggable(make_family(family, s).ranges(config)[key]) for s in LIST_STRENGTHS]
            label = family if family in FAMILIES else f"{family} (opt-in)"
            rows.append((label, key, knob.unit, knob.doc, *values))
    heads = ("family", "range", "unit", "meaning", *(f"s={s}" for s in LIST_STRENGTHS))
    print(tabulate(rows, headers=heads, floatfmt=".4g"))
    print("\nimage-space analogues by strength s:")
    rows = []
    for family in FAMILIES:
        settings = [ImageAugment({family: s}, config).settings for s in LIST_STRENGTHS]
        for key in settings[0]:
            rows.append((family, key.split(".", 1)[1], *(loggable(x[key]) for x in settings)))
    print(tabulate(rows, headers=("family", "setting", *heads[4:]), floatfmt=".4g"))
    return 0


def _optics(size: int) -> OpticsConfig:
    """The optics of ``--size``; a size they refuse is a one-line error."""
    try:
        return OpticsConfig(n=size)
    except ValidationError as exc:
        raise SimgapError(f"--size: {exc.errors()[0]['msg'].lower()}, got {size}") from None


def _check_preview_args(args) -> Path:
    out = Path(args.out)
    if out.suffix.lower() not in PREVIEW_FORMATS:
        raise SimgapError(f"--out: {out}: use a .png, .jpg or .tif file name")
    if not out.parent.is_dir():
        raise SimgapError(f"--out: folder {out.parent} does not exist")
    for field in ("draws", "inputs", "channels"):
        if getattr(args, field) < 1:
            raise SimgapError(f"--{field}: must be >= 1")
    return out


def _cmd_preview(args) -> int:
    from torchvision.utils import make_grid, save_image  # heavy: only this command needs it

    out = _check_preview_args(args)
    config = _optics(args.size)
    policy = build_policy(args.name, config=config)
    if args.strength is not None:
        policy = build_policy(args.name, {f: args.strength for f in policy.families}, config)
    data = load_source(args.source, args.size, data_root=args.data_root, limit=args.inputs)
    images = data.images[: args.inputs]
    encoder = FourF(config, channels=args.channels, init=args.mask, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        ideal = encoder(images)
        draws = policy.frames(encoder, images.repeat(args.draws, 1, 1, 1), generator)
    b, k, n = images.shape[0], encoder.channels, config.n
    draws = draws.reshape(args.draws, b, k, n, n).permute(1, 2, 0, 3, 4)  # (b, k, draws, n, n)
    peak = ideal.amax((-1, -2), keepdim=True).clamp_min(1e-12)  # per-row display scale
    columns = [images.expand(b, k, n, n)[:, :, None], (ideal / peak)[:, :, None],
               (draws / peak[:, :, None]).clamp(0, 1)]
    tiles = torch.cat(columns, dim=2).reshape(-1, 1, n, n)
    tiles = torch.nn.functional.interpolate(tiles, scale_factor=max(1, 96 // n), mode="nearest")
    grid = make_grid(tiles, nrow=args.draws + 2, padding=2, pad_value=1.0)
    image_format = PREVIEW_FORMATS[out.suffix.lower()]
    atomic_write(out, lambda tmp: save_image(grid, tmp, format=image_format))
    print(f"{out}: rows = {b} inputs x {k} channels; columns = input, ideal, {args.draws} draws "
          f"of {policy.name} (strengths {policy.strengths}), scaled by the ideal frame's peak")
    return 0


def add_cli(subparsers) -> None:
    parser = subparsers.add_parser("policies", help="augmentation policies: list, preview")
    sub = parser.add_subparsers(dest="policies_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="policy names, families and strength -> range tables")
    p.add_argument("--size", type=int, default=32, help="image size n (sets N and the ranges)")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("preview", help="a few inputs through several draws of a policy")
    p.add_argument("name", help="policy name (see `simgap policies list`)")
    p.add_argument("--out", required=True, help="image file to write (.png)")
    p.add_argument("--strength", type=float, default=None,
                   help=f"strength of every family of the policy (default: {DEFAULT_STRENGTH})")
    p.add_argument("--source", default="digits", help="image source (digits, fashion-mnist, ...)")
    p.add_argument("--data-root", default=None, help="folder holding the source's files")
    p.add_argument("--mask", default="random", metavar="MASK", help=MASK_HELP)
    p.add_argument("--channels", type=int, default=1, help="number of masks k")
    p.add_argument("--draws", type=int, default=4, help="random draws per input")
    p.add_argument("--inputs", type=int, default=4, help="number of input images")
    p.add_argument("--size", type=int, default=32, help="image size n")
    p.add_argument("--seed", type=int, default=0, help="seed of the mask and of the draws")
    p.set_defaults(func=_cmd_preview)
