"""Person names as matching compares them (archive.person_names.person_name_fold)."""

import unicodedata

import pytest

from archive.person_names import person_name_fold


@pytest.mark.parametrize(
    ("names", "folded"),
    [
        (["DOE^JOHN", "Doe^John", "doe^john"], "doe^john"),
        (["MÜLLER^HANS", "Müller^Hans", "müller^hans"], "müller^hans"),
        (["BUC^JÉRÔME", "Buc^Jérôme"], "buc^jérôme"),
        (["ЛЮКCEМБYPГ", "Люкceмбypг"], "люкceмбypг"),
        # Capital sigma and the final form fold alike.
        (["ΔΙΟΝΥΣΙΟΣ", "Διονυσιος", "διονυσιοσ"], "διονυσιοσ"),
        # The capital sharp s folds to ß, not to "ss".
        (["STRAẞER^JÖRG", "Straßer^Jörg"], "straßer^jörg"),
        (["Yamada^Tarou=山田^太郎=やまだ^たろう"], "yamada^tarou=山田^太郎=やまだ^たろう"),
        # Wildcards and separators pass through.
        (["MÜ*^?ANS"], "mü*^?ans"),
    ],
)
def test_case_variants_fold_alike(names, folded):
    assert {person_name_fold(name) for name in names} == {folded}


@pytest.mark.parametrize("name", ["Straße", "STRAẞE", "İstanbul", "ŉ", "ᾈ", "ﬁ"])
def test_the_fold_keeps_one_character_for_one(name):
    # So that `?` stands for one character of the folded name as of the name itself (the full
    # foldings of str.upper() and str.casefold() turn these into two).
    assert len(person_name_fold(name)) == len(name)


def test_ss_is_a_spelling_not_a_case_of_sharp_s():
    assert person_name_fold("STRASSE") != person_name_fold("Straße")


def test_decomposed_accents_fold_like_precomposed_ones():
    decomposed = unicodedata.normalize("NFD", "Müller^Jérôme")
    assert decomposed != "Müller^Jérôme"
    assert person_name_fold(decomposed) == person_name_fold("MÜLLER^JÉRÔME")
