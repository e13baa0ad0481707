"""The stop rule: when the model is put under review until a person clears it.

Two one-sided Bernoulli CUSUMs (:mod:`engine.monitoring.cusum`), each signalling at the h that gives an
in-control average run length of 500 observations, and each looking for a doubling of its rate:

* **disagreement**: each decision in force in the period, in the order made; an event is "disagree".
  Reference rate p0: the disagreement rate of the first 100 decisions of the store's first monitoring
  period (the rate readers had with the model first put in use), or of an accepted reference window
  holding at least 30 decisions; 0.15 until there are that many. p1 = 2 p0 (p0 kept within
  0.02-0.45). With p0 = 0.15: h = 3.24, a false alarm about once in 515 decisions, and a doubling to
  0.30 found after about 37 decisions.
* **drift**: each scored study of the period (one per file), in the order added; an event is a study
  that carries a warning (out of population by its header or its image, or another). p0: the warning
  share of the period's first 200 such studies (of an accepted reference window holding at least 30),
  never below 0.05 (the out-of-population cut-off's design rate: 5% of validation images exceed it);
  0.05 until there are 200. With p0 = 0.05: h = 2.19, a false alarm about once in 500 studies, a
  doubling found after about 76.

Both sums start at the period's start, or at the last clearing of the stop rule. When one reaches h,
an alert is recorded (:mod:`engine.monitoring.state`) since the time of the observation that crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.monitoring import cusum, state, tables
from engine.monitoring.periods import Period
from engine.monitoring.windows import unique_files, within
from engine.worklist.store import Store, StudyRow

FIRST_DECISIONS, MIN_REFERENCE, DEFAULT_DISAGREEMENT = 100, 30, 0.15
FIRST_STUDIES, DEFAULT_WARNING = 200, 0.05


@dataclass(frozen=True)
class StopRule:
    disagreement: cusum.CusumRun
    drift: cusum.CusumRun
    restart: str                       # the sums start here: the period's start or the last clearing
    p0_origin: dict                    # where each reference rate came from

    def as_dict(self) -> dict:
        return {"restart": self.restart, "reference": self.p0_origin,
                "disagreement": self.disagreement.as_dict(), "drift": self.drift.as_dict()}


def _first_period_decisions(store: Store) -> list[dict]:
    """The first ``FIRST_DECISIONS`` decisions made in the store's first period (fewer if it has fewer)."""
    with tables.reading(store) as con:
        rows = con.execute("SELECT model_key, started FROM monitor_periods ORDER BY id LIMIT 2").fetchall()
    if not rows:
        return []
    until = rows[1][1] if len(rows) > 1 else None
    return store.monitored_decisions(rows[0][0], rows[0][1], until)[:FIRST_DECISIONS]


def _share(events: Sequence[bool]) -> float:
    return sum(bool(x) for x in events) / len(events)


def disagreement_rate(store: Store, period: Period, decisions: Sequence[dict]) -> tuple[float, str]:
    """The in-control disagreement rate and where it came from."""
    if period.reference_from is not None:
        ref = [d for d in decisions if period.reference_from <= d["time"] < period.reference_to]
        if len(ref) >= MIN_REFERENCE:
            return (_share([d["decision"] == "disagree" for d in ref]),
                    f"accepted reference window ({len(ref)} decisions)")
    first = _first_period_decisions(store)
    if len(first) >= FIRST_DECISIONS:
        return (_share([d["decision"] == "disagree" for d in first]),
                f"first {FIRST_DECISIONS} decisions of the first period")
    return DEFAULT_DISAGREEMENT, f"default {DEFAULT_DISAGREEMENT} (under {FIRST_DECISIONS} decisions in period 1)"


def warning_share(period: Period, scored: Sequence[StudyRow]) -> tuple[float, str]:
    """The in-control warning share (at least 0.05) and where it came from."""
    if period.reference_from is not None:
        ref = within(scored, period.reference_from, period.reference_to)
        if len(ref) >= MIN_REFERENCE:
            return (max(DEFAULT_WARNING, _share([bool(r.warnings) for r in ref])),
                    f"accepted reference window ({len(ref)} studies)")
    if len(scored) >= FIRST_STUDIES:
        return (max(DEFAULT_WARNING, _share([bool(r.warnings) for r in scored[:FIRST_STUDIES]])),
                f"first {FIRST_STUDIES} studies of the period")
    return DEFAULT_WARNING, f"default {DEFAULT_WARNING} (under {FIRST_STUDIES} studies in the period)"


def evaluate(store: Store, period: Period, studies: Sequence[StudyRow], decisions: Sequence[dict]) -> StopRule:
    """Run both sums over the period since the last clearing; record an alert for each that crossed."""
    restart = max(period.started, state.last_cleared(store, period.id) or "")
    scored = [r for r in unique_files(studies) if r.ok]
    p_dis, dis_origin = disagreement_rate(store, period, decisions)
    p_warn, warn_origin = warning_share(period, scored)
    dec = [d for d in decisions if d["time"] >= restart]
    obs = [r for r in scored if r.added >= restart]
    dis = cusum.run([d["decision"] == "disagree" for d in dec], p_dis)
    drift = cusum.run([bool(r.warnings) for r in obs], p_warn)
    if dis.crossed_at is not None:
        k = sum(d["decision"] == "disagree" for d in dec[:dis.crossed_at + 1])
        state.raise_alert(store, period.id, "disagreement", dec[dis.crossed_at]["time"],
                          f"{period.model_label}: readers disagreed on {k} of the {dis.crossed_at + 1} decisions "
                          f"since {restart[:16]} (reference rate {dis.p0:.2f}; CUSUM reached h = {dis.h:.2f})")
    if drift.crossed_at is not None:
        k = sum(bool(r.warnings) for r in obs[:drift.crossed_at + 1])
        state.raise_alert(store, period.id, "drift", obs[drift.crossed_at].added,
                          f"{period.model_label}: {k} of the {drift.crossed_at + 1} studies since {restart[:16]} "
                          f"carry a warning (reference share {drift.p0:.2f}; CUSUM reached h = {drift.h:.2f})")
    return StopRule(dis, drift, restart, {"disagreement": dis_origin, "drift": warn_origin})
