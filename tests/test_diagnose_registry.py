"""tview.diagnose's registry and its cause-before-symptom order: the README's kinds are the registry's, findings
fold under their cause, and the optimizer's checks (lr, update, loss) on made-up series with known answers."""

import os
import re

import numpy as np

from tests.conftest import REPO
from tview.diagnose import CHECKS, KINDS, causes, every_finding
from tview.diagnose.checks import gradients, optimizer
from tview.diagnose.findings import make


def _readme_kinds() -> set[str]:
    text = open(os.path.join(REPO, "README.md")).read()
    start = text.index("- `tview diagnose RUN")
    section = text[start:text.index("\n- `", start + 1)]
    listed = section[section.index("declaring its kinds:"):]
    return set(re.findall(r"`([a-z_]+)`", listed)) - _readme_statistics(text)


def _readme_statistics(text: str) -> set[str]:
    """The statistic names the README lists (a kind's description may cite one, as `local_grad_norm`)."""
    start = text.index("The statistics (`run.stat_names()`)")
    return set(re.findall(r"[a-z_]+", text[start:text.index("histograms", start)]))


def test_the_readme_lists_exactly_the_kinds_the_check_modules_declare():
    declared = set().union(*(set(check.KINDS) for check in CHECKS))
    assert declared == set(KINDS)
    assert _readme_kinds() == declared


def test_each_check_module_declares_its_kinds_and_a_check():
    assert len(CHECKS) >= 6
    for check in CHECKS:
        assert check.KINDS and callable(check.check), check.__name__
        assert all(sev in ("error", "warning") for sev, _, _ in check.KINDS.values())


def test_consequences_fold_under_the_earliest_cause_and_unrelated_findings_stay_apart():
    lr = make("lr_jump", "lr x300", step=120)
    loss = make("loss_spike", "loss up", step=121)
    vanish = make("vanishing_gradients", "died", layer="b3.bn", step=139)
    slow = make("slow_rank", "slow", rank=1, step=121)
    late = make("exploding_gradients", "again", layer="fc", step=400)
    roots = causes.fold([vanish, slow, loss, late, lr])
    assert roots == [lr, late, slow]
    assert lr.followed_by == [loss, vanish]
    assert every_finding(roots) == [lr, loss, vanish, late, slow]


def test_at_one_step_the_cause_comes_first_whatever_the_loudest():
    dead = make("dead_filters", "relu dead", layer="b3.relu", step=120, channels=list(range(16)))  # a whole layer
    vanish = make("vanishing_gradients", "fell", layer="b3.bn", step=120)
    spike = make("loss_spike", "loss up", step=120)  # an error, the others warnings: still a consequence
    roots = causes.fold([spike, vanish, dead])
    assert roots == [dead] and dead.followed_by == [spike, vanish]


def test_a_small_natural_death_never_heads_an_error_that_follows_it():
    """A couple of dead channels (clean training has them too) before an error, or dated with it: the error heads
    the report, not folded under the death; a whole layer's death still heads what follows it."""
    small = make("dead_filters", "2 dead", layer="relu2", step=100, channels=[3, 7])
    spike = make("loss_spike", "loss up", step=110)
    assert causes.fold([small, spike]) == [spike, small] and not small.followed_by
    late = make("dead_units", "2 dead", layer="relu3", step=121, channels=[0, 5])  # dated one record after
    cut = make("gradient_cut", "cut", layer="fc1", step=120)
    assert causes.fold([late, cut])[0] is cut and not late.followed_by
    whole = make("dead_filters", "all dead", layer="relu2", step=100, channels=list(range(16)))
    spike = make("loss_spike", "loss up", step=110)
    assert causes.fold([whole, spike]) == [whole] and whole.followed_by == [spike]


def test_an_error_does_not_fold_under_a_small_death_through_what_followed_it():
    small = make("dead_filters", "2 dead", layer="relu1", step=100, channels=[1, 2])
    more = make("dead_filters", "all dead", layer="relu2", step=104, channels=list(range(16)))  # a warning after it
    spike = make("loss_spike", "loss up", step=110)
    roots = causes.fold([small, more, spike])
    assert roots[0] is spike and spike not in every_finding([small])


def test_a_cause_found_one_record_late_still_comes_first():
    dead = make("dead_filters", "relu dead", layer="b3.relu", step=121)
    vanish = make("vanishing_gradients", "fell", layer="b3.bn", step=120)
    assert causes.fold([vanish, dead]) == [dead] and dead.followed_by == [vanish]


def test_a_consequence_on_another_rank_is_not_folded():
    nan = make("nonfinite", "NaN", rank=1, layer="conv1", step=90)
    other = make("rank_diverges", "bad data", rank=0, step=95)
    assert causes.fold([nan, other]) == [nan, other]


def test_lr_jump_above_all_it_had_but_not_warm_up_or_restarts():
    warm = np.r_[np.linspace(1e-4, 0.1, 50), 0.1 * (1 + np.cos(np.linspace(0, np.pi, 50))) / 2,
                 np.full(20, 0.1)]  # warm-up, cosine decay, restart at the old peak
    assert optimizer.lr_onset(warm) is None
    spike = np.full(100, 0.02)
    spike[60:] = 6.0
    assert optimizer.lr_onset(spike) == 60
    assert optimizer.lr_onset(np.r_[0.0, np.full(10, 0.1)]) is None  # from zero: nothing to compare with


def _cosine(n, peak):
    return peak * (1 + np.cos(np.linspace(0, np.pi, n))) / 2


def test_lr_growth_after_a_flat_or_decaying_stretch_but_not_warm_ups_restarts_or_cycles():
    """A lr x1.05 a step from step 80 (flat before; or a stepwise x2 every 10 steps) is named from the step it
    began, though no step is 3x the one before; warm-ups from the start (linear, or stepwise with long plateaus),
    one held back at a lr near 0, warm restarts that warm up again to their old peak, and a triangular cyclic lr
    (10x from base to peak, every cycle) are not."""
    ramp = np.r_[np.full(80, 0.02), 0.02 * 1.05 ** np.arange(1, 81)]
    assert optimizer.lr_onset(ramp) is None and optimizer.lr_growth(ramp) == (80, 127)  # 1.05^48 > 10
    steps = np.r_[np.linspace(1e-4, 0.02, 20), np.full(60, 0.02), 0.02 * 2.0 ** (np.arange(1, 81) // 10)]
    assert optimizer.lr_onset(steps) is None and optimizer.lr_growth(steps)[0] == 89
    legit = {
        "warm-up, cosine": np.r_[np.linspace(1e-4, 0.1, 50), _cosine(50, 0.1), np.full(20, 0.1)],
        "stepwise warm-up": np.r_[np.repeat(np.linspace(0.01, 0.1, 10), 25), np.full(50, 0.1)],
        "held-back warm-up": np.r_[np.full(30, 1e-7), np.geomspace(1e-7, 0.1, 30), np.full(40, 0.1)],
        "warm restarts": np.tile(np.r_[np.linspace(1e-3, 0.1, 15), _cosine(55, 0.1)], 3),
        "cyclic": np.tile(np.r_[np.linspace(0.001, 0.01, 25), np.linspace(0.01, 0.001, 25)], 4),
        "ramp below the old peak": np.r_[0.1 * 0.97 ** np.arange(80), 0.1 * 0.97 ** 79 * 1.05 ** np.arange(1, 81)],
    }
    assert {name: optimizer.lr_growth(lr) for name, lr in legit.items()} == dict.fromkeys(legit)


def test_loss_spike_needs_a_jump_that_stays_not_one_odd_batch():
    rng = np.random.default_rng(0)
    loss = 2.3 * np.exp(-np.arange(200) / 30) + 0.05 * rng.random(200)
    odd = loss.copy()
    odd[150] = 2.0  # one hard batch
    assert optimizer.spike_onset(odd) is None
    up = loss.copy()
    up[120:] = 2.3
    assert optimizer.spike_onset(up) == 120
    slow = 2.3 - 1.1 * np.arange(200) / 120 + 0.1 * rng.random(200)  # learning slowly: 2.3 down to 1.2 by 120
    kicked = slow.copy()
    kicked[120], kicked[121:] = 8.0, 2.3  # blown up (5x its level), fallen back to chance, 2x where it had got to
    assert optimizer.spike_onset(kicked) == 120
    back = slow.copy()
    back[120] = 8.0  # blown up, then on where it was: one odd batch
    assert optimizer.spike_onset(back) is None
    assert optimizer.spike_onset(back[:124]) is None  # a live run, 3 records after it: not judged yet
    assert optimizer.spike_onset(kicked[:124]) is None and optimizer.spike_onset(kicked[:131]) == 120


def test_a_loss_spike_from_a_loss_of_zero_is_said_without_dividing_by_it():
    class Losses:
        def loss(self):
            return np.arange(40), np.r_[np.ones(15), np.zeros(5), np.full(20, 10.0)]
    found = optimizer.check_loss_spike(Losses())
    assert [f.step for f in found] == [20] and "above where it had got to (0" in found[0].message


def test_update_per_gradient_ignores_a_small_batch_and_momentum_carrying_a_spike():
    rng = np.random.default_rng(1)
    grad = np.exp(rng.normal(size=(100, 3)) * 0.3)
    update = 0.01 * grad
    grad[50] *= 50.0          # a hard batch: the gradient spikes ...
    update[50:60] *= 5.0      # ... and momentum carries the update for a while after
    grad[70] *= 0.01          # a batch with almost no gradient
    u = optimizer.update_per_gradient(update, grad)
    ratio = u[5:] / np.median(u[5:], axis=0)
    assert ratio.max() < optimizer.UPDATE_JUMP
    update[80:] *= 300.0      # the optimizer steps 300x further for the same gradient
    u = optimizer.update_per_gradient(update, grad)
    assert (u[80] / np.median(u[60:80], axis=0)).min() > optimizer.UPDATE_JUMP


def test_a_gradient_that_shrinks_with_the_loss_is_not_vanishing_but_one_that_falls_alone_is():
    steps = np.arange(300)
    loss = 2.3 * np.exp(-steps / 20.0) + 1e-6   # converges over 5 decades
    g = np.stack([loss * 3.0, loss * 0.5], axis=1)
    assert gradients.gradient_onsets(steps, g, ["conv", "fc"], [0, 1], loss=loss) == []
    g[200:, 0] *= 1e-6   # the conv's gradient falls alone
    found = gradients.gradient_onsets(steps, g, ["conv", "fc"], [0, 1], loss=loss)
    assert [(f.kind, f.layer, f.step) for f in found] == [("vanishing_gradients", "conv", 200)]
