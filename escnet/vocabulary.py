"""Vocabularies: ordered class names, each possibly holding comma-separated synonyms.

A vocabulary is a tuple of entries such as ``("cat", "sofa, couch", "window")``. An entry's
synonyms are encoded separately and their text features averaged (see the text encoder).
"""
import json
import os

from .utils.errors import EscnetError

VOCAB_DIR = os.path.join(os.path.dirname(__file__), "data", "vocab")


def validate_vocabulary(names, source="vocabulary"):
    """Return ``names`` as a tuple of stripped entries; raise on empty or duplicate names."""
    if isinstance(names, str):
        raise EscnetError(f"{source}: expected a list of class names, got a single string")
    cleaned = tuple(" ".join(str(n).split()) for n in names)
    if not cleaned:
        raise EscnetError(f"{source} is empty: give at least one class name")
    if any(not n or not n.strip(", ") for n in cleaned):
        raise EscnetError(f"{source} contains an empty class name")
    seen = {}
    for n in cleaned:
        key = n.lower()
        if key in seen:
            raise EscnetError(f"{source} has a duplicate class name: {n!r}")
        seen[key] = n
    return cleaned


def synonyms(entry):
    """Split one vocabulary entry into its synonyms: ``"sofa, couch"`` -> ``["sofa", "couch"]``."""
    return [s.strip() for s in entry.split(",") if s.strip()]


def parse_vocabulary_string(text):
    """Parse ``"cat,sofa,window"`` (one entry per comma) into a validated vocabulary."""
    return validate_vocabulary([t for t in text.split(",")] if text.strip() else [], "--vocab")


def load_vocabulary_file(path):
    """Read a vocabulary from a JSON list or a text file with one entry (maybe synonyms) per line."""
    if not os.path.isfile(path):
        raise EscnetError(f"vocabulary file not found: {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise EscnetError(f"vocabulary file {path!r} is not UTF-8 text") from None
    if path.lower().endswith(".json"):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as err:
            raise EscnetError(f"vocabulary file {path!r} is not valid JSON: {err}") from None
        if not isinstance(names, list):
            raise EscnetError(f"vocabulary file {path!r} must hold a JSON list of class names")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    return validate_vocabulary(names, f"vocabulary file {path!r}")


def builtin_vocabulary(name):
    """Load a vocabulary shipped with escnet (``coco``, ``ade150``, ``ade847``, ``pc59``, ...)."""
    path = os.path.join(VOCAB_DIR, f"{name}.json")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(VOCAB_DIR) if f.endswith(".json"))
        raise EscnetError(f"unknown built-in vocabulary {name!r}; known: {', '.join(known)}")
    return load_vocabulary_file(path)
