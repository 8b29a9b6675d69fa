"""Training: data → splits → model → AdamW loop with validation, early stopping, calibration, report.

`train(TrainConfig(...))` is what `qpairs train` runs. The pieces live beside it: the training
data in `qpairs.splits`, fresh models in `qpairs.builders`, the loss of a batch in
`qpairs.objective`, the run directory (best model, ``history.json``, resumable ``last/``) in
`qpairs.checkpoint`, and the metrics of a calibrated model in `qpairs.evaluate`. Each epoch's validation and the
final evaluation (metrics.json) compute distances by one function, `frame_distances` (a frozen base: from its
cache, which holds the test texts too), so the best epoch's row of history.json is metrics.json's. `resume=True`
continues from ``last/``, saved at each epoch end and every ``checkpoint_minutes`` within an epoch. The batch
order of an epoch follows from the seed alone, so a resumed epoch skips the batches already trained exactly.
"""
from __future__ import annotations

import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

from . import data as qdata
from . import distributed
from .builders import build_model, build_pseudo_model, check_base_layers, param_groups
from .calibration import Calibrator, fit_calibrator
from .checkpoint import load_model, read_json, saved_weight, write_json
from .config import TrainConfig
from .evaluate import calibrated_metrics
from .matching import needs_tokens, require_token_cache
from .metrics import HIGHER_IS_BETTER, format_table
from .model import SiameseModel
from .objective import Objective, make_pair_head, pair_batches
from .splits import check_same_held_out, load_splits
from .progress import progress_bar
from .resume import CheckpointClock, check_out, load_last, resumed_config, save_epoch, save_last, write_settings
from .warmstart import start_from

log = logging.getLogger("qpairs")


MIN_VALIDATION_CLASS = 10  # fewer validation pairs of a class than this, and calibration is a guess


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def base_cache(cfg: TrainConfig, model: SiameseModel, run_dir: Path, frames, device, show):
    """The frozen base's outputs for every text of `frames`, computed once (see `qpairs.embcache`); under
    --train-top-layers the output of the layer below the trained ones, read through a `TopLayerView`."""
    from .tokencache import open_cache

    directory = cfg.embedding_cache or run_dir / "embedding_cache"
    if cfg.train_top_layers:
        cache = top_layer_cache(model, directory, device)
    else:
        one_pooling = (cfg.right_encoder, cfg.right_pooling) == ("transformer", cfg.pooling)
        if cfg.encoder != "transformer" or (model.variant == "pseudo" and not one_pooling):
            raise ValueError("--freeze-base needs --encoder transformer (pseudo: two transformers, one pooling)")
        cache = open_cache(model.encoder, directory)
    require_token_cache(model, cache)
    texts = [t for f in frames for col in ("question1", "question2") for t in f[col]]
    cache.fill(model.encoder, texts, device, batch_size=max(cfg.batch_size, 256), progress=show)
    return cache


def top_layer_cache(model: SiameseModel, directory, device):
    """A `TopLayerView` of the token cache of layer L−N's output; a pseudo-Siamese model's towers must share
    that bottom (one cache) and each run its own top layers."""
    from .tokencache import TopLayerView, base_key, open_token_cache

    left, right = model.encoder, model.right_encoder
    layer = left.cut
    if right is not None and (right.config.get("train_top_layers") != left.config["train_top_layers"]
                              or right.config["max_length"] != left.config["max_length"]
                              or base_key(right, layer) != base_key(left, layer)):
        raise ValueError("--train-top-layers with --variant pseudo needs two transformer towers on one base, read "
                         "at one length (their frozen bottom layers share one cache)")
    return TopLayerView(open_token_cache(left, directory, device=device, layer=layer), left, right)


def warn_if_bf16_is_slow(cfg: TrainConfig, device) -> None:
    """Say so when --bf16 is asked for on a CPU without native bf16: its steps then run in float32."""
    from .tokencache import resolve_precision

    if cfg.bf16 and device.type == "cpu" and resolve_precision("auto", device) != "bf16":
        log.warning("--bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 autocast runs several "
                    "times slower than float32; the training steps run in float32")


def lr_lambda(total_steps: int, warmup: float):
    warm = max(1, int(total_steps * warmup))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return f


def scored_batches(model, objective: Objective, frame, batch_size: int):
    """(e1, e2, labels, distances) of `frame`'s pairs in frame order, ``2 × batch_size`` at a time: embedded by
    `objective.embed` (a frozen base: from the training cache), a matching head reading the cached token states."""
    for q1, q2, y, _ in pair_batches(frame, batch_size * 2, False, 0):
        e1, e2, tokens = objective.embed_with_tokens(model, q1, q2)
        yield e1, e2, y, model.decision_distance(e1, e2, tokens).cpu().numpy()


@torch.no_grad()
def frame_distances(model, objective: Objective, frame, batch_size: int) -> np.ndarray:
    """The model's distances of `frame`'s pairs exactly as `validate_and_calibrate` computes them, in one process:
    each rank's rows ``rank::world`` in `scored_batches`, reassembled in frame order (the final evaluation)."""
    model.eval()
    world = distributed.world_size()
    return distributed.interleave([_concat([d for *_, d in scored_batches(model, objective, frame.iloc[r::world],
                                                                         batch_size)]) for r in range(world)])


def _concat(parts: list) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


@torch.no_grad()
def validate_and_calibrate(model, objective: Objective, frame, batch_size: int, calibration: str,
                           threshold: str = "accuracy") -> tuple[dict, Calibrator, np.ndarray]:
    """Validation loss and metrics (`calibrated_metrics`, as every evaluation computes them); fits the
    calibrator and its `threshold` rule on this (validation) data.

    Under torchrun each rank embeds the rows ``rank::world`` and the distances are gathered,
    so every rank fits the same calibrator and sees the same metrics (and stops at the same epoch).
    """
    model.eval()
    dists, losses = [], []
    part = frame.iloc[distributed.rank() :: distributed.world_size()]
    for e1, e2, y, d in scored_batches(model, objective, part, batch_size):
        losses.append(float(objective.validation_loss(e1, e2, y.to(objective.device))) * len(y))
        dists.append(d)
    d = distributed.gather_strided(_concat(dists))
    labels = frame["is_duplicate"].to_numpy()
    cal = fit_calibrator(calibration, d, labels, threshold)
    m, _ = calibrated_metrics(cal, d, labels)
    m["loss"] = distributed.all_sum(sum(losses))[0] / len(frame)
    model.train()
    return m, cal, d


def check_operating_point(run_dir: Path) -> None:
    """Refuse a run whose best checkpoint could not reach its --threshold target on validation."""
    from .operating_point import OperatingPointError

    point = read_json(run_dir / "calibration.json").get("operating_point") or {}
    if "unreachable" in point:
        raise OperatingPointError(f"{point['unreachable']} (validation split of {run_dir}); the run is saved "
                                  "with the accuracy threshold")


# ---------------------------------------------------------------- the loop

def train(cfg: TrainConfig, splits: dict | None = None) -> Path:
    """Train, validate every epoch, keep the best checkpoint, calibrate, and report on the test split.

    `splits` (train/validation/test frames) replaces loading `cfg.data`, e.g. to share one split in a benchmark.
    """
    given, cfg = cfg, cfg.resolved()  # `given`: the settings as passed, before defaults are filled in
    check_base_layers(cfg)
    run_dir = Path(cfg.out)
    check_out(run_dir, cfg.resume)
    device = distributed.setup(cfg.device)  # joins the torchrun process group, if there is one
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if not distributed.is_main():
        log.setLevel(logging.WARNING)  # rank 0 logs
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg, source = resumed_config(cfg, run_dir, given)  # source: the checkpoint to continue, if any
    if distributed.is_main():
        write_settings(cfg, run_dir)
    log.info("%s the run in %s", "continuing" if source else "writing", run_dir.resolve())
    warn_if_bf16_is_slow(cfg, device)
    seed_everything(cfg.seed)
    show = cfg.progress if distributed.is_main() else False  # None: a bar on a terminal, a line a minute in a log

    # data
    if splits is None and cfg.resume and (run_dir / "splits").exists():  # the same held-out pairs, or a refusal
        splits = load_splits(cfg, run_dir, write=False)
        check_same_held_out(splits, run_dir)
    splits = splits or load_splits(cfg, run_dir)
    train_df, val_df, test_df = splits["train"], splits["validation"], splits["test"]
    if len(val_df) == 0 or val_df["is_duplicate"].nunique() < 2:
        raise ValueError("validation split has no pairs of both classes: give more data (files with both labels)")
    fewer = int(min(val_df["is_duplicate"].sum(), (val_df["is_duplicate"] == 0).sum()))
    if fewer < MIN_VALIDATION_CLASS:
        log.warning("the validation split holds only %d pairs, %d of one class: the calibration and threshold fitted "
                    "on them are unreliable (probabilities may be overconfident); give more data", len(val_df), fewer)

    # model
    if source is not None:  # the vocabulary must be the saved one
        model, _ = load_model(source, "cpu")
    elif cfg.variant == "pseudo":
        model = build_pseudo_model(cfg, train_df)
    else:
        model = build_model(cfg, list(train_df["question1"]) + list(train_df["question2"]))
    if model.pair_head is None:
        model.pair_head = make_pair_head(cfg, model.dim, model.encoder)  # --pair-head classifier|matching, else None
    if source is None and cfg.init_from:
        start_from(model, cfg.init_from, (val_df, test_df))
    model.to(device).train()
    net = distributed.wrap_for_training(model, device)  # DDP under torchrun: run the training forward as net(fn, ...)
    with distributed.main_first():  # rank 0 fills the cache, the others then read it
        cache = (base_cache(cfg, model, run_dir, (train_df, val_df, test_df), device, show)
                 if cfg.freeze_base or cfg.train_top_layers else None)

    # loss, optimizer, schedule
    weights = qdata.class_weights(train_df["is_duplicate"].to_numpy(), cfg.train_pos_rate) if cfg.balance == "weight" else None
    objective = Objective(cfg, train_df, weights, device, cache)  # the --loss and the batches (pairs or triplets) it needs
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(distributed.shard_size(len(objective)) / cfg.batch_size)  # per process
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(steps_per_epoch * cfg.epochs, cfg.warmup))
    train_config = asdict(cfg)

    state = load_last(run_dir, model, optimizer, scheduler) if cfg.resume else None
    state = state or {"epoch": 0, "step": 0, "history": [], "best": None, "bad_epochs": 0}
    done = state.get("step", 0)  # batches already trained of epoch state["epoch"] + 1
    if state["epoch"] or done:
        log.info("resuming %s", f"epoch {state['epoch'] + 1} at step {done}/{steps_per_epoch}" if done
                 else f"after epoch {state['epoch']}")
    higher = HIGHER_IS_BETTER[cfg.metric]
    bar = progress_bar(total=steps_per_epoch * cfg.epochs, initial=state["epoch"] * steps_per_epoch + done, unit="step",
                       desc="training", show=show, dynamic_ncols=True)
    clock = CheckpointClock(cfg.checkpoint_minutes)

    with logging_redirect_tqdm(), bar:  # log lines print above the bar
        for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
            if state["bad_epochs"] > cfg.patience:
                log.info("stopping early after epoch %d: validation %s has not improved for %d epochs (--patience %d)",
                         epoch - 1, cfg.metric, state["bad_epochs"], cfg.patience)
                break
            partial = state.pop("partial", None) or {"seen": 0, "total": 0.0, "train_time_s": 0.0}
            seen, total, step = partial["seen"], partial["total"], state.pop("step", 0)
            t0 = time.perf_counter() - partial["train_time_s"]
            batches = objective.batches(cfg.batch_size, cfg.seed + epoch, shard=True)  # the same order every time
            for batch in islice(batches, step, None):
                loss = net(objective.step_loss, batch)  # objective.step_loss(model, batch), through DDP
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += batch.size
                total += float(loss.detach()) * batch.size
                bar.set_postfix(epoch=f"{epoch}/{cfg.epochs}", loss=f"{total / seen:.4f}",
                                pairs_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
                bar.update()  # redraws when due, with the numbers above
                if step < steps_per_epoch and clock.due() and distributed.is_main():
                    mid = {"seen": seen, "total": total, "train_time_s": time.perf_counter() - t0}
                    save_last(run_dir, model, optimizer, scheduler, {**state, "step": step, "partial": mid},
                              train_config)
            train_time = time.perf_counter() - t0
            total, seen = distributed.all_sum(total, seen)  # over all processes
            if not distributed.parameters_in_sync(model):
                raise RuntimeError("DDP processes hold different weights: a forward pass bypassed the DDP wrapper")

            # validate, calibrate, keep the best
            metrics, cal, _ = validate_and_calibrate(model, objective, val_df, cfg.batch_size, cfg.calibration,
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
                save_epoch(run_dir, model, optimizer, scheduler, state, train_config, cal if improved else None)
                clock.reset()

    main = distributed.is_main()  # the final evaluation and its check run on rank 0 alone, which wrote the files
    if main:
        finish(run_dir, model, objective, val_df, test_df, state["history"], cfg)
    distributed.cleanup()
    if main:
        check_operating_point(run_dir)
    return run_dir


@contextmanager
def saved_weights(model: SiameseModel, run_dir: Path):
    """`model` with the weights saved in `run_dir` (the best checkpoint) inside the block, its own again after."""
    from safetensors.torch import load_file

    own = {k: v.detach().clone() for k, v in model.state_dict().items() if saved_weight(model, k)}
    device = next(model.parameters()).device
    model.load_state_dict(load_file(run_dir / "model.safetensors", device=str(device)), strict=False)
    try:
        yield model
    finally:
        model.load_state_dict(own, strict=False)


def finish(run_dir: Path, model, objective: Objective, val_df, test_df, history, cfg: TrainConfig) -> dict:
    """Evaluate the best checkpoint on validation and test, write metrics.json and the test report. A matching
    head first gets its cosine weight, hand-over rule (over a frozen base) and calibration fitted on validation
    (`qpairs.cosine_weight`).

    The distances are `frame_distances`, the code of each epoch's validation (a frozen base: from the training
    cache), so metrics.json's validation row is the best epoch's validation row of history.json, at the fitted
    cosine weight where the epochs ran at 0."""
    from .evaluate import evaluate_distances, labelled_pairs
    from .operating_point import describe

    def evaluated(frame, **report):
        labelled = labelled_pairs(frame)
        d = frame_distances(model, objective, labelled, cfg.batch_size)
        return evaluate_distances(calibrator, d, labelled["is_duplicate"].to_numpy(), **report)[0]

    with saved_weights(model, run_dir):
        if needs_tokens(model):
            from .cosine_weight import store_cosine_weight

            labelled = labelled_pairs(val_df)
            zero_shot_cosine = cfg.encoder == "transformer" and cfg.freeze_base  # the cosine the hand-over trusts
            store_cosine_weight(run_dir, model, lambda: frame_distances(model, objective, labelled, cfg.batch_size),
                                labelled["is_duplicate"].to_numpy(), cfg.calibration, cfg.threshold,
                                trained_length=cfg.max_length if zero_shot_cosine else None)
        calibrator = Calibrator.from_dict(read_json(run_dir / "calibration.json"))
        results = {"validation": evaluated(val_df)}
        if len(test_df):
            results["test"] = evaluated(test_df, report_dir=run_dir / "report", history=history)
    write_json(run_dir / "metrics.json", results)
    print(format_table(results))
    line = describe(calibrator.operating_point, results["test"]) if "test" in results else None
    if line:
        print("test: " + line)
    return results
