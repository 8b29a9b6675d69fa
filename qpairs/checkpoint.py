"""Run directories: weights as safetensors, config/calibration/metrics as JSON, tokenizer files.

Layout of a run directory::

    config.json         model config (encoders, distance, variant, each side's text preparation) and
                        training settings
    model.safetensors   weights (never pickle)
    encoder/            tokenizer or vocabulary of the (left) encoder
    right_encoder/      the same for the right encoder of a pseudo-Siamese model
    calibration.json    distance → probability map and decision threshold
    metrics.json        validation/test metrics
    history.json        per-epoch training log
    last/               resumable state: a model directory of the latest weights plus optimizer, scheduler
                        and RNG state, the epochs done and the position in the next one (saved at each
                        epoch end and every --checkpoint-minutes within an epoch)
    settings.json       the training settings, written when the run starts: a --resume before the first
                        checkpoint starts the run again with them

Training writes and resumes runs through `qpairs.resume`.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .encoders import build_encoder
from .errors import ModelDirError  # noqa: F401  (re-exported)
from .fingerprint import weights_hash
from .model import SiameseModel
from .sides import sides_from_train

FORMAT_VERSION = 1


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
        raise ModelDirError(f"config.json: pair_head.type must be 'classifier', got {config.get('type')!r}")
    return PairClassifier(config["dim"], config.get("hidden", 0))


def write_json(path, data) -> None:
    """Write `data` as strict JSON through a temporary file, so a kill never leaves half a file under `path`.

    A number that is not finite (a ROC-AUC of one-class data is NaN) is written as null: JSON has no NaN."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.partial")
    temp.write_text(json.dumps(_finite_or_null(data), indent=2, default=float, allow_nan=False))
    os.replace(temp, path)


def _finite_or_null(value):
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a NumPy or torch scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_json(path):
    """The JSON value in `path`; a missing, non-UTF-8 or invalid file is a one-line `ModelDirError` naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelDirError(f"{path} is missing: not a qpairs model directory?") from exc
    except UnicodeDecodeError as exc:
        raise ModelDirError(f"{path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ModelDirError(f"{path} is corrupt: {exc}") from exc


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _check_field(path, data: dict, name: str, kinds, where: str = "") -> None:
    """`data[name]`, when present, must be of one of `kinds` (None: JSON null; bool is not an int)."""
    if name not in data:
        return
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    value = data[name]
    ok = any(value is None if k is None else isinstance(value, k) and not (k in (int, float) and isinstance(value, bool))
             for k in kinds)
    if not ok:
        want = " or ".join(_json_type(None) if k is None else _json_type(k()) for k in kinds)
        raise ModelDirError(f"{path}: {where}{name} must be {want}, got {value!r}")


def check_config(cfg: dict, path) -> None:
    """Raise a `ModelDirError` naming `path` and the field unless the fields `load_model` uses have the right
    JSON types (e.g. ``config.json: encoder.type must be a string, got 3``)."""
    from .encoders import CONFIG_FIELDS, POOLINGS

    if not isinstance(cfg, dict):
        raise ModelDirError(f"{path}: expected a JSON object, got {_json_type(cfg)}")
    if "encoder" not in cfg:
        raise ModelDirError(f"{path}: encoder is missing: cannot rebuild the encoder")
    for name, kind in (("variant", str), ("distance", str), ("encoder", dict), ("right_encoder", dict),
                       ("pair_head", dict), ("sides", dict), ("train", (dict, None))):
        _check_field(path, cfg, name, kind)
    for side in ("encoder", "right_encoder"):
        enc = cfg.get(side)
        if enc is None:
            continue
        _check_field(path, enc, "type", str, f"{side}.")
        fields = CONFIG_FIELDS.get(enc.get("type"))
        if fields is None:
            raise ModelDirError(f"{path}: {side}.type must be one of {', '.join(CONFIG_FIELDS)}, "
                                f"got {enc.get('type')!r}")
        for name, value in enc.items():
            if name != "type" and name not in fields:
                raise ModelDirError(f"{path}: {side}.{name} is not a field of a {enc['type']} encoder")
            if name != "type":
                _check_field(path, enc, name, fields[name], f"{side}.")
        if enc.get("pooling", "mean") not in POOLINGS:
            raise ModelDirError(f"{path}: {side}.pooling must be one of {', '.join(POOLINGS)}, got {enc['pooling']!r}")
    head = cfg.get("pair_head")
    if head is not None:
        for name, kind in (("type", str), ("dim", int), ("hidden", int)):
            _check_field(path, head, name, kind, "pair_head.")


def saved_weight(model: SiameseModel, key: str) -> bool:
    """Whether a run stores the weight `key`: frozen base weights that come from a package are left out
    (a frozen base, or the frozen bottom layers of --train-top-layers; see `TransformerEncoder.saves`)."""
    for prefix, enc in (("encoder.", model.encoder), ("right_encoder.", model.right_encoder)):
        if enc is not None and key.startswith(prefix) and hasattr(enc, "saves"):
            return enc.saves(key[len(prefix) :])
    return True


def state_to_save(model: SiameseModel) -> dict[str, torch.Tensor]:
    """Weights to store (`saved_weight`)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if saved_weight(model, k)}


def save_model(model: SiameseModel, directory, train_config: dict | None = None) -> None:
    """Write config, weights and tokenizer files of `model` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = model_config(model)
    sides = model.sides or sides_from_train(train_config)
    if sides:
        cfg["sides"] = sides
    if train_config is not None:
        cfg["train"] = train_config
    write_json(directory / "config.json", cfg)
    save_file(_dedupe_shared(state_to_save(model)), directory / "model.safetensors")
    for name, enc in (("encoder", model.encoder), ("right_encoder", model.right_encoder)):
        if enc is not None:
            (directory / name).mkdir(exist_ok=True)
            enc.save_tokenizer(directory / name)


def copy_run_files(src, dst, names) -> None:
    """Copy the files and folders `names` of run directory `src` (those present) into `dst`."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_dir():
            shutil.copytree(src / name, dst / name)
        elif (src / name).exists():
            shutil.copy2(src / name, dst / name)


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
    check_config(cfg, directory / "config.json")
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise ModelDirError(f"{weights} is missing: not a complete qpairs model directory")
    try:
        encoder = build_encoder(cfg["encoder"], directory / "encoder")
        right = build_encoder(cfg["right_encoder"], directory / "right_encoder") if "right_encoder" in cfg else None
    except (KeyError, OSError, ValueError) as exc:
        raise ModelDirError(f"{directory}: cannot rebuild the encoder: {exc}") from exc
    pair_head = build_pair_head(cfg["pair_head"]) if "pair_head" in cfg else None
    try:  # a run saved before configs held `sides`: its training settings say
        sides = cfg["sides"] if "sides" in cfg else sides_from_train(cfg.get("train"))
        model = SiameseModel(encoder, cfg.get("distance", "euclidean"), right, pair_head=pair_head, sides=sides)
    except ValueError as exc:
        raise ModelDirError(f"{directory / 'config.json'}: {exc}") from exc
    try:
        state = load_file(weights)
    except Exception as exc:
        raise ModelDirError(f"{weights} is corrupt: {exc}") from exc
    state = {k: v.float() if v.dtype in (torch.float16, torch.bfloat16) else v for k, v in state.items()}  # fp16 bundles
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if saved_weight(model, k)]  # frozen base weights come from base_model
    if missing or unexpected:
        raise ModelDirError(f"{weights} does not match config.json: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval(), cfg


def model_fingerprint(det) -> str:
    """Hash of the model's architecture config, its saved weights and its vocabulary (computed once per `det`)."""
    cached = getattr(det, "_qpairs_fingerprint", None)
    if cached:
        return cached
    vocab = "".join("\n".join(v.itos) for v in (getattr(e, "vocab", None) for e in (det.model.encoder,
                                                                                    det.model.right_encoder)) if v)
    det._qpairs_fingerprint = weights_hash(state_to_save(det.model),
                                           json.dumps(model_config(det.model), sort_keys=True, default=str),
                                           vocab.encode())
    return det._qpairs_fingerprint
