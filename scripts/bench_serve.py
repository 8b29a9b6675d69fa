#!/usr/bin/env python
"""Bounded load test of `qpairs serve` (loopback only) and per-query timing of exact search over a big bank.

1. /predict: starts `qpairs serve` on a free 127.0.0.1 port, warms it up, then runs
   `--concurrency` closed-loop clients sending single-pair requests until `--requests` are
   done or `--duration` seconds pass (whichever first), and stops the server. Prints
   requests/s and p50/p90/p99 latency, and — as the peer measured in the same run — the
   latency of the same model called in-process, one pair at a time, without HTTP.
2. /search cost: an exact flat index of `--bank` questions (real QQP questions encoded by
   the model when `--encode-bank`; otherwise random vectors of the model's dimension, which
   costs the same for an exact index) and `--search-queries` real questions searched one
   at a time through `QuestionIndex.search` (encode + FAISS + re-scoring). Peer: NumPy
   brute force over the same vectors.

    python scripts/bench_serve.py --model runs/lstm --concurrency 8 --requests 2000 --duration 30
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"  # loopback only, by design


def default_model() -> str:
    from qpairs.detector import default_model_dir

    for cand in (default_model_dir(), Path("runs/lstm")):
        weights = any((Path(cand) / f).exists() for f in ("model.safetensors", "ensemble.json"))
        if weights and (Path(cand) / "calibration.json").exists():
            return str(cand)
    raise SystemExit("no model found (qpairs/default_model or runs/lstm): pass --model RUN_DIR")


def real_questions(n: int, seed: int = 0) -> list[str]:
    """`n` distinct QQP questions from the shared data, or generated ones when it is absent."""
    from qpairs import data as qd

    rng = random.Random(seed)
    root = qd.default_data_dir()
    if root is not None and (root / "qqp" / "kaggle_train_head10k.csv.gz").exists():
        import pandas as pd

        qs = []
        for f in sorted((root / "qqp").glob("*.csv.gz")):
            if "test_head" in f.name:
                continue
            frame = pd.read_csv(f, keep_default_na=False, usecols=["question1", "question2"])
            qs += frame["question1"].tolist() + frame["question2"].tolist()
            if len(set(qs)) >= n:
                break
        qs = sorted({q for q in qs if q.strip()})
        rng.shuffle(qs)
        if len(qs) >= n:
            return qs[:n]
    topics = ["python", "java", "cooking", "guitar", "taxes", "visa", "diet", "physics", "history", "cats"]
    return [f"{rng.choice(['How do I learn', 'Why is', 'What is'])} {rng.choice(topics)} number {i}?" for i in range(n)]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "n": len(a)}


# ---------------------------------------------------------------- a minimal keep-alive HTTP/1.1 client

class Conn:
    """One keep-alive connection; a lighter client than httpx, so the client steals less CPU from the server."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> "Conn":
        return cls(*await asyncio.open_connection(HOST, port))

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        data = json.dumps(body).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length")
        return status, await self.reader.readexactly(length)

    def close(self):
        self.writer.close()


async def load(port: int, pairs, concurrency: int, total: int, duration: float) -> tuple[list[float], float, int]:
    """Closed-loop clients; stops at `total` requests or after `duration` seconds."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + duration

    async def client(seed: int):
        nonlocal sent, errors
        rng = random.Random(seed)
        conn = await Conn.open(port)
        try:
            while sent < total and time.perf_counter() < stop_at:
                sent += 1
                q1, q2 = rng.choice(pairs)
                t0 = time.perf_counter()
                status, _ = await conn.post("/predict", {"q1": q1, "q2": q2})
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += status != 200
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, time.perf_counter() - t0, errors


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to show cost independent of machine load."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, max_wait_ms: float, threads: int | None,
                 backend: str = "auto") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "qpairs", "serve", "--model", model, "--host", HOST, "--port", str(port),
           "--device", "cpu", "--max-wait-ms", str(max_wait_ms), "--backend", backend] + (
               ["--threads", str(threads)] if threads is not None else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://{HOST}:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not come up within 180 s")


def bench_predict(args, model: str) -> dict:
    import httpx

    qs = real_questions(400, seed=1)
    pairs = list(zip(qs[:200], qs[200:]))
    port = free_port()
    proc = start_server(model, port, args.max_wait_ms, args.threads, args.backend)
    try:
        asyncio.run(load(port, pairs, args.concurrency, args.warmup, 60))  # warm-up, not counted
        cpu0, client0 = cpu_seconds(proc.pid), time.process_time()
        lat, wall, errors = asyncio.run(load(port, pairs, args.concurrency, args.requests, args.duration))
        server_cpu, client_cpu = cpu_seconds(proc.pid) - cpu0, time.process_time() - client0
        stats = httpx.get(f"http://{HOST}:{port}/health", timeout=5).json()["batching"]["predict"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out = {"requests": len(lat), "errors": errors, "seconds": wall, "requests_per_s": len(lat) / wall,
           **percentiles(lat), "mean_batch": stats["items"] / max(stats["batches"], 1),
           "server_cpu_ms_per_request": 1000 * server_cpu / max(len(lat), 1),
           "client_cpu_ms_per_request": 1000 * client_cpu / max(len(lat), 1)}

    import qpairs  # the peer: the same model in-process, one pair per call, no HTTP, no batching

    from qpairs.service import configure_threads

    det = qpairs.load(model, device="cpu", backend=args.backend)
    out["threads"] = configure_threads(det, args.threads)  # as the server does
    for q1, q2 in pairs[:20]:
        det.predict_proba(q1, q2)
    direct, cpu = [], time.process_time()
    for q1, q2 in pairs[: args.peer_calls]:
        t0 = time.perf_counter()
        det.predict_proba(q1, q2)
        direct.append((time.perf_counter() - t0) * 1000)
    out["in_process"] = {**percentiles(direct), "cpu_ms_per_call": 1000 * (time.process_time() - cpu) / len(direct)}
    return out


def bench_search(args, model: str) -> dict:
    from threadpoolctl import threadpool_limits

    import qpairs
    from qpairs.search import QuestionIndex

    from qpairs.service import configure_threads

    det = qpairs.load(model, device="cpu", backend=args.backend)
    configure_threads(det, args.threads)  # the server's thread policy
    queries = real_questions(args.search_queries + 2000, seed=2)
    sample, queries = queries[:2000], queries[2000:]
    index = QuestionIndex.empty(det, "flat")
    if args.encode_bank:
        bank_texts = real_questions(args.bank, seed=3)
        index.add(det, bank_texts, progress=None)
        how = f"{len(index)} real QQP questions encoded by the model"
    else:
        ref = index.query_vectors(det, sample)  # random vectors with the index's dimension and typical norm
        rng = np.random.default_rng(0)
        vecs = rng.standard_normal((args.bank, ref.shape[1])).astype(np.float32)
        vecs *= np.linalg.norm(ref, axis=1).mean() / np.sqrt(ref.shape[1])
        texts = [sample[i % len(sample)] for i in range(args.bank)]  # real lengths for the lexical re-ranking
        index.add_embeddings(det, vecs, range(args.bank), texts)
        how = (f"{len(index)} random vectors (dim {ref.shape[1]}, {index.space} space); exact search costs the same "
               "for any values")
    for q in queries[:10]:  # warm-up
        index.search(det, q, k=10)
    queries = queries[: args.search_queries]
    total, cpu_ms = [], []
    for q in queries:  # what a /search request costs the model thread
        t0, c0 = time.perf_counter(), time.process_time()
        index.search(det, q, k=10)
        total.append((time.perf_counter() - t0) * 1000)
        cpu_ms.append((time.process_time() - c0) * 1000)
    vectors = index.query_vectors(det, queries)
    knn_ms, faiss_ms = [], []
    for v in vectors:  # what search uses on a flat index: fp16 shards scanned in parallel, exact fp32 re-check
        t0 = time.perf_counter()
        index.knn(v[None], 10, few_fast=True)
        knn_ms.append((time.perf_counter() - t0) * 1000)
    for v in vectors:  # FAISS's own flat search (a separate loop: its OpenMP workers spin after each call)
        t0 = time.perf_counter()
        index.knn(v[None], 10)
        faiss_ms.append((time.perf_counter() - t0) * 1000)
    stored = index.index.reconstruct_n(0, len(index))
    sq_norms = (stored * stored).sum(1)
    cosine = index.meta["metric"] == "cosine"
    numpy_ms = []
    with threadpool_limits(args.threads or None):  # the peer gets the same number of threads
        for v in index._index_vectors(vectors):
            t0 = time.perf_counter()
            cost = -(stored @ v) if cosine else sq_norms - 2 * (stored @ v)  # same ranking as FAISS's IP / L2
            np.argpartition(cost, 10)[:10]
            numpy_ms.append((time.perf_counter() - t0) * 1000)
    return {"bank": how, "search_end_to_end": {**percentiles(total), "cpu_p50_ms": float(np.median(cpu_ms))},
            "knn_only": percentiles(knn_ms), "faiss_flat_search_peer": percentiles(faiss_ms),
            "numpy_brute_force_peer": percentiles(numpy_ms)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="run directory (default: qpairs/default_model, else runs/lstm)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000, help="stop after this many requests ...")
    p.add_argument("--duration", type=float, default=30.0, help="... or after this many seconds")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="server micro-batching window")
    p.add_argument("--peer-calls", type=int, default=200)
    p.add_argument("--backend", default="auto", help="model backend, in the server and in-process (default: auto)")
    p.add_argument("--threads", type=int, help="model threads, in the server and in-process (default: the server's "
                   "default, 1 for torch models and up to 4 for ONNX Runtime ones)")
    p.add_argument("--bank", type=int, default=200_000, help="questions in the exact search index")
    p.add_argument("--encode-bank", action="store_true", help="encode real questions instead of random vectors")
    p.add_argument("--search-queries", type=int, default=200)
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    model = args.model or default_model()
    from qpairs.service import set_threads

    set_threads(args.threads)
    results = {"model": model, "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
               "torch_threads": None}
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; {args.threads or 'default'} model thread(s)")
    import torch

    results["torch_threads"] = torch.get_num_threads()
    if not args.skip_predict:
        r = results["predict"] = bench_predict(args, model)
        print(f"/predict, single pair, {args.concurrency} concurrent clients, model {model}:")
        print(f"  {r['requests']} requests in {r['seconds']:.1f} s = {r['requests_per_s']:.0f} req/s, "
              f"{r['errors']} errors; latency p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms (p99 < 25 ms: {'met' if r['p99_ms'] < 25 else 'NOT met'}); "
              f"mean micro-batch {r['mean_batch']:.1f} pairs; {r['threads']} model thread(s)")
        print(f"  CPU per request: server {r['server_cpu_ms_per_request']:.2f} ms, "
              f"load-test client {r['client_cpu_ms_per_request']:.2f} ms")
        d = r["in_process"]
        print(f"  peer, in-process predict_proba one pair at a time: p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms, "
              f"CPU {d['cpu_ms_per_call']:.2f} ms/call"
              f"  → HTTP p50 / in-process p50 = {r['p50_ms'] / d['p50_ms']:.1f}x")
    if not args.skip_search:
        s = results["search"] = bench_search(args, model)
        e, f, n = s["search_end_to_end"], s["knn_only"], s["numpy_brute_force_peer"]
        print(f"search, exact flat index, {s['bank']}:")
        print(f"  per query (encode + FAISS + re-score): p50 {e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms, "
              f"CPU p50 {e['cpu_p50_ms']:.2f} ms "
              f"(p50 < 20 ms: {'met' if e['p50_ms'] < 20 else 'NOT met'})")
        print(f"  kNN alone: p50 {f['p50_ms']:.2f} ms; peers: FAISS flat search p50 "
              f"{s['faiss_flat_search_peer']['p50_ms']:.2f} ms, NumPy brute force p50 {n['p50_ms']:.2f} ms "
              f"→ FAISS / ours = {s['faiss_flat_search_peer']['p50_ms'] / f['p50_ms']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
