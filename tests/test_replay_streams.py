"""Several strategies on threads without a barrier per chunk (sim/replay._Streams): the same
results and the same error as one strategy after the other, each strategy's chunks in order,
a bounded number of chunks alive, and a prompt stop."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from kvmcache.errors import KvmcacheError
from kvmcache.params import DEFAULTS
from kvmcache.sim.counters import STRATEGIES
from kvmcache.sim.replay import STREAM_WINDOW, _Streams, replay_many
from kvmcache.trace import InMemoryTrace
from kvmcache.trace.events import EVENT_DTYPE


def _synth(scenario: str, events: int, seed: int = 3):
    from kvmcache.synth.generator import generate

    header, blocks = generate(scenario, events=events, seed=seed, vcpus=3)
    return header, np.concatenate(list(blocks))


def _same(a, b) -> None:
    assert a.alloc == b.alloc
    assert a.counters == b.counters, a.alloc
    assert a.histograms == b.histograms, a.alloc
    assert (a.ts_first, a.ts_last, a.trace_digest) == (b.ts_first, b.ts_last, b.trace_digest)
    if a.timeline is None:
        assert b.timeline is None
    else:
        assert np.array_equal(a.timeline, b.timeline), a.alloc


# --------------------------------------------------------------------------- real replays


@pytest.mark.parametrize(
    "scenario, chunk, threads",
    [
        ("steady", 4099, 2),
        ("churn", 1000, 2),
        ("hugepage-split", 777, 3),
        ("boot", 2500, 5),
        ("steady", 1 << 20, 2),  # one chunk
    ],
)
def test_threads_equal_one_replay_per_strategy(scenario, chunk, threads):
    """Every strategy on threads gives exactly what its own replay gives (counters,
    histograms, timeline, first and last timestamps, digest), over many chunks."""
    header, events = _synth(scenario, 30_000)
    params = {**DEFAULTS, "spread": 64}
    many = replay_many(
        InMemoryTrace(header, events, chunk),
        list(STRATEGIES),
        params=params,
        threads=threads,
        timeline_every=997,
        digest=True,
    )
    for alloc, got in zip(STRATEGIES, many, strict=True):
        (alone,) = replay_many(
            InMemoryTrace(header, events, chunk),
            [alloc],
            params=params,
            timeline_every=997,
            digest=True,
        )
        _same(got, alone)
    assert many[0].ts_first == int(events["ts"][0]) and many[0].ts_last == int(events["ts"][-1])


def test_threads_equal_one_replay_on_a_binary_trace(tmp_path):
    """The same through the memory-mapped reader, chunks of 1000 events (60 chunks)."""
    from kvmcache.synth.generator import generate, write
    from kvmcache.trace.binary import BinaryTrace

    path = str(tmp_path / "t.kvmt")
    header, blocks = generate("churn", events=60_000, seed=5, vcpus=4)
    write(path, header, blocks)
    many = replay_many(BinaryTrace(path, chunk_events=1000), list(STRATEGIES), threads=2)
    for alloc, got in zip(STRATEGIES, many, strict=True):
        (alone,) = replay_many(BinaryTrace(path, chunk_events=1000), [alloc])
        _same(got, alone)
    assert many[0].counters["events"] == 60_000


# boot, 24,000 events: kernel_pages=1024 runs out at event 23926 (none), 10651
# (dpamt-install, dpamt-alloc), 10470 (dpamt-pair), 11025 (dpamt-prealloc).
@pytest.mark.parametrize(
    "chunk, event",
    [
        (1000, 10651),  # pair, install, alloc and prealloc fail in chunk 10: install is first
        (100, 10470),  # pair fails in chunk 104, before the others' chunks
        (37, 10470),
    ],
)
def test_kernel_error_is_the_earliest_chunk_then_first_strategy(chunk, event):
    header, events = _synth("boot", 24_000)
    params = {**DEFAULTS, "kernel_pages": 1024}
    messages = []
    for threads in (1, 2, 5):
        with pytest.raises(KvmcacheError) as e:
            replay_many(
                InMemoryTrace(header, events, chunk),
                list(STRATEGIES),
                params=params,
                threads=threads,
            )
        messages.append(e.value.message)
    assert messages[0] == messages[1] == messages[2]
    assert f": event {event}: the kernel allocation region is exhausted" in messages[0]


def test_bad_event_is_reported_after_the_chunks_before_it():
    """A validation error in chunk 7 comes after every strategy fed chunks 0-6, as without
    threads; a kernel error in an earlier chunk would have come first."""
    header, events = _synth("steady", 10_000)
    events = events.copy()
    events["vcpu"][7 * 1000 + 5] = 1 << 20
    for threads in (1, 2):
        with pytest.raises(KvmcacheError, match=r": event 7005: ") as e:
            replay_many(InMemoryTrace(header, events, 1000), list(STRATEGIES), threads=threads)
        assert "vcpu" in e.value.message


# --------------------------------------------------------------------------- scheduling


def _chunks(sizes):
    return [np.zeros(n, dtype=EVENT_DTYPE) for n in sizes]


class _Log:
    """Feeds that record each (strategy, chunk) call and check that a strategy never runs
    two chunks at once, nor out of order."""

    def __init__(self, chunks, n: int) -> None:
        bases = np.cumsum([0, *map(len, chunks)])[:-1]
        self.starts = {id(c): int(b) for c, b in zip(chunks, bases, strict=True)}
        self.index = {id(c): k for k, c in enumerate(chunks)}
        self.lock = threading.Lock()
        self.calls: list[list[int]] = [[] for _ in range(n)]
        self.active = [False] * n
        self.problems: list[str] = []
        self.hooks: dict[tuple[int, int], object] = {}

    def feed(self, i: int):
        def run(chunk, base):
            k = self.index[id(chunk)]
            with self.lock:
                if self.active[i]:
                    self.problems.append(f"strategy {i} runs two chunks at once")
                if base != self.starts[id(chunk)]:
                    self.problems.append(f"strategy {i} chunk {k} base {base}")
                if self.calls[i] != list(range(k)):
                    self.problems.append(f"strategy {i} chunk {k} after {self.calls[i]}")
                self.active[i] = True
                self.calls[i].append(k)
            try:
                hook = self.hooks.get((i, k))
                if hook is not None:
                    hook()
            finally:
                with self.lock:
                    self.active[i] = False

        return run

    def feeds(self):
        return [self.feed(i) for i in range(len(self.calls))]


def test_each_strategy_feeds_its_chunks_in_order_within_the_window():
    chunks = _chunks([5, 0, 3, *([7] * 40), 1])
    log = _Log(chunks, 5)
    done = []
    s = _Streams(log.feeds(), 2, STREAM_WINDOW)
    s.run(iter(chunks), None, None, done.append)
    assert log.problems == []
    assert log.calls == [list(range(len(chunks)))] * 5
    assert 1 <= s.max_alive <= STREAM_WINDOW
    # progress: every strategy's events, rising, chunk boundaries only, ending at the total
    bounds = set(np.cumsum([len(c) for c in chunks]).tolist())
    assert done == sorted(set(done)) and set(done) <= bounds and done[-1] == 8 + 40 * 7 + 1


def test_a_strategy_may_run_ahead_of_a_slow_one():
    """Strategy 0 is held in chunk 0 until strategy 4 has fed chunk 2: the others do not wait
    for it at every chunk, and the window bounds how far they get."""
    chunks = _chunks([10] * 8)
    log = _Log(chunks, 5)
    ahead = threading.Event()
    log.hooks[(0, 0)] = lambda: ahead.wait(30)
    log.hooks[(4, 2)] = ahead.set
    s = _Streams(log.feeds(), 2, 3)
    s.run(iter(chunks), None, None, None)
    assert ahead.is_set()
    assert log.problems == []
    assert log.calls == [list(range(8))] * 5
    assert s.max_alive == 3


def test_the_earliest_failure_wins_whatever_ran_first():
    """Strategy 3 fails in chunk 2 while strategy 0 is held in chunk 0; strategy 0 then fails
    in chunk 1, which is the error raised. Nothing past a failure starts."""
    chunks = _chunks([10] * 8)
    log = _Log(chunks, 5)
    failed = threading.Event()

    def fail_3():
        failed.set()
        raise KvmcacheError("strategy 3, chunk 2")

    def fail_0():
        raise KvmcacheError("strategy 0, chunk 1")

    log.hooks[(0, 0)] = lambda: failed.wait(30)
    log.hooks[(3, 2)] = fail_3
    log.hooks[(0, 1)] = fail_0
    with pytest.raises(KvmcacheError, match="^strategy 0, chunk 1$"):
        _Streams(log.feeds(), 2, 3).run(iter(chunks), None, None, None)
    assert failed.is_set()
    assert log.problems == []
    # strategy 0 holds one thread; the other feeds 1-4 chunk by chunk up to strategy 3's
    # failure in chunk 2 (strategy 4's chunk 2 is after it)
    assert log.calls == [[0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1]]


def _raiser(message: str):
    def hook():
        raise KvmcacheError(message)

    return hook


def test_within_a_chunk_the_first_strategy_wins():
    """Strategies 2 and 4 fail in chunk 1, strategy 4 first (strategy 2 waits for it): the
    error raised is strategy 2's, and strategies 0 and 1 still feed chunk 1."""
    chunks = _chunks([10] * 4)
    log = _Log(chunks, 5)
    failed_4 = threading.Event()

    def fail_4():
        failed_4.set()
        raise KvmcacheError("strategy 4")

    def fail_2():
        failed_4.wait(30)
        raise KvmcacheError("strategy 2")

    log.hooks[(2, 1)] = fail_2
    log.hooks[(4, 1)] = fail_4
    with pytest.raises(KvmcacheError, match="^strategy 2$"):
        _Streams(log.feeds(), 2, STREAM_WINDOW).run(iter(chunks), None, None, None)
    assert failed_4.is_set()
    assert log.problems == []
    assert [c[:2] for c in log.calls] == [[0, 1]] * 5


def _failing_source(chunks, at: int):
    for k, c in enumerate(chunks):
        if k == at:
            raise KvmcacheError(f"unreadable at chunk {at}")
        yield c


def test_a_read_error_comes_after_the_chunks_before_it():
    chunks = _chunks([10] * 6)
    log = _Log(chunks, 5)
    with pytest.raises(KvmcacheError, match="^unreadable at chunk 4$"):
        _Streams(log.feeds(), 2, STREAM_WINDOW).run(_failing_source(chunks, 4), None, None, None)
    assert log.calls == [[0, 1, 2, 3]] * 5


def test_a_strategy_error_before_a_read_error_wins():
    chunks = _chunks([10] * 6)
    log = _Log(chunks, 5)
    log.hooks[(4, 3)] = _raiser("strategy 4, chunk 3")
    with pytest.raises(KvmcacheError, match="^strategy 4, chunk 3$"):
        _Streams(log.feeds(), 2, STREAM_WINDOW).run(_failing_source(chunks, 4), None, None, None)


def _strategy_threads() -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith(("kvmcache-strategy", "kvmcache-rea"))
    ]


def _wait_until(predicate) -> None:
    """Poll ``predicate`` (test synchronisation; gives up after 30 s)."""
    deadline = time.monotonic() + 30
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_progress_raising_stops_every_thread():
    """The caller's progress callback raising (a cancelled sweep, Ctrl-C in a progress bar)
    stops the replay: the error comes out, nothing new starts, no thread of it is left."""

    class Stop(Exception):
        pass

    def progress(done):
        raise Stop

    chunks = _chunks([10] * 50)
    log = _Log(chunks, 5)
    s = _Streams(log.feeds(), 2, STREAM_WINDOW)
    log.hooks[(0, 1)] = lambda: _wait_until(lambda: s.abort)  # progress(10) comes first
    with pytest.raises(Stop):
        s.run(iter(chunks), None, None, progress)
    assert _strategy_threads() == []
    assert log.problems == []
    # strategy 0 was held in chunk 1, so the others got at most the window past chunk 0
    assert log.calls[0] == [0, 1]
    assert max(map(len, log.calls)) <= 1 + STREAM_WINDOW


def test_ctrl_c_while_waiting_stops_promptly():
    """SIGINT reaching the main thread while it waits for the strategies' threads raises
    KeyboardInterrupt there; the threads stop after the chunk they are feeding."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    chunks = _chunks([10] * 50)
    log = _Log(chunks, 5)
    s = _Streams(log.feeds(), 2, STREAM_WINDOW)
    main = threading.main_thread().ident
    assert threading.get_ident() == main

    def interrupt():
        signal.pthread_kill(main, signal.SIGINT)
        _wait_until(lambda: s.abort)

    log.hooks[(1, 3)] = interrupt
    with pytest.raises(KeyboardInterrupt):
        s.run(iter(chunks), None, None, None)
    assert _strategy_threads() == []
    assert log.problems == []
    assert log.calls[1] == [0, 1, 2, 3]
    assert max(map(len, log.calls)) <= 3 + STREAM_WINDOW
