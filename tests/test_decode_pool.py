"""engine.decode.pool: workers started ahead of use are the ones that decode."""

from __future__ import annotations

import pytest

from engine.decode.pool import DecodePool
from helpers import NORMAL


def test_started_workers_are_running_before_the_first_file_and_then_decode_it():
    pool = DecodePool(2)
    try:
        pool.start()
        workers = [pool._idle.get() for _ in range(pool.size)]
        assert all(w is not None and w.is_alive() for w in workers)
        pids = {w.process.pid for w in workers}
        for w in workers:
            pool._idle.put(w)
        pool.start()   # already running: nothing new is started
        study = pool.decode(NORMAL[0].read_bytes(), NORMAL[0].name, image_size=224)
        assert study.model_input.shape == (224, 224)
        assert {w.process.pid for w in list(pool._idle.queue)} == pids
    finally:
        pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.start()
