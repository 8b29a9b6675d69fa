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
    """The teacher may have trained on the student's validation or test pairs."""


def _keys(frames) -> set[str]:
    return {qdata.pair_key(a, b) for f in frames for a, b in zip(f["question1"], f["question2"])}


def check_teacher_split(teacher_dir, held_out, unchecked: bool = False) -> None:
    """Refuse a teacher whose saved held-out splits miss any pair of `held_out` (the student's validation and
    test frames): it may have trained on them. No saved splits: refused unless `unchecked` (then a warning)."""
    saved = [p for p in (Path(teacher_dir) / "splits" / f"{n}.csv.gz" for n in ("validation", "test")) if p.exists()]
    if not saved:
        if not unchecked:
            raise TeacherLeakError(f"the teacher {teacher_dir} has no saved splits (splits/test.csv.gz), so it cannot "
                                   "be checked that it never trained on the student's validation or test pairs; "
                                   "train the teacher with `qpairs train` on the same --data, --split-by and --seed, "
                                   "or pass --teacher-unchecked to accept the risk")
        log.warning("WARNING: the teacher %s has no saved splits: it may have trained on the student's validation "
                    "or test pairs, and the student's test metrics may be optimistic (--teacher-unchecked)",
                    teacher_dir)
        return
    theirs = _keys(qdata.read_table(p) for p in saved)
    ours = _keys(held_out)
    leaked = len(ours - theirs)
    if leaked:
        raise TeacherLeakError(f"{leaked} of the student's {len(ours)} validation/test pairs are not held out by the "
                               f"teacher ({', '.join(map(str, saved))}): the teacher may have trained on them; train "
                               "the teacher on the same --data, --split-by and --seed as the student")


def load_teacher(path, device: str = "auto"):
    """The teacher as a `DuplicateDetector` (torch backend: the probabilities the teacher was evaluated with)."""
    import qpairs

    return qpairs.load(path, device=device, backend="torch")


def teacher_labels(det, train: pd.DataFrame, show: bool | None = None) -> pd.DataFrame:
    """question1, question2, is_duplicate and the teacher's probability of every pair of `train` (each distinct
    pair scored once, in chunks, with `det.predict_proba`)."""
    from tqdm.auto import tqdm

    q1, q2 = train["question1"].tolist(), train["question2"].tolist()
    uniq = list(dict.fromkeys(zip(q1, q2)))
    probs = np.zeros(len(uniq))
    with tqdm(total=len(uniq), unit="pair", desc="teacher", disable=None if show is None else not show) as bar:
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
