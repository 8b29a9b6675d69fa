"""Quality benchmark: qpairs Siamese models against the sentence-transformers recipe, one split, one run.

Every method trains on the same training pairs and is calibrated (Platt + accuracy-optimal
threshold) on the same validation pairs; all are scored on the same test pairs. The split is
``qpairs.data.make_splits``: disjoint by question, validation and test at the natural QQP
duplicate rate (0.37).

Methods:

* qpairs transformer Siamese (all-MiniLM-L6-v2 base) with each loss: contrastive, online
  contrastive, triplet (labelled negatives; and semi-hard mining), MNRL, and contrastive with
  the jointly trained classifier head;
* qpairs BiLSTM Siamese (contrastive, GloVe);
* the sentence-transformers recipe as its users run it: ``SentenceTransformer(all-MiniLM-L6-v2)``
  + ``losses.OnlineContrastiveLoss``, 1 epoch, batch 64, lr 2e-5, warm-up 10 %, trained with
  ``SentenceTransformerTrainer``; cosine distance → threshold and Platt calibration chosen on
  validation;
* all-MiniLM-L6-v2 with no fine-tuning (same calibration), for reference.

**all-MiniLM-L6-v2 was pretrained on QQP duplicate pairs** (they are among its 1B training
pairs), so every MiniLM row starts from a model that has seen QQP duplicates, possibly
including test questions; the zero-shot row shows how much that alone gives.

It prints one table (accuracy, F1, ROC-AUC, AP, log loss, training time) and the ratios of
qpairs's best method (chosen on validation accuracy) against the sentence-transformers recipe,
and writes ``OUT/results.json`` and ``OUT/table.md``.

    # GPU, full training split:
    python scripts/bench_quality.py --device cuda --out runs/bench_quality
    # CPU smoke scale (minutes):
    OMP_NUM_THREADS=2 nice -n 10 python scripts/bench_quality.py --device cpu --max-train-pairs 3000 \\
        --max-eval-pairs 1000 --max-length 32 --out runs/bench_quality_cpu
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from qpairs import data as qdata
from qpairs.calibration import Calibrator
from qpairs.config import TrainConfig
from qpairs.metrics import classification_metrics

log = logging.getLogger("qpairs")
COLUMNS = ("accuracy", "f1", "roc_auc", "average_precision", "log_loss", "train_time_s")
PEER = "sentence-transformers OnlineContrastiveLoss"

# name → TrainConfig overrides of the transformer Siamese runs (the BiLSTM row is added separately)
TRANSFORMER_RUNS = {
    "contrastive": dict(loss="contrastive"),
    "online_contrastive": dict(loss="online_contrastive", distance="cosine"),
    "triplet": dict(loss="triplet"),
    "triplet_semi_hard": dict(loss="triplet", mining="semi_hard"),
    "mnrl": dict(loss="mnrl", distance="cosine"),
    "contrastive_classifier": dict(loss="contrastive", pair_head="classifier"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", nargs="+", help="labelled pair files (default: the QQP files in the shared data folder)")
    p.add_argument("--out", default="runs/bench_quality", help="output folder (replaced if it exists)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-train-pairs", type=int, help="use at most this many training pairs")
    p.add_argument("--max-eval-pairs", type=int, help="subsample validation and test to this many pairs each "
                   "(stratified: the duplicate rate is kept)")
    p.add_argument("--max-length", type=int, default=64, help="tokens per question, for every method")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the qpairs runs (the peer recipe: 1)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the qpairs transformer runs")
    p.add_argument("--lr", type=float, default=2e-5, help="learning rate of the qpairs transformer runs")
    p.add_argument("--methods", nargs="+", help=f"subset of: {', '.join(TRANSFORMER_RUNS)}, lstm, st, zero_shot")
    p.add_argument("--base-model", help="transformer base directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="train the sentence-transformers recipe with bf16 autocast "
                   "on the CPU too (on CUDA it always is)")
    p.add_argument("--resume", action="store_true", help="keep OUT and resume the sentence-transformers recipe "
                   "from its last checkpoint (saved every --save-steps steps)")
    p.add_argument("--save-steps", type=int, default=200, help="checkpoint interval of the sentence-transformers recipe")
    return p.parse_args(argv)


def load_split(args, out: Path) -> dict:
    """The shared split (same code path as `qpairs train`), with evaluation sets optionally subsampled."""
    from qpairs.splits import load_splits

    cfg = TrainConfig(data=args.data or [], seed=args.seed, max_train_pairs=args.max_train_pairs)
    splits = load_splits(cfg, out)
    for name in ("validation", "test"):
        part = splits[name]
        if args.max_eval_pairs and len(part) > args.max_eval_pairs:
            frac = args.max_eval_pairs / len(part)
            part = part.groupby("is_duplicate", group_keys=False).sample(frac=frac, random_state=args.seed)
            splits[name] = part.sort_index().reset_index(drop=True)
    log.info("split: %s", {k: len(v) for k, v in splits.items()})
    return splits


def transitivity_report(train_df: pd.DataFrame) -> dict:
    """How many positive pairs transitivity (A~B, B~C ⇒ A~C) adds to a training split."""
    from qpairs.triplets import DuplicateGraph

    graph = DuplicateGraph.from_pairs(train_df)
    graph.positive_pairs(transitive=True)
    return graph.stats


def run_qpairs(name: str, cfg: TrainConfig, splits: dict) -> dict:
    """Train one qpairs configuration on the shared split; its test metrics and training time."""
    from qpairs.train import train

    run = train(cfg, splits=splits)
    metrics = json.loads((run / "metrics.json").read_text())
    history = json.loads((run / "history.json").read_text())
    return {**metrics["test"], "val_accuracy": metrics["validation"]["accuracy"],
            "train_time_s": sum(h["train_time_s"] for h in history), "run": str(run)}


def st_embed_distances(model, frame: pd.DataFrame) -> np.ndarray:
    """Cosine distance of each pair under a SentenceTransformer (each unique text encoded once)."""
    texts = list(dict.fromkeys(list(frame["question1"]) + list(frame["question2"])))
    emb = model.encode(texts, batch_size=256, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    pos = {t: i for i, t in enumerate(texts)}
    a = emb[[pos[t] for t in frame["question1"]]]
    b = emb[[pos[t] for t in frame["question2"]]]
    return 1.0 - (a * b).sum(1)


def calibrated_metrics(val_d, val_y, test_d, test_y) -> dict:
    """Threshold + Platt calibration fitted on validation, metrics on test."""
    cal = Calibrator("platt").fit(val_d, val_y)
    val = classification_metrics(val_y, cal.predict_proba(val_d), cal.threshold)
    test = classification_metrics(test_y, cal.predict_proba(test_d), cal.threshold)
    return {**test, "val_accuracy": val["accuracy"]}


def run_sentence_transformers(args, base: str, splits: dict, out: Path, train_model: bool, device: str) -> dict:
    """The peer recipe (or, with train_model=False, the untouched base model)."""
    import datasets
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments, losses)

    model = SentenceTransformer(base, device=device)
    model.max_seq_length = args.max_length
    seconds = 0.0
    if train_model:
        tr = splits["train"]
        ds = datasets.Dataset.from_dict({"sentence1": list(tr["question1"]), "sentence2": list(tr["question2"]),
                                         "label": tr["is_duplicate"].astype(int).tolist()})
        import transformers

        # 10 % warm-up: transformers 5 takes the ratio as a float `warmup_steps`, 4 as `warmup_ratio`
        warm = {"warmup_steps": 0.1} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": 0.1}
        targs = SentenceTransformerTrainingArguments(
            output_dir=str(out / "st_trainer"), num_train_epochs=1, per_device_train_batch_size=64,
            learning_rate=2e-5, **warm, seed=args.seed, report_to="none", save_strategy="steps",
            save_steps=args.save_steps, save_total_limit=1, logging_steps=50, use_cpu=device == "cpu",
            bf16=device.startswith("cuda") or args.bf16, disable_tqdm=True)
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=ds,
                                             loss=losses.OnlineContrastiveLoss(model))
        t0 = time.perf_counter()
        saved = out / "st_trainer"
        last = transformers.trainer_utils.get_last_checkpoint(str(saved)) if args.resume and saved.exists() else None
        trainer.train(resume_from_checkpoint=last)
        seconds = time.perf_counter() - t0
    model.eval()
    val, test = splits["validation"], splits["test"]
    res = calibrated_metrics(st_embed_distances(model, val), val["is_duplicate"].to_numpy(),
                             st_embed_distances(model, test), test["is_duplicate"].to_numpy())
    return {**res, "train_time_s": seconds}


def format_rows(rows: dict) -> tuple[str, str]:
    """The plain-text table and the same as a markdown table."""
    width = max(len(n) for n in rows) + 2
    head = f"{'method':<{width}}" + "".join(f"{c:>18}" for c in COLUMNS)
    lines = [head] + [f"{n:<{width}}" + "".join(f"{r.get(c, float('nan')):>18.4f}" for c in COLUMNS)
                      for n, r in rows.items()]
    md = ["| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    md += [f"| {n} | " + " | ".join(f"{r.get(c, float('nan')):.4f}" if c != "train_time_s" else
                                    f"{r.get(c, float('nan')):.0f}" for c in COLUMNS) + " |" for n, r in rows.items()]
    return "\n".join(lines), "\n".join(md)


def ratios(rows: dict) -> dict:
    """qpairs's best (by validation accuracy) against the peer recipe."""
    ours = {n: r for n, r in rows.items() if n.startswith("qpairs")}
    if PEER not in rows or not ours:
        return {}
    best = max(ours, key=lambda n: ours[n]["val_accuracy"])
    b, p = ours[best], rows[PEER]
    return {"best": best, "accuracy_points": 100 * (b["accuracy"] - p["accuracy"]),
            "log_loss_ratio": b["log_loss"] / p["log_loss"], "train_time_ratio": b["train_time_s"] / p["train_time_s"],
            "f1_points": 100 * (b["f1"] - p["f1"]), "roc_auc_points": 100 * (b["roc_auc"] - p["roc_auc"])}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qpairs.detector import resolve_device
    from qpairs.encoders import default_base_model

    device = str(resolve_device(args.device))
    out = Path(args.out)
    if out.exists() and not args.resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    base = args.base_model or default_base_model()
    methods = args.methods or [*TRANSFORMER_RUNS, "lstm", "st", "zero_shot"]
    splits = load_split(args, out)
    info = {"split": {k: len(v) for k, v in splits.items()}, "args": vars(args), "device": device,
            "transitivity": transitivity_report(splits["train"])}
    print("transitivity on this training split:", info["transitivity"])

    common = dict(data=args.data or [], seed=args.seed, device=device, epochs=args.epochs, progress=None,
                  max_length=args.max_length, patience=args.epochs)
    rows: dict[str, dict] = {}
    t_start = time.perf_counter()
    for name, over in TRANSFORMER_RUNS.items():
        if name in methods:
            cfg = TrainConfig(out=str(out / name), encoder="transformer", base_model=base, batch_size=args.batch_size,
                              lr=args.lr, warmup=0.1, **common, **over)
            rows[f"qpairs transformer {name}"] = run_qpairs(name, cfg, splits)
    if "lstm" in methods:
        cfg = TrainConfig(out=str(out / "lstm"), encoder="lstm", **{**common, "epochs": max(args.epochs, 3),
                                                                     "patience": 3})
        rows["qpairs BiLSTM contrastive"] = run_qpairs("lstm", cfg, splits)
    if "st" in methods:
        rows[PEER] = run_sentence_transformers(args, base, splits, out, True, device)
    if "zero_shot" in methods:
        rows["all-MiniLM-L6-v2 zero-shot (no training)"] = run_sentence_transformers(args, base, splits, out, False,
                                                                                     device)
    info["wall_time_s"] = time.perf_counter() - t_start
    table, md = format_rows(rows)
    r = ratios(rows)
    print("\n" + table)
    if r:
        print(f"\nqpairs best on validation: {r['best']}: {r['accuracy_points']:+.2f} accuracy points, "
              f"log loss x{r['log_loss_ratio']:.3f}, training time x{r['train_time_ratio']:.2f} "
              f"against the sentence-transformers recipe")
    (out / "results.json").write_text(json.dumps({**info, "rows": rows, "ratios": r}, indent=2, default=float))
    (out / "table.md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
