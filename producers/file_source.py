"""File sources: contract-v1 JSONL files, one event per line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def jsonl_lines(path: str | Path) -> Iterator[bytes]:
    """The non-blank lines of a JSONL file as raw bytes, line endings removed.

    Lines are not parsed here: a malformed line is passed on as is, so the
    pipeline dead-letters it with its original bytes. Blank lines (only
    whitespace) separate nothing and are skipped.
    """
    with open(path, "rb") as handle:
        for line in handle:
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                yield stripped
