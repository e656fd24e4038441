"""The batcher's scheduling contract, with a stand-in forward function so that timing is controlled."""

import threading
import time

import numpy as np
import pytest

from nemo_stt.engine.batcher import Batcher, BatchPolicy

RATE = 100


class RecordingForward:
    """Returns each item's sum; fails a batch that holds a NaN item; can be held to let a queue fill."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, audios):
        self.gate.wait(10)
        self.batches.append([len(a) for a in audios])
        time.sleep(self.delay)
        if any(np.isnan(a).any() for a in audios):
            raise ValueError("bad item")
        return [float(a.sum()) for a in audios]


def item(value: float, seconds: float = 1.0) -> np.ndarray:
    return np.full(int(seconds * RATE), value / (seconds * RATE), dtype=np.float32)


def test_each_caller_gets_its_own_result_under_concurrency():
    forward = RecordingForward(delay=0.002)
    batcher = Batcher(forward, RATE, BatchPolicy(workers=2, max_batch_items=8, max_wait=0.002))
    futures = {}

    def client(start):
        for value in range(start, start + 25):
            futures[value] = batcher.submit(item(value, seconds=1 + value % 3))

    threads = [threading.Thread(target=client, args=(i * 25,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {v: round(f.result(5)) for v, f in futures.items()} == {v: v for v in range(200)}
    assert max(len(b) for b in forward.batches) > 1
    batcher.close()


def test_a_batch_takes_the_waiting_requests_up_to_the_item_limit():
    forward = RecordingForward()
    forward.gate.clear()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=4, max_wait=0.0))
    futures = [batcher.submit(item(v)) for v in range(9)]
    time.sleep(0.05)
    forward.gate.set()
    assert [round(f.result(5)) for f in futures] == list(range(9))
    sizes = [len(b) for b in forward.batches]
    assert sum(sizes) == 9 and max(sizes) == 4 and len(sizes) == 3
    batcher.close()


def test_closed_loop_clients_keep_full_batches_on_two_loops():
    # 16 clients, each sending its next request 10 ms after its answer (a round trip), on two loops of
    # up to 8: each loop's group of 8 comes back as requests a few milliseconds apart. A loop that
    # becomes free while the other gathers a group must leave it whole: two loops each taking part
    # of it would run half batches, and the split would repeat for as long as the load lasts.
    forward = RecordingForward(delay=0.05)
    batcher = Batcher(forward, RATE, BatchPolicy(workers=2, max_batch_items=8, max_wait=0.01))

    def client(value: int) -> None:
        for _ in range(12):
            assert round(batcher.submit(item(value)).result(5)) == value
            time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(v,)) for v in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sizes = [len(b) for b in forward.batches]
    assert sum(sizes) == 16 * 12
    assert sum(size == 8 for size in sizes) >= 0.9 * len(sizes), sizes
    batcher.close()


def test_a_forming_batch_waits_while_requests_keep_coming():
    forward = RecordingForward()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=8, max_wait=0.1))
    futures = []
    for value in range(5):  # 0.24 s from first to last: more than max_wait, but never 0.1 s apart
        futures.append(batcher.submit(item(value)))
        time.sleep(0.06)
    time.sleep(0.2)  # a gap longer than max_wait ends the batch
    futures.append(batcher.submit(item(5)))
    assert [round(f.result(5)) for f in futures] == list(range(6))
    assert [len(b) for b in forward.batches] == [5, 1]
    batcher.close()


def test_a_loop_waits_out_max_wait_whatever_wakes_it():
    # A wake-up that brings no request (another loop leaving, room in the queue) must not end the wait.
    forward = RecordingForward()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=4, max_wait=0.3))
    first = batcher.submit(item(1))
    time.sleep(0.05)
    with batcher._cond:
        batcher._cond.notify_all()
    time.sleep(0.1)
    second = batcher.submit(item(2))
    assert [round(first.result(5)), round(second.result(5))] == [1, 2]
    assert [len(b) for b in forward.batches] == [2]
    batcher.close()


def test_the_padded_audio_cap_and_length_bucketing():
    forward = RecordingForward()
    forward.gate.clear()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=10, max_batch_seconds=12, max_wait=0.0))
    futures = [batcher.submit(item(1, 1.0))]
    time.sleep(0.05)  # taken by the loop, which is held
    futures += [batcher.submit(item(1, seconds)) for seconds in (10, 1, 10, 1, 1)]
    forward.gate.set()
    for future in futures:
        future.result(5)
    # The first batch is the request already taken; then short ones go together and long ones alone.
    assert forward.batches[0] == [100]
    assert sorted(map(sorted, forward.batches[1:])) == [[100, 100, 100], [1000], [1000]]
    batcher.close()


def test_a_failing_request_fails_alone():
    forward = RecordingForward()
    forward.gate.clear()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=8, max_wait=0.0))
    good = [batcher.submit(item(v)) for v in range(3)]
    bad = batcher.submit(np.full(RATE, np.nan, dtype=np.float32))
    more = [batcher.submit(item(v)) for v in range(3, 6)]
    forward.gate.set()
    assert [round(f.result(5)) for f in good + more] == list(range(6))
    with pytest.raises(ValueError, match="bad item"):
        bad.result(5)
    batcher.close()


def test_cancelled_pieces_are_skipped_before_their_forward_and_counted_in_the_log(caplog):
    forward = RecordingForward()
    forward.gate.clear()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=2, max_wait=0.0))
    running = batcher.submit(item(0))
    time.sleep(0.05)  # taken by the loop, which is held
    left = [batcher.submit(item(v, seconds=2)) for v in (1, 2, 3)]
    kept = batcher.submit(item(4))
    for future in left:
        future.cancel()
    with caplog.at_level("INFO", logger="nemo_stt.engine.batcher"):
        forward.gate.set()
        assert round(kept.result(5)) == 4
    assert round(running.result(5)) == 0
    assert forward.batches == [[RATE], [RATE]]  # the three 2-s pieces never reached a forward
    assert "skipped 3 queued piece(s) of cancelled requests" in caplog.text
    batcher.close()


def test_close_cancels_what_is_still_waiting():
    forward = RecordingForward()
    forward.gate.clear()
    batcher = Batcher(forward, RATE, BatchPolicy(workers=1, max_batch_items=1, max_wait=0.0))
    running = batcher.submit(item(1))
    time.sleep(0.05)
    waiting = batcher.submit(item(2))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.05)
    forward.gate.set()
    closer.join(5)
    assert waiting.cancelled()
    assert round(running.result(5)) == 1


def test_the_idle_hook_runs_once_per_idle_spell_after_work():
    idle_calls: list[float] = []
    policy = BatchPolicy(workers=2, max_batch_items=1, release_after_idle=0.2)
    batcher = Batcher(RecordingForward(), RATE, policy, on_idle=lambda: idle_calls.append(time.monotonic()))
    try:
        time.sleep(0.5)
        assert idle_calls == []  # nothing ran yet: nothing to release
        submitted = time.monotonic()
        batcher.submit(item(1)).result(5)
        time.sleep(0.6)
        assert len(idle_calls) == 1  # one of the two loops, once
        assert idle_calls[0] - submitted >= 0.2
        # Work that keeps arriving within the delay never triggers it.
        for _ in range(5):
            batcher.submit(item(1)).result(5)
            time.sleep(0.05)
        assert len(idle_calls) == 1
        time.sleep(0.6)
        assert len(idle_calls) == 2
    finally:
        batcher.close()
