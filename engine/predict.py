"""``python -m engine.predict``: shim for :mod:`engine.cli.predict` (the documented command)."""

if __name__ == "__main__":
    from engine.cli.predict import main
    from engine.fast_exit import exit_now
    exit_now(main())
