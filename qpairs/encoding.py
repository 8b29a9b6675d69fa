"""The one place where texts become vectors: tokenized batches through an encoder.

`encoded_batches` is the inference loop every path runs (the detector, the file scorer's cache, the
frozen-base caches of training): texts in length-sorted batches (less padding), tokenized in a
background thread while the encoder runs the previous batch, moved to the encoder's device (pinned on a
GPU) and run under the caller's autocast. `encode_texts` collects its vectors; `forward_texts` is the
one-batch forward of training (gradients on).
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import torch

from .encoders import length_batches
from .vocab import padded_batch


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def tokenized(encoder, texts, device) -> dict:
    """One tokenized batch of `texts` on `device` (padded as the encoder pads)."""
    return _to(encoder.tokenize(list(texts)), torch.device(device))


def forward_texts(encoder, texts, device, run=None) -> torch.Tensor:
    """`run` (default: the encoder's forward) on one tokenized batch of `texts`, as the caller's grad mode says."""
    return (run or encoder)(**tokenized(encoder, texts, device))


def encoded_batches(encoder, texts, device, batch_size: int, max_waste: float | None = None, run=None,
                    autocast=nullcontext, prefetch: int = 2):
    """Yield (indices into `texts`, batch on `device`, `run(**batch)`) for each length-sorted batch
    (`qpairs.encoders.length_batches`; `max_waste` 0: only texts of one token count share a batch); `run` defaults
    to the encoder's forward, `autocast` is a context factory entered around each run."""
    device = torch.device(device)
    pin = device.type == "cuda"
    if hasattr(encoder, "token_ids"):  # a cheap tokenizer: every text's ids first, batches of equal token counts
        ids = encoder.token_ids(texts)
        batches = length_batches(texts, batch_size, max_waste, lengths=map(len, ids))
        make = lambda idx: padded_batch([ids[i] for i in idx])  # noqa: E731
    else:  # max_waste 0: batches of texts of one token count, so no text is padded
        counts = encoder.token_counts(texts) if max_waste == 0 and hasattr(encoder, "token_counts") else None
        batches = length_batches(texts, batch_size, max_waste, lengths=counts)
        make = lambda idx: encoder.tokenize([texts[i] for i in idx])  # noqa: E731

    def tokenize(idx):
        batch = make(idx)
        return {k: (v.pin_memory() if pin else v) for k, v in batch.items()}

    def forward(idx, batch):
        batch = _to(batch, device)
        with autocast():
            return idx, batch, (run or encoder)(**batch)

    if len(batches) <= 1:  # nothing to tokenize ahead of (a service's single pair): no thread to start
        yield from (forward(idx, tokenize(idx)) for idx in batches)
        return
    with ThreadPoolExecutor(1) as pool:
        pending = deque(pool.submit(tokenize, b) for b in batches[:prefetch])
        for i, idx in enumerate(batches):
            batch = pending.popleft().result()
            if i + prefetch < len(batches):
                pending.append(pool.submit(tokenize, batches[i + prefetch]))
            yield forward(idx, batch)


@torch.inference_mode()
def encode_texts(encoder, texts, device, batch_size: int, max_waste: float | None = None, pooled: bool = False,
                 autocast=nullcontext, prefetch: int = 2, bar=None) -> torch.Tensor:
    """Vectors [len(texts), dim] (float32, on the encoder's output device) of `texts`, in their order:
    the encoder's embeddings, or with `pooled` a transformer's pooled base output before its head."""
    run = encoder.pooled if pooled else encoder
    out = None
    for idx, _, emb in encoded_batches(encoder, texts, device, batch_size, max_waste, run, autocast, prefetch):
        if out is None:
            out = torch.empty((len(texts), emb.shape[1]), dtype=torch.float32, device=emb.device)
        out[torch.as_tensor(idx, device=emb.device)] = emb.float()
        if bar is not None:
            bar.update(len(idx))
    if out is None:
        dim = encoder.config["hf_config"]["hidden_size"] if pooled else encoder.dim
        out = torch.zeros((0, dim), dtype=torch.float32, device=torch.device(device))
    return out
