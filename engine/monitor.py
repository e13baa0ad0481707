"""``python -m engine.monitor``: shim for :mod:`engine.cli.monitor` (the documented command)."""

if __name__ == "__main__":
    import sys
    from engine.cli.monitor import main
    sys.exit(main())
