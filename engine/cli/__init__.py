"""Command-line entry points. ``python -m engine.predict`` and the others at the engine's root are
one-line shims kept so that documented commands keep working (README, "Commands")."""
