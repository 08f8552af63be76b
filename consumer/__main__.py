"""``python -m consumer`` is the same as the ``enrich`` command."""

from consumer.cli import main

if __name__ == "__main__":
    main()
