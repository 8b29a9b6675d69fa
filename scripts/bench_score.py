"""Benchmark `qpairs score` against the sentence-transformers way of scoring a pair file.

Generates a Kaggle-size test file (2,345,796 pairs; ``--n-pairs`` to shrink) from the
questions in the shared QQP data, where ≥ 90% of question slots are unique (questions are
made unique by realistic perturbations: lead-ins, trailing context, typos, casing, so the
speed comes from the encoder path, not the cache), plus a second file with QQP's natural
repetition (66% of slots unique, like Kaggle train). Then, in one run, on the same weights:

(a) ``qpairs score FILE -o OUT --model M``;
(b) what a sentence-transformers user writes: ``pd.read_csv`` → ``model.encode(q1s)``,
    ``model.encode(q2s)`` (fp16 on GPU, fp32 on CPU, batch 512) → cosine → ``to_csv``.

(a) runs once per backend (``--backends``; default every backend the device has), ``--repeats``
times each (default 3; the table gives the median's ratio and the range over the runs), and
``--baseline DIR`` adds an ``onnx-int8`` row run from another checkout of qpairs (e.g. main) as a
reference. Each runs in its own process (end-to-end wall time: imports, model load, read, encode,
write), and its peak memory (max RSS) is read from the OS. ``--labelled FILE`` (pairs with
``is_duplicate``) adds each row's accuracy (at the model's threshold) and ROC-AUC; the
sentence-transformers cosine has no threshold, so its accuracy is at the best cut on FILE itself. ``--scale 10`` also scores a
10× larger unique-heavy file with qpairs to show its memory stays flat.

    python scripts/bench_score.py --n-pairs 20000 --device cpu          # CPU, small
    python scripts/bench_score.py --n-pairs 2000 --device cpu --skip-natural \
        --labelled ../shared/data/qqp/cs224n_dev.csv.gz --labelled-rows 3000 --baseline ../main
    python scripts/bench_score.py --device cuda                          # GPU, Kaggle size
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

KAGGLE_TEST_PAIRS = 2_345_796

LEAD_INS = ["", "", "", "Can someone tell me: ", "I wonder, ", "Quick question: ", "Honestly, ", "So ", "Hi all, ",
            "In your opinion, ", "Does anyone know: ", "Serious question: ", "Out of curiosity, ", "Please help: ",
            "As a beginner, ", "As a student, ", "Genuinely asking: ", "Hey Quora, ", "Just curious, ", "Okay, "]
TAILS = ["", "", "", " in 2017", " in India", " for beginners", " as a student", " right now", " these days",
         " in the US", " at home", " quickly", " without money", " for free", " in simple terms", " step by step",
         " in my 20s", " after college", " on a budget", " in the long run"]


def all_questions(data_dir: Path) -> list[str]:
    """Every distinct question text in the labelled QQP files (plus the Kaggle test head)."""
    texts: dict[str, None] = {}
    for path in sorted((data_dir / "qqp").glob("*.csv.gz")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in ("question1", "question2"))
        for col in ("question1", "question2"):
            if col in frame:
                texts.update(dict.fromkeys(t for t in frame[col] if t.strip()))
    return list(texts)


def perturb(text: str, rng: random.Random) -> str:
    """A realistic variant: a lead-in, trailing context before the '?', a typo, casing."""
    text = text.strip()
    q = text.endswith("?")
    body = text[:-1] if q else text
    lead = rng.choice(LEAD_INS)
    if lead and body:
        body = body[0].lower() + body[1:]
    body = lead + body + rng.choice(TAILS)
    r = rng.random()
    if r < 0.3 and len(body) > 4:  # swap two neighbouring letters
        i = rng.randrange(1, len(body) - 2)
        body = body[:i] + body[i + 1] + body[i] + body[i + 2 :]
    elif r < 0.45 and len(body) > 4:  # drop a letter
        i = rng.randrange(1, len(body) - 1)
        body = body[:i] + body[i + 1 :]
    elif r < 0.55:
        body = body.lower()
    return body + ("?" if q or rng.random() < 0.7 else "")


class QuestionSource:
    """Yields questions never yielded before: the originals in shuffled order, then perturbed variants."""

    def __init__(self, questions: list[str], seed: int):
        self.rng = random.Random(seed)
        self.pool = list(questions)
        self.rng.shuffle(self.pool)
        self.seen: set[int] = set()
        self.i = 0

    def __call__(self) -> str:
        while True:
            base = self.pool[self.i % len(self.pool)]
            text = base if self.i < len(self.pool) else perturb(base, self.rng)
            self.i += 1
            h = hash(text)
            if h not in self.seen:
                self.seen.add(h)
                return text


def write_test_file(path: Path, n_pairs: int, questions: list[str], unique_rate: float, seed: int,
                    chunk: int = 200_000, window: int = 200_000) -> float:
    """Kaggle test-format CSV; each question slot is new with probability `unique_rate`, else a repeat."""
    source = QuestionSource(questions, seed)
    rng = np.random.default_rng(seed)
    used: list[str] = []
    n_unique = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("test_id,question1,question2\n")
        for start in range(0, n_pairs, chunk):
            n = min(chunk, n_pairs - start)
            fresh = rng.random(2 * n) < unique_rate
            slots = []
            for is_new in fresh:
                if is_new or not used:
                    t = source()
                    if len(used) < window:  # repeats come from the last `window` new questions
                        used.append(t)
                    else:
                        used[n_unique % window] = t
                    n_unique += 1
                else:
                    t = used[int(rng.integers(len(used)))]
                slots.append(t)
            frame = pd.DataFrame({"test_id": np.arange(start, start + n), "question1": slots[0::2],
                                  "question2": slots[1::2]})
            frame.to_csv(fh, header=False, index=False, lineterminator="\n")
    return n_unique / (2 * n_pairs)


# ---------------------------------------------------------------- the peer (runs in its own process)

def peer(inp: str, out: str, base_model: str, device: str) -> None:
    """The sentence-transformers way, as its users write it."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(base_model, device=device)
    if device.startswith("cuda"):
        model = model.half()
    df = pd.read_csv(inp)
    e1 = model.encode(df["question1"].astype(str).tolist(), batch_size=512, convert_to_tensor=True)
    e2 = model.encode(df["question2"].astype(str).tolist(), batch_size=512, convert_to_tensor=True)
    df["similarity"] = torch.nn.functional.cosine_similarity(e1.float(), e2.float()).cpu().numpy()
    df.to_csv(out, index=False)


# ---------------------------------------------------------------- timing

def run_timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of a child process. It runs in a folder that holds no qpairs package (paths
    made absolute first): `python -m` puts the working folder on sys.path ahead of PYTHONPATH, so from the
    repository root a --baseline checkout would never be the one that runs."""
    cmd = [os.path.abspath(c) if os.path.exists(c) and before != "-m" else c for before, c in zip([""] + cmd, cmd)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir())
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def run_repeated(cmd: list[str], env: dict, repeats: int) -> tuple[float, float, list[float]]:
    """(median wall seconds, peak RSS in MiB, every wall time) of `repeats` runs of a child process: a run of a few
    seconds is at the mercy of what else the machine does in those seconds, the median much less so."""
    runs = [run_timed(cmd, env) for _ in range(repeats)]
    walls = [wall for wall, _ in runs]
    return float(np.median(walls)), max(mem for _, mem in runs), walls


def timing_row(file: str, label: str, n_pairs: int, unique: float, st: tuple, qp: tuple) -> dict:
    """One table row: qpairs (median of its runs) against the sentence-transformers run, with the ratio's range."""
    (st_wall, st_mem), (qp_wall, qp_mem, walls) = st, qp
    return {"file": file, "pairs": n_pairs, "unique slots": f"{unique:.0%}", "qpairs": label,
            "qpairs pairs/s": n_pairs / qp_wall, "st pairs/s": n_pairs / st_wall, "ratio": st_wall / qp_wall,
            "ratio range": f"{st_wall / max(walls):.1f}–{st_wall / min(walls):.1f}",
            "qpairs peak MiB": qp_mem, "st peak MiB": st_mem}


def print_done(row: dict) -> None:
    """One line per finished qpairs row, so a run cut short still reports what it measured."""
    print(f"  qpairs {row['qpairs']} ({row['file']}): {row['qpairs pairs/s']:,.0f} pairs/s, "
          f"{row['ratio']:.1f}× sentence-transformers ({row['ratio range']}), peak {row['qpairs peak MiB']:,.0f} MiB",
          flush=True)


def device_backends(device: str) -> list[str]:
    """The qpairs backends to time on `device` (ONNX Runtime runs on the CPU only)."""
    from qpairs import onnxrt
    from qpairs.config import BACKENDS

    if device != "cpu" or not onnxrt.available():
        return ["torch"]
    return [b for b in BACKENDS if b != "auto"]


def qpairs_cmd(inp: Path, out: Path, model_dir: Path, device: str, backend: str, extra: str) -> list[str]:
    return [sys.executable, "-m", "qpairs", "score", str(inp), "-o", str(out), "--model", str(model_dir),
            "--device", device, "--backend", backend, *extra.split()]


def labelled_table(args, runs, model_dir: Path, device: str, work: Path, env: dict) -> pd.DataFrame:
    """Accuracy and ROC-AUC of every qpairs row and of the sentence-transformers cosine on --labelled."""
    from sklearn.metrics import roc_auc_score

    from qpairs.calibration import choose_threshold

    frame = pd.read_csv(args.labelled, dtype=str, keep_default_na=False)
    frame = frame.head(args.labelled_rows) if args.labelled_rows else frame
    path = work / "labelled.csv"
    frame[["question1", "question2", "is_duplicate"]].to_csv(path, index=False)
    y = frame["is_duplicate"].astype(int).to_numpy()
    rows = []
    for label, backend, run_env in runs:
        run_timed(qpairs_cmd(path, work / "labelled_out.csv", model_dir, device, backend, args.score_args), run_env)
        out = pd.read_csv(work / "labelled_out.csv")
        rows.append({"qpairs": label, "pairs": len(y), "accuracy": (out["predicted_duplicate"] == y).mean(),
                     "roc_auc": roc_auc_score(y, out["duplicate_probability"])})
    run_timed([sys.executable, __file__, "--peer", str(path), str(work / "st_labelled.csv"), "--model",
               str(model_dir), "--device", device], env)
    sim = pd.read_csv(work / "st_labelled.csv")["similarity"].to_numpy()
    cut = choose_threshold(sim, y)
    rows.append({"qpairs": "sentence-transformers cosine (best cut on this file)", "pairs": len(y),
                 "accuracy": ((sim >= cut) == y).mean(), "roc_auc": roc_auc_score(y, sim)})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=KAGGLE_TEST_PAIRS)
    ap.add_argument("--data-dir", help="shared data folder (default: qpairs.data.default_data_dir())")
    ap.add_argument("--model", help="qpairs model directory (default: the bundled default model)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--work-dir", help="where the generated files go (default: a temporary folder)")
    ap.add_argument("--fast-model", nargs="+", help="also score each file with these models, e.g. BiLSTMs, each in a "
                    "row of its own (default: the bundled fast model when installed)")
    ap.add_argument("--scale", type=int, default=0, help="also score a SCALE× larger unique-heavy file with qpairs")
    ap.add_argument("--scale-model", help="model for the --scale run (default: --model)")
    ap.add_argument("--skip-natural", action="store_true", help="only the unique-heavy file")
    ap.add_argument("--score-args", default="", help="extra arguments for qpairs score, e.g. '--batch-size 256'")
    ap.add_argument("--scale-args", help="extra qpairs score arguments for the --scale runs (default: --score-args), "
                    "e.g. '--chunk-size 5000 --cache-size 20000' so both sizes run with full chunks and cache")
    ap.add_argument("--backends", help="comma-separated qpairs backends (default: every one the device has)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each qpairs row (the median is reported; the "
                    "sentence-transformers run, minutes long, runs once)")
    ap.add_argument("--baseline", help="another qpairs checkout whose onnx-int8 row is added as a reference")
    ap.add_argument("--labelled", help="labelled pair file (is_duplicate): adds accuracy and ROC-AUC per row")
    ap.add_argument("--labelled-rows", type=int, help="only the first N pairs of --labelled")
    ap.add_argument("--peer", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    from qpairs.detector import default_model_dir
    from qpairs.encoders import resolve_base_model

    model_dir = Path(args.model) if args.model else default_model_dir()
    import qpairs

    base = resolve_base_model(qpairs.load(model_dir, device="cpu", backend="torch").config["encoder"].get("base_model"))
    if args.peer:
        peer(args.peer[0], args.peer[1], base, device)
        return

    from qpairs.data import default_data_dir

    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        raise SystemExit("no shared data folder: pass --data-dir")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_score_"))
    work.mkdir(parents=True, exist_ok=True)
    questions = all_questions(data_dir)
    print(f"{len(questions)} distinct source questions; device {device}; torch threads {torch.get_num_threads()}; "
          f"work dir {work}")

    from qpairs.detector import bundled_model_dir

    fast = bundled_model_dir("fast")
    fast_dirs = args.fast_model or ([str(fast)] if (fast / "config.json").is_file() else [])
    files = {"unique-heavy": (0.95, 1)}
    if not args.skip_natural:
        files["natural repetition"] = (0.66, 2)
    rows = []
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    runs = [(b, b, env) for b in (args.backends.split(",") if args.backends else device_backends(device))]
    if args.baseline:
        runs.append(("onnx-int8 (baseline)", "onnx-int8", {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}))
    warm = work / "warm_up.csv"
    write_test_file(warm, 20, questions, 1.0, 0)
    for _, backend, run_env in runs:  # ONNX exports are made once per model, outside the timings
        run_timed(qpairs_cmd(warm, work / "qpairs_out.csv", model_dir, device, backend, args.score_args), run_env)
    for name, (rate, seed) in files.items():
        path = work / f"{name.split()[0]}_{args.n_pairs}.csv"
        t0 = time.perf_counter()
        unique = write_test_file(path, args.n_pairs, questions, rate, seed)
        print(f"{name}: {args.n_pairs} pairs, {unique:.1%} of question slots unique "
              f"({time.perf_counter() - t0:.0f} s to generate)", flush=True)
        st = run_timed([sys.executable, __file__, "--peer", str(path), str(work / "st_out.csv"),
                        "--model", str(model_dir), "--device", device], env)
        print(f"  sentence-transformers: {st[0]:.1f} s, {args.n_pairs / st[0]:,.0f} pairs/s, peak {st[1]:,.0f} MiB",
              flush=True)
        for label, backend, run_env in runs:
            qp = run_repeated(qpairs_cmd(path, work / "qpairs_out.csv", model_dir, device, backend, args.score_args),
                              run_env, args.repeats)
            rows.append(timing_row(name, label, args.n_pairs, unique, st, qp))
            print_done(rows[-1])
        for fast_dir in fast_dirs:  # the same file through each fast model, against the same sentence-transformers run
            qp = run_repeated(qpairs_cmd(path, work / "qpairs_out.csv", Path(fast_dir), device, "auto", args.score_args),
                              env, args.repeats)
            rows.append(timing_row(f"{name}, --fast-model {Path(fast_dir).name}", "auto", args.n_pairs, unique, st, qp))
            print_done(rows[-1])
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    if args.labelled:
        print()
        print(labelled_table(args, runs, model_dir, device, work, env).to_string(index=False,
                                                                              float_format=lambda v: f"{v:.4f}"))

    if args.scale:
        scale_model = args.scale_model or str(model_dir)
        mems = []
        for n in (args.n_pairs, args.n_pairs * args.scale):
            path = work / f"scale_{n}.csv"
            write_test_file(path, n, questions, 0.95, 3)
            wall, mem = run_timed([sys.executable, "-m", "qpairs", "score", str(path), "-o", str(work / "scale_out.csv"),
                                   "--model", scale_model, "--device", device,
                                   *(args.scale_args if args.scale_args is not None else args.score_args).split()], env)
            mems.append((n, path.stat().st_size / 2**20, wall, mem))
        print()
        for n, size, wall, mem in mems:
            print(f"qpairs score, {n} pairs ({size:,.0f} MiB CSV): {n / wall:,.0f} pairs/s, peak {mem:,.0f} MiB")
        print(f"peak memory ratio at {args.scale}× the file: {mems[1][3] / mems[0][3]:.2f}")


if __name__ == "__main__":
    main()
