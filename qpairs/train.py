"""Training: data → splits → model → AdamW loop with validation, early stopping, calibration, report.

`train(TrainConfig(...))` is what `qpairs train` runs. A run directory is written as it
goes (see `qpairs.checkpoint`); `resume=True` continues from its ``last/`` state, saved at each
epoch end and every ``checkpoint_minutes`` within an epoch. The batch order of an epoch follows
from the seed alone, so a resumed epoch skips the batches already trained and goes on exactly.

Longer than 350 lines because the training loop, its resumable checkpoints and its validation read best in one
place.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import data as qdata
from . import distributed
from .calibration import Calibrator
from .checkpoint import read_json, save_model, state_to_save, write_json
from .encoders import DEFAULT_BASE, LSTMEncoder, build_encoder
from .encoding import forward_texts
from .matching import bound_head, cached_tokens, require_token_cache
from .objective import Objective, make_pair_head, pair_batches
from .config import TrainConfig
from .distill import teacher_label_files
from .metrics import HIGHER_IS_BETTER, classification_metrics, format_table
from .model import SiameseModel
from .vocab import PieceVocab, WordVocab, glove_vectors, glove_words, minilm_piece_vectors, minilm_word_vectors

log = logging.getLogger("qpairs")
LAST = "last"  # resumable state inside a run directory


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_splits(cfg: TrainConfig, run_dir: Path) -> dict:
    """Load the data, split it and save the held-out splits into the run directory."""
    if cfg.left_col or cfg.right_col:  # title/body posts → pair sets (qpairs.title_body)
        from .title_body import load_title_body_splits

        return load_title_body_splits(cfg, run_dir, write=distributed.is_main())
    files = cfg.data or [str(p) for p in qdata.qqp_files()]
    report = qdata.LoadReport()
    frame = qdata.load_pairs(files, on_bad_row=cfg.on_bad_row, report=report)
    frame = frame[frame["is_duplicate"] >= 0]
    splits, info = qdata.make_splits(frame, seed=cfg.seed, by=cfg.split_by, eval_rate=cfg.eval_rate)
    train = splits["train"]
    held_out = [splits["validation"], splits["test"]]
    if cfg.extra_train:
        extra = without_pairs(qdata.load_pairs(cfg.extra_train, on_bad_row=cfg.on_bad_row), held_out)
        extra = without_pairs(extra[extra["is_duplicate"] >= 0], [train])
        log.info("training split: +%d pairs from %s", len(extra), ", ".join(cfg.extra_train))
        train = pd.concat([train, extra], ignore_index=True)
        info["extra_train_pairs"] = len(extra)
    if cfg.infer_negatives:
        train = add_inferred_negatives(train, cfg.infer_negatives, held_out, cfg.seed)
        info["inferred_negatives"] = int((train["source"] == "inferred_negative").sum())
    teacher_files = teacher_label_files(cfg, run_dir, splits["train"], held_out)  # --teacher-labels or --teacher
    if teacher_files:
        train = with_teacher_targets(train, teacher_files, cfg.distill_weight)
        info["teacher_targets"] = int(train["target"].ne(train["is_duplicate"]).sum())
    if cfg.balance == "subsample":
        train = qdata.subsample_to_rate(train, cfg.train_pos_rate, cfg.seed)
    if cfg.max_train_pairs and len(train) > cfg.max_train_pairs:
        train = train.sample(n=cfg.max_train_pairs, random_state=cfg.seed).reset_index(drop=True)
    splits["train"] = train
    info.update(load=str(report), files=[str(f) for f in files], balance=cfg.balance,
                train_size=len(train), train_duplicate_rate=float(train["is_duplicate"].mean()))
    if distributed.is_main():  # every rank loads the same splits; one writes them
        (run_dir / "splits").mkdir(parents=True, exist_ok=True)
        for name in ("validation", "test"):
            splits[name].to_csv(run_dir / "splits" / f"{name}.csv.gz", index=False)
        write_json(run_dir / "splits" / "info.json", info)
    log.info("data: %s", report)
    log.info("splits: %s", info["sizes"])
    return splits


def without_pairs(frame, others):
    """`frame` minus the pairs (unordered, normalised key) that appear in any frame of `others`."""
    taken = {qdata.pair_key(a, b) for f in others for a, b in zip(f["question1"], f["question2"])}
    keep = [qdata.pair_key(a, b) not in taken for a, b in zip(frame["question1"], frame["question2"])]
    return frame[np.asarray(keep, dtype=bool)].reset_index(drop=True)


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


def lstm_inputs(cfg: TrainConfig, train_texts):
    """(vocabulary, initial vectors or None, embedding size) of a BiLSTM: words of the training texts with
    GloVe / MiniLM-derived vectors, or MiniLM's WordPiece tokens with their own vectors (--tokens)."""
    if cfg.tokens == "wordpiece":
        vocab = PieceVocab.from_base(cfg.base_model)
        vectors = minilm_piece_vectors(cfg.embedding_dim, cfg.base_model) if cfg.word_vectors == "minilm" else None
        log.info("WordPiece tokens: %d pieces, %s", len(vocab),
                 "MiniLM piece vectors" if vectors is not None else "random vectors")
    else:
        keep = glove_words() if cfg.word_vectors != "none" else ()  # rare words worth a pretrained vector
        vocab = WordVocab.build(train_texts, min_freq=cfg.min_freq, keep=keep)
        vectors, hits = {"glove": lambda: glove_vectors(vocab), "none": lambda: (None, 0),
                         "minilm": lambda: minilm_word_vectors(vocab, cfg.embedding_dim)}[cfg.word_vectors]()
        if vectors is not None:
            log.info("%s word vectors (%d-d): %d of %d vocabulary words initialised", cfg.word_vectors,
                     vectors.shape[1], hits, len(vocab))
    return vocab, vectors, cfg.embedding_dim if vectors is None else vectors.shape[1]


def build_model(cfg: TrainConfig, train_texts) -> SiameseModel:
    """A fresh Siamese model for `cfg` (the LSTM vocabulary comes from the training texts)."""
    if cfg.encoder == "lstm":
        vocab, vectors, embedding_dim = lstm_inputs(cfg, train_texts)
        encoder = LSTMEncoder(vocab, embedding_dim=embedding_dim, hidden_size=cfg.hidden_size,
                              num_layers=cfg.num_layers, pooling=cfg.pooling, projection_dim=cfg.projection_dim,
                              normalize=cfg.normalize, dropout=cfg.dropout, max_length=cfg.max_length,
                              embeddings=vectors, tokens=cfg.tokens)
        if cfg.freeze_embeddings:
            encoder.embedding.weight.requires_grad_(False)
    elif cfg.encoder == "transformer":
        encoder = build_encoder(dict(type="transformer", base_model=cfg.base_model or DEFAULT_BASE,
                                     pooling=cfg.pooling, projection_dim=cfg.projection_dim,
                                     normalize=cfg.normalize, max_length=cfg.max_length,
                                     head=cfg.head, frozen_base=cfg.freeze_base))
    else:
        raise ValueError(f"unknown encoder {cfg.encoder!r}; use lstm or transformer")
    return SiameseModel(encoder, cfg.distance)


def build_pseudo_model(cfg: TrainConfig, train_df) -> SiameseModel:
    """A pseudo-Siamese model: left and right encoders with unshared weights, projected into one space.

    Each side is built as `build_model` builds a Siamese encoder, from its own texts (an LSTM's
    vocabulary) and settings (right: --right-encoder, --right-pooling, --right-max-length). A BiLSTM
    beside a transformer projects to the transformer's size. Two encoders of one type start from the
    same weights (two BiLSTMs share one vocabulary of both sides' texts; two transformers the same
    head), so training starts at the Siamese solution and lets the sides drift apart. With
    --freeze-base both sides read at --right-max-length, so one cache of the frozen base serves both heads.
    """
    from dataclasses import replace

    left_len = cfg.right_max_length if cfg.freeze_base else cfg.max_length
    left_texts, right_texts = list(train_df["question1"]), list(train_df["question2"])
    if cfg.left_encoder == cfg.right_encoder == "lstm":
        left_texts = right_texts = left_texts + right_texts
    sides = {"left": (replace(cfg, encoder=cfg.left_encoder, max_length=left_len), left_texts),
             "right": (replace(cfg, encoder=cfg.right_encoder, pooling=cfg.right_pooling,
                               max_length=cfg.right_max_length), right_texts)}
    built = {}
    for side in sorted(sides, key=lambda s: sides[s][0].encoder != "transformer"):  # transformers first
        side_cfg, texts = sides[side]
        if side_cfg.encoder == "lstm" and built:
            side_cfg = replace(side_cfg, projection_dim=next(iter(built.values())).dim)
        built[side] = build_model(side_cfg, texts).encoder
    left, right = built["left"], built["right"]
    if left.config["type"] == right.config["type"] == "transformer":
        right.head.load_state_dict(left.head.state_dict())
    elif left.config["type"] == right.config["type"] == "lstm":
        right.load_state_dict(left.state_dict())
    return SiameseModel(left, cfg.distance, right)


def param_groups(model: SiameseModel, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: the right encoder of a pseudo-Siamese model trains at --right-lr."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if model.variant != "pseudo":
        return [{"params": trainable}]
    right = {id(p) for p in model.right_encoder.parameters()}
    return [{"params": [p for p in trainable if id(p) not in right]},
            {"params": [p for p in trainable if id(p) in right], "lr": cfg.right_lr or cfg.lr}]


def batch_loss(model: SiameseModel, objective: Objective, batch, device, cache=None) -> torch.Tensor:
    """Embed a training batch (left/right texts) and return its loss (run through `net` for DDP)."""
    with autocast(device):
        e1, e2 = embed_pairs(model, batch.left, batch.right, device, cache)
    head = bound_head(model, cached_tokens(model, cache, batch.left, batch.right))  # a matching head: token states
    return objective.loss(batch, e1.float(), e2.float(), head)


def embed_pairs(model: SiameseModel, q1, q2, device, cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed both sides (`SiameseModel.embed_pairs`: a Siamese model runs one forward pass over both halves).

    With `cache` (an `EmbeddingCache` of a frozen base) only the heads run, on cached base outputs.
    """
    if cache is not None:
        return model.embed_pairs(q1, q2, lambda texts, side: model.side(side).head(cache.lookup(texts).to(device)))
    return model.embed_pairs(q1, q2, lambda texts, side: forward_texts(model.side(side), texts, device))


def base_cache(cfg: TrainConfig, model: SiameseModel, run_dir: Path, frames, device, show):
    """The frozen base's outputs for every text of `frames`, computed once (see `qpairs.embcache`)."""
    from .tokencache import open_cache

    if cfg.encoder != "transformer" or (model.variant == "pseudo" and (cfg.right_encoder, cfg.right_pooling) != ("transformer", cfg.pooling)):
        raise ValueError("--freeze-base needs --encoder transformer (pseudo: two transformers, one pooling)")
    cache = open_cache(model.encoder, cfg.embedding_cache or run_dir / "embedding_cache")
    require_token_cache(model, cache)
    texts = [t for f in frames for col in ("question1", "question2") for t in f[col]]
    cache.fill(model.encoder, texts, device, batch_size=max(cfg.batch_size, 256), progress=show)
    return cache


def lr_lambda(total_steps: int, warmup: float):
    warm = max(1, int(total_steps * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


@torch.no_grad()
def validate_and_calibrate(model, loss_fn, frame, device, batch_size, calibration: str,
                           cache=None, threshold: str = "accuracy") -> tuple[dict, Calibrator, np.ndarray]:
    """Validation loss and metrics; fits the calibrator and its `threshold` rule on this (validation) data.

    Under torchrun each rank embeds the rows ``rank::world`` and the distances are gathered,
    so every rank fits the same calibrator and sees the same metrics (and stops at the same epoch).
    """
    model.eval()
    dists, losses = [], []
    part = frame.iloc[distributed.rank() :: distributed.world_size()]
    for q1, q2, y, w in pair_batches(part, batch_size * 2, False, 0):
        with autocast(device):
            e1, e2 = embed_pairs(model, q1, q2, device, cache)
        e1, e2 = e1.float(), e2.float()
        losses.append(float(loss_fn(e1, e2, y.to(device))) * len(q1))
        dists.append(model.decision_distance(e1, e2, cached_tokens(model, cache, q1, q2)).cpu().numpy())
    d = distributed.gather_strided(np.concatenate(dists) if dists else np.zeros(0, np.float32))
    labels = frame["is_duplicate"].to_numpy()
    cal = fit_calibrator(calibration, d, labels, threshold)
    m = classification_metrics(labels, cal.predict_proba(d), cal.threshold)
    m["loss"] = distributed.all_sum(sum(losses))[0] / len(frame)
    model.train()
    return m, cal, d


def fit_calibrator(method: str, distances, labels, threshold: str = "accuracy") -> Calibrator:
    """A calibrator at the `threshold` rule; an out-of-reach precision target keeps the accuracy cut and is
    marked 'unreachable' (`check_operating_point` refuses it once training is over)."""
    from .operating_point import OperatingPointError

    try:
        return Calibrator(method).fit(distances, labels, threshold)
    except OperatingPointError as exc:
        cal = Calibrator(method).fit(distances, labels)
        cal.operating_point["unreachable"] = f"--threshold {threshold}: {exc}"
        return cal


def check_operating_point(run_dir: Path) -> None:
    """Refuse a run whose best checkpoint could not reach its --threshold target on validation."""
    from .operating_point import OperatingPointError

    point = read_json(run_dir / "calibration.json").get("operating_point") or {}
    if "unreachable" in point:
        raise OperatingPointError(f"{point['unreachable']} (validation split of {run_dir}); the run is saved "
                                  "with the accuracy threshold")


def autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ---------------------------------------------------------------- resumable state

def save_last(run_dir: Path, model, optimizer, scheduler, state: dict, train_config: dict | None = None) -> None:
    """Everything needed to resume where training stands (safetensors + JSON, no pickle): a complete model
    directory plus optimizer, scheduler and RNG state, and ``state`` (epochs done, position in the next one).

    Written into ``last.new/`` and swapped in by renames, so a kill at any moment leaves a complete ``last/``
    (or ``last.old/``) behind."""
    import shutil

    new, last, old = (run_dir / n for n in (LAST + ".new", LAST, LAST + ".old"))
    shutil.rmtree(new, ignore_errors=True)
    save_model(model, new, train_config)
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    tensors["__torch_rng__"] = torch.get_rng_state()  # dropout draws continue exactly after a resume
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["__cuda_rng__"] = torch.cuda.get_rng_state()
    save_file(tensors, new / "optimizer.safetensors")
    write_json(new / "optimizer.json", {"param_groups": opt["param_groups"], "scalars": scalars,
                                        "scheduler": scheduler.state_dict()})
    write_json(new / "state.json", state)  # its presence marks a complete save
    shutil.rmtree(old, ignore_errors=True)
    if last.exists():
        os.replace(last, old)
    os.replace(new, last)
    shutil.rmtree(old, ignore_errors=True)


def last_dir(run_dir: Path) -> Path | None:
    """The complete resumable state of a run (``last/``, or ``last.old/`` after a kill mid-swap), if any."""
    for d in (run_dir / LAST, run_dir / (LAST + ".old")):
        if (d / "state.json").exists():
            return d
    return None


def load_last(run_dir: Path, model, optimizer, scheduler) -> dict | None:
    last = last_dir(run_dir)
    if last is None:
        return None
    model.load_state_dict(load_file(last / "model.safetensors"), strict=False)
    meta = read_json(last / "optimizer.json")
    tensors = load_file(last / "optimizer.safetensors")
    torch.set_rng_state(tensors.pop("__torch_rng__"))
    cuda_rng = tensors.pop("__cuda_rng__", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = torch.tensor(v)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    return read_json(last / "state.json")


def saved_run(run_dir: Path) -> Path | None:
    """Where a run to resume keeps its model and settings: ``last/`` (also mid-epoch 1), else the run itself."""
    for d in (last_dir(run_dir), run_dir):
        if d is not None and (d / "config.json").exists():
            return d
    return None


class CheckpointClock:
    """Says when a mid-epoch checkpoint is due: every `minutes` (0 or less: never)."""

    def __init__(self, minutes: float):
        self.every = minutes * 60
        self.reset()

    def reset(self) -> None:
        self.next = time.monotonic() + self.every

    def due(self) -> bool:
        if self.every <= 0 or time.monotonic() < self.next:
            return False
        self.reset()
        return True


# ---------------------------------------------------------------- the loop

def train(cfg: TrainConfig, splits: dict | None = None) -> Path:
    """Train, validate every epoch, keep the best checkpoint, calibrate, and report on the test split.

    `splits` (train/validation/test frames) replaces loading `cfg.data`, e.g. to share one split in a benchmark.
    """
    cfg = cfg.resolved()
    run_dir = Path(cfg.out)
    if run_dir.exists() and any(run_dir.iterdir()) and not cfg.resume:
        raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")
    device = distributed.setup(cfg.device)  # joins the torchrun process group, if there is one
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if not distributed.is_main():
        log.setLevel(logging.WARNING)  # rank 0 logs
    run_dir.mkdir(parents=True, exist_ok=True)
    source = saved_run(run_dir) if cfg.resume else None  # the model and settings to continue
    saved = read_json(source / "config.json").get("train", {}) if source is not None else {}
    epochs = cfg.epochs if cfg.epochs is not None else saved.get("epochs", TrainConfig.epochs)  # None: the run's
    if source is not None:
        cfg = TrainConfig(**{**saved, "resume": True, "out": cfg.out, "epochs": epochs, "device": cfg.device,
                             "progress": cfg.progress, "checkpoint_minutes": cfg.checkpoint_minutes})
    cfg.epochs = epochs
    log.info("%s the run in %s", "continuing" if source else "writing", run_dir.resolve())
    seed_everything(cfg.seed)
    show = cfg.progress if distributed.is_main() else False  # tqdm: None → only on a TTY

    splits = splits or load_splits(cfg, run_dir)
    train_df, val_df, test_df = splits["train"], splits["validation"], splits["test"]
    if len(val_df) == 0 or val_df["is_duplicate"].nunique() < 2:
        raise ValueError("validation split has no pairs of both classes: give more data (files with both labels)")
    if source is not None:  # the vocabulary must be the saved one
        from .checkpoint import load_model as _load

        model, _ = _load(source, "cpu")
    elif cfg.variant == "pseudo":
        model = build_pseudo_model(cfg, train_df)
    else:
        model = build_model(cfg, list(train_df["question1"]) + list(train_df["question2"]))
    if model.pair_head is None:
        model.pair_head = make_pair_head(cfg, model.dim, model.encoder)  # --pair-head classifier|matching, else None
    model.to(device).train()
    net = distributed.wrap_for_training(model, device)  # DDP under torchrun: run the training forward as net(fn, ...)
    with distributed.main_first():  # rank 0 fills the cache, the others then read it
        cache = base_cache(cfg, model, run_dir, (train_df, val_df), device, show) if cfg.freeze_base else None
    weights = qdata.class_weights(train_df["is_duplicate"].to_numpy(), cfg.train_pos_rate) if cfg.balance == "weight" else None
    objective = Objective(cfg, train_df, weights)  # the --loss and the batches (pairs or triplets) it needs
    loss_fn = objective.validation_loss
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(distributed.shard_size(len(objective)) / cfg.batch_size)  # per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * cfg.epochs, cfg.warmup))
    train_config = asdict(cfg)

    state = load_last(run_dir, model, optimizer, scheduler) if cfg.resume else None
    state = state or {"epoch": 0, "step": 0, "history": [], "best": None, "bad_epochs": 0}
    done = state.get("step", 0)  # batches already trained of epoch state["epoch"] + 1
    if state["epoch"] or done:
        log.info("resuming after epoch %d%s", state["epoch"], f", step {done}/{steps_per_epoch}" if done else "")
    higher = HIGHER_IS_BETTER[cfg.metric]
    bar = tqdm(total=steps_per_epoch * cfg.epochs, initial=state["epoch"] * steps_per_epoch + done, unit="step",
               desc="training", disable=None if show is None else not show, dynamic_ncols=True)
    clock = CheckpointClock(cfg.checkpoint_minutes)

    with logging_redirect_tqdm(), bar:  # log lines print above the bar
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if state["bad_epochs"] > cfg.patience:
                break
            partial = state.pop("partial", None) or {"seen": 0, "total": 0.0, "train_time_s": 0.0}
            seen, total, step = partial["seen"], partial["total"], state.pop("step", 0)
            t0 = time.perf_counter() - partial["train_time_s"]
            batches = objective.batches(cfg.batch_size, cfg.seed + epoch, shard=True)  # the same order every time
            for batch in islice(batches, step, None):
                loss = net(batch_loss, objective, batch, device, cache)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += batch.size
                total += float(loss.detach()) * batch.size
                bar.update()
                bar.set_postfix(epoch=f"{epoch}/{cfg.epochs}", loss=f"{total / seen:.4f}",
                                pairs_s=f"{seen / (time.perf_counter() - t0):.0f}")
                if step < steps_per_epoch and clock.due() and distributed.is_main():
                    mid = {"seen": seen, "total": total, "train_time_s": time.perf_counter() - t0}
                    save_last(run_dir, model, optimizer, scheduler, {**state, "step": step, "partial": mid},
                              train_config)
            train_time = time.perf_counter() - t0
            total, seen = distributed.all_sum(total, seen)  # over all processes
            if not distributed.parameters_in_sync(model):
                raise RuntimeError("DDP processes hold different weights: a forward pass bypassed the DDP wrapper")
            metrics, cal, _ = validate_and_calibrate(model, loss_fn, val_df, device, cfg.batch_size, cfg.calibration, cache,
                                       cfg.threshold)
            row = {"epoch": epoch, "train_loss": total / max(seen, 1), "pairs_per_s": seen / train_time,
                   "train_time_s": train_time,
                   **{f"val_{k}": v for k, v in metrics.items()}}
            state["history"].append(row)
            score = metrics[cfg.metric]
            improved = state["best"] is None or (score > state["best"] if higher else score < state["best"])
            log.info("epoch %d: train loss %.4f, val %s %.4f, val acc %.4f, %.0f pairs/s%s", epoch, row["train_loss"],
                     cfg.metric, score, metrics["accuracy"], row["pairs_per_s"], " (best)" if improved else "")
            if improved:
                state["best"], state["bad_epochs"] = score, 0
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            if distributed.is_main():  # one writer; all ranks hold the same weights and state
                if improved:
                    save_model(model, run_dir, train_config)
                    write_json(run_dir / "calibration.json", cal.to_dict())
                write_json(run_dir / "history.json", state["history"])
                save_last(run_dir, model, optimizer, scheduler, state, train_config)
                clock.reset()

    if distributed.is_main():  # the final evaluation runs on rank 0 alone
        finish(run_dir, val_df, test_df, state["history"], device)
    distributed.cleanup()
    check_operating_point(run_dir)
    return run_dir


def finish(run_dir: Path, val_df, test_df, history, device) -> dict:
    """Evaluate the best checkpoint on validation and test, write metrics.json and the test report."""
    from .detector import load
    from .evaluate import evaluate_frame

    det = load(run_dir, device=str(device), backend="torch")  # the model as trained (CPU default: int8 ONNX)
    results = {"validation": evaluate_frame(det, val_df)[0]}
    if len(test_df):
        results["test"], _ = evaluate_frame(det, test_df, report_dir=run_dir / "report", history=history)
    write_json(run_dir / "metrics.json", results)
    print(format_table(results))
    from .operating_point import describe

    line = describe(det.calibrator.operating_point, results["test"]) if "test" in results else None
    if line:
        print("test: " + line)
    return results
