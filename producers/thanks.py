"""Acknowledgements: when a reply or mention is a thank-you (pure).

Rule (docs/producers.md): a ``reply`` or a post mentioning an account is
emitted as kind ``thanks`` towards its target when its text contains one of
the thanks words as a whole word (case-insensitive, Unicode-aware; scripts
without spaces between words match as substrings). The default words cover
English, French, Spanish, Portuguese, Italian, German, Dutch, Swedish,
Finnish, Polish, Russian, Japanese and Chinese; ``RECIPROCITY_THANKS_WORDS``
(comma-separated) replaces them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final

DEFAULT_THANKS_WORDS: Final = (
    "thank", "thanks", "thank you", "thx", "grateful", "gratitude", "kudos", "cheers",
    "merci", "gracias", "obrigado", "obrigada", "grazie", "danke", "dankeschön", "dank",
    "bedankt", "tack", "kiitos", "dziękuję", "dzięki", "спасибо", "ありがとう", "谢谢",
    "感谢",
)
#: scripts written without spaces between words: match anywhere in the text
_NO_SPACES = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


class ThanksRule:
    """Decides whether a text thanks its addressee."""

    def __init__(self, words: Iterable[str] = DEFAULT_THANKS_WORDS) -> None:
        cleaned = sorted({_fold(w) for w in words if w.strip()}, key=len, reverse=True)
        if not cleaned:
            raise ValueError("the thanks rule needs at least one word")
        spaced = [w for w in cleaned if not _NO_SPACES.search(w)]
        self._anywhere = tuple(w for w in cleaned if _NO_SPACES.search(w))
        self._words = re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(w) for w in spaced) + r")(?!\w)"
        ) if spaced else None

    def matches(self, text: str | None) -> bool:
        if not text:
            return False
        folded = _fold(text)
        if self._words is not None and self._words.search(folded):
            return True
        return any(w in folded for w in self._anywhere)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFC", text).casefold().strip()
