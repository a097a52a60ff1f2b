"""Smoothing and similarity groups on made-up series with known answers."""

import numpy as np
import pytest

from tview.render import analysis


def test_ema_matches_tensorboard_debiased_smoothing_and_skips_nan():
    v = np.array([1.0, 2.0, np.nan, 4.0])
    out = analysis.ema(v, 0.5)
    # debiased: (0.5*1) / 0.5 = 1; (0.25*1 + 0.5*2) / 0.75; NaN step holds the last value
    assert out[0] == pytest.approx(1.0)
    assert out[1] == pytest.approx((0.25 + 1.0) / 0.75)
    assert out[2] == pytest.approx(out[1])
    assert out[3] == pytest.approx((0.125 + 0.5 + 2.0) / 0.875)
    assert np.array_equal(analysis.ema(v, 0.0), v, equal_nan=True)
    with pytest.raises(ValueError, match="smoothing weight"):
        analysis.ema(v, 1.0)


def test_similarity_groups_merge_transitively_and_match_numpy_correlation():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 5, 5))
    noise = lambda: 0.05 * rng.normal(size=(8, 5, 5))
    chans = [base, base + noise(), rng.normal(size=(8, 5, 5)), -base, np.zeros((8, 5, 5)),
             rng.normal(size=(8, 5, 5))]
    chans[5] = chans[2] * 2 + 1 + noise()  # a second group: 2 and 5
    acts = np.stack(chans, axis=1)  # [N, C, H, W]
    groups = analysis.similarity_groups(acts, 0.9)
    assert groups == [[0, 1], [2, 5]]  # anti-correlated (3) and constant (4) channels join nothing
    profiles = np.moveaxis(acts, 1, 0).reshape(6, -1)
    ours = analysis.pearson_matrix(profiles)
    ref = np.corrcoef(profiles[[0, 1, 2, 3, 5]])
    assert np.allclose(ours[np.ix_([0, 1, 2, 3, 5], [0, 1, 2, 3, 5])], ref)
    assert np.isnan(ours[4]).all()
    # transitive: a~b and b~c put a, b, c in one group even when a and c fall below the threshold
    t = np.linspace(0, 1, 200)
    a, c = np.sin(6 * t), np.cos(6 * t)
    bmid = (a + c) / np.sqrt(2)
    chain = np.stack([a, bmid, c])[None, :, :]
    r = analysis.pearson_matrix(chain[0])
    thr = (min(r[0, 1], r[1, 2]) + r[0, 2]) / 2
    assert r[0, 2] < thr <= min(r[0, 1], r[1, 2])
    assert analysis.similarity_groups(chain, thr) == [[0, 1, 2]]


def test_pca3_keeps_the_largest_spread_on_the_first_axis():
    rng = np.random.default_rng(1)
    pts = np.c_[rng.normal(size=100) * 10, rng.normal(size=100), rng.normal(size=100) * 0.1, np.zeros(100)]
    out = analysis.pca3(pts)
    assert out.shape == (100, 3)
    assert out[:, 0].std() > out[:, 1].std() > out[:, 2].std()
