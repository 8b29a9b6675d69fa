"""Progress in a log: a redirected stderr gets whole lines at an interval, none for work shorter than it."""
import time

from qpairs import progress


def test_a_log_gets_a_line_per_interval_and_nothing_for_short_work(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    with progress.progress_bar(total=100, desc="quick", unit="q") as bar:
        bar.update(100)
    assert capsys.readouterr().err == ""
    with progress.progress_bar(total=8, desc="slow", unit="q") as bar:
        for _ in range(8):
            time.sleep(0.1)
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 6 and all(line.startswith("slow:") for line in lines)
    assert "\r" not in "".join(lines) and lines[-1].count("8/8") == 1 and len(set(lines)) == len(lines)


def test_show_false_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with progress.progress_bar(total=3, desc="hidden", show=False) as bar:
        for _ in range(3):
            time.sleep(0.01)
            bar.update(1)
    assert capsys.readouterr().err == ""
