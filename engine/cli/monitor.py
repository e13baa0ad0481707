"""Monitor the model on the worklist store: input drift, readers, the audit sample, the stop rule.

    python -m engine.monitor --store DIR [--window 7d | --window 200] [--reference FROM..TO [--accept-reference]]
                             [--checkpoint DIR] [--threshold T] [--audit-share S] [--json OUT] [--html OUT]
    python -m engine.monitor --store DIR --clear --by NAME --reason TEXT

Reports the current monitoring period (engine.monitoring.periods: a new checkpoint or ``--threshold``
starts one) in windows of N days (``7d``) or N studies (``200``): each input against its reference
(PSI for mixes and probabilities, a difference in proportion for rates; engine.monitoring.drift), the
readers' agreement with flags and the PPV of a flag, the audit sample's miss rate, and the stop rule
(engine.monitoring.stop_rule), which it also updates: a crossing is recorded and logged. ``--reference``
compares with a window of the period (ISO dates, ``2025-01-06..2025-01-19``) instead of its first
window; ``--accept-reference`` records it for later runs and the dashboard. ``--clear`` records who
clears the stop rule and why. ``--json`` holds counts and statistics only (no file names, hashes or
identifiers; readers by a pseudonym); ``--html`` is one self-contained file with Plotly charts.
Exit 0 (whatever the state), 2 on a usage error, 3 when the checkpoint cannot be read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from engine.errors import CheckpointError, StoreError
from engine.monitoring import periods, report, state
from engine.monitoring.windows import WindowSpec, parse_range
from engine.worklist.store import Store
from engine.inputs import arguments


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.monitor", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="store folder (default: $CXR_STORE_DIR or the user's data folder)")
    p.add_argument("--window", default="7d", help="N days (7d) or N studies (200); default 7d")
    p.add_argument("--reference", metavar="FROM..TO", help="a window of the period to compare with (ISO dates)")
    p.add_argument("--accept-reference", action="store_true", help="record --reference as the period's reference")
    p.add_argument("--checkpoint", help="the monitored checkpoint (default: the period's, else the shipped model)")
    p.add_argument("--threshold", type=arguments.threshold, help="the monitored threshold (default: the period's, else the card's)")
    p.add_argument("--audit-share", type=float,
                   help="share of unflagged studies drawn for audit (default: the period's)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--html", metavar="OUT", help="write the report as one self-contained HTML file")
    p.add_argument("--clear", action="store_true", help="clear the stop rule (with --by and --reason)")
    p.add_argument("--by", help="--clear: who clears it")
    p.add_argument("--reason", help="--clear: why")
    return p


def _period(store: Store, args) -> periods.Period:
    """The period to report: the current one, or the one ``--checkpoint`` / ``--threshold`` ask for."""
    cur = periods.current(store)
    if args.checkpoint is not None or cur is None:
        model = periods.model_info(args.checkpoint)
    else:
        model = periods.ModelInfo(cur.model_key, cur.model_label, cur.threshold)
    return periods.ensure(store, model, args.threshold, args.audit_share)


def _clear(store: Store, args) -> int:
    try:
        n = state.clear(store, args.by or "", args.reason or "")
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Cleared {n} alert(s) of the stop rule." if n else "The stop rule was not crossed: nothing to clear.")
    return 0


def _line(rep: dict) -> str:
    """The one-paragraph summary printed on stdout."""
    p, a, r, rule = rep["period"], rep["input_alert"], rep["readers"]["overall"], rep["stop_rule"]
    ppv, miss = r["ppv"], rep["audit"]["miss_rate"]
    fmt = lambda x: "—" if x["rate"] is None else f"{x['rate']:.3f} ({x['k']} of {x['n']})"  # noqa: E731
    state_text = "; ".join(f"UNDER REVIEW since {x['since'][:16]}: {x['reason']}" for x in rule["alerts"]) or "in use"
    moved = f"INPUT ALERT: {', '.join(a['moved'])} moved" if a["alert"] else "no input alert"
    return (f"Period {p['id']} ({p['model']}, threshold {p['threshold']:.3f}, since {p['started'][:16]}): "
            f"{rep['studies']['files']:,} files in {len(rep['windows'])} window(s) of {rep['window']['label']}; "
            f"{moved}; PPV of a flag {fmt(ppv)}; audit miss rate {fmt(miss)}; model {state_text}.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = Store(args.store)
    if args.clear:
        return _clear(store, args)
    try:
        spec = WindowSpec.parse(args.window)
        given = parse_range(args.reference) if args.reference else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.accept_reference and given is None:
        print("error: --accept-reference needs --reference FROM..TO", file=sys.stderr)
        return 2
    try:
        period = _period(store, args)
    except CheckpointError as exc:
        print(f"error: cannot read the checkpoint: {exc}", file=sys.stderr)
        return 3
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.accept_reference:
        periods.accept_reference(store, period, max(given[0], period.started), given[1])
        given = None
    rep = report.build(store, spec, reference=given)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=1) + "\n")
    if args.html:
        from engine.monitoring.html import render
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(render(rep), encoding="utf-8")
    print(_line(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())
