"""`qpairs train --init-from RUN`: a fresh model starts from the weights a trained run saved (a warm start),
for example a --freeze-base matching head before --train-top-layers: the head first, then the layers.

The run must be a `qpairs train` run built the same way that held out this run's validation and test pairs
(the teacher's leak check, `qpairs.distill.check_held_out`), and every tensor it saved must be one of the weights
this model trains and saves.
"""
from __future__ import annotations

import logging
from pathlib import Path

from safetensors.torch import load_file

from .checkpoint import ModelDirError, read_json, saved_weight
from .detector import BUNDLES, resolve_model_path
from .distill import TeacherLeakError, check_held_out
from .model import SiameseModel

log = logging.getLogger("qpairs")


def start_from(model: SiameseModel, run, held_out) -> None:
    """--init-from: the fresh `model` takes the weights of the trained `run`, which must be a `qpairs train` run of
    the same encoder, distance and variant that held out `held_out` (this run's validation and test frames)."""
    if isinstance(run, str) and run in BUNDLES:
        raise ValueError(f"--init-from {run}: a bundled model keeps no held-out splits, so it cannot be checked that "
                         "it never trained on this run's validation or test pairs; give a run directory")
    path = resolve_model_path(run)
    if not (path / "config.json").is_file():
        raise ModelDirError(f"--init-from {run}: {path / 'config.json'} is missing: give a run directory written by "
                            "`qpairs train` (not an ensemble)")
    source = read_json(path / "config.json")
    theirs, mine = source.get("encoder", {}), model.encoder.config
    differ = [f"encoder {k} {theirs.get(k)!r} there, {mine.get(k)!r} here"
              for k in ("type", "base_model", "pooling", "normalize") if theirs.get(k) != mine.get(k)]
    differ += [f"{name} {there!r} there, {here!r} here" for name, there, here in (
        ("distance", source.get("distance"), model.distance_metric),
        ("variant", source.get("variant", "siamese"), model.variant)) if there != here]
    if differ:
        raise ModelDirError(f"--init-from {run}: it was built otherwise ({'; '.join(differ)})")
    if (source.get("train") or {}).get("teacher_unchecked"):
        raise TeacherLeakError(f"--init-from {run}: it learned from a teacher whose held-out pairs were not checked "
                               "(--teacher-unchecked), so this run's validation and test pairs may have leaked into it")
    check_held_out(path, held_out, "the --init-from run")
    log.info("starting from the %d weight tensors of %s", warm_start(model, path), path)


def warm_start(model: SiameseModel, directory) -> int:
    """Copy the weights a trained run saved into the fresh `model` (``--init-from``); returns how many tensors.

    Every saved tensor must be one of the weights this model trains and saves, of the same shape (e.g. a
    --freeze-base run's head into a --train-top-layers model with the same head), so that nothing is left behind
    and the saved run is the model that trained: a layer this model keeps frozen is refused."""
    weights = Path(directory) / "model.safetensors"
    if not weights.exists():
        raise ModelDirError(f"{weights} is missing: --init-from needs a trained run directory")
    saved = load_file(weights)
    own = model.state_dict()
    foreign = [k for k in saved if k not in own]
    reshaped = [f"{k} {tuple(saved[k].shape)} vs {tuple(own[k].shape)}" for k in saved
                if k in own and saved[k].shape != own[k].shape]
    if foreign or reshaped or not saved:
        raise ModelDirError(f"--init-from {directory}: its weights do not fit this model (other --encoder, --head, "
                            f"--projection-dim, --pair-head or --matching-dim?): not in this model {foreign[:3]}, "
                            f"other shapes {reshaped[:3]}, {len(saved)} tensors saved")
    frozen = [k for k in saved if not saved_weight(model, k)]
    if frozen:
        raise ModelDirError(f"--init-from {directory}: it trained layers this model keeps frozen ({frozen[0]}, ...): "
                            "start from a run that trained no more layers than --train-top-layers")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in saved.items()}, strict=False)
    return len(saved)
