"""Health findings, noise scale and similarity groups on made-up series with known answers."""

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


def test_exploding_and_vanishing_gradients_are_found_per_layer():
    steps = np.arange(100)
    grad = np.ones((100, 4))
    grad[:, 1] = np.logspace(0, 5, 100)     # explodes
    grad[:, 2] = np.logspace(0, -6, 100)    # vanishes
    grad[:, 3] = np.nan                     # no parameters: skipped
    found = analysis.gradient_findings(steps, grad, ["a", "b", "c", "d"], rank=1)
    kinds = {(f.layer, f.kind) for f in found}
    assert kinds == {("b", "exploding_gradients"), ("c", "vanishing_gradients")}
    assert all(f.rank == 1 for f in found)


def test_dead_channels_must_stay_dead_over_the_recent_window():
    z = np.full((50, 4), 0.3)
    z[:, 1] = 1.0                 # dead all along
    z[-5:, 2] = 1.0               # died recently: the last 3 recorded rows (the window) are all zero
    z[:45, 3] = 1.0               # was dead, recovered
    z[::2] = np.nan               # unrecorded steps are ignored
    assert list(analysis.dead_channels(z)) == [1, 2]
    assert len(analysis.dead_channels(np.full((10, 3), np.nan))) == 0


def test_rank_findings_diverging_slow_and_lagging():
    loss = {0: np.full(20, 0.5), 1: np.full(20, 0.55), 2: np.full(20, 3.0)}
    times = {0: np.full(20, 0.10), 1: np.full(20, 0.20), 2: np.full(20, 0.11)}
    last = {0: 1000, 1: 1000, 2: 400}
    found = analysis.rank_findings(loss, times, last)
    assert {(f.kind, f.rank) for f in found} == {("rank_diverges", 2), ("slow_rank", 1), ("rank_lags", 2)}
    assert analysis.rank_findings({0: np.ones(5), 1: np.ones(5)}, {}, {0: 10, 1: 10}) == []


def test_nonfinite_findings_name_the_first_step_and_layer():
    found = analysis.nonfinite_findings({0: {"layers": {"conv2": 7, "fc": 7, "conv1": 9}, "scalars": {"loss": 7}},
                                         1: {"layers": {}, "scalars": {}}})
    assert found[0].step == 7 and found[0].layer == "conv2" and "and 1 more" in found[0].message
    assert found[1].message == "rank 0: loss became NaN/Inf at step 7"
    assert len(found) == 2


def test_gradient_noise_scale_recovers_a_known_noise_scale():
    # E|G_b|^2 = |G|^2 + tr(S)/b: with |G|^2 = 4 and tr(S) = 800, B_simple = 200.
    b, world, steps = 16, 4, 50
    g2, trace = 4.0, 800.0
    local = np.full((world, steps), g2 + trace / b)
    big = np.full(steps, g2 + trace / (b * world))
    out = analysis.gradient_noise_scale(local, big, b, world, smoothing=0.0)
    assert out == pytest.approx(np.full(steps, trace / g2))
    with pytest.raises(ValueError, match="2 ranks"):
        analysis.gradient_noise_scale(local[:1], big, b, 1)


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
