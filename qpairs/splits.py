"""The training data of `qpairs train`: load the pair files, split them, then shape the training split.

Shaping happens in this order: --extra-train pairs (minus held-out and training pairs), inferred
non-duplicates, --balance subsample, --max-train-pairs, teacher targets (knowledge distillation; --teacher scores
the split's pairs that are still kept).
Validation and test splits are written into the run directory (``splits/``), and the training part of the split
as it came from the pair files (``splits/train.csv.gz``, before any shaping: the questions the run was trained for,
which ``qpairs ensemble --familiar`` reads).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import data as qdata
from . import distributed
from .checkpoint import write_json
from .config import TrainConfig, split_seed
from .distill import teacher_label_files
from .tableio import write_frame

log = logging.getLogger("qpairs")


def load_splits(cfg: TrainConfig, run_dir: Path, write: bool = True) -> dict:
    """Load the data, split it and (`write`) save the splits into the run directory."""
    if cfg.left_col or cfg.right_col:  # title/body posts → pair sets (qpairs.title_body)
        from .title_body import load_title_body_splits

        return load_title_body_splits(cfg, run_dir, write=write and distributed.is_main())
    files = cfg.data or [str(p) for p in qdata.qqp_files()]
    report = qdata.LoadReport()
    frame = qdata.load_pairs(files, on_bad_row=cfg.on_bad_row, report=report)
    frame = frame[frame["is_duplicate"] >= 0]
    splits, info = qdata.make_splits(frame, seed=split_seed(cfg), by=cfg.split_by, eval_rate=cfg.eval_rate)
    train = split_train = splits["train"]
    held_out = [splits["validation"], splits["test"]]
    if cfg.extra_train:
        extra, info["extra_train"] = extra_training_pairs(cfg, train, held_out)
        train = pd.concat([train, extra], ignore_index=True)
        info["extra_train_pairs"] = len(extra)
    if cfg.infer_negatives:
        train = add_inferred_negatives(train, cfg.infer_negatives, held_out, cfg.seed)
        info["inferred_negatives"] = int((train["source"] == "inferred_negative").sum())
    if cfg.balance == "subsample":
        before = len(train)
        train = qdata.subsample_to_rate(train, cfg.train_pos_rate, cfg.seed)
        log.info("training on %d of %d training pairs (--balance subsample to duplicate rate %g)", len(train),
                 before, cfg.train_pos_rate)
    if cfg.max_train_pairs and len(train) > cfg.max_train_pairs:
        log.info("training on a seeded sample of %d of %d training pairs (--max-train-pairs)", cfg.max_train_pairs,
                 len(train))
        train = train.sample(n=cfg.max_train_pairs, random_state=cfg.seed).reset_index(drop=True)
    # --teacher-labels, or --teacher scoring the kept pairs of the split (not the added ones)
    teacher_files = teacher_label_files(cfg, run_dir, among_pairs(train, [split_train]) if cfg.teacher else None,
                                        held_out)
    if teacher_files:
        train = with_teacher_targets(train, teacher_files, cfg.distill_weight)
        info["teacher_targets"] = int(train["target"].ne(train["is_duplicate"]).sum())
    splits["train"] = train
    info.update(load=str(report), files=[str(f) for f in files], balance=cfg.balance,
                train_size=len(train), train_duplicate_rate=float(train["is_duplicate"].mean()))
    if write and distributed.is_main():  # every rank loads the same splits; one writes them
        (run_dir / "splits").mkdir(parents=True, exist_ok=True)
        for name in ("validation", "test"):
            write_frame(splits[name], run_dir / "splits" / f"{name}.csv.gz")  # whole files only, even if killed
        write_frame(split_train, run_dir / "splits" / "train.csv.gz")
        write_json(run_dir / "splits" / "info.json", info)
    log.info("data: %s", report)
    log.info("splits: %s", info["sizes"])
    report_set_aside(info, own_files=bool(cfg.data))
    return splits


def extra_training_pairs(cfg, train, held_out) -> tuple[pd.DataFrame, dict]:
    """The labelled pairs of `cfg.extra_train` that may join the training split, and what was left out: a
    validation/test pair, a pair holding a validation/test question (a question split keeps every held-out
    question out of training), a pair the training split has already (its label is kept)."""
    extra = qdata.load_pairs(cfg.extra_train, on_bad_row=cfg.on_bad_row)
    extra = extra[extra["is_duplicate"] >= 0]
    counts = {"read": len(extra)}
    keep = ~_in_pairs(extra, held_out)
    counts["held_out_pairs"] = int((~keep).sum())
    if cfg.split_by == "question":
        questions = {qdata.split_key(q) for f in held_out for q in pd.concat([f["question1"], f["question2"]])}
        shares = extra["question1"].map(qdata.split_key).isin(questions) | extra["question2"].map(
            qdata.split_key).isin(questions)
        counts["held_out_questions"] = int((keep & shares.to_numpy()).sum())
        keep &= ~shares.to_numpy()
    extra = extra[keep]
    known = _in_pairs(extra, [train])
    counts["already_training_pairs"] = int(known.sum())
    extra = extra[~known].reset_index(drop=True)
    counts["added"] = len(extra)
    left_out = ", ".join(f"{n} {what}" for n, what in (
        (counts["held_out_pairs"], "validation/test pairs"),
        (counts.get("held_out_questions", 0), "with a validation/test question"),
        (counts["already_training_pairs"], "already training pairs (their training label kept)")) if n)
    log.info("training split: +%d of the %d labelled pairs of %s%s", len(extra), counts["read"],
             ", ".join(cfg.extra_train), f" (left out: {left_out})" if left_out else "")
    return extra, counts


def report_set_aside(info: dict, own_files: bool) -> None:
    """Say how many validation/test pairs the split set aside and why; warn when the caller's own files hold another
    duplicate rate than the one their validation pairs were brought to (the calibration assumes that rate)."""
    rate = info["eval_rate"]
    for name, aside in info.get("set_aside", {}).items():
        if aside["from_one_label_files"]:
            log.info("%s: %d pairs from files with one label set aside (they would skew the duplicate rate)", name,
                     aside["from_one_label_files"])
        if aside["to_reach_eval_rate"]:
            log.info("%s: %d pairs set aside to bring the duplicate rate from %.3f to %g (--eval-rate)", name,
                     aside["to_reach_eval_rate"], aside["own_duplicate_rate"], rate)
    own = info.get("set_aside", {}).get("validation", {}).get("own_duplicate_rate")
    one_class = own in (0.0, 1.0)  # refused next, with its own reason
    if own_files and rate is not None and own is not None and not one_class and abs(own - rate) > 0.05 \
            and distributed.is_main():
        log.warning("your validation pairs have a duplicate rate of %.3f; they were subsampled to %g (--eval-rate), "
                    "and the calibrated probabilities assume that rate: pass --eval-rate %.2f to keep your data's "
                    "rate", own, rate, min(max(own, 0.01), 0.99))


def _in_pairs(frame, others) -> np.ndarray:
    """Whether each row's pair (unordered, normalised key) appears in any frame of `others`."""
    taken = {qdata.pair_key(a, b) for f in others for a, b in zip(f["question1"], f["question2"])}
    return np.array([qdata.pair_key(a, b) in taken for a, b in zip(frame["question1"], frame["question2"])], dtype=bool)


def without_pairs(frame, others):
    """`frame` minus the pairs (unordered, normalised key) that appear in any frame of `others`."""
    return frame[~_in_pairs(frame, others)].reset_index(drop=True)


def among_pairs(frame, others):
    """The rows of `frame` whose pair appears in a frame of `others`."""
    return frame[_in_pairs(frame, others)].reset_index(drop=True)


def teacher_probabilities(paths) -> dict[str, float]:
    """Pair key → teacher probability, from pair files with question1, question2 and teacher_probability."""
    out: dict[str, float] = {}
    for path in paths:
        frame = qdata.read_table(path)
        missing = [c for c in ("question1", "question2", "teacher_probability") if c not in frame.columns]
        if missing:
            raise qdata.DataError(f"{path}: column(s) {missing} not found; columns are {list(frame.columns)}")
        p = pd.to_numeric(frame["teacher_probability"], errors="coerce").to_numpy()
        bad = np.flatnonzero(~((p >= 0) & (p <= 1)))
        if len(bad):
            row = int(bad[0])
            raise qdata.DataError(f"{path}: {qdata.row_where(path, row)}, column 'teacher_probability': "
                                  f"{frame['teacher_probability'].iloc[row]!r} is not a probability in [0, 1]")
        out.update((qdata.pair_key(a, b), float(x)) for a, b, x in zip(frame["question1"], frame["question2"], p))
    return out


def with_teacher_targets(train, paths, weight: float):
    """`train` with a `target` column: (1 − weight)·is_duplicate + weight·teacher probability for the pairs
    a teacher file has, is_duplicate for the others (knowledge distillation on soft targets)."""
    teacher = teacher_probabilities(paths)
    p = np.array([teacher.get(qdata.pair_key(a, b), np.nan) for a, b in zip(train["question1"], train["question2"])])
    y = train["is_duplicate"].to_numpy(dtype=float)
    found = ~np.isnan(p)
    log.info("teacher targets for %d of %d training pairs (weight %.2f)", int(found.sum()), len(train), weight)
    return train.assign(target=np.where(found, (1 - weight) * y + weight * np.nan_to_num(p), y))


def add_inferred_negatives(train, per_negative: int, held_out, seed: int = 0):
    """`train` plus the non-duplicates that its labels imply (`DuplicateGraph.inferred_negatives`), minus any
    pair that is a validation or test pair."""
    from .triplets import DuplicateGraph

    graph = DuplicateGraph.from_pairs(train)
    extra = without_pairs(graph.pair_frame(graph.inferred_negatives(per_negative, seed), 0, "inferred_negative"),
                          held_out)
    log.info("training split: +%d inferred non-duplicates (%d labelled pairs)", len(extra), len(train))
    return pd.concat([train, extra], ignore_index=True)


def check_same_held_out(splits: dict, run_dir: Path) -> None:
    """Refuse to resume a run whose data no longer gives the validation and test pairs it began with."""
    import gzip

    for name in ("validation", "test"):
        stored = run_dir / "splits" / f"{name}.csv.gz"
        if not stored.exists():
            continue
        try:
            text = gzip.decompress(stored.read_bytes())
        except (OSError, EOFError) as exc:
            raise ValueError(f"{stored} is damaged ({exc}): start a new run with another --out") from None
        if text != splits[name].to_csv(index=False, lineterminator="\n").encode():
            raise ValueError(f"this call's data no longer gives the {name} pairs the run began with ({stored}): "
                             "resume with the same files and settings, or start a new run with another --out")
