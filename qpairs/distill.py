"""Knowledge distillation from a trained teacher: `qpairs train --teacher RUN`.

The teacher scores every labelled training pair of the student's split that training keeps (all of them unless
--balance subsample or --max-train-pairs drops some) through its normal inference
path (`DuplicateDetector.predict_proba`). The scores are written to ``RUN/teacher_labels.csv.gz`` in
the format `--teacher-labels` reads, so the student learns the same soft targets
``(1 − w)·label + w·p_teacher`` either way, and a resumed run reads them back instead of scoring again.

A teacher that trained on a student's validation or test pair would leak it: the teacher's saved
held-out splits (``splits/validation.csv.gz``, ``splits/test.csv.gz``) must hold every one of the
student's validation and test pairs. A teacher without saved splits (a bundled model) is refused
unless `--teacher-unchecked` is given.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import data as qdata
from . import distributed

log = logging.getLogger("qpairs")
TEACHER_LABELS = "teacher_labels.csv.gz"  # inside the student's run directory
SCORE_CHUNK = 16384  # pairs per predict_proba call


class TeacherLeakError(ValueError):
    """A teacher (or a --init-from run) may have trained on this run's validation or test pairs."""


def _keys(frames) -> set[str]:
    return {qdata.pair_key(a, b) for f in frames for a, b in zip(f["question1"], f["question2"])}


def check_held_out(source_dir, held_out, role: str, flag: str | None = None, accept: bool = False) -> None:
    """Refuse a trained run (`role`: the teacher, or the run --init-from starts from) whose saved held-out splits
    miss any pair of `held_out` (this run's validation and test frames): it may have trained on them. A run
    without saved splits is refused unless `accept` (set by the option `flag`), then accepted with a warning."""
    saved = [p for p in (Path(source_dir) / "splits" / f"{n}.csv.gz" for n in ("validation", "test")) if p.exists()]
    if not saved:
        if not accept:
            raise TeacherLeakError(f"{role} {source_dir} has no saved splits (splits/test.csv.gz), so it cannot be "
                                   "checked that it never trained on this run's validation or test pairs; train it "
                                   "with `qpairs train` on the same --data, --split-by and --seed"
                                   + (f", or pass {flag} to accept the risk" if flag else ""))
        log.warning("WARNING: %s %s has no saved splits: it may have trained on this run's validation or test "
                    "pairs, and the test metrics may be optimistic (%s)", role, source_dir, flag)
        return
    theirs = _keys(qdata.read_table(p) for p in saved)
    ours = _keys(held_out)
    leaked = len(ours - theirs)
    if leaked:
        raise TeacherLeakError(f"{leaked} of this run's {len(ours)} validation/test pairs are not held out by {role} "
                               f"({', '.join(map(str, saved))}): it may have trained on them; train it on the same "
                               "--data, --split-by and --seed as this run")


def check_teacher_split(teacher_dir, held_out, unchecked: bool = False) -> None:
    """`check_held_out` for --teacher; `unchecked` (--teacher-unchecked) accepts a teacher without saved splits."""
    check_held_out(teacher_dir, held_out, "the teacher", "--teacher-unchecked", unchecked)


def load_teacher(path, device: str = "auto"):
    """The teacher as a `DuplicateDetector` (torch backend: the probabilities the teacher was evaluated with)."""
    import qpairs

    return qpairs.load(path, device=device, backend="torch")


def teacher_labels(det, train: pd.DataFrame, show: bool | None = None) -> pd.DataFrame:
    """question1, question2, is_duplicate and the teacher's probability of every pair of `train` (each distinct
    pair scored once, in chunks, with `det.predict_proba`)."""
    from .progress import progress_bar

    q1, q2 = train["question1"].tolist(), train["question2"].tolist()
    uniq = list(dict.fromkeys(zip(q1, q2)))
    probs = np.zeros(len(uniq))
    with progress_bar(total=len(uniq), unit="pair", desc="teacher", show=show) as bar:
        for s in range(0, len(uniq), SCORE_CHUNK):
            a, b = zip(*uniq[s : s + SCORE_CHUNK])
            probs[s : s + len(a)] = det.predict_proba(list(a), list(b))
            bar.update(len(a))
    pos = {pair: i for i, pair in enumerate(uniq)}
    labels = train[["question1", "question2", "is_duplicate"]].assign(
        teacher_probability=probs[[pos[p] for p in zip(q1, q2)]]).reset_index(drop=True)
    agree = ((labels["teacher_probability"] >= det.threshold) == (labels["is_duplicate"] == 1)).mean()
    log.info("teacher: %d training pairs scored; it agrees with the label on %.1f%%", len(labels), 100 * agree)
    return labels


def teacher_label_files(cfg, run_dir: Path, train: pd.DataFrame, held_out) -> list[str]:
    """`--teacher-labels` files for `cfg`: the given ones, or with `--teacher` the run's own teacher labels file,
    scored now (after the leak check; the teacher's fingerprint goes into ``cfg.teacher_fingerprint``) or, when a
    resumed run already has one, read back without loading the teacher."""
    if not cfg.teacher:
        return list(cfg.teacher_labels)
    path = Path(run_dir) / TEACHER_LABELS
    with distributed.main_first():  # rank 0 scores and writes; the others read
        if path.exists():
            log.info("teacher labels: %s (scored when the run started)", path)
        else:
            _write_teacher_labels(cfg, path, train, held_out)
    return [str(path)]


def _write_teacher_labels(cfg, path: Path, train, held_out) -> None:
    from .detector import resolve_model_path
    from .checkpoint import model_fingerprint

    check_teacher_split(resolve_model_path(cfg.teacher), held_out, cfg.teacher_unchecked)
    det = load_teacher(cfg.teacher, cfg.device)
    cfg.teacher_fingerprint = model_fingerprint(det)
    log.info("teacher %s (fingerprint %s)", cfg.teacher, cfg.teacher_fingerprint[:12])
    labels = teacher_labels(det, train, cfg.progress)
    tmp = path.with_name(path.name + ".tmp")
    labels.to_csv(tmp, index=False, compression="gzip")
    os.replace(tmp, path)  # a kill mid-write leaves no partial file to reuse
