"""``tools/visualize.py``: pictures of a trained model, one subcommand per kind of picture.

    python tools/visualize.py tokens                       # the demo's latest checkpoint
    python tools/visualize.py tokens --weights log/x/model/model.pth.tar-20 --num 8 \
        --out log/token_maps synthetic.cue localized

``tokens``: token heat maps (:mod:`torchreid_sdtps.utils.token_maps`) of samples of a test
target's query split. Further words are ``KEY VALUE`` config overrides, as for
``tools/train.py``. A new subcommand adds a parser in :func:`build_parser` and a function in
:data:`COMMANDS`.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["build_parser", "main", "COMMANDS"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The ``tools/visualize.py`` parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="tools/visualize.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tokens = sub.add_parser(
        "tokens", help="token heat maps: scores, kept/dropped patches (and cue patches)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Further arguments are KEY VALUE config overrides, e.g. synthetic.cue localized")
    tokens.add_argument("--config-file", default="", help="YAML config (default: the demo)")
    tokens.add_argument("--root", default="", help="data root (data.root)")
    tokens.add_argument("--weights", default="",
                        help="weights (default: the latest checkpoint in data.save_dir)")
    tokens.add_argument("--untrained", action="store_true",
                        help="draw the randomly initialised model (no weights needed)")
    tokens.add_argument("--target", default="", help="test target (default: the first)")
    tokens.add_argument("--num", type=int, default=4, help="samples, evenly spaced in the split")
    tokens.add_argument("--indices", type=int, nargs="+", help="sample indices (overrides --num)")
    tokens.add_argument("--scale", type=int, default=3, help="upscaling of each panel")
    tokens.add_argument("--out", default="", help="output folder (default: <save_dir>/token_maps)")
    return parser


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    if len(rest) % 2 or any(k.startswith("-") for k in rest[0::2]):
        parser.error(f"unrecognized arguments {rest} (overrides are KEY VALUE pairs)")
    args.opts = rest
    if getattr(args, "num", 1) < 1 or getattr(args, "scale", 1) < 1:
        parser.error("--num and --scale must be >= 1")
    return args


def tokens(args: argparse.Namespace) -> list[str]:
    """Write the token maps; returns the PNG paths."""
    from .. import build, cli, config
    from .token_maps import save_token_maps

    cfg = config.load_config(args.config_file, list(args.opts), root=args.root,
                             demo=not args.config_file)
    cfg.defrost()
    if args.weights and args.untrained:
        raise ValueError("--weights and --untrained exclude each other")
    if args.weights:
        cfg.model.load_weights = args.weights
    elif not args.untrained:
        found = cli.latest_checkpoint(cfg.data.save_dir)
        if found is None:
            raise FileNotFoundError(f"no weights: '{cfg.data.save_dir}/model' holds no checkpoint; "
                                    "pass --weights PATH or --untrained")
        cfg.model.load_weights = found
    cfg.freeze()
    build.check_names(cfg)
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    target = args.target or next(iter(dm.test_loader))
    if target not in dm.test_loader:
        raise KeyError(f"--target '{target}' is not a test target; targets: {list(dm.test_loader)}")
    dataset = dm.test_loader[target]["query"].dataset
    n = len(dataset)
    indices = args.indices or sorted({round(i * (n - 1) / max(1, args.num - 1))
                                      for i in range(min(args.num, n))})
    out = args.out or osp.join(cfg.data.save_dir, "token_maps")
    return save_token_maps(model, dataset, indices, out, scale=args.scale)


COMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {"tokens": tokens}


def main(argv: Sequence[str] | None = None) -> Any:
    """Parse ``argv`` and run the subcommand; returns its result."""
    import torchreid_sdtps

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parse(argv)
    torchreid_sdtps.load_plugins()
    return COMMANDS[args.command](args)
