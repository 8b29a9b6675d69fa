#!/usr/bin/env python
"""ONNX Runtime on the CPU: one session with N intra-op threads (the peer) vs N single-threaded sessions
running row shards of each batch at once (`qpairs.onnxrt.OnnxPooler`), on real QQP questions.

    python scripts/bench_onnx_shards.py --threads 2 --batches 2 8 16 64

Prints ms per question and per batch for both, and the ratio, for each batch size.
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def questions(n: int) -> list[str]:
    import pandas as pd

    from qpairs import data as qd

    root = qd.default_data_dir()
    if root is None:
        return [f"How do I learn topic number {i} quickly and well?" * (1 + i % 3) for i in range(n)]
    frame = pd.read_csv(root / "qqp" / "cs224n_dev.csv.gz", keep_default_na=False)
    return (frame["question1"].tolist() + frame["question2"].tolist())[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="run directory (default: the bundled default model)")
    ap.add_argument("--backend", default="onnx-int8", choices=["onnx", "onnx-int8"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 8, 16, 64], help="questions per batch")
    ap.add_argument("--questions", type=int, default=1200)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    import qpairs
    from qpairs import onnxrt

    det = qpairs.load(args.model, device="cpu", backend=args.backend)
    encoder = det.model.encoder
    if getattr(encoder, "runtime", None) is None:
        raise SystemExit(f"{args.model or 'the default model'} runs no pooled ONNX session (a matching head runs its "
                         "token states, an ensemble several models): pass a transformer run with a pooled head")
    path = encoder.runtime.path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    peer = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    shards = onnxrt.OnnxPooler(path, threads=args.threads)

    def run_peer(batch):
        return peer.run(None, {k: v.numpy() for k, v in batch.items()})[0]

    texts = questions(args.questions)
    print(f"{len(texts)} questions, {args.threads} threads, {path.name}")
    for size in args.batches:
        # texts in length order, as qpairs's callers batch them
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [encoder.tokenize([texts[i] for i in order[s : s + size]]) for s in range(0, len(texts), size)]
        rng = np.random.default_rng(0)
        batches = [batches[i] for i in rng.permutation(len(batches))]
        result = {}
        for name, fn in (("1 session x threads", run_peer), ("shards", lambda b: shards(**b))):
            fn(batches[0])
            per_batch = []
            start = time.perf_counter()
            for b in batches:
                t = time.perf_counter()
                fn(b)
                per_batch.append(time.perf_counter() - t)
            result[name] = (time.perf_counter() - start) / len(texts), float(np.median(per_batch))
        (pq, pb), (sq, sb) = result["1 session x threads"], result["shards"]
        print(f"batch {size:4d}: peer {1e3 * pq:.2f} ms/question (p50 {1e3 * pb:.1f} ms/batch), "
              f"shards {1e3 * sq:.2f} ms/question (p50 {1e3 * sb:.1f} ms/batch) -> {pq / sq:.2f}x")
    # int8 quantizes activations per call, so a shard can differ slightly from the whole batch
    cos = torch.nn.functional.cosine_similarity(shards(**batches[0]), torch.from_numpy(run_peer(batches[0])))
    print(f"same vectors: min cosine shards vs peer {cos.min().item():.5f}")


if __name__ == "__main__":
    main()
