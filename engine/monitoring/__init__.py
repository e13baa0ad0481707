"""Know when the model stops working here: monitoring of the worklist store, without and with labels.

    windows     a period's studies cut into windows (the last N days, or the last N studies)
    drift       inputs against a reference: PSI for mixes and probabilities, rates by their difference
    readers     agreement with flags, PPV of a flag, false positives, misses found by the audit sample
    audit       the seeded random draw of unflagged studies for review
    cusum       the Bernoulli CUSUM and its limit for an in-control run length
    stop_rule   the two CUSUMs (disagreement, drift) that put the model under review
    state       the alerts, and their recorded clearing (table monitor_state)
    periods     a model and threshold in force, from when (table monitor_periods)
    report      everything above as one dict (--json); figures and html draw it
    stats       intervals, PSI and the chi-square test, without SciPy

A layer beside engine.pacs: it reads the store (engine.worklist) and never the dashboard.
"""
