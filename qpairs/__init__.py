"""qpairs: duplicate-question detection with Siamese networks.

>>> import qpairs
>>> qpairs.predict("How do I learn Python?", "What is the best way to learn Python?")
>>> det = qpairs.load("runs/lstm")          # or qpairs.load() for the bundled default model
>>> det.predict_proba(["q1a", "q1b"], ["q2a", "q2b"])

Heavy libraries (torch, transformers) are imported lazily, on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load", "predict", "predict_proba", "DuplicateDetector", "__version__"]

import os
import threading

# bf16 products on Intel AMX tiles add up a row's terms in an order that depends on how many rows share the product,
# so a pair's probability would move with the rest of its batch; oneDNN's AVX-512 BF16 kernels do not. oneDNN reads
# the variable when the first bf16 work creates a kernel; a value the user set wins.
_ISA_CAP = "AVX512_CORE_BF16"
_ISA_CAPPED_HERE = "ONEDNN_MAX_CPU_ISA" not in os.environ
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", _ISA_CAP)


def _lift_isa_cap() -> bool:
    """Give oneDNN its fastest kernels (AMX where there is one) for work whose sums need not match across batch
    sizes, such as the training steps of `qpairs train`, if `import qpairs` set the cap (not the user). It works only
    before this process's first bf16 work. Returns whether the cap was lifted."""
    if _ISA_CAPPED_HERE and os.environ.get("ONEDNN_MAX_CPU_ISA") == _ISA_CAP:
        os.environ["ONEDNN_MAX_CPU_ISA"] = "ALL"
        return True
    return False

_default = None
_default_lock = threading.Lock()


def load(path=None, device: str = "auto", backend: str = "auto"):
    """Load a run directory or a bundled model by name (None or 'default' → the bundled default model, 'fast' →
    the bundled BiLSTM; a bare name means the bundle, './fast' a folder) as a `DuplicateDetector`.

    backend: 'auto' (ONNX Runtime int8 for a transformer on the CPU; bf16 for a BiLSTM on a CPU with native
    bf16; else torch), 'torch', 'onnx', 'onnx-int8', 'bf16'.
    """
    from .detector import load as _load

    return _load(path, device, backend)


def _default_detector():
    global _default
    if _default is None:
        with _default_lock:  # threads that call predict at once share one load
            if _default is None:
                _default = load()
    return _default


def predict_proba(q1, q2):
    """Calibrated duplicate probability with the default model (float for two strings, else array)."""
    return _default_detector().predict_proba(q1, q2)


def predict(q1, q2):
    """Duplicate or not, with the default model at its stored threshold."""
    return _default_detector().predict(q1, q2)


def __getattr__(name):
    if name == "DuplicateDetector":
        from .detector import DuplicateDetector

        return DuplicateDetector
    raise AttributeError(f"module 'qpairs' has no attribute {name!r}")
