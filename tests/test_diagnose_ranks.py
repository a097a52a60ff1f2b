"""tview.diagnose's rank checks on made-up per-step times with known answers: the rank the others wait for is named
from its onset though some of its records (the last ones too) are ordinary, and not when the host made its lead or
when it is ahead only now and then."""

import warnings

import numpy as np

from tview.diagnose import detect
from tview.diagnose.checks import ranks

STEPS, ONSET = 120, 70


def _own_times(rng, ranks_n=3, base=0.05, jitter=0.01) -> np.ndarray:
    return base + jitter * rng.random((ranks_n, STEPS))


def _onsets(own, host=None, step=None):
    step = np.full(own.shape[1], 0.1) if step is None else step
    return ranks.waited_for(ranks.waited_share(own, host, step), step)


def test_held_ignores_odd_records_anywhere_the_last_ones_too():
    flags = np.zeros(100, dtype=bool)
    flags[40:] = True
    flags[[50, 61, 77, 97, 98, 99]] = False  # a tail that a rule "True to the last record" would not forgive
    ok = detect.held(flags, 19, 0.7)
    assert 40 - 19 * 0.3 <= detect.first_held(ok, 10) <= 40  # a few ordinary records may open the window
    assert detect.first_held(detect.held(np.random.default_rng(0).random(100) < 0.4, 19, 0.7), 10) is None


def test_a_slow_rank_is_named_from_its_onset_though_a_quarter_of_its_records_and_its_tail_are_ordinary():
    rng = np.random.default_rng(3)
    own = _own_times(rng)
    slow = rng.random(STEPS) < 0.75  # 30 ms slower on three records in four ...
    slow[-6:] = False                # ... and not on the last six
    own[2, ONSET:] += 0.03 * slow[ONSET:]
    own[2, ONSET] += 0.03 * (not slow[ONSET])
    assert _onsets(own) == {2: ONSET}


def test_a_lead_the_host_made_names_no_rank():
    """Rank 1 is 40 ms slower from ONSET, all of it spent waiting for a CPU beyond the others' wait (another
    process on its core): not the training's fault, and no other rank becomes the one waited for."""
    rng = np.random.default_rng(4)
    own = _own_times(rng, ranks_n=2)
    own[1, ONSET:] += 0.04
    host = np.zeros_like(own)
    host[1, ONSET:] = 0.04 + 0.01 * rng.random(STEPS - ONSET)  # its CPU wait also counts some of its wait for others
    assert _onsets(own) == {1: ONSET}
    assert _onsets(own, host) == {}


def test_ranks_each_slow_now_and_then_are_not_the_one_waited_for():
    """Every rank of three is 50 ms slower on a random eighth of the steps (a busy host): each is waited for now
    and then, none step after step; one 30 ms slower from ONSET is named through that noise."""
    rng = np.random.default_rng(5)
    own = _own_times(rng)
    own += 0.05 * (rng.random(own.shape) < 1 / 8)
    assert _onsets(own) == {}
    own[1, ONSET:] += 0.03  # one of them slower by 30 ms from ONSET on, through the same noise
    assert list(_onsets(own)) == [1] and abs(_onsets(own)[1] - ONSET) <= 3  # a spike on another rank can mask a record


def test_a_lead_must_be_a_tenth_of_the_step_and_beyond_timing_jitter():
    rng = np.random.default_rng(6)
    own = _own_times(rng, jitter=0.001)
    own[1, ONSET:] += 0.008  # 8 ms in a 100 ms step: the job loses 8%
    assert _onsets(own) == {}
    assert _onsets(own, step=np.full(STEPS, 0.04)) == {1: ONSET}  # in a 40 ms step: 20%
    own = _own_times(rng, base=0.004, jitter=0.001)
    own[1, ONSET:] += 0.003  # 3 ms in a 10 ms step: a time slice of the OS could make it
    assert _onsets(own, step=np.full(STEPS, 0.01)) == {}


def _stalls(own):
    step = own.max(axis=0) + 0.02  # every rank's step time: the slowest's, and the all-reduce
    return ranks.stalls(ranks.waited_share(own, None, step), step)


def test_a_rank_stalled_on_every_fifth_step_is_named_from_its_first_stall_and_a_steady_one_is_not_a_stall():
    """Rank 1 is 60 ms slower on every 5th step from ONSET (and once, alone, 20 steps before): not slow step after
    step (waited_for), but the others wait for it 60 ms in every 5 steps; its stalls from ONSET are named, the odd
    earlier one does not date them. A rank slower on every step is waited_for's, not a stall."""
    rng = np.random.default_rng(7)
    own = _own_times(rng)
    own[1, ONSET::5] += 0.06
    own[1, ONSET - 20] += 0.06
    assert _onsets(own) == {}
    got = _stalls(own)
    assert list(got) == [1] and got[1][0] == ONSET and list(np.diff(got[1])) == [5] * (len(got[1]) - 1)
    own = _own_times(rng)
    own[2, ONSET:] += 0.03
    assert _stalls(own) == {} and list(_onsets(own)) == [2]


def test_stalls_on_every_rank_a_burst_or_a_rare_one_name_no_rank():
    """Every rank of three stalled 50 ms on a random fifth of the steps (a busy host: each is waited for on a tenth
    of the steps or more now and then, none more than the others); one rank stalled on 6 consecutive steps near
    the end (a burst, not now and then); one stalled 60 ms on every 20th step (1 in 20, under a tenth of the
    records): no stall is named."""
    for seed in range(10):
        rng = np.random.default_rng(seed)
        own = _own_times(rng)
        own += 0.05 * (rng.random(own.shape) < 1 / 5)
        assert _stalls(own) == {}, seed
    own = _own_times(rng)
    own[0, STEPS - 12:STEPS - 6] += 0.06
    own[2, ONSET::20] += 0.06
    assert _stalls(own) == {}


def test_a_rank_whose_batches_turn_uniform_is_dated_where_its_channels_turn_all_or_none():
    """Per-channel zero fractions of one layer: a rank fed all-zero batches from ONSET has each channel zero for all
    of the batch or none (0 or 1 on every channel), the others a share in between; a layer where every rank's are 0
    or 1 (a conv before its ReLU) says nothing."""
    from tview.diagnose.checks import uniform
    rng = np.random.default_rng(0)
    steps = np.arange(STEPS)
    z = rng.uniform(0.2, 0.6, (3, STEPS, 6))
    z[1, ONSET:] = rng.random((STEPS - ONSET, 6)) < 0.5
    series = [(steps, ((zk <= uniform.UNIFORM_TOL) | (zk >= 1 - uniform.UNIFORM_TOL)).all(axis=1)) for zk in z]
    assert uniform._layer_onsets(series, [0, 1, 2]) == {1: ONSET}
    everywhere = [(steps, np.ones(STEPS, dtype=bool))] * 3
    assert uniform._layer_onsets(everywhere, [0, 1, 2]) == {}


def test_a_rank_whose_loss_stays_apart_is_named_above_or_below_and_noise_or_two_ranks_name_none():
    """3 ranks or more: a rank whose loss stays the highest (another label mapping) or the lowest (a repeated batch)
    and 1.8x (1 / 1.8x) the median rank's from ONSET is named there (within the few records its smoothing takes),
    with the side, though every loss has per-step noise of +-30%; that noise alone names no rank, nor does a gap
    between two ranks (which of the two is apart is not known)."""
    rng = np.random.default_rng(1)
    decay = np.linspace(2.3, 0.8, STEPS)
    for side in (1, -1):
        for n in (3, 4, 6):
            loss = decay * rng.uniform(0.7, 1.3, (n, STEPS))
            loss[2, ONSET:] *= 1.8 ** side
            got = ranks._apart(loss, 0.05 * 2.3)
            assert list(got) == [2] and got[2][1] == side and -2 <= got[2][0] - ONSET <= 5, (n, side, got)
    for seed in range(30):
        noisy = decay * np.random.default_rng(seed).uniform(0.7, 1.3, (3 + seed % 4, STEPS))
        assert ranks._apart(noisy, 0.05 * 2.3) == {}, seed
    two = decay * rng.uniform(0.9, 1.1, (2, STEPS))
    two[1, ONSET:] *= 1.5
    assert ranks._apart(two, 0.05 * 2.3) == {}
    nan = decay * rng.uniform(0.7, 1.3, (3, STEPS))
    nan[:, ONSET:] = np.nan  # every rank's loss NaN from ONSET (a NaN run): no rank apart, and numpy says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ranks._apart(nan, 0.05 * 2.3) == {}


def test_a_rank_whose_batches_repeat_is_dated_at_the_batch_that_repeats():
    """Per-channel zero fractions of one layer: a rank that trains on one batch from ONSET on has zeros that move
    only with the weights (a drift of 0.001 a step), the others' move with each batch (0.05): named at ONSET, the
    step whose batch comes again; every rank's zeros steady (full-batch training) names none."""
    from tview.diagnose.checks import repeated
    rng = np.random.default_rng(0)
    steps = np.arange(STEPS)
    z = rng.uniform(0.2, 0.6, (3, STEPS, 8))
    z[1, ONSET:] = z[1, ONSET] + 0.001 * np.arange(STEPS - ONSET)[:, None] * rng.choice([-1, 1], 8)
    series = [repeated.change_of(steps, zk) for zk in z]
    got = repeated._layer_onsets(series, [0, 1, 2])
    assert list(got) == [1] and got[1][0] == ONSET and got[1][1] > 50, got
    steady = [repeated.change_of(steps, z[k, ONSET] + rng.uniform(0.0005, 0.002, 8) * np.arange(STEPS)[:, None])
              for k in range(3)]  # every rank's zeros drift by a little: full-batch training, one batch for all
    assert repeated._layer_onsets(steady, [0, 1, 2]) == {}
    (s, c), rest = series[0], series[1:]  # rank 0 recorded steps ONSET-10.. twice (resumed from an earlier step)
    again = [(np.r_[s[:ONSET], s[ONSET - 10:]], np.r_[c[:ONSET], c[ONSET - 10:] * 1.01])] + rest
    assert list(repeated._layer_onsets(again, [0, 1, 2])) == [1]


def test_ranks_that_train_on_the_same_batches_are_named_where_their_losses_turn_equal():
    """Every rank's loss the same at each step while it moves (the same batches: no DistributedSampler) is found
    from the step it began; ranks with their own batches, or one constant loss on every rank (a network whose output
    no longer depends on its input: log 10 on every batch), or equal losses for a moment only, are not."""
    from tview.diagnose.checks import same_data
    rng = np.random.default_rng(0)
    own = np.linspace(2.3, 0.8, STEPS) * rng.uniform(0.7, 1.3, (3, STEPS))
    assert same_data.same_onset(own) is None
    shared = own.copy()
    shared[:, ONSET - 40:] = shared[0, ONSET - 40:]
    assert same_data.same_onset(shared) == ONSET - 40
    assert same_data.same_onset(np.full((3, STEPS), np.log(10.0))) is None
    moment = own.copy()
    moment[:, ONSET:ONSET + 20] = moment[0, ONSET:ONSET + 20]
    assert same_data.same_onset(moment) is None


def test_the_same_batches_are_told_from_one_all_reduced_loss_by_the_zero_fractions():
    """batches_alike: the ranks' step-to-step changes of a layer's zero fractions the same numbers (the same batches
    and weights) or not (batches of their own, an all-reduced loss logged by every rank)."""
    from tview.diagnose.checks import same_data
    rng = np.random.default_rng(0)
    one = rng.uniform(0.01, 0.05, STEPS)
    assert same_data.batches_alike(np.stack([one, one, one]))
    assert not same_data.batches_alike(rng.uniform(0.01, 0.05, (3, STEPS)))
