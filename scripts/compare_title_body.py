"""Title vs body: pseudo-Siamese (unshared encoders) against shared-weight Siamese and zero-shot MiniLM.

One run, one split: train and validate on every site but ``--test-site`` (split by post), test on
a seeded sample of ``--test-posts`` posts of the held-out site. Every row is evaluated on the
same test posts, the same random and hard (same site + shared tag) negatives and the same
retrieval pools of ``--candidates`` bodies per title.

Rows (``--rows`` picks some; each trains into OUT/<row> and is reused when it is already there):

    zero_shot            all-MiniLM-L6-v2 as is (no training), calibrated on the validation pairs
    siamese_frozen       MiniLM frozen + one shared residual head (identity at start), --loss LOSS
    pseudo_frozen        MiniLM frozen + two unshared residual heads (title head, body head)
    (… both again with --loss mnrl as *_mnrl when "mnrl" is in --frozen-losses)
    *_mnrl of a smoke row    the same with the in-batch InfoNCE loss (same number of steps)
    pseudo_lstm          BiLSTM title encoder + BiLSTM body encoder, unshared (GloVe init)
    siamese_lstm         one shared BiLSTM
    siamese_transformer  MiniLM fine-tuned, shared weights          (smoke scale on a CPU)
    pseudo_transformer   MiniLM title encoder + MiniLM body encoder (smoke scale on a CPU)
    pseudo_lstm_transformer  BiLSTM titles + MiniLM bodies         (smoke scale on a CPU)
    pseudo_topN          two MiniLM towers, each training its own top N layers (and head) over one frozen
                         bottom, in-batch MNRL with one mined hard negative per post (N from --top-layers)
    siamese_topN         the same with one shared tower
    siamese_matching     MiniLM frozen + a matching head over title and body token states (BCE + contrastive),
                         on the same mined pairs; retrieval: the embeddings shortlist 10 bodies, the head orders them

The frozen-base rows and the zero-shot row share one cache of MiniLM's pooled outputs
(``OUT/base_cache``), so each text goes through MiniLM once for all of them. The top-layer rows share
one cache of layer L−N's token states per N (``OUT/top_cache``). Their hard negatives come from the
training posts themselves: for half the posts the nearest other body by zero-shot MiniLM (computed
once, ``OUT/mined_negatives.npz``), for the rest a post of the same site sharing a tag, else any post of
the same site; ``split.json`` says how many each source gave.

    nice -n 10 python scripts/compare_title_body.py --out runs/title_body
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from qpairs import title_body as tb
from qpairs.checkpoint import save_model, write_json
from qpairs.config import TrainConfig
from qpairs.detector import load
from qpairs.objective import step_autocast
from qpairs.tokencache import open_cache
from qpairs.title_body_eval import (SUMMARY_COLUMNS, evaluate_title_body, summary_row, title_body_sides,
                                    zero_shot_detector)
from qpairs.train import top_layer_cache, train

log = logging.getLogger("compare_title_body")
FROZEN = ("siamese_frozen", "pseudo_frozen")
LSTM = ("pseudo_lstm", "siamese_lstm")
SMOKE = ("siamese_transformer", "pseudo_transformer", "pseudo_lstm_transformer")
TOP = ("pseudo_top", "siamese_top")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="post file (default: the shared stackexchange_title_body.csv.gz)")
    p.add_argument("--out", default="runs/title_body")
    p.add_argument("--test-site", default="crypto")
    p.add_argument("--test-posts", type=int, default=2000, help="held-out posts evaluated (seeded sample)")
    p.add_argument("--candidates", type=int, default=1000, help="bodies each title is ranked among")
    p.add_argument("--val-posts", type=int, default=500, help="validation posts (calibration, early stopping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", nargs="+", default=["zero_shot", *FROZEN, "pseudo_lstm", "siamese_lstm", *SMOKE[:2],
                                                 *(f"{r}_mnrl" for r in SMOKE[:2])])
    p.add_argument("--frozen-posts", type=int, default=4000, help="training posts of the frozen-base rows")
    p.add_argument("--frozen-epochs", type=int, default=8)
    p.add_argument("--frozen-losses", nargs="+", default=["contrastive", "mnrl"])
    p.add_argument("--lstm-posts", type=int, default=5000, help="training posts of the BiLSTM rows")
    p.add_argument("--lstm-epochs", type=int, default=2)
    p.add_argument("--lstm-loss", default="contrastive", choices=["contrastive", "mnrl"],
                   help="loss of the BiLSTM rows (mnrl: in-batch negatives)")
    p.add_argument("--smoke-steps", type=int, default=100, help="optimizer steps of the fine-tuned transformer rows")
    p.add_argument("--smoke-batch", type=int, default=16)
    p.add_argument("--smoke-val-posts", type=int, default=200)
    p.add_argument("--body-max-words", type=int, default=tb.DEFAULT_BODY_MAX_WORDS,
                   help="words kept of each body (head_tail truncation), every row")
    p.add_argument("--body-max-length", type=int, default=128,
                   help="tokens of a body for the MiniLM rows (zero-shot, frozen and top-layer rows)")
    p.add_argument("--top-layers", type=int, nargs="+", default=[1, 2, 3],
                   help="N of the pseudo_topN / siamese_topN rows")
    p.add_argument("--top-posts", type=int, default=0, help="training posts of the top-layer rows (0: all)")
    p.add_argument("--top-epochs", type=int, default=1)
    p.add_argument("--top-batch", type=int, default=64)
    p.add_argument("--top-lr", type=float, default=5e-5)
    p.add_argument("--matching-epochs", type=int, default=3, help="epochs of the siamese_matching row")
    p.add_argument("--adapt", nargs="*", default=[], metavar="ROW",
                   help="after the rows, run `qpairs adapt` (calibration and threshold, 5-fold) on each of these rows "
                        "with --adapt-posts labelled posts of the held-out site outside the test sample; evaluated "
                        "as ROW+adaptN on the same test posts")
    p.add_argument("--adapt-posts", type=int, default=200)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx", "onnx-int8"],
                   help="how the test posts are encoded: auto (zero-shot and frozen rows from the bf16 base cache, "
                        "the others as `qpairs.load` picks, onnx-int8 on a CPU) or one backend for every row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (training and evaluation)")
    p.add_argument("--reevaluate", action="store_true", help="evaluate rows again even when OUT/<row> has a result")
    return p.parse_args(argv)


class Experiment:
    """The shared split, the shared base cache and the evaluation every row goes through."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        path = args.data or tb.default_title_body_file()
        t0 = time.perf_counter()
        posts = tb.load_posts(path, max_words=args.body_max_words)  # head_tail truncation
        parts = tb.cross_site_split(posts, args.test_site, seed=args.seed)
        rng_state = args.seed
        self.train_posts = parts["train"].sample(frac=1.0, random_state=rng_state).reset_index(drop=True)
        self.val_posts = parts["validation"].sample(n=min(args.val_posts, len(parts["validation"])),
                                                    random_state=rng_state).reset_index(drop=True)
        self.test_posts = parts["test"].sample(n=min(args.test_posts, len(parts["test"])),
                                               random_state=rng_state).reset_index(drop=True)
        rest = parts["test"][~parts["test"]["post_id"].isin(self.test_posts["post_id"])]  # for `adapted` rows
        self.adapt_posts = rest.sample(n=min(args.adapt_posts, len(rest)), random_state=rng_state).reset_index(drop=True)
        self.cache = None
        self.results: dict[str, dict] = {}
        self.suffix = "" if args.backend == "auto" else f"_{args.backend}"  # one result file per backend
        info = {"file": str(path), "test_site": args.test_site, "train_sites": sorted(self.train_posts["site"].unique()),
                "train_posts_available": len(self.train_posts), "val_posts": len(self.val_posts),
                "test_posts": len(self.test_posts), "candidates": args.candidates, "seed": args.seed,
                "truncation": tb.DEFAULT_TRUNCATION, "body_max_words": args.body_max_words,
                "body_max_length": args.body_max_length,
                "load_seconds": round(time.perf_counter() - t0, 1)}
        write_json(self.out / "split.json", info)
        log.info("split: %s", info)

    # ------------------------------------------------------------ data for one row

    def splits(self, n_train: int, n_val: int | None = None, train_pairs=None) -> dict:
        """Pair frames: the first `n_train` training posts (same order for every row), validation, a small test."""
        seed = self.args.seed
        val = self.val_posts if n_val is None else self.val_posts.iloc[:n_val]
        return {"train": tb.make_pairs(self.train_posts.iloc[:n_train], "mixed", seed) if train_pairs is None
                else train_pairs,
                "validation": tb.make_pairs(val, "mixed", seed + 1),
                "test": tb.make_pairs(self.test_posts.iloc[:100], "mixed", seed + 2)}  # train()'s own short report

    def mined_pairs(self, cfg: TrainConfig, n_train: int):
        """Training pairs of the top-layer rows: each post's own body, and one mined hard negative (see the module
        text). Zero-shot MiniLM is the first-pass model; it runs on the row's token cache (an untrained top-N
        tower with its identity head is zero-shot MiniLM), and its nearest bodies are stored once."""
        from dataclasses import replace

        from qpairs.builders import build_model

        posts = self.train_posts.iloc[:n_train]
        path = self.out / "mined_negatives.npz"
        stored = np.load(path, allow_pickle=True) if path.exists() else None
        if stored is not None and list(stored["post_id"]) == list(posts["post_id"]):
            nearest = stored["nearest"]
        else:
            model = build_model(replace(cfg, variant="siamese").resolved(), [])
            view = top_layer_cache(model, cfg.embedding_cache, torch.device("cpu"))
            titles, bodies = list(posts["title"]), list(posts["body"])
            view.fill(model.encoder, titles + bodies, "cpu", batch_size=256, progress=None)
            t_emb, b_emb = (first_pass_vectors(model, view, texts) for texts in (titles, bodies))
            nearest = tb.nearest_negatives(t_emb, b_emb, posts["body"].to_numpy())
            np.savez(path, post_id=posts["post_id"].to_numpy(), nearest=nearest)
        neg, kinds = tb.mined_negatives(posts, nearest, np.random.default_rng(self.args.seed))
        counts = {k: int((kinds == k).sum()) for k in ("nearest", "tags", "site")}
        log.info("hard negatives by source: %s", counts)
        return tb.make_pairs(posts, seed=self.args.seed, negative_index=neg, negative_kind=kinds), counts

    def base_cache(self):
        if self.cache is None:
            det = zero_shot_detector(None, max_length=self.args.body_max_length, device=self.args.device)
            self.cache = open_cache(det.model.encoder, self.out / "base_cache")
        return self.cache

    def cached_embed(self, det, posts):
        """Title/body embeddings of a frozen-base (or zero-shot) detector: cached MiniLM output → each side's head."""
        cache = self.base_cache()
        t_side, b_side = title_body_sides(det)
        titles, bodies = det.preprocess(list(posts["title"]), t_side), det.preprocess(list(posts["body"]), b_side)
        cache.fill(det.model.encoder, titles + bodies, det.device, batch_size=64)
        with torch.inference_mode():
            return tuple(det.model.side(side).head(cache.lookup(texts).to(det.device)).float().cpu().numpy()
                         for side, texts in ((t_side, titles), (b_side, bodies)))

    # ------------------------------------------------------------ rows

    def signature(self) -> dict:
        """What makes two evaluations comparable: the same test posts, candidates and seed."""
        a = self.args
        return {"data": str(a.data or tb.default_title_body_file()), "test_site": a.test_site,
                "test_posts": a.test_posts, "candidates": a.candidates, "seed": a.seed, "val_posts": a.val_posts,
                **({"backend": a.backend} if a.backend != "auto" else {})}

    def reuse(self, name: str) -> bool:
        """Take a row's stored result when it was evaluated on this very split (see `signature`)."""
        path = self.out / name / f"title_body_metrics{self.suffix}.json"
        if self.args.reevaluate or not path.exists():
            return False
        res = json.loads(path.read_text())
        if res.get("signature") != self.signature():
            return False
        self.results[name] = res
        log.info("%s: reusing %s", name, path)
        return True

    def evaluate(self, name: str, det, scale: str, extra: dict, cached: bool = False) -> None:
        t0 = time.perf_counter()
        embed = self.cached_embed if cached and self.args.backend == "auto" else None  # the cache runs bf16
        kwargs = {"embed": embed} if embed else {}
        res = evaluate_title_body(det, self.test_posts, self.args.candidates, self.args.seed, **kwargs)
        res.update(scale=scale, eval_seconds=round(time.perf_counter() - t0, 1), signature=self.signature(), **extra)
        self.results[name] = res
        write_json(self.out / name / f"title_body_metrics{self.suffix}.json", res)
        self.save()
        row = summary_row(res)
        log.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in row.items()))

    def zero_shot(self) -> None:
        run = self.out / "zero_shot"
        det = zero_shot_detector(None, max_length=self.args.body_max_length, device=self.args.device)
        pairs = tb.make_pairs(self.val_posts, "mixed", self.args.seed + 1)
        tv, bv = self.cached_embed(det, self.val_posts)  # calibration on the validation pairs, via the cache
        pos = {p: i for i, p in enumerate(self.val_posts["post_id"])}
        neg_pos = {b: i for i, b in enumerate(self.val_posts["body"])}
        i = pairs["post_id"].map(pos).to_numpy()
        j = pairs["question2"].map(neg_pos).to_numpy()
        d = det.model.decision_distance(torch.from_numpy(tv[i]), torch.from_numpy(bv[j])).numpy()
        det.calibrator.fit(d, pairs["is_duplicate"].to_numpy())
        if not (run / "model.safetensors").exists():
            det.config["train"] = {"left_col": "title", "right_col": "body", "body_truncation": tb.DEFAULT_TRUNCATION,
                                   "body_max_words": self.args.body_max_words}
            save_model(det.model, run, det.config["train"])
            write_json(run / "calibration.json", det.calibrator.to_dict())
        det = load(run, device=self.args.device, backend=self.args.backend)
        self.evaluate("zero_shot", det, "real (no training)", {"train_posts": 0}, cached=True)

    def trained(self, name: str, cfg: TrainConfig, splits: dict, scale: str, cached: bool, extra=None) -> None:
        run = Path(cfg.out)
        t0 = time.perf_counter()
        if not (run / "calibration.json").exists():
            cfg.resume = run.exists()  # an interrupted run continues from its last checkpoint
            train(cfg, splits)
        history = json.loads((run / "history.json").read_text())
        extra = {"train_posts": int(splits["train"]["post_id"].nunique()), "epochs": len(history),
                 "steps": int(len(history) * np.ceil(len(splits["train"]) / (2 if cfg.loss in ("mnrl", "triplet") else 1)
                                                     / cfg.batch_size)),
                 "train_seconds": round(sum(h.get("train_time_s", 0) for h in history), 1),
                 "wall_seconds_incl_eval": round(time.perf_counter() - t0, 1), "loss": cfg.loss, **(extra or {})}
        self.evaluate(name, load(run, device=self.args.device, backend=self.args.backend), scale, extra, cached=cached)

    def top_cfg(self, name: str) -> TrainConfig:
        """Settings of a top-layer row (pseudo_topN, siamese_topN)."""
        a = self.args
        n_layers = int(name.removeprefix("pseudo_top").removeprefix("siamese_top"))
        length = a.body_max_length
        return self.common(name, variant="pseudo" if name.startswith("pseudo") else "siamese", encoder="transformer",
                           train_top_layers=n_layers, head="residual", projection_dim=384, distance="cosine",
                           loss="mnrl", epochs=a.top_epochs, batch_size=a.top_batch, lr=a.top_lr, right_lr=a.top_lr,
                           max_length=length, right_max_length=length, bf16=True, checkpoint_minutes=10,
                           embedding_cache=str(self.out / f"top_cache_{n_layers}"))

    def common(self, name: str, **kw) -> TrainConfig:
        """The settings every trained row shares, with the row's own `kw`."""
        base = dict(out=str(self.out / name), left_col="title", right_col="body", seed=self.args.seed,
                    device=self.args.device, body_max_words=self.args.body_max_words,
                    progress=None, patience=2, metric="roc_auc")
        return TrainConfig(**{**base, **kw})

    def run_row(self, name: str) -> None:
        a = self.args
        if self.reuse(name):
            return self.save()
        if name == "zero_shot":
            return self.zero_shot()
        if name.startswith(FROZEN):
            loss = "mnrl" if name.endswith("_mnrl") else "contrastive"
            variant = "pseudo" if name.startswith("pseudo") else "siamese"
            cfg = self.common(name, variant=variant, encoder="transformer", freeze_base=True, head="residual",
                              projection_dim=384, distance="cosine", loss=loss, margin=0.5 if loss == "contrastive" else None,
                              epochs=a.frozen_epochs, batch_size=64, lr=1e-3, right_lr=1e-3,
                              max_length=a.body_max_length, right_max_length=a.body_max_length,
                              embedding_cache=str(self.out / "base_cache"))
            return self.trained(name, cfg, self.splits(a.frozen_posts), "real (frozen base, heads trained)", True)
        if name.startswith(TOP):
            cfg = self.top_cfg(name)
            n_train = a.top_posts or len(self.train_posts)
            pairs, counts = self.mined_pairs(cfg, n_train)
            return self.trained(name, cfg, self.splits(n_train, train_pairs=pairs), "real (top layers trained)", False,
                                {"hard_negatives": counts, "top_layers": cfg.train_top_layers})
        if name == "siamese_matching":
            length = a.body_max_length
            cfg = self.common(name, variant="siamese", encoder="transformer", freeze_base=True, head="residual",
                              projection_dim=768, pair_head="matching", distance="cosine", loss="contrastive",
                              margin=0.5, epochs=a.matching_epochs, batch_size=256, lr=1e-3, max_length=length,
                              right_max_length=length, embedding_cache=str(self.out / "base_cache"))
            n_train = a.top_posts or len(self.train_posts)
            pairs, counts = self.mined_pairs(self.top_cfg("siamese_top1"), n_train)
            return self.trained(name, cfg, self.splits(n_train, train_pairs=pairs),
                                "real (frozen base, matching head trained)", True, {"hard_negatives": counts})
        if name in LSTM:
            variant = "pseudo" if name.startswith("pseudo") else "siamese"
            cfg = self.common(name, variant=variant, encoder="lstm", epochs=a.lstm_epochs, batch_size=64,
                              max_length=40, right_max_length=128, loss=a.lstm_loss)
            return self.trained(name, cfg, self.splits(a.lstm_posts), "real", False)
        if name.removesuffix("_mnrl") in SMOKE:
            base, loss = name.removesuffix("_mnrl"), "mnrl" if name.endswith("_mnrl") else "contrastive"
            n_posts = a.smoke_steps * a.smoke_batch // (2 if loss == "contrastive" else 1)  # same steps either way
            kw = dict(variant="siamese", encoder="transformer") if base == "siamese_transformer" else \
                dict(variant="pseudo", left_encoder="lstm" if base == "pseudo_lstm_transformer" else "transformer",
                     right_encoder="transformer")
            cfg = self.common(name, **kw, head="residual", projection_dim=384, distance="cosine", loss=loss,
                              margin=0.5 if loss == "contrastive" else None, epochs=1, batch_size=a.smoke_batch,
                              max_length=40, right_max_length=128, lr=2e-5, right_lr=2e-5)
            if base == "pseudo_lstm_transformer":
                cfg.lr = 2e-3
            return self.trained(name, cfg, self.splits(n_posts, a.smoke_val_posts), "SMOKE (CPU, few steps)", False)
        raise ValueError(f"unknown row {name!r}")

    def adapted(self, row: str) -> None:
        """`qpairs adapt` of a trained row on labelled pairs of held-out-site posts outside the test sample
        (each post's own body and one mixed random/tag negative), evaluated like every row."""
        from qpairs.adapt import adapt

        name = f"{row}+adapt{len(self.adapt_posts)}"
        if self.reuse(name):
            return self.save()
        run, out = self.out / row, self.out / name
        pairs = tb.make_pairs(self.adapt_posts, "mixed", self.args.seed + 3)
        out.mkdir(parents=True, exist_ok=True)
        data = out / "adapt_pairs.csv.gz"
        pairs[["question1", "question2", "is_duplicate"]].to_csv(data, index=False)
        adapt(run, data, out / "run", device=self.args.device)
        base = self.results.get(row, {})
        cached = row == "zero_shot" or row.startswith(FROZEN)
        self.evaluate(name, load(out / "run", device=self.args.device, backend=self.args.backend), f"{base.get('scale', '')}, then adapted",
                      {"train_posts": base.get("train_posts", 0), "adapt_posts": len(self.adapt_posts)}, cached)

    # ------------------------------------------------------------ output

    def table(self) -> str:
        head = ["row", "scale", "train posts"] + list(SUMMARY_COLUMNS)
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, r in self.results.items():
            row = summary_row(r)
            lines.append("| " + " | ".join([name, r["scale"], str(r.get("train_posts", ""))] +
                                            [f"{row[c]:.4f}" for c in SUMMARY_COLUMNS]) + " |")
        return "\n".join(lines)

    def save(self) -> None:
        write_json(self.out / f"compare{self.suffix}.json", self.results)
        (self.out / f"compare{self.suffix}.md").write_text(self.table() + "\n")


@torch.inference_mode()
def first_pass_vectors(model, view, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Normalised vectors of cached `texts` through `model`'s (untrained) top layers and head, in length order."""
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), model.encoder.dim), dtype=np.float32)
    model.eval()
    with step_autocast(torch.device("cpu"), bf16=True):  # bf16 only where the CPU has it natively (else far slower)
        for s in range(0, len(texts), batch_size):
            rows = order[s : s + batch_size]
            out[rows] = model.encoder.head(view.lookup([texts[i] for i in rows])).float().numpy()
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    for r in args.rows:  # frozen rows once per loss, top-layer rows once per N
        if r in TOP:
            rows += [f"{r}{n}" for n in args.top_layers]
        elif r in FROZEN:
            rows += [r if loss == "contrastive" else f"{r}_{loss}" for loss in args.frozen_losses]
        else:
            rows.append(r)
    exp = Experiment(args)
    for name in rows:
        exp.run_row(name)
    for name in args.adapt:
        exp.adapted(name)
    print(f"\nTitle → body on held-out site {args.test_site!r}: {len(exp.test_posts)} posts, "
          f"{args.candidates} candidates per title, balanced pairs (random / hard = same site + shared tag)\n")
    print(exp.table())
    print(f"\nwritten to {exp.out}/compare{exp.suffix}.json and compare{exp.suffix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
