"""Content hashes of weights and files: the one hash behind ONNX cache names, index identity and resume
(`checkpoint.model_fingerprint` applies it to a loaded model)."""
from __future__ import annotations

import hashlib
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
