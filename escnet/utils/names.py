"""Errors for unknown names (datasets, config keys, models) that suggest instead of dumping."""
import difflib

from .errors import ERROR_PREFIX, EscnetError

# An unknown-name error stays one readable line: at most this many characters (with
# "error: ") and suggestions.
MAX_MESSAGE_CHARS = 200
MAX_SUGGESTIONS = 3
# difflib similarity (0..1) a known name needs to be suggested.
SUGGESTION_CUTOFF = 0.5


def closest_names(name, known, n=MAX_SUGGESTIONS, cutoff=SUGGESTION_CUTOFF):
    """Up to ``n`` names of ``known`` most similar to ``name`` (difflib), best first."""
    known = sorted(set(known))
    matches = difflib.get_close_matches(name, known, n=n, cutoff=cutoff)
    if not matches:  # e.g. a short name inside a long one: "ade" -> "ade20k_150_test_sem_seg"
        lowered = name.lower()
        matches = [k for k in known if lowered and lowered in k.lower()][:n]
    return matches


def _shorten(text, limit):
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def unknown_name_message(kind, name, known, list_hint, prefix=""):
    """``<prefix>unknown <kind> '<name>'; closest: 'a', 'b'; <list_hint>``, printable in one line.

    The printed line (``error: `` + message) has at most ``MAX_MESSAGE_CHARS`` characters:
    suggestions are dropped (worst first) until it fits; ``name`` is shortened if it alone is
    too long. ``list_hint`` says how to list every known name.
    """
    budget = MAX_MESSAGE_CHARS - len(ERROR_PREFIX)
    suggestions = closest_names(name, known)
    shown = repr(_shorten(str(name), 60))
    while True:
        middle = f"; closest: {', '.join(repr(s) for s in suggestions)}" if suggestions else "; no close match"
        message = f"{prefix}unknown {kind} {shown}{middle}; {list_hint}"
        if len(message) <= budget or not suggestions:
            return _shorten(message, budget)
        suggestions = suggestions[:-1]


def unknown_name_error(kind, name, known, list_hint, prefix=""):
    """An ``EscnetError`` carrying ``unknown_name_message``."""
    return EscnetError(unknown_name_message(kind, name, known, list_hint, prefix))
