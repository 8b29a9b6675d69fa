"""Quality benchmark: qpairs recipes against the sentence-transformers recipe, one question-disjoint split, one run.

Rows (``--methods``, in this order; each trains as its ``qpairs train`` command does, on the same split):

* ``zero_shot``: all-MiniLM-L6-v2 cosine, no training;
* ``matching``: the default model's first member: frozen base, matching head, QQP plus the out-of-domain
  training pairs of ``scripts/make_aux_pairs.py``, 2 epochs;
* ``fast``: the distilled BiLSTM (matching head, MiniLM word vectors), taught by the ``matching`` row;
* ``default``: the current default recipe, ``qpairs ensemble matching fast --familiar``;
* ``top1``, ``top2``, ``top3``: the matching head with the base's top N layers trained (``--train-top-layers N``),
  1 epoch, same data as ``matching``;
* ``warm1``: the top layer trained as in ``top1``, but starting from the ``matching`` row's head (``--init-from``:
  the head first, then the layer) at a lower learning rate;
* ``st``: the sentence-transformers recipe as its users run it: all-MiniLM-L6-v2 +
  ``losses.OnlineContrastiveLoss``, 1 epoch, batch 64, lr 2e-5, 10% warm-up, ``SentenceTransformerTrainer``;
  its cosine gets a threshold and Platt calibration fitted on validation, as ``zero_shot``.

Columns: accuracy, F1, ROC-AUC and log loss on the QQP test pairs (natural duplicate rate), validation accuracy,
training time (the trainer's own clock, kept across resumes; cache fills and teacher labelling not included; the
``default`` row: its members' plus the ensemble's fit), and out of domain: STS-B dev Spearman, ROC-AUC on the
held-out MRPC and SICK parts (no sentence of them in any training pair) and on forum titles (Stack Exchange,
never training data). qpairs rows are scored as ``qpairs.load`` runs them (``--backend``).

Every row is saved in ``OUT/rows/NAME.json`` as it finishes. ``--resume`` keeps OUT (with the settings it was started
with: others are refused), skips finished rows and continues an unfinished one from its checkpoints (the qpairs trainer's every 10 minutes, the peer's every
``--save-steps`` steps), so a run that is stopped goes on where it stopped::

    OMP_NUM_THREADS=2 nohup python scripts/bench_quality.py --device cpu --out runs/bench_quality &
    OMP_NUM_THREADS=2 nohup python scripts/bench_quality.py --device cpu --out runs/bench_quality --resume &
    # smoke scale (minutes):
    python scripts/bench_quality.py --device cpu --max-train-pairs 2000 --max-eval-pairs 400 \\
        --methods zero_shot matching --out runs/bench_quality_smoke

all-MiniLM-L6-v2 was pretrained on QQP duplicate pairs, so every MiniLM row starts from a model that has seen QQP
duplicates; ``zero_shot`` shows how much that alone gives. Needs ``pip install ".[bench]"``.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from qpairs.calibration import Calibrator
from qpairs.config import TrainConfig
from qpairs.metrics import classification_metrics

log = logging.getLogger("qpairs")
ROWS = ("zero_shot", "matching", "fast", "default", "top1", "top2", "top3", "warm1", "st")
LABELS = {"zero_shot": "all-MiniLM-L6-v2 zero-shot", "matching": "matching head, frozen base",
          "fast": "distilled BiLSTM (fast)", "default": "default recipe: matching + fast ensemble",
          "top1": "matching head, top 1 layer trained", "top2": "matching head, top 2 layers trained",
          "top3": "matching head, top 3 layers trained",
          "warm1": "matching head, then top 1 layer trained from it", "st": "sentence-transformers recipe"}
QQP_COLUMNS = ("accuracy", "f1", "roc_auc", "log_loss", "val_accuracy", "train_time_s")
OOD_COLUMNS = ("stsb_dev_spearman", "mrpc_heldout_auc", "sick_heldout_auc", "forum_titles_auc")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", help="labelled QQP pair files (default: the QQP files in the data folder)")
    p.add_argument("--data-dir", help="data folder holding ood/ and title_body/ (default: ../shared/data)")
    p.add_argument("--out", default="runs/bench_quality", help="output folder (replaced unless --resume)")
    p.add_argument("--aux", help="folder of scripts/make_aux_pairs.py's files: the out-of-domain training pairs and "
                   "held-out sets (default: OUT/aux, written from the data folder's ood/ and title_body/)")
    p.add_argument("--methods", nargs="+", choices=ROWS, default=list(ROWS), help="rows to run (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backend", default="auto", help="how the qpairs rows are scored (qpairs.load's backend)")
    p.add_argument("--max-train-pairs", type=int, help="train each row on at most this many pairs (smoke runs; "
                   "the rows with out-of-domain pairs count them too)")
    p.add_argument("--max-eval-pairs", type=int, help="score at most this many validation and test pairs each "
                   "(stratified; the qpairs runs still calibrate on their whole validation split)")
    p.add_argument("--max-length", type=int, default=40, help="word pieces per question, every row")
    p.add_argument("--seed", type=int, default=0, help="the split's seed (and every row's)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast in the training steps (qpairs rows: only on a "
                   "CPU with native bf16; always on CUDA)")
    p.add_argument("--resume", action="store_true", help="keep OUT: skip finished rows, continue an unfinished one")
    p.add_argument("--save-steps", type=int, default=150, help="checkpoint interval of the sentence-transformers "
                   "recipe, in steps")
    return p.parse_args(argv)


SETTINGS = ("data", "data_dir", "aux", "max_train_pairs", "max_eval_pairs", "max_length", "seed", "backend", "bf16")
NEEDS = {"fast": ("matching",), "default": ("matching", "fast"), "warm1": ("matching",)}


def check_settings(args, out: Path) -> None:
    """Record the settings the rows depend on in OUT/settings.json; refuse to resume OUT with other ones."""
    mine = {k: getattr(args, k) for k in SETTINGS}
    path = out / "settings.json"
    if path.exists():
        theirs = json.loads(path.read_text())
        changed = [f"--{k.replace('_', '-')} {theirs.get(k)!r} then, {mine[k]!r} now" for k in SETTINGS
                   if theirs.get(k) != mine[k]]
        if changed:
            raise SystemExit(f"{out} was started with other settings ({'; '.join(changed)}): resume it with the "
                             "same ones, or pick another --out")
    path.write_text(json.dumps(mine, indent=2))


def check_needs(methods, done) -> None:
    """Refuse before training anything when a row's inputs (another row) are neither done nor to be run first."""
    for name in methods:
        missing = [n for n in NEEDS.get(name, ()) if n not in done and n not in methods]
        if missing:
            raise SystemExit(f"the {name} row needs the {' and '.join(missing)} row(s): add them to --methods")


def load_split(args, out: Path) -> dict:
    """The split every row trains on (`qpairs train`'s code path; held-out parts saved in OUT/splits), with the
    scored validation and test parts subsampled to --max-eval-pairs."""
    from qpairs.splits import load_splits

    cfg = TrainConfig(data=args.data or [], seed=args.seed, max_train_pairs=args.max_train_pairs)
    splits = load_splits(cfg, out)
    for name in ("validation", "test"):
        part = splits[name]
        if args.max_eval_pairs and len(part) > args.max_eval_pairs:
            part = part.groupby("is_duplicate", group_keys=False).sample(
                frac=args.max_eval_pairs / len(part), random_state=args.seed)
            splits[name] = part.sort_index().reset_index(drop=True)
    log.info("split: %s", {k: len(v) for k, v in splits.items()})
    return splits


def ood_sets(data_dir: Path, aux: Path) -> dict[str, tuple[list, list, np.ndarray]]:
    """Out-of-domain sets by column name: (first texts, second texts, labels or graded scores)."""
    from make_aux_pairs import read_ood, write_aux_pairs

    if not (data_dir / "ood" / "stsb_dev.tsv.gz").exists():
        raise SystemExit(f"{data_dir / 'ood' / 'stsb_dev.tsv.gz'} not found: give the data folder with --data-dir")
    if not (aux / "forum_titles.csv").exists():
        write_aux_pairs(data_dir, aux)
    stsb = read_ood("stsb_dev", data_dir / "ood" / "stsb_dev.tsv.gz")
    sets = {"stsb_dev_spearman": stsb.assign(is_duplicate=stsb["score"])}
    for column, file in zip(OOD_COLUMNS[1:], ("heldout_mrpc.csv", "heldout_sick.csv", "forum_titles.csv")):
        sets[column] = pd.read_csv(aux / file, keep_default_na=False)
    return {c: (list(f["question1"]), list(f["question2"]), f["is_duplicate"].to_numpy()) for c, f in sets.items()}


def ood_metrics(score, sets: dict) -> dict[str, float]:
    """Spearman (graded sets) or ROC-AUC (labelled sets) of `score(a, b)` on each out-of-domain set."""
    out = {}
    for column, (a, b, y) in sets.items():
        s = score(a, b)
        out[column] = float(spearmanr(s, y)[0] if column.endswith("spearman") else roc_auc_score(y, s))
    return out


def split_metrics(val_p, test_p, threshold: float, splits: dict) -> dict:
    """Test metrics and validation accuracy of calibrated probabilities at `threshold`."""
    res = classification_metrics(splits["test"]["is_duplicate"], test_p, threshold)
    return {**res, "val_accuracy": classification_metrics(splits["validation"]["is_duplicate"], val_p,
                                                          threshold)["accuracy"]}


def detector_row(det, splits: dict, sets: dict) -> dict:
    """A qpairs model's row: its own threshold and calibration, on the shared validation and test pairs."""
    val_p, test_p = (det.predict_proba(list(splits[n]["question1"]), list(splits[n]["question2"]))
                     for n in ("validation", "test"))
    return {**split_metrics(val_p, test_p, det.threshold, splits), **ood_metrics(det.predict_proba, sets)}


def recipe(name: str, args, out: Path, aux: Path, runs: dict) -> TrainConfig:
    """The `qpairs train` settings of a trained row."""
    common = dict(data=args.data or [], seed=args.seed, device=args.device, max_length=args.max_length,
                  max_train_pairs=args.max_train_pairs, bf16=args.bf16, resume=args.resume, progress=None,
                  out=str(runs[name]))
    if name == "fast":
        return TrainConfig(**common, encoder="lstm", epochs=4, batch_size=256, lr=3e-3, pair_head="matching",
                           matching_dim=64, word_vectors="minilm", embedding_dim=200, teacher=str(runs["matching"]),
                           distill_weight=0.5, patience=4)
    head = dict(**common, encoder="transformer", head="residual", projection_dim=768, pair_head="matching",
                distance="cosine", margin=0.5, batch_size=256, extra_train=[str(aux / "train.csv")])
    if name == "matching":
        return TrainConfig(**head, freeze_base=True, lr=1e-3, epochs=2, embedding_cache=str(out / "caches" / name))
    if name == "warm1":  # top1's cache: the same layer's states
        return TrainConfig(**head, train_top_layers=1, lr=5e-5, epochs=1, init_from=str(runs["matching"]),
                           embedding_cache=str(out / "caches" / "top1"))
    layers = int(name.removeprefix("top"))
    return TrainConfig(**head, train_top_layers=layers, lr=1e-4, epochs=1, embedding_cache=str(out / "caches" / name))


def same_test_split(run: Path, out: Path) -> None:
    """Refuse a run whose held-out test pairs are not the benchmark's."""
    mine = pd.read_csv(out / "splits" / "test.csv.gz", keep_default_na=False)
    theirs = pd.read_csv(run / "splits" / "test.csv.gz", keep_default_na=False)
    if not mine[["question1", "question2"]].equals(theirs[["question1", "question2"]]):
        raise RuntimeError(f"{run} was trained on another split than {out / 'splits'}: remove it and run again")


def trained_row(name: str, args, out: Path, aux: Path, runs: dict, splits: dict, sets: dict) -> dict:
    import qpairs
    from qpairs.train import train

    run = train(recipe(name, args, out, aux, runs))
    same_test_split(run, out)
    history = json.loads((run / "history.json").read_text())
    det = qpairs.load(run, device=args.device, backend=args.backend)
    return {**detector_row(det, splits, sets), "train_time_s": sum(h["train_time_s"] for h in history),
            "run": str(run)}


def ensemble_row(args, runs: dict, rows: dict, splits: dict, sets: dict) -> dict:
    """The default recipe: `qpairs ensemble matching fast --familiar`, fitted on the members' validation pairs."""
    import qpairs
    from qpairs.ensemble import ensemble_command

    member_splits = runs["matching"] / "splits"
    shutil.rmtree(runs["default"], ignore_errors=True)
    t0 = time.perf_counter()
    ensemble_command([str(runs["matching"]), str(runs["fast"])], [str(member_splits / "validation.csv.gz")],
                     runs["default"], device=args.device,
                     familiar=[str(member_splits / "train.csv.gz")])
    seconds = time.perf_counter() - t0 + rows["matching"]["train_time_s"] + rows["fast"]["train_time_s"]
    det = qpairs.load(runs["default"], device=args.device, backend=args.backend)
    return {**detector_row(det, splits, sets), "train_time_s": seconds, "run": str(runs["default"])}


def st_distances(model, frame: pd.DataFrame) -> np.ndarray:
    """Cosine distance of each pair under a SentenceTransformer."""
    from eval_ood import st_cosine

    return 1.0 - st_cosine(model, list(frame["question1"]), list(frame["question2"]))


def sentence_transformers_row(args, base: str, splits: dict, out: Path, sets: dict, train_model: bool) -> dict:
    """The peer recipe (or, with train_model=False, the untouched base model), calibrated on validation."""
    from eval_ood import st_cosine
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base, device=args.device)
    model.max_seq_length = args.max_length
    seconds = train_peer(model, args, splits["train"], out / "st_trainer") if train_model else 0.0
    model.eval()
    val_d = st_distances(model, splits["validation"])
    cal = Calibrator("platt").fit(val_d, splits["validation"]["is_duplicate"].to_numpy())
    test_p = cal.predict_proba(st_distances(model, splits["test"]))
    return {**split_metrics(cal.predict_proba(val_d), test_p, cal.threshold, splits), "train_time_s": seconds,
            **ood_metrics(lambda a, b: st_cosine(model, a, b), sets)}


def train_peer(model, args, train: pd.DataFrame, saved: Path) -> float:
    """1 epoch of OnlineContrastiveLoss as sentence-transformers documents it; seconds of training, over resumes
    (each checkpoint records the total so far in ``training_seconds.json``)."""
    import datasets
    import transformers
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    class TrainingClock(transformers.TrainerCallback):
        def __init__(self, before: float):
            self.before, self.start = before, time.perf_counter()

        def total(self) -> float:
            return self.before + time.perf_counter() - self.start

        def on_save(self, targs, state, control, **kwargs):
            folder = Path(targs.output_dir) / f"checkpoint-{state.global_step}"
            (folder / "training_seconds.json").write_text(json.dumps({"seconds": self.total()}))

    ds = datasets.Dataset.from_dict({"sentence1": list(train["question1"]), "sentence2": list(train["question2"]),
                                     "label": train["is_duplicate"].astype(int).tolist()})
    # 10 % warm-up: transformers 5 takes the ratio as a float `warmup_steps`, 4 as `warmup_ratio`
    warm = {"warmup_steps": 0.1} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": 0.1}
    cuda = str(model.device).startswith("cuda")
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(saved), num_train_epochs=1, per_device_train_batch_size=64, learning_rate=2e-5, **warm,
        seed=args.seed, report_to="none", save_strategy="steps", save_steps=args.save_steps, save_total_limit=1,
        logging_steps=50, use_cpu=not cuda, bf16=cuda or args.bf16, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                         loss=losses.OnlineContrastiveLoss(model))
    last = transformers.trainer_utils.get_last_checkpoint(str(saved)) if args.resume and saved.exists() else None
    clock_file = Path(last or saved) / "training_seconds.json"
    clock = TrainingClock(json.loads(clock_file.read_text())["seconds"] if last and clock_file.exists() else 0.0)
    trainer.add_callback(clock)
    trainer.train(resume_from_checkpoint=last)
    return clock.total()


def format_table(rows: dict) -> str:
    """The rows as a markdown table, in ROWS order."""
    cols = QQP_COLUMNS + OOD_COLUMNS
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in (n for n in ROWS if n in rows):
        r = rows[name]
        cells = [f"{r[c]:.0f}" if c == "train_time_s" else f"{r[c]:.4f}" for c in cols]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def against_peer(rows: dict) -> str:
    """qpairs's best row by validation accuracy against the sentence-transformers recipe."""
    ours = {n: r for n, r in rows.items() if n not in ("st", "zero_shot")}
    if "st" not in rows or not ours:
        return ""
    best = max(ours, key=lambda n: ours[n]["val_accuracy"])
    b, p = ours[best], rows["st"]
    return (f"best qpairs row on validation: {LABELS[best]}: {100 * (b['accuracy'] - p['accuracy']):+.2f} accuracy "
            f"points, ROC-AUC {b['roc_auc'] - p['roc_auc']:+.4f}, log loss x{b['log_loss'] / p['log_loss']:.3f} "
            f"against the sentence-transformers recipe")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qpairs.data import default_data_dir
    from qpairs.detector import resolve_device
    from qpairs.encoders import default_base_model

    args.device = str(resolve_device(args.device))
    out = Path(args.out)
    if out.exists() and not args.resume:
        if any(out.iterdir()) and not (out / "rows").is_dir():
            raise SystemExit(f"{out} holds something other than a run of this benchmark: choose another --out")
        shutil.rmtree(out)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    check_settings(args, out)
    rows = {p.stem: json.loads(p.read_text()) for p in (out / "rows").glob("*.json")}
    check_needs(args.methods, rows)
    data_dir = Path(args.data_dir or default_data_dir())
    splits = load_split(args, out)
    aux = Path(args.aux) if args.aux else out / "aux"
    sets = ood_sets(data_dir, aux)
    runs = {name: out / name for name in ROWS}
    for name in (n for n in ROWS if n in args.methods and n not in rows):
        log.info("row %s: %s", name, LABELS[name])
        t0 = time.perf_counter()
        if name in ("zero_shot", "st"):
            row = sentence_transformers_row(args, default_base_model(), splits, out, sets, name == "st")
        elif name == "default":
            row = ensemble_row(args, runs, rows, splits, sets)
        else:
            row = trained_row(name, args, out, aux, runs, splits, sets)
        rows[name] = {**row, "wall_s": time.perf_counter() - t0, "recorded": time.strftime("%Y-%m-%d")}
        (out / "rows" / f"{name}.json").write_text(json.dumps(rows[name], indent=2, default=float))
        (out / "table.md").write_text(format_table(rows) + "\n")
    table, versus = format_table(rows), against_peer(rows)
    print("\n" + table + ("\n\n" + versus if versus else ""))
    (out / "table.md").write_text(table + "\n" + (f"\n{versus}\n" if versus else ""))
    (out / "results.json").write_text(json.dumps({"split": {k: len(v) for k, v in splits.items()},
                                                  "args": vars(args), "rows": rows}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
