"""Which study Review shows: the order of the worklist, the flagged ones, and what comes next.

Pure functions of the worklist table and the threshold (no Streamlit), so the stepping a reviewer
relies on is tested on its own. Studies are named by their file's SHA-256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pandas as pd

from dashboard import worklist


@dataclass(frozen=True)
class ReviewQueue:
    readable: list[str]          # every readable study, in worklist order (most probable first)
    flagged: list[str]           # those flagged at the threshold, in the same order
    unreviewed: list[str]        # flagged and not yet reviewed: the reader's queue
    reviewed: frozenset[str]     # every study with a recorded decision, flagged or not

    @classmethod
    def of(cls, df: pd.DataFrame, threshold: float) -> "ReviewQueue":
        flagged = worklist.flagged_shas(df, threshold)
        reviewed = frozenset(s for s, r in zip(df["sha256"], df["review"]) if s and r != "unreviewed")
        return cls(worklist.readable_shas(df), flagged, [s for s in flagged if s not in reviewed], reviewed)

    def opening(self, current: Optional[str]) -> str:
        """The study to show: the current one while it is readable, else the first unreviewed flagged
        study, else the first flagged, else the first readable one."""
        if current in self.readable:
            return current
        return (self.unreviewed or self.flagged or self.readable)[0]

    def step(self, current: Optional[str], delta: int) -> Optional[str]:
        """The previous (``delta`` -1) or next (+1) flagged study from ``current``, kept at the ends;
        from a study that is not flagged, the nearest flagged one in that direction (wrapping to the
        other end when there is none). None when nothing is flagged."""
        if not self.flagged:
            return None
        if current in self.flagged:
            i = min(max(self.flagged.index(current) + delta, 0), len(self.flagged) - 1)
            return self.flagged[i]
        pos = self.readable.index(current) if current in self.readable else -1
        ranked = [self.readable.index(s) for s in self.flagged]
        after = [k for k, r in enumerate(ranked) if (r > pos if delta > 0 else r < pos)]
        i = (after[0] if delta > 0 else after[-1]) if after else (0 if delta > 0 else len(self.flagged) - 1)
        return self.flagged[i]

    def after_decision(self, decided: str) -> Optional[str]:
        """Where a recorded decision moves to: the next flagged study still unreviewed *after* the one just
        decided, in worklist order, wrapping round to the earlier ones a reader skipped only at the end
        (None when the queue is done, and Review stays on the study)."""
        following = [s for s in self.unreviewed if s != decided]
        if not following:
            return None
        pos = self.readable.index(decided) if decided in self.readable else -1
        later = [s for s in following if self.readable.index(s) > pos]
        return (later or following)[0]
