"""User-facing errors: one clear line, never a bare traceback."""
import functools
import sys


class EscnetError(Exception):
    """An error caused by user input (file, config, vocabulary, dataset); printed as one line."""


def cli_entry(main):
    """Wrap a command-line ``main`` so that user errors end the program with a one-line message.

    ``EscnetError`` and missing files are printed as ``error: <message>`` on stderr with exit
    status 2; every other exception keeps its traceback (it is a bug, not bad input).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (EscnetError, FileNotFoundError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper

