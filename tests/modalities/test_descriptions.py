"""describe(): alias resolution, pass-through of unknown names, user overrides."""

from __future__ import annotations

import pytest

from brainfm_lightning.modalities.descriptions import (
    DEFAULT_ALIASES,
    DEFAULT_DESCRIPTIONS,
    canonical_name,
    describe,
    normalize_key,
)

REQUIRED_KEYS = ["T1w", "T1ce", "T2w", "FLAIR", "PD", "SWI", "DWI", "ADC", "T2star"]


def test_required_canonical_keys_have_distinct_texts() -> None:
    assert set(REQUIRED_KEYS) <= set(DEFAULT_DESCRIPTIONS)
    texts = list(DEFAULT_DESCRIPTIONS.values())
    assert len(set(texts)) == len(texts)
    assert all(key in DEFAULT_DESCRIPTIONS for key in DEFAULT_ALIASES.values())


SPELLINGS = {
    "T1w": ["T1", "t1w", "T1-weighted", "mprage", "T1_MPRAGE", "SPGR", "t1 mprage"],
    "T1ce": ["T1ce", "t1c", "T1Gd", "t1-gd", "T1_GD", "T1post", "T1_contrast"],
    "T2w": ["T2", "t2w", "T2-weighted"],
    "FLAIR": ["flair", "T2FLAIR", "T2-FLAIR", "t2_flair", "T2.FLAIR"],
    "PD": ["PD", "PDw", "proton density", "Proton_Density", "pd-weighted"],
    "SWI": ["swi"],
    "DWI": ["DWI", "dw", "Diffusion"],
    "ADC": ["adc"],
    "T2star": ["T2star", "T2*", "t2starw", "GRE"],
}


@pytest.mark.parametrize(("alias", "key"), [(a, k) for k, aliases in SPELLINGS.items() for a in aliases])
def test_aliases_resolve_case_and_punctuation_insensitively(alias: str, key: str) -> None:
    assert canonical_name(alias) == key
    assert describe(alias) == DEFAULT_DESCRIPTIONS[key]
    assert describe(f"  {alias} ") == DEFAULT_DESCRIPTIONS[key]


def test_normalize_key_drops_separators_and_case() -> None:
    assert normalize_key("T1-Gd_post.x y") == "t1gdpostxy"


def test_unknown_name_passes_through_stripped() -> None:
    assert canonical_name("MP2RAGE UNI") is None
    assert describe("  MP2RAGE UNI  ") == "MP2RAGE UNI"


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_name_raises(bad: object) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        describe(bad)  # type: ignore[arg-type]


def test_user_descriptions_override_and_extend() -> None:
    user = {"T1w": "my T1 text", "MP2RAGE": "MP2RAGE uniform T1-weighted image"}
    assert describe("T1w", user) == "my T1 text"
    assert describe("mprage", user) == "my T1 text"  # default alias now reaches the overridden text
    assert describe("MP2RAGE", user) == "MP2RAGE uniform T1-weighted image"
    assert describe("mp2rage", user) == "MP2RAGE uniform T1-weighted image"  # user keys match loosely too
    assert describe("FLAIR", user) == DEFAULT_DESCRIPTIONS["FLAIR"]  # untouched defaults stay
    assert "MP2RAGE" not in DEFAULT_DESCRIPTIONS and DEFAULT_DESCRIPTIONS["T1w"] != "my T1 text"  # not mutated


def test_user_aliases_override_and_extend() -> None:
    assert describe("bravo", aliases={"BRAVO": "T1w"}) == DEFAULT_DESCRIPTIONS["T1w"]
    assert describe("GRE", aliases={"GRE": "SWI"}) == DEFAULT_DESCRIPTIONS["SWI"]
    # Exact canonical key wins over an alias with the same spelling.
    assert describe("T2w", aliases={"T2w": "FLAIR"}) == DEFAULT_DESCRIPTIONS["T2w"]
    # An alias to a user key that has no description embeds that key.
    assert describe("uni", aliases={"UNI": "MP2RAGE"}) == "MP2RAGE"


def test_bad_user_mappings_raise() -> None:
    with pytest.raises(ValueError, match="descriptions"):
        describe("T1w", {"T1w": ""})
    with pytest.raises(ValueError, match="aliases"):
        describe("T1w", aliases={"x": " "})
