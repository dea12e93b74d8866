"""The thanks rule (docs/producers.md#acknowledgements)."""

from __future__ import annotations

import pytest

from producers.thanks import ThanksRule


@pytest.mark.parametrize("text", [
    "Thanks @uni for the feature!", "THANK YOU", "merci beaucoup", "¡Gracias!", "Danke sehr",
    "grazie mille", "Kudos to the team", "Muito obrigado", "dziękuję bardzo", "спасибо",
    "ありがとうございます", "谢谢你们", "so grateful for this",
])
def test_thanks_in_many_languages(text: str) -> None:
    assert ThanksRule().matches(text)


@pytest.mark.parametrize("text", ["thankful", "Thanksgiving dinner", "no thanksgiving", "", None,
                                  "a great paper"])
def test_whole_words_only(text: str | None) -> None:
    assert not ThanksRule().matches(text)


def test_configurable_words() -> None:
    rule = ThanksRule(["cheers mate", "ta"])
    assert rule.matches("Cheers mate!") and rule.matches("ta!")
    assert not rule.matches("thanks")
    with pytest.raises(ValueError):
        ThanksRule(["  "])
