"""Wall time of fresh `qpairs` processes: `--help`, `score --help`, and scoring a 3-row file with the
bundled default model (its ONNX copy prepared beforehand, as after a first run).

    python scripts/bench_cold_start.py [--repeat 3] [--tree DIR]

`--tree` runs the qpairs package found in DIR (PYTHONPATH=DIR), e.g. another checkout, on the same
machine in the same run. The 1-minute load average is printed before each command.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAIRS = ("id,question1,question2\n1,How do I learn Python?,What is the best way to learn Python?\n"
         "2,Is Java hard?,How difficult is Java?\n3,Why is the sky blue?,How do I cook pasta?\n")


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t0 = time.perf_counter()  # `cwd` holds no qpairs: `python -m` puts it first on sys.path, before PYTHONPATH
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tree", action="append", default=[], help="checkout(s) to time (default: the current one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qpairs-cold-"))
    (work / "three.csv").write_text(PAIRS)
    py = [sys.executable, "-m", "qpairs"]
    commands = {"qpairs --help": py + ["--help"], "qpairs score --help": py + ["score", "--help"],
                "qpairs score (3 rows)": py + ["score", str(work / "three.csv"), "-o", str(work / "out.csv")]}
    for tree in args.tree or [str(Path(__file__).resolve().parents[1])]:
        env = {**os.environ, "PYTHONPATH": tree}
        timed(commands["qpairs score (3 rows)"], env, work)  # prepares the ONNX copy once
        (work / "out.csv").unlink(missing_ok=True)
        for name, cmd in commands.items():
            runs = []
            for _ in range(args.repeat):
                load = os.getloadavg()[0]
                runs.append(timed(cmd, env, work))
                (work / "out.csv").unlink(missing_ok=True)
                print(f"{tree}  {name:<24} {runs[-1]:6.2f} s  (load {load:.2f})", flush=True)
            print(f"{tree}  {name:<24} median {statistics.median(runs):.2f} s")


if __name__ == "__main__":
    main()
