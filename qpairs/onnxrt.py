"""ONNX Runtime for transformer encoders on the CPU: the base model + pooling exported once, cached, and run
by onnxruntime (fp32, or int8 by dynamic per-channel weight quantization); the small head stays in torch.
Every backend is batch-invariant: a text gets the same embedding whatever else is in its batch (int8 runs
each row on its own, since dynamic quantization takes one activation scale per input tensor).

`enable(det, "onnx-int8")` swaps the runtime in for inference; training never uses it. Exported files are
cached under ``$QPAIRS_CACHE`` (default ``~/.cache/qpairs``) keyed by a hash of the weights, so the export
(a few seconds) happens once per model.
"""
from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import BACKENDS
from .matching import needs_tokens

# What "auto" picks for a transformer on a CPU: int8 run row by row, batch-invariant like fp32 and faster than it,
# also than bf16 in unpadded batches for files and far more for single pairs (docs/results.md).
AUTO_CPU_BACKEND = "onnx-int8"
# ...where int8 keeps what the model computes: the mean cosine between the int8 and fp32 exports' outputs for
# PROBE_TEXTS must reach INT8_MIN_COSINE (which encoders do: docs/results.md, "A larger encoder").
INT8_MIN_COSINE = 0.98
PROBE_TEXTS = (
    "How do I learn Python quickly?", "What is the best way to lose weight?", "Why is the sky blue?",
    "How can I improve my English speaking skills?", "What are the benefits of meditation?",
    "Which is the best laptop under $1000 for programming?", "Is it safe to travel to Egypt in 2017?",
    "What would happen if the Earth stopped spinning?", "How do you make a website from scratch?",
    "Who will win the next football World Cup and why?", "What is the meaning of life?",
    "How does a blockchain work, in simple terms?", "Can dogs eat chocolate?",
    "What are some good books on machine learning for beginners?", "How do I get rid of acne scars?",
    "Why do people believe in conspiracy theories?",
)


def cache_dir() -> Path:
    return Path(os.environ.get("QPAIRS_CACHE") or Path.home() / ".cache" / "qpairs") / "onnx"


def available() -> bool:
    """True when onnxruntime and onnx import (both are qpairs dependencies; a stripped install may lack them)."""
    from importlib.util import find_spec

    return all(find_spec(name) is not None for name in ("onnx", "onnxruntime"))  # found, not imported (slow)


def transformer_encoders(model) -> list:
    """The model's transformer encoders, each once (a Siamese model's two sides share one)."""
    sides = {id(e): e for e in (model.encoder, model.right_encoder) if e is not None}.values()
    return [e for e in sides if getattr(e, "config", {}).get("type") == "transformer"]


def has_transformer(model) -> bool:
    return bool(transformer_encoders(model))


def native_bf16() -> bool:
    """True on a CPU with native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast is faster than fp32."""
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def resolve_backend(backend: str | None, device: torch.device, model) -> str:
    """The backend a detector runs: 'auto' → ONNX int8 for a transformer on the CPU when onnxruntime is
    installed, bf16 for a BiLSTM model on a CPU with native bf16, else torch. Asking for ONNX on a GPU or for
    an LSTM, or for bf16 on a CPU without it, is a clear error."""
    backend = backend or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    is_transformer = has_transformer(model)
    cpu = device.type == "cpu"
    if backend == "auto":
        if cpu and is_transformer and available():
            return AUTO_CPU_BACKEND
        return "bf16" if cpu and not is_transformer and native_bf16() else "torch"
    if backend == "bf16":
        if not cpu:
            raise ValueError(f"backend 'bf16' is the CPU's bf16 path; on {device.type} bf16 is used already "
                             "(use --backend torch)")
        if not native_bf16():
            raise ValueError("backend 'bf16' needs a CPU with native bf16 (AVX-512 BF16 or AMX), which this one "
                             "lacks: use --backend torch")
        return backend
    if backend != "torch":
        if device.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU only; use --backend torch on {device.type}")
        if not is_transformer:
            raise ValueError(f"backend {backend!r} is for transformer encoders; this model has none "
                             "(use --backend torch)")
        if not available():
            raise ValueError(f"backend {backend!r} needs onnxruntime and onnx: pip install onnxruntime onnx")
    return backend


class _Pooled(nn.Module):
    """Base model + pooling of a `TransformerEncoder` as one exportable module (`tokens`: the last-layer
    token states instead of their pooling)."""

    def __init__(self, encoder, tokens: bool = False):
        super().__init__()
        self.base, self.pooling, self.tokens = encoder.model, encoder.config["pooling"], tokens

    def forward(self, input_ids, attention_mask):
        from .encoders import pool

        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden if self.tokens else pool(hidden, attention_mask, self.pooling)


def weights_key(encoder) -> str:
    """Hash of the base weights, pooling and library versions: names the cached ONNX files. A frozen base
    read from a directory (`encoders.LazyBase`) is hashed from its files, so it is never built for this."""
    import onnxruntime

    from .fingerprint import weights_hash

    salt = f"{encoder.config['pooling']}|{torch.__version__}|{onnxruntime.__version__}"
    lazy = getattr(encoder, "_lazy_base", None)
    if lazy is not None:
        return weights_hash({}, salt, lazy.files_key().encode())[:20]
    return weights_hash(encoder.model.state_dict(), salt)[:20]


def export(encoder, path: Path, tokens: bool = False) -> Path:
    """Export base + pooling (`tokens`: base alone, token states out) to `path` (fp32, dynamic batch and
    length), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    module = _Pooled(encoder, tokens).eval()
    output = "token_states" if tokens else "pooled"
    attn = getattr(module.base.config, "_attn_implementation", None)
    module.base.config._attn_implementation = "eager"  # sdpa does not export with a padding mask
    ids = torch.tensor([[101, 2054, 2003, 102], [101, 2054, 102, 0]])
    mask = (ids != 0).long()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                              output_names=[output], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"},
                                            output: {0: "batch", 1: "tokens"} if tokens else {0: "batch"}})
        os.replace(tmp, path)
    finally:
        module.base.config._attn_implementation = attn
        tmp.unlink(missing_ok=True)
    return path


def quantize(src: Path, dst: Path) -> Path:
    """Dynamic int8 quantization of the weights (per channel), atomically."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = dst.with_name(dst.name + f".{os.getpid()}.tmp")
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" advice on every call
    try:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, dst)
    finally:
        logging.getLogger().setLevel(level)
        tmp.unlink(missing_ok=True)
    return dst


def files_key(encoder, tokens: bool = False) -> str:
    """What names `encoder`'s cached ONNX files: `weights_key`, marked for a token-states export."""
    return weights_key(encoder) + ("-tokens" if tokens else "")


def model_file(encoder, backend: str, tokens: bool = False, key: str | None = None) -> Path:
    """The cached ONNX file of `encoder` for `backend` ('onnx' or 'onnx-int8'), exported on first use
    (`tokens`: the base's token states rather than its pooled output; `key`: its `files_key`, when known)."""
    import logging

    key = key or files_key(encoder, tokens)
    fp32 = cache_dir() / f"{key}-fp32.onnx"
    if not fp32.exists() or (backend != "onnx" and not (cache_dir() / f"{key}-int8.onnx").exists()):
        logging.getLogger("qpairs").info("preparing the model for ONNX Runtime (%s), once per model, in %s",
                                         backend, cache_dir())
    if not fp32.exists():
        export(encoder, fp32, tokens)
    if backend == "onnx":
        return fp32
    int8 = cache_dir() / f"{key}-int8.onnx"
    if not int8.exists():
        quantize(fp32, int8)
    return int8


class OnnxPooler:
    """Runs an exported base + pooling: (input_ids, attention_mask) tensors → pooled float32 tensor (or the
    token states [batch, tokens, hidden] of a `tokens` export).

    With `threads` = N > 1 it holds min(N, 4) sessions (N threads shared among them; each session holds
    its own copy of the weights, hence the cap) and splits each batch into row shards that run at once
    (ONNX Runtime releases the GIL), each trimmed to its own longest row. Measured on 2 cores against
    one 2-thread session (`scripts/bench_onnx_shards.py`): 1.74× faster on batches of 2 questions,
    1.70× on 8, 1.15× on 64: on matrices this small one session's threads mostly wait for each other.

    An int8 model runs one row at a time, each trimmed to its own length: its activations are quantized
    with one scale per input tensor, so a batched run would make a row's result depend on its batch-mates.
    """

    max_sessions = 4

    def __init__(self, path, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.backend = "onnx-int8" if self.path.name.endswith("-int8.onnx") else "onnx"
        self.row_by_row = self.backend == "onnx-int8"
        self.threads = max(1, threads or torch.get_num_threads())
        n = min(self.threads, self.max_sessions)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads // n
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # idle workers sleep instead of spinning, so a service's event loop keeps its core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = [ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]) for _ in range(n)]
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="qpairs-onnx") if n > 1 else None

    def _run(self, session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        width = int(attention_mask.sum(axis=1).max()) if len(attention_mask) else attention_mask.shape[1]  # own padding
        feed = {"input_ids": np.ascontiguousarray(input_ids[:, :width]),
                "attention_mask": np.ascontiguousarray(attention_mask[:, :width])}
        out = session.run(None, feed)[0]
        if out.ndim == 3 and width < input_ids.shape[1]:  # token states: back to the batch's width
            out = np.pad(out, ((0, 0), (0, input_ids.shape[1] - width), (0, 0)))
        return out

    def _run_shard(self, session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if not self.row_by_row or len(input_ids) < 2:
            return self._run(session, input_ids, attention_mask)
        return np.concatenate([self._run(session, input_ids[i : i + 1], attention_mask[i : i + 1])
                               for i in range(len(input_ids))])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids = input_ids.cpu().numpy().astype(np.int64)
        mask = attention_mask.cpu().numpy().astype(np.int64)
        bounds = np.linspace(0, len(ids), max(1, min(len(self.sessions), len(ids))) + 1).round().astype(int)
        shards = [(self.sessions[i], ids[a:b], mask[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
        futures = [self.pool.submit(self._run_shard, *shard) for shard in shards[1:]]
        parts = [self._run_shard(*shards[0])] + [f.result() for f in futures]
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])


def int8_fidelity(encoder, tokens: bool = False) -> float:
    """Mean cosine between what the int8 and the fp32 exports of `encoder` give for PROBE_TEXTS (`tokens`: the
    mean of the token states), measured once per model and kept beside the exported files."""
    from .encoders import pool
    from .encoding import tokenized

    key = files_key(encoder, tokens)
    note = cache_dir() / f"{key}-int8-fidelity.json"
    try:
        return float(json.loads(note.read_text())["mean_cosine"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    batch = tokenized(encoder, PROBE_TEXTS, "cpu")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    fp32, int8 = (OnnxPooler(model_file(encoder, b, tokens, key), threads=1)(ids, mask) for b in ("onnx", "onnx-int8"))
    if tokens:
        fp32, int8 = pool(fp32, mask, "mean"), pool(int8, mask, "mean")
    cosine = float(nn.functional.cosine_similarity(fp32, int8, dim=-1).mean())
    tmp = note.with_name(note.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"mean_cosine": cosine, "probe_texts": len(PROBE_TEXTS)}))
    os.replace(tmp, note)
    return cosine


def auto_backend(model) -> str:
    """What 'auto' runs a model with where `resolve_backend` picked int8: int8, unless it changes the model's outputs
    (`int8_fidelity` below INT8_MIN_COSINE); then bf16 on a CPU with native bf16, else ONNX fp32, said in the log."""
    tokens = needs_tokens(model)
    worst = min(int8_fidelity(e, tokens) for e in transformer_encoders(model))
    if worst >= INT8_MIN_COSINE:
        return "onnx-int8"
    instead = "bf16" if native_bf16() else "onnx"
    import logging

    logging.getLogger("qpairs").info("int8 weights change this model's outputs (mean cosine %.3f to fp32 on %d probe "
                                     "questions, below %.2f): running it in %s instead", worst, len(PROBE_TEXTS),
                                     INT8_MIN_COSINE, instead)
    return instead


def enable(model, backend: str, threads: int | None = None) -> None:
    """Run every transformer encoder of `model` (a `SiameseModel`) through ONNX Runtime ('onnx' = fp32,
    'onnx-int8') with `threads` intra-op threads (default: torch's count), or back through torch ('torch', 'bf16')."""
    for encoder in transformer_encoders(model):
        if backend in ("torch", "bf16"):
            encoder.runtime = encoder.token_runtime = None
            encoder.model  # noqa: B018 - torch runs the base: a lazy one is built now, not on the first request
            continue
        tokens = needs_tokens(model)  # a matching head reads token states: export those instead
        attr = "token_runtime" if tokens else "runtime"
        current = getattr(encoder, attr)  # only the threads change: reuse its file instead of hashing the weights again
        path = current.path if current is not None and current.backend == backend else model_file(encoder, backend, tokens)
        setattr(encoder, attr, OnnxPooler(path, threads))
