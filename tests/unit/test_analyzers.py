"""The embedded engine's text analysis: pure functions over tantivy analyzers."""

from __future__ import annotations

import pytest
import tantivy

from tenantsearch.search.analyzers import (
    MAX_TOKEN_BYTES,
    analyze,
    analyzer_name,
    languages,
    query_words,
    register_analyzers,
    text_analyzer,
)
from tenantsearch.search.schema import LANGUAGES, NO_STEMMING


def test_every_schema_language_has_an_analyzer() -> None:
    assert list(languages()) == [*LANGUAGES, NO_STEMMING]
    for language in languages():
        assert analyze(language, "Hello") != []
        assert analyzer_name(language) == f"ts_{language}"


def test_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown text language"):
        analyzer_name("xx")
    with pytest.raises(ValueError, match="unknown text language"):
        text_analyzer("xx")


def test_missing_language_means_no_stemming() -> None:
    assert analyzer_name(None) == "ts_none"
    assert analyze(None, "Running Cafés") == ["running", "cafes"]


@pytest.mark.parametrize(
    ("language", "text", "terms"),
    [
        ("en", "Running runs RUN", ["run", "run", "run"]),
        ("en", "café CAFE Café", ["cafe", "cafe", "cafe"]),
        ("de", "Häuser Haus", ["haus", "haus"]),
        ("fr", "chevaux cheval", ["cheval", "cheval"]),
        ("es", "canciones canción", ["cancion", "cancion"]),
        ("none", "Crème Brûlée", ["creme", "brulee"]),
    ],
)
def test_stems_lowercases_and_folds(language: str, text: str, terms: list[str]) -> None:
    assert analyze(language, text) == terms


def test_stems_before_folding() -> None:
    # The French stemmer needs the accent to strip "é" the way it does for "mangé".
    assert analyze("fr", "mangé") == analyze("fr", "manger")


def test_drops_over_long_tokens() -> None:
    long_word = "a" * MAX_TOKEN_BYTES
    assert analyze("en", f"short {long_word} word") == ["short", "word"]
    assert analyze("en", "a" * (MAX_TOKEN_BYTES - 1)) == ["a" * (MAX_TOKEN_BYTES - 1)]


def test_query_words_split_like_the_tokenizer_without_normalizing() -> None:
    assert query_words("Quick, brown-fox! tag:x (a OR b) 3.14") == [
        "Quick",
        "brown",
        "fox",
        "tag",
        "x",
        "a",
        "OR",
        "b",
        "3",
        "14",
    ]
    assert query_words("  ") == []
    assert query_words("*?!") == []


def test_registered_analyzers_are_used_by_an_index() -> None:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("body", stored=True, tokenizer_name=analyzer_name("en"))
    schema = builder.build()
    index = tantivy.Index(schema)
    register_analyzers(index)
    writer = index.writer(15_000_000, 1)
    writer.add_document(tantivy.Document(body=["The runners were running to the Café"]))
    writer.commit()
    writer.wait_merging_threads()
    index.reload()

    searcher = index.searcher()
    for term in ("run", "cafe"):
        assert searcher.search(tantivy.Query.term_query(schema, "body", term), 1).hits
    assert not searcher.search(tantivy.Query.term_query(schema, "body", "running"), 1).hits
