"""Run directories: weights as safetensors, config/calibration/metrics as JSON, tokenizer files.

Layout of a run directory::

    config.json         model config (encoders, distance, variant) and training settings
    model.safetensors   weights (never pickle)
    encoder/            tokenizer or vocabulary of the (left) encoder
    right_encoder/      the same for the right encoder of a pseudo-Siamese model
    calibration.json    distance → probability map and decision threshold
    metrics.json        validation/test metrics
    history.json        per-epoch training log
    last/               resumable state (weights, optimizer state, epoch) of the latest epoch
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .encoders import build_encoder
from .model import SiameseModel

FORMAT_VERSION = 1


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or corrupt."""


def model_config(model: SiameseModel) -> dict:
    cfg = {"format_version": FORMAT_VERSION, "variant": model.variant, "distance": model.distance_metric,
           "encoder": model.encoder.config}
    if model.right_encoder is not None:
        cfg["right_encoder"] = model.right_encoder.config
    if model.pair_head is not None:
        cfg["pair_head"] = model.pair_head.config
    return cfg


def build_pair_head(config: dict):
    """The pair head described by `config` (`qpairs.losses.PairClassifier` or `qpairs.matching.MatchingHead`)."""
    from .losses import PairClassifier

    if config.get("type") == "matching":
        from .matching import MatchingHead

        return MatchingHead(**{k: v for k, v in config.items() if k != "type"})
    if config.get("type") != "classifier":
        raise ModelDirError(f"unknown head type {config.get('type')!r} in config.json")
    return PairClassifier(config["dim"], config.get("hidden", 0))


def write_json(path, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=float))


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ModelDirError(f"{path} is missing: not a qpairs model directory?") from exc
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{path} is corrupt: {exc}") from exc


def state_to_save(model: SiameseModel) -> dict[str, torch.Tensor]:
    """Weights to store; frozen base weights that come from a package are left out."""
    skip = set()
    for prefix, enc in (("encoder.", model.encoder), ("right_encoder.", model.right_encoder)):
        if enc is not None and enc.config.get("frozen_base"):
            skip.add(prefix + "model.")
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
            if not any(k.startswith(s) for s in skip)}


def save_model(model: SiameseModel, directory, train_config: dict | None = None) -> None:
    """Write config, weights and tokenizer files of `model` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    if train_config is not None:
        cfg["train"] = train_config
    write_json(directory / "config.json", cfg)
    save_file(_dedupe_shared(state_to_save(model)), directory / "model.safetensors")
    for name, enc in (("encoder", model.encoder), ("right_encoder", model.right_encoder)):
        if enc is not None:
            (directory / name).mkdir(exist_ok=True)
            enc.save_tokenizer(directory / name)


def _dedupe_shared(state: dict) -> dict:
    seen, out = {}, {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.stride()) if v.numel() else None
        if key in seen:
            v = v.clone()
        seen[key] = k
        out[k] = v
    return out


def load_model(directory, device: str | torch.device = "cpu") -> tuple[SiameseModel, dict]:
    """Rebuild the model saved in `directory`; returns (model in eval mode, config)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: model directory not found")
    cfg = read_json(directory / "config.json")
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise ModelDirError(f"{weights} is missing: not a complete qpairs model directory")
    try:
        encoder = build_encoder(cfg["encoder"], directory / "encoder")
        right = build_encoder(cfg["right_encoder"], directory / "right_encoder") if "right_encoder" in cfg else None
    except (KeyError, OSError) as exc:
        raise ModelDirError(f"{directory}: cannot rebuild the encoder: {exc}") from exc
    pair_head = build_pair_head(cfg["pair_head"]) if "pair_head" in cfg else None
    model = SiameseModel(encoder, cfg.get("distance", "euclidean"), right, pair_head=pair_head)
    try:
        state = load_file(weights)
    except Exception as exc:
        raise ModelDirError(f"{weights} is corrupt: {exc}") from exc
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = tuple(p + "model." for p, e in (("encoder.", encoder), ("right_encoder.", right))
                   if e is not None and e.config.get("frozen_base"))
    missing = [k for k in missing if not k.startswith(frozen)] if frozen else missing
    if missing or unexpected:
        raise ModelDirError(f"{weights} does not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), cfg
