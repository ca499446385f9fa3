"""The county's own pronunciation dictionary: place names and polyphones that the
voices misread ("六安" is Lù'ān), kept in DATA_DIR/pronunciations.json and editable
through the API. It is merged over the built-in Mandarin set and applied before speech
synthesis; rendered audio is cached by the normalised text, so an edit takes effect on
the next render without any stale audio."""

from __future__ import annotations

import os
from pathlib import Path

from controller.errors import bad_request
from controller.speech.normalize import PronunciationDictionary

MAX_ENTRIES = 2000
MAX_CHARS = 50


def load_custom(path: Path) -> PronunciationDictionary:
    if not path.exists():
        return PronunciationDictionary()
    return PronunciationDictionary.load(path)


def effective(custom: PronunciationDictionary) -> PronunciationDictionary:
    return PronunciationDictionary.default("cmn").merged(custom)


def validate(entries: object) -> PronunciationDictionary:
    """Raise a 400 naming the entry for anything that is not a short written→spoken pair."""
    if not isinstance(entries, dict):
        raise bad_request("entries", "must be an object of written form → spoken form")
    if len(entries) > MAX_ENTRIES:
        raise bad_request("entries", f"at most {MAX_ENTRIES} entries")
    for written, spoken in entries.items():
        field = f"entries.{written}"
        if not written.strip() or len(written) > MAX_CHARS:
            raise bad_request(field, f"the written form must be 1-{MAX_CHARS} characters")
        if not isinstance(spoken, str) or not spoken.strip() or len(spoken) > MAX_CHARS:
            raise bad_request(field, f"the spoken form must be 1-{MAX_CHARS} characters")
    return PronunciationDictionary.from_mapping(entries)


def save(path: Path, custom: PronunciationDictionary) -> None:
    tmp = path.with_suffix(".tmp")
    custom.save(tmp)
    os.replace(tmp, path)


def as_json(custom: PronunciationDictionary) -> dict[str, object]:
    return {
        "custom": custom.entries,
        "builtin": PronunciationDictionary.default("cmn").entries,
        "applies_to": ["cmn"],
    }
