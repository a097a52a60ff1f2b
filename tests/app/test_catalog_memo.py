"""The catalog's memo of reads across ranks: served again while the run is unchanged, read afresh after the poll
saw it change, bounded in memory."""

import numpy as np

import tview_app.catalog as catalog_module
from tview_app.catalog import RunCatalog


def test_memo_serves_a_result_until_the_run_changes(tmp_path, monkeypatch):
    cat = RunCatalog(str(tmp_path))
    calls = []

    def read():
        calls.append(1)
        return np.zeros(10)
    assert cat.memo("run", ("loss",), read) is not None and cat.memo("run", ("loss",), read) is not None
    assert len(calls) == 2  # before the first poll nothing is kept
    cat.note_signature("run", [[0, 10, "live", False]])
    cat.memo("run", ("loss",), read)
    cat.memo("run", ("loss",), read)
    assert len(calls) == 3
    cat.note_signature("run", [[0, 10, "live", False]])  # the same: still served
    cat.memo("run", ("loss",), read)
    assert len(calls) == 3
    cat.note_signature("run", [[0, 11, "live", False]])  # a step more: read again
    cat.memo("run", ("loss",), read)
    assert len(calls) == 4
    monkeypatch.setattr(catalog_module, "MEMO_BYTES", 3 * 8 * 1000)
    for k in range(10):
        cat.memo("run", ("big", k), lambda: np.zeros(1000))
    assert cat._memo_bytes <= catalog_module.MEMO_BYTES and len(cat._memo) <= 3


def test_a_slow_poll_waits_longer_before_the_next():
    from tview_app import POLL_MS, poll_interval_ms
    assert poll_interval_ms(0.05) == POLL_MS
    assert poll_interval_ms(1.5) == 6000  # the server spends at most a quarter of its time polling


def test_one_read_per_run_and_key_at_a_time_and_equal_reads_are_shared(tmp_path):
    import threading
    import time
    cat = RunCatalog(str(tmp_path))
    cat.note_signature("run", [[0, 10, "live", False]])
    running, most, calls = [0], [0], []
    lock = threading.Lock()
    started = threading.Event()  # set as a read begins

    def read():
        started.set()
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(1)
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return len(calls)

    got = []
    threads = [threading.Thread(target=lambda: got.append(cat.memo("run", ("stat",), read))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and got == [1, 1, 1, 1]  # four equal requests: one read, its result for all
    # the run grows while a read is under way: the next read starts after it, never beside it
    first = threading.Thread(target=lambda: cat.memo("run", ("stat2",), read))
    started.clear()
    first.start()
    assert started.wait(30)  # its read is under way
    cat.note_signature("run", [[0, 11, "live", False]])
    assert cat.memo("run", ("stat2",), read) == 3 and most[0] == 1
    first.join()


def test_a_slow_read_under_way_answers_others_with_its_last_result_at_once(tmp_path, monkeypatch):
    import threading
    cat = RunCatalog(str(tmp_path))
    cat.note_signature("run", [[0, 10, "live", False]])
    assert cat.memo_or_last("run", ("diagnosis",), lambda: "first") == "first"
    cat.note_signature("run", [[0, 11, "live", False]])  # the run grew: diagnosed again, slowly
    reading, release = threading.Event(), threading.Event()

    def slow_read():
        reading.set()
        release.wait(60)  # under way until the answer below is checked
        return "second"
    slow = threading.Thread(target=lambda: cat.memo_or_last("run", ("diagnosis",), slow_read))
    slow.start()
    assert reading.wait(30)
    # a request that waited for the read under way would read itself after MEMO_WAIT, and answer "never"
    monkeypatch.setattr(catalog_module, "MEMO_WAIT", 1.0)
    try:
        assert cat.memo_or_last("run", ("diagnosis",), lambda: "never") == "first"  # the last one, without waiting
    finally:
        release.set()
    slow.join()
    assert cat.memo_or_last("run", ("diagnosis",), lambda: "never") == "second"
    assert cat.memo_or_last("other", ("diagnosis",), lambda: "x", missing="none yet") == "x"
