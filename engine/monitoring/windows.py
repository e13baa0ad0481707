"""A period's studies cut into windows: the last N days, or the last N studies.

Windows are consecutive from the period's start: by days, ``[start + i N days, start + (i + 1) N days)``
up to now (empty ones included); by studies, blocks of N studies in the order they were added. The
last window may be partial (``partial``: fewer days or studies so far). A decision belongs to the
window of its study.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Sequence

from engine.worklist.store import StudyRow

_WINDOW = re.compile(r"^\s*(\d+)\s*(d|days?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class WindowSpec:
    kind: str          # "days" or "studies"
    size: int

    @classmethod
    def parse(cls, text: str) -> "WindowSpec":
        """``7d`` (the last 7 days) or ``200`` (the last 200 studies)."""
        m = _WINDOW.match(str(text))
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"a window is N days (7d) or N studies (200), got {text!r}")
        return cls("days" if m.group(2) else "studies", int(m.group(1)))

    @property
    def label(self) -> str:
        unit = ("day" if self.size == 1 else "days") if self.kind == "days" else \
               ("study" if self.size == 1 else "studies")
        return f"{self.size:,} {unit}"


@dataclass(frozen=True)
class Window:
    index: int
    start: str
    end: str
    studies: tuple[StudyRow, ...] = field(repr=False)
    partial: bool = False

    def as_dict(self) -> dict:
        return {"index": self.index, "from": self.start, "to": self.end, "studies": len(self.studies),
                "partial": self.partial}


def parse_time(text: str) -> datetime:
    """An ISO date or time; naive ones are taken as UTC."""
    t = datetime.fromisoformat(str(text).strip())
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds")


def parse_range(text: str) -> tuple[str, str]:
    """``FROM..TO`` (ISO dates or times; a date ``TO`` includes that day) as two ISO times."""
    parts = str(text).split("..")
    if len(parts) != 2:
        raise ValueError(f"a reference window is FROM..TO (ISO dates or times), got {text!r}")
    start, end = parse_time(parts[0]), parse_time(parts[1])
    if len(parts[1].strip()) == 10:                 # a date: to the end of that day
        end += timedelta(days=1)
    if end <= start:
        raise ValueError(f"the reference window must end after it starts: {text!r}")
    return iso(start), iso(end)


def split(studies: Sequence[StudyRow], spec: WindowSpec, start: str, now: str) -> list[Window]:
    """The period's studies (oldest first) in consecutive windows from ``start`` to ``now``."""
    if spec.kind == "studies":
        out = []
        for i in range(0, len(studies), spec.size):
            chunk = tuple(studies[i:i + spec.size])
            out.append(Window(len(out), chunk[0].added, chunk[-1].added, chunk, len(chunk) < spec.size))
        return out
    t0, t_now, step = parse_time(start), parse_time(now), timedelta(days=spec.size)
    count = max(1, int((t_now - t0) / step) + 1)
    buckets: list[list[StudyRow]] = [[] for _ in range(count)]
    for r in studies:
        i = int((parse_time(r.added) - t0) / step)
        if 0 <= i < count:
            buckets[i].append(r)
    return [Window(i, iso(t0 + i * step), iso(t0 + (i + 1) * step), tuple(b), t0 + (i + 1) * step > t_now)
            for i, b in enumerate(buckets)]


def within(studies: Sequence[StudyRow], start: str, end: str) -> list[StudyRow]:
    """The studies added in ``[start, end)``."""
    lo, hi = parse_time(start), parse_time(end)
    return [r for r in studies if lo <= parse_time(r.added) < hi]


def unique_files(studies: Sequence[StudyRow]) -> list[StudyRow]:
    """One row per file (its first study): a file uploaded twice is one image of one patient."""
    seen, out = set(), []
    for r in studies:
        if r.sha256 and r.sha256 in seen:
            continue
        if r.sha256:
            seen.add(r.sha256)
        out.append(r)
    return out
