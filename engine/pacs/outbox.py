"""The outbox: results sent to a PACS from the store, retried until the destination has them.

The receiver queues each scored study's results (SR and heatmap capture) in the store's ``outbox``
table in the transaction that records the result (:meth:`engine.worklist.store.Store.put_result`),
then a :class:`Courier` sends them. A failed try is recorded (``failed``, its reason without any
identifier) and tried again after a back-off that doubles from :data:`FIRST_BACKOFF_S` up to
:data:`MAX_BACKOFF_S`; a destination that does not answer at all is left alone for as long (its other
rows are not tried meanwhile, so a dead link costs one timeout, not one per row), while a row the
destination refuses never holds back the others. Rows left by a receiver that was killed are made due
when the next one starts. The objects are written again from the stored file when a row is retried:
their UIDs derive from the source and the result, so a PACS that got them once keeps one copy.

    python -m engine.pacs outbox --store DIR [--retry]     lists the rows; --retry makes them due now
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable, Optional, Sequence

from pydicom.dataset import Dataset

from engine.errors import EngineError, PacsUnreachable, ResultNotWritable

log = logging.getLogger("engine.receive")

FIRST_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0
NOT_RETRIED_S = 10 * 365 * 86400.0   # a row whose objects cannot be written waits for an explicit --retry
# A run of digits and dots with five or more parts is a UID (an IPv4 address has four).
_UID = re.compile(r"\d+(?:\.\d+){4,}")

Build = Callable[[object], Sequence[Dataset]]        # an outbox entry -> the objects to send
Send = Callable[[Sequence[Dataset]], None]           # PacsError when not sent


def backoff_s(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed tries (5, 10, 20, ... at most 600)."""
    return min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** max(attempts - 1, 0))


def scrub(text: str) -> str:
    """An error's text without UIDs or URL query strings (either may identify a patient or a study)."""
    text = re.sub(r"\?\S*", "?…", str(text).splitlines()[0] if str(text) else "")
    return _UID.sub("<UID>", text)[:300]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EngineError):
        return scrub(str(exc))
    return type(exc).__name__


class Courier:
    """Sends one destination's outbox rows: ``build`` writes an entry's objects, ``send`` sends them."""

    def __init__(self, store, destination: str, build: Build, send: Send) -> None:
        self.store = store
        self.destination = destination
        self.build, self.send = build, send
        self._quiet_until = 0.0                 # the destination did not answer: no try before this

    @property
    def reachable(self) -> bool:
        """False while the destination is left alone after it did not answer."""
        return time.monotonic() >= self._quiet_until

    def deliver(self, entry, build: Optional[Build] = None) -> bool:
        """One try of one entry (its objects written by ``build``, else by the courier's); True when sent."""
        try:
            self.send((build or self.build)(entry))
        except Exception as exc:                # any failure is this row's, recorded, never raised
            if isinstance(exc, ResultNotWritable):      # the same source fails the same way: not retried
                self.store.outbox_failed(entry.id, _reason(exc), NOT_RETRIED_S)
                log.warning("outbox row %d not sent: %s; not retried until `engine.pacs outbox --retry`",
                            entry.id, _reason(exc))
                return False
            wait = backoff_s(entry.attempts + 1)
            self.store.outbox_failed(entry.id, _reason(exc), wait)
            if isinstance(exc, PacsUnreachable):
                self._quiet_until = time.monotonic() + wait
            log.warning("outbox row %d not sent (try %d): %s; next try in %g s", entry.id, entry.attempts + 1,
                        _reason(exc), wait)
            return False
        self.store.outbox_sent(entry.id)
        log.info("outbox row %d sent to %s", entry.id, self.destination)
        return True

    def send_now(self, sha256: str, write: Callable[[], Sequence[Dataset]]) -> int:
        """Send the results of ``sha256``, just scored, to its due rows (``write`` writes them, once);
        returns how many rows were sent (0 too when none was due: sent before, or queued for later)."""
        if not self.reachable:
            return 0
        written: list[Sequence[Dataset]] = []

        def build(_entry) -> Sequence[Dataset]:
            if not written:
                written.append(write())
            return written[0]
        return sum(self.deliver(e, build) for e in self.store.outbox_due(self.destination, sha256=sha256))

    def send_due(self, stopping: Callable[[], bool] = lambda: False) -> int:
        """Try every due row (oldest due first) until the destination stops answering or ``stopping()``;
        returns how many were sent."""
        sent = 0
        for entry in self.store.outbox_due(self.destination):
            if stopping() or not self.reachable:
                break
            sent += self.deliver(entry)
        return sent


def rebuild(store, writer, entry, model_key: str = "") -> list[Dataset]:
    """The SR and heatmap capture of an outbox entry, written again from the stored file (read once;
    decoded again for Grad-CAM); without a reviewer's decision, as they were first written. With the
    writer's ``model_key``, the stored score is reused (no second run of the network)."""
    from engine.inputs.sources import InputItem
    data = store.read_file(entry.sha256)
    item = InputItem(f"outbox row {entry.id}", lambda: data, sha256=entry.sha256)
    stored = store.result(entry.sha256, model_key) if model_key else None
    if stored is not None and stored.status == "ok" and stored.probability is not None:
        prediction = writer.predictor.recall(item, stored.probability, stored.warnings)
    else:
        prediction = next(iter(writer.predictor.predict_stream([item], keep_images=True)))
    if not prediction.ok:
        raise EngineError(f"the image could not be read again to write its results ({prediction.message})")
    return writer.objects(data, prediction)


def listing(entries: Sequence, counts: dict[str, int]) -> list[str]:
    """The lines ``python -m engine.pacs outbox`` prints: a summary, then one line per row (no identifier)."""
    lines = [f"outbox: {counts.get('pending', 0)} pending, {counts.get('sent', 0)} sent, "
             f"{counts.get('failed', 0)} failed"]
    for e in entries:
        when = f"sent {e.sent}" if e.state == "sent" else f"next try {e.next_try}"
        reason = f"\t{e.last_error}" if e.last_error else ""
        lines.append(f"row {e.id}\tstudy row {e.study_id}\t{e.state}\t{e.attempts} tr{'y' if e.attempts == 1 else 'ies'}"
                     f"\t{when}\t{e.destination}{reason}")
    return lines
