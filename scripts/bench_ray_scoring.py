"""Throughput of `qpairs score --engine ray` with 1 and 2 local Ray workers, against the local scorer.

In one run, on one generated pair file and one model: (a) the local streaming scorer
(`qpairs.scoring.score_file`, one torch thread) as the peer, (b) Ray with 1 actor, (c) Ray
with 2 actors (each actor one torch thread, 0.75 CPU asked of Ray). Times are end to end
for the scoring call (read, row numbering, actor start-up and model load, scoring, Parquet
write); Ray's own start-up (`ray.init` and one warm-up run that starts its worker
processes) is excluded and printed separately. Inside the actors, the CPU and wall time
of every `score_frame` call are recorded too: equal CPU per pair with more wall per pair
means the actors waited for a core (other work on the machine), not that Ray added work.

Without --model it scores with an untrained BiLSTM of the default `qpairs train` size
(speed does not depend on the weights). Questions come from the shared QQP data when it
is there, else they are generated.

    python scripts/bench_ray_scoring.py --n-pairs 20000            # CPU, this machine
    python scripts/bench_ray_scoring.py --model runs/minilm --n-pairs 2000000 --gpus   # a GPU node
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def questions(limit: int = 40_000) -> list[str]:
    """Distinct question texts: the shared QQP head file, else generated ones."""
    from qpairs.data import default_data_dir

    data = default_data_dir()
    path = data / "qqp" / "kaggle_train_head10k.csv.gz" if data else None
    if path is not None and path.exists():
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        texts = list(dict.fromkeys(t for c in ("question1", "question2") for t in frame[c] if t.strip()))
        return texts[:limit]
    rng = random.Random(0)
    words = "how what why can do is the best way to learn get start find make python money job india life love".split()
    return [" ".join(rng.choices(words, k=rng.randint(5, 14))) + "?" for _ in range(limit)]


def make_pairs(path: Path, n: int, texts: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(texts), n), rng.integers(0, len(texts), n)
    pd.DataFrame({"id": np.arange(n), "question1": np.asarray(texts, dtype=object)[i],
                  "question2": np.asarray(texts, dtype=object)[j]}).to_csv(path, index=False)


def default_size_model(path: Path, texts: list[str]) -> Path:
    """An untrained BiLSTM run directory with `qpairs train`'s default sizes."""
    from qpairs.calibration import Calibrator
    from qpairs.checkpoint import save_model, write_json
    from qpairs.config import TrainConfig
    from qpairs.encoders import LSTMEncoder
    from qpairs.model import SiameseModel
    from qpairs.vocab import WordVocab

    c = TrainConfig()
    enc = LSTMEncoder(WordVocab.build(texts, min_freq=1), embedding_dim=c.embedding_dim, hidden_size=c.hidden_size,
                      projection_dim=c.projection_dim, max_length=c.max_length)
    save_model(SiameseModel(enc), path)
    d = np.linspace(0, 2, 50)
    write_json(path / "calibration.json", Calibrator("platt").fit(d, (d < 1).astype(int)).to_dict())
    return path


def timed_scorer(base, log: Path):
    """A `FrameScorer` (`base`) that appends each batch's wall and CPU seconds to `log` (local runs)."""

    class TimedScorer(base):
        def __call__(self, batch):
            wall, cpu = time.perf_counter(), time.process_time()
            out = super().__call__(batch)
            rec = {"pid": os.getpid(), "rows": len(batch), "wall": time.perf_counter() - wall,
                   "cpu": time.process_time() - cpu}
            with open(log, "a") as f:
                f.write(json.dumps(rec) + "\n")
            return out

    return TimedScorer


def actor_summary(log: Path) -> str:
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    rows = sum(r["rows"] for r in recs)
    return (f"inside score_frame, {len({r['pid'] for r in recs})} actor(s): {rows / sum(r['cpu'] for r in recs):.0f} "
            f"pairs per CPU-second, {rows / sum(r['wall'] for r in recs):.0f} pairs per actor wall-second")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=20_000)
    ap.add_argument("--model", help="run directory (default: an untrained default-size BiLSTM)")
    ap.add_argument("--rows-per-batch", type=int, default=2048)
    ap.add_argument("--gpus", action="store_true", help="one GPU per actor (a GPU node); default: CPU")
    args = ap.parse_args()

    import ray
    import torch

    from qpairs import ray_scoring
    from qpairs.ray_scoring import score_with_ray
    from qpairs.scoring import score_file

    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        texts = questions()
        src = tmp / "pairs.csv"
        make_pairs(src, args.n_pairs, texts)
        model = args.model or default_size_model(tmp / "model", texts)
        device = "cuda" if args.gpus else "cpu"
        print(f"{args.n_pairs} pairs, {len(texts)} distinct questions, model {model}, {os.cpu_count()} CPUs seen")

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        local = score_file(src, tmp / "local.csv", model, device=device, progress=False)
        local_rate = args.n_pairs / (time.perf_counter() - t0)
        print(f"local score_file (1 thread):   {local_rate:8.0f} pairs/s")

        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        score_with_ray(src, tmp / "warmup", model, workers=1, cpus_per_worker=0.75,
                       gpus_per_worker=1.0 if args.gpus else 0.0, rows_per_batch=args.rows_per_batch)
        print(f"ray.init + a warm-up run (Ray's worker processes start): {time.perf_counter() - t0:.1f} s, "
              "not counted below")
        rates, plain = {}, ray_scoring.FrameScorer
        for workers in (1, 2):
            out = tmp / f"ray{workers}"
            log = tmp / f"actors{workers}.jsonl"
            ray_scoring.FrameScorer = timed_scorer(plain, log)
            r = score_with_ray(src, out, model, workers=workers, cpus_per_worker=0.75,
                               gpus_per_worker=1.0 if args.gpus else 0.0, rows_per_batch=args.rows_per_batch)
            rates[workers] = r["pairs_per_s"]
            score_s = r["seconds"] - r["read_seconds"]
            print(f"ray, {workers} worker(s):            {r['pairs_per_s']:8.0f} pairs/s end to end "
                  f"({r['seconds']:.1f} s: read + numbering {r['read_seconds']:.1f} s, actors + scoring + write "
                  f"{score_s:.1f} s = {args.n_pairs / score_s:.0f} pairs/s)")
            print(f"    {actor_summary(log)}")
        ray.shutdown()
        print(f"ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}; 1 Ray worker / local: {rates[1] / local_rate:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
