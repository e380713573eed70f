"""User-facing errors: one clear line, never a bare traceback."""
import functools
import re
import sys

# Marks a function wrapped by ``cli_entry``; the multi-process launcher calls the unwrapped
# function in each rank and prints the failing rank's error once itself.
CLI_ENTRY_ATTRIBUTE = "escnet_cli_entry"
# Start of every user-error line a command line prints.
ERROR_PREFIX = "error: "


class EscnetError(Exception):
    """An error caused by user input (file, config, vocabulary, dataset); printed as one line."""


def one_line_message(err):
    """The one-line message of ``err``.

    Exceptions re-raised by a PyTorch DataLoader carry "Caught X in DataLoader worker process N"
    followed by the worker's traceback: the message is the worker exception's own text (the
    traceback's last ``X: message`` line), not the "Caught ..." header.
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if lines[0].startswith("Caught ") and "Original Traceback" in text:
        pattern = re.compile(rf"^(?:[\w.]+\.)?{re.escape(type(err).__name__)}: (.*)$")
        for line in reversed(lines):
            match = pattern.match(line.strip())
            if match:
                return match.group(1).strip()
        return lines[-1].strip()
    return lines[0].strip()


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
            print(f"{ERROR_PREFIX}{one_line_message(err)}", file=sys.stderr)
            sys.exit(2)

    setattr(wrapper, CLI_ENTRY_ATTRIBUTE, True)
    return wrapper


def unwrap_cli_entry(function):
    """The function ``cli_entry`` wrapped (``function`` itself if it is not a ``cli_entry``)."""
    if getattr(function, CLI_ENTRY_ATTRIBUTE, False):
        return function.__wrapped__
    return function
