"""engine.gc_pause: the cyclic collector is off while long-lived objects load, and back on after."""

from __future__ import annotations

import gc
import threading

import pytest

from engine.gc_pause import paused_gc


@pytest.fixture(autouse=True)
def collector_on():
    gc.enable()
    yield
    gc.unfreeze()
    gc.enable()


def test_the_collector_is_off_inside_and_on_after_even_when_the_block_fails():
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with paused_gc():
            raise ValueError("loading failed")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with paused_gc():
        pass
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads_restart_it_only_when_the_last_ends():
    first_in, first_may_leave, first_left = threading.Event(), threading.Event(), threading.Event()

    def first():
        with paused_gc():
            first_in.set()
            first_may_leave.wait(5)
        first_left.set()

    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(5)
    with paused_gc():
        first_may_leave.set()
        assert first_left.wait(5)
        assert not gc.isenabled(), "the other thread's pause ended while this one is still loading"
    t.join(5)
    assert gc.isenabled()


def test_freeze_moves_what_was_loaded_out_of_the_collectors_way():
    gc.unfreeze()
    with paused_gc(freeze=True):
        loaded = [{"layer": i} for i in range(1000)]
    assert gc.get_freeze_count() >= len(loaded)
    assert gc.isenabled()
