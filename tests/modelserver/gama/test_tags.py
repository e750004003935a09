"""The matcher that turns GAMA's answer to the tag prompt into labels and scores."""

from __future__ import annotations

from modelserver.families.gama.tags import ALL_WORDS, EXACT, match_labels

LABELS = ["Speech", "Dog", "Bird", "Siren", "Vehicle horn", "Music"]


def test_named_labels_in_the_order_named() -> None:
    answer = "A dog barks while birds sing; then speech."
    assert match_labels(answer, LABELS) == [("Dog", EXACT), ("Bird", EXACT), ("Speech", EXACT)]


def test_whole_words_only() -> None:
    # "musical" is not "Music", "sirens" is "Siren", "hotdog" is no dog.
    assert match_labels("musical sirens near a hotdog stand", LABELS) == [("Siren", EXACT)]


def test_multi_word_labels_exact_or_by_all_their_words() -> None:
    assert match_labels("a vehicle horn honks", LABELS) == [("Vehicle horn", EXACT)]
    assert match_labels("the horn of a passing vehicle", LABELS) == [("Vehicle horn", ALL_WORDS)]
    ranked = match_labels("horn of a vehicle, and music", LABELS)
    assert ranked == [("Music", EXACT), ("Vehicle horn", ALL_WORDS)]  # exact matches first


def test_nothing_named_gives_no_labels() -> None:
    assert match_labels("It is quiet.", LABELS) == []
