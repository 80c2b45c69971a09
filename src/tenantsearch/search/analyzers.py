"""Text analysis for the embedded (tantivy) engine: one analyzer per text-field language.

Every text field is analyzed by the chain ``simple tokenizer -> remove tokens of
MAX_TOKEN_BYTES bytes or more -> lowercase -> Snowball stemmer(language) -> ASCII folding``.
Stemming comes before folding because Snowball stemmers expect the language's own spelling
(accents included); folding afterwards makes ``cafe`` and ``café`` the same term. The language
``none`` skips the stemmer. The OpenSearch mapping builds the same chain, so a word means the
same thing in both engines.

Query text is never handed to tantivy's query parser (its syntax can name fields): the adapter
splits it into words with :func:`query_words` and analyzes each word per field with
:func:`analyze`, then builds term queries itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import tantivy

from tenantsearch.search.schema import LANGUAGES, NO_STEMMING

ANALYZER_PREFIX = "ts_"
MAX_TOKEN_BYTES = 40
"""Tokens of this many UTF-8 bytes or more are dropped (noise that would bloat the index)."""


def languages() -> Iterator[str]:
    """Every language a text field may have: the ISO codes in LANGUAGES, then NO_STEMMING."""
    yield from LANGUAGES
    yield NO_STEMMING


def analyzer_name(language: str | None) -> str:
    """The tokenizer name a text field of ``language`` is declared with (``ts_en``, ``ts_none``)."""
    lang = language or NO_STEMMING
    if lang != NO_STEMMING and lang not in LANGUAGES:
        raise ValueError(f"unknown text language: {lang!r}")
    return f"{ANALYZER_PREFIX}{lang}"


@cache
def text_analyzer(language: str | None) -> tantivy.TextAnalyzer:
    """The analyzer for one language (built once, shared: ``analyze`` is safe across threads)."""
    lang = language or NO_STEMMING
    builder = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(MAX_TOKEN_BYTES))
        .filter(tantivy.Filter.lowercase())
    )
    if lang != NO_STEMMING:
        try:
            snowball = LANGUAGES[lang]
        except KeyError:
            raise ValueError(f"unknown text language: {lang!r}") from None
        builder = builder.filter(tantivy.Filter.stemmer(snowball))
    return builder.filter(tantivy.Filter.ascii_fold()).build()


@cache
def _word_splitter() -> tantivy.TextAnalyzer:
    return tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple()).build()


def register_analyzers(index: tantivy.Index) -> None:
    """Register every language's analyzer on ``index`` (needed each time an index is opened)."""
    for lang in languages():
        index.register_tokenizer(analyzer_name(lang), text_analyzer(lang))


def analyze(language: str | None, text: str) -> list[str]:
    """The terms ``text`` produces in a text field of ``language``, in order."""
    return text_analyzer(language).analyze(text)


def query_words(text: str) -> list[str]:
    """Split free query text into words the way the field tokenizer does (letters and digits),
    without normalizing them; each word is then analyzed per field with :func:`analyze`."""
    return _word_splitter().analyze(text)
