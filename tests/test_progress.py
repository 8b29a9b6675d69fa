"""Progress in a log: a redirected stderr gets whole lines at an interval, none for work shorter than it."""
import time

from qpairs import progress


def test_a_log_gets_a_line_per_interval_and_nothing_for_short_work(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    with progress.progress_bar(total=100, desc="quick", unit="q") as bar:
        bar.update(100)
    assert capsys.readouterr().err == ""
    with progress.progress_bar(total=8, desc="slow", unit="q") as bar:
        for step in range(8):
            time.sleep(0.1)
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}", refresh=False)  # as train does, every step
            bar.update(1)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= 6 and all(line.startswith("slow:") for line in lines)
    assert "\r" not in "".join(lines) and "loss=" in lines[-1]
    assert sum("8/8" in line for line in lines) == 1  # closing does not repeat the last state


def test_nested_bars_write_no_cursor_moves_into_a_log(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    with progress.progress_bar(total=2, desc="outer") as outer:
        for _ in range(2):
            with progress.progress_bar(total=3, desc="inner", leave=False) as inner:
                for _ in range(3):
                    time.sleep(0.04)
                    inner.update(1)
            outer.update(1)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "" not in err.splitlines() and "outer:" in err and "inner:" in err


def test_show_false_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    with progress.progress_bar(total=3, desc="hidden", show=False) as bar:
        for _ in range(3):
            time.sleep(0.01)
            bar.update(1)
    assert capsys.readouterr().err == ""


def test_pairs_in_chunks_equals_one_call_and_counts_every_pair(capsys):
    import numpy as np

    from qpairs.progress import pairs_in_chunks

    def both(a, b):  # [2, pairs], as an ensemble's member logits
        one = np.array([len(x) - len(y) for x, y in zip(a, b)], dtype=float)
        return np.stack([one, 2 * one])

    q1, q2 = [f"q{i}?" for i in range(5000)], [f"question {i}?" for i in range(5000)]
    np.testing.assert_array_equal(pairs_in_chunks(both, q1, q2, "scoring", show=True, size=1000), both(q1, q2))
    assert "5000/5000" in capsys.readouterr().err
    assert pairs_in_chunks(both, [], [], show=False).shape == (2, 0)
