"""Text repair before the text model: mojibake, HTML, boilerplate.

Why: vendor feeds arrive double-encoded ("Ã©" for "é"), with HTML markup and shop boilerplate ("Free
shipping!", "Buy now"). BERT wastes its 512-token budget and learns spurious cues from them; cleaning is
cheap and deterministic, and it is applied identically at training and serving time (the bundle calls it).
"""

from __future__ import annotations

import functools
import html
import re

import ftfy

_TAG = re.compile(r"<[^>]+>")
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_URL = re.compile(r"https?://\S+|www\.\S+", re.IGNORECASE)
_WS = re.compile(r"\s+")
_BOILERPLATE = re.compile(
    r"(free (shipping|delivery|returns?)[^.!|]*[.!|]?|buy (it )?now[.!]?|shop now[.!]?|"
    r"click here[^.!|]*[.!|]?|limited time offer[.!]?|best price[.!]?|100% (genuine|original)( products?)?[.!]?|"
    r"cash on delivery( available)?[.!]?|(easy )?(\d+[- ]days? )?(returns?|exchanges?)( &| and| or)?"
    r"( exchanges?| returns?)?( within \d+ days)?[.!]|colou?r(s)? may (vary|differ)[^.!]*[.!]?|"
    r"shop the sale[^.!]*[.!]?|on all orders[.!]?|new!+|sale!+)",
    re.IGNORECASE,
)


def clean_text(text: str | None) -> str:
    """Repair and normalise one field: ftfy, HTML unescape + tag strip, URLs and boilerplate removed."""
    if not text:
        return ""
    t = ftfy.fix_text(str(text))
    t = _SCRIPT.sub(" ", t)
    t = _TAG.sub(" ", t)
    t = html.unescape(t)
    t = ftfy.fix_text(t)
    t = _URL.sub(" ", t)
    t = _BOILERPLATE.sub(" ", t)
    return _WS.sub(" ", t).strip()


def text_input(title: str | None, description: str | None = None, brand: str | None = None) -> str:
    """The model's text: ``title. brand. description`` cleaned; empty fields are left out.

    Title first because the encoder truncates from the end and the title carries most of the signal.
    """
    parts = [clean_text(title), clean_text(brand), clean_text(description)]
    return " . ".join(p for p in parts if p)


@functools.lru_cache(maxsize=64)
def _words_pattern(words: frozenset[str]) -> re.Pattern[str]:
    """One case-insensitive whole-word alternation (longest first, so "navy blue" wins over "blue")."""
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b", re.I)


def remove_words(text: str, words: set[str] | frozenset[str]) -> str:
    """Drop whole words (case-insensitive), used to test that colour comes from pixels, not the title."""
    if not words:
        return text
    return _WS.sub(" ", _words_pattern(frozenset(words)).sub(" ", text)).strip()


def mentions(text: str, words: set[str] | frozenset[str]) -> bool:
    """Whether ``text`` contains any of ``words`` as a whole word (case-insensitive)."""
    return bool(words) and _words_pattern(frozenset(words)).search(text) is not None
