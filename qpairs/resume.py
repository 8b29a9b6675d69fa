"""A training run's resumable state: the settings it starts with (``settings.json``), ``last/`` (weights,
optimizer, scheduler and RNG state, the epochs done and the position in the next one) and the clock of the
checkpoints saved within an epoch. `qpairs.train` writes through `save_epoch` and `save_last` and resumes through
`resumed_config` and `load_last`."""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import read_json, save_model, write_json
from .config import TrainConfig

log = logging.getLogger("qpairs")

LAST = "last"  # resumable state inside a run directory
SETTINGS = "settings.json"  # a run's training settings, from its start


def save_last(run_dir: Path, model, optimizer, scheduler, state: dict, train_config: dict | None = None) -> None:
    """Everything needed to resume where training stands (safetensors + JSON, no pickle): a complete model
    directory plus optimizer, scheduler and RNG state, and ``state`` (epochs done, position in the next one).

    Written into ``last.new/`` and swapped in by renames, so a kill at any moment leaves a complete ``last/``
    (or ``last.old/``) behind."""
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
    """Restore the weights, optimizer, scheduler and RNG state saved by `save_last`; returns its state (or None)."""
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


def resumed_config(cfg, run_dir: Path, given=None):
    """(config, checkpoint directory or None): with --resume, the run's own training settings (from its last
    checkpoint, else from the settings it started with, to start it again), keeping this call's --out, --device,
    --progress, --checkpoint-minutes and --epochs (None: the run's own). `given`: the settings as passed, before
    their defaults were filled in (what the warning about ignored settings names; default `cfg`)."""
    source = last_dir(run_dir) if cfg.resume else None
    if source is not None:
        saved = read_json(source / "config.json").get("train", {})
    else:
        saved = read_json(run_dir / SETTINGS) if cfg.resume and (run_dir / SETTINGS).exists() else {}
    epochs = cfg.epochs if cfg.epochs is not None else saved.get("epochs", TrainConfig.epochs)
    if saved:
        _warn_ignored(given if given is not None else cfg, saved)
        cfg = TrainConfig(**{**saved, "resume": True, "out": cfg.out, "epochs": epochs, "device": cfg.device,
                             "progress": cfg.progress, "checkpoint_minutes": cfg.checkpoint_minutes})
    cfg.epochs = epochs
    return cfg, source


RESUME_KEEPS = ("resume", "out", "epochs", "device", "progress", "checkpoint_minutes")  # this call's, not the run's


def _warn_ignored(given, saved: dict) -> None:
    """Warn about settings given with --resume that differ from the run's own (the run's are kept)."""
    ignored = []
    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        value = getattr(given, f.name)
        if f.name not in RESUME_KEEPS and value != default and value != saved.get(f.name, default):
            ignored.append(f"--{f.name.replace('_', '-')} {value}")
    if ignored:
        log.warning("--resume continues the run with its own settings; ignored: %s (train a new --out to change "
                    "them; --epochs extends the run)", ", ".join(ignored))


def check_out(run_dir: Path, resume: bool) -> None:
    """Refuse an --out that cannot take this run: a file; a folder holding a run (without --resume); with --resume,
    one holding none. A run that stopped before its first checkpoint (settings.json alone: its data was missing, an
    option refused) starts again without --resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file: give a folder for the run")
    empty = not run_dir.is_dir() or not any(run_dir.iterdir())
    if resume and empty:
        raise FileNotFoundError(f"--resume: {run_dir} holds no run to continue; drop --resume to start one there")
    if resume or empty:
        return
    started = (run_dir / SETTINGS).exists()
    if started and last_dir(run_dir) is None and not (run_dir / "config.json").exists():
        log.warning("%s holds a run that stopped before its first checkpoint: starting it again", run_dir)
        (run_dir / SETTINGS).unlink(missing_ok=True)
        return
    raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it or choose another --out")


def write_settings(cfg, run_dir: Path) -> None:
    """Keep the settings a run starts with (once), for a --resume before its first checkpoint."""
    if not (run_dir / SETTINGS).exists():
        write_json(run_dir / SETTINGS, {**asdict(cfg), "resume": False})


def save_epoch(run_dir: Path, model, optimizer, scheduler, state: dict, train_config: dict, best_calibration=None):
    """The end of an epoch: the model and its calibration when it is the best so far (`best_calibration`),
    ``history.json`` and ``last/``."""
    if best_calibration is not None:
        save_model(model, run_dir, train_config)
        write_json(run_dir / "calibration.json", best_calibration.to_dict())
    write_json(run_dir / "history.json", state["history"])
    save_last(run_dir, model, optimizer, scheduler, state, train_config)
