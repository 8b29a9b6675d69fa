"""Content hashes of model weights: the one hash behind ONNX cache names, index identity and resume."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def weights_hash(tensors: dict[str, torch.Tensor], salt: str = "", extra: bytes = b"") -> str:
    """sha256 (hex) of `salt`, then every tensor's name and raw bytes in name order, then `extra`."""
    h = hashlib.sha256(salt.encode())
    for name, t in sorted(tensors.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    h.update(extra)
    return h.hexdigest()


def files_hash(paths, salt: str = "") -> str:
    """sha256 (hex) of `salt`, then every file's name and bytes in the order given."""
    h = hashlib.sha256(salt.encode())
    for path in paths:
        h.update(Path(path).name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def model_fingerprint(det) -> str:
    """Hash of the model's architecture config, its saved weights and its vocabulary (computed once per `det`)."""
    from .checkpoint import model_config, state_to_save

    cached = getattr(det, "_qpairs_fingerprint", None)
    if cached:
        return cached
    vocab = "".join("\n".join(v.itos) for v in (getattr(e, "vocab", None) for e in (det.model.encoder,
                                                                                    det.model.right_encoder)) if v)
    det._qpairs_fingerprint = weights_hash(state_to_save(det.model),
                                           json.dumps(model_config(det.model), sort_keys=True, default=str),
                                           vocab.encode())
    return det._qpairs_fingerprint
