import numpy as np
import pytest

from qpairs.calibration import Calibrator, choose_threshold, shift_prior


def _distances(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.37
    d = np.where(y, rng.normal(0.5, 0.2, n), rng.normal(1.0, 0.25, n))
    return d, y.astype(int)


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_probability_decreases_with_distance(method):
    d, y = _distances()
    cal = Calibrator(method).fit(d, y)
    grid = np.linspace(d.min(), d.max(), 200)
    p = cal.predict_proba(grid)
    assert np.all(np.diff(p) <= 1e-12), "calibrated probability must not rise with distance"
    assert p[0] > 0.9 and p[-1] < 0.1


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_calibrated_and_round_trips(method):
    d, y = _distances()
    cal = Calibrator(method).fit(d, y)
    p = cal.predict_proba(d)
    assert abs(p.mean() - y.mean()) < 0.02  # calibrated in the large
    again = Calibrator.from_dict(cal.to_dict())
    np.testing.assert_allclose(again.predict_proba(d), p)
    assert again.threshold == cal.threshold and again.prior == pytest.approx(y.mean())


def test_threshold_maximises_accuracy():
    p = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    y = np.array([1, 1, 0, 1, 0, 0])
    t = choose_threshold(p, y)
    best = max(((p >= c) == y).mean() for c in np.r_[p, 1.01])
    assert ((p >= t) == y).mean() == best


def test_needs_both_classes():
    with pytest.raises(ValueError, match="both duplicates and non-duplicates"):
        Calibrator().fit([0.1, 0.2], [1, 1])


def test_prior_shift():
    p = np.array([0.1, 0.5, 0.9])
    assert np.allclose(shift_prior(p, 0.37, 0.37), p)
    shifted = shift_prior(p, 0.37, 0.165)
    assert np.all(shifted < p)
    # odds scale by (0.165/0.835)/(0.37/0.63)
    odds = lambda q: q / (1 - q)
    assert np.allclose(odds(shifted) / odds(p), (0.165 / 0.835) / (0.37 / 0.63))
