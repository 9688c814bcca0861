"""``torchreid-sdtps-visualize`` (``tools/visualize.py``): pictures of a trained model, one
subcommand per kind of picture.

    torchreid-sdtps-visualize tokens                       # the demo's latest checkpoint
    torchreid-sdtps-visualize tokens --weights log/x/model/model.pth.tar-20 --num 8 \\
        --out log/token_maps synthetic.cue localized

``tokens``: token heat maps (:mod:`torchreid_sdtps.viz.token_maps`) of samples of a test
target's query split. A new subcommand adds a parser in :func:`_add_arguments` and a function
in :data:`SUBCOMMANDS`.
"""
from __future__ import annotations

import argparse
import logging
import os.path as osp
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError, UnknownNameError
from .common import add_config_arguments, config_from_args, load_weights, resolve_weights
from .runner import OVERRIDES_HELP, Command, HelpFormatter, add_opts_argument

__all__ = ["tokens", "main", "COMMAND", "SUBCOMMANDS", "console"]

logger = logging.getLogger(__name__)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True)
    tokens_parser = sub.add_parser(
        "tokens", help="token heat maps: scores, kept/dropped patches (and cue patches)",
        formatter_class=HelpFormatter, epilog=OVERRIDES_HELP)
    add_config_arguments(tokens_parser)
    tokens_parser.add_argument("--weights", default="",
                               help="weights (default: the latest checkpoint in data.save_dir)")
    tokens_parser.add_argument("--untrained", action="store_true",
                               help="draw the randomly initialised model (no weights needed)")
    tokens_parser.add_argument("--target", default="", help="test target (default: the first)")
    tokens_parser.add_argument("--num", type=int, default=4,
                               help="samples, evenly spaced in the split")
    tokens_parser.add_argument("--indices", type=int, nargs="+",
                               help="sample indices (overrides --num)")
    tokens_parser.add_argument("--scale", type=int, default=3, help="upscaling of each panel")
    tokens_parser.add_argument("--out", default="",
                               help="output folder (default: <save_dir>/token_maps)")
    add_opts_argument(tokens_parser)


def tokens(args: argparse.Namespace) -> list[str]:
    """Write the token maps; returns the PNG paths."""
    from .. import build
    from ..viz.token_maps import save_token_maps

    if args.num < 1 or args.scale < 1:
        raise ConfigError(f"--num and --scale must be >= 1; got {args.num}, {args.scale}")
    if args.weights and args.untrained:
        raise ConfigError("--weights and --untrained exclude each other")
    cfg = config_from_args(args, ["model.load_weights", args.weights] if args.weights else [])
    weights = "" if args.untrained else resolve_weights(cfg, "draw")
    cfg.defrost()
    cfg.model.load_weights = ""  # built plain, loaded strictly below
    cfg.freeze()
    build.check_names(cfg)
    dm = build.build_datamanager(cfg)
    model = build.build_model(cfg, dm)
    if weights:
        load_weights(model, weights, str(cfg.model.name))
    target = args.target or next(iter(dm.test_loader))
    if target not in dm.test_loader:
        raise UnknownNameError(f"--target '{target}' is not a test target; targets: "
                               f"{list(dm.test_loader)}")
    dataset = dm.test_loader[target]["query"].dataset
    n = len(dataset)
    indices = args.indices or sorted({round(i * (n - 1) / max(1, args.num - 1))
                                      for i in range(min(args.num, n))})
    out = args.out or osp.join(cfg.data.save_dir, "token_maps")
    return save_token_maps(model, dataset, indices, out, scale=args.scale)


SUBCOMMANDS: dict[str, Callable[[argparse.Namespace], Any]] = {"tokens": tokens}


def _run(args: argparse.Namespace) -> Any:
    paths = SUBCOMMANDS[args.command](args)
    for path in paths or ():
        print(path)
    return paths


COMMAND = Command("visualize", "Pictures of a trained model (token heat maps)", _add_arguments,
                  _run, log_level=logging.INFO)


#: ``main(argv)``: Parse ``argv`` and run the subcommand; returns its result (errors propagate)
main = COMMAND.main
console = COMMAND.console
