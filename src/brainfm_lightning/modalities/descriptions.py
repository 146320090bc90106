"""Canonical MRI sequence names, their aliases, and the text that is embedded for each.

The descriptions are written for a small sentence encoder (all-MiniLM-L6-v2): bare acronyms such as
"PD" or "SWI" embed almost at random, while short physics/appearance descriptions make related
sequences (T2w/FLAIR, SWI/T2*, DWI/ADC, T1w/T1ce) land close together and unrelated ones apart.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_ALIASES", "DEFAULT_DESCRIPTIONS", "canonical_name", "describe", "normalize_key"]

# Canonical key -> text actually embedded. Sentences share phrasing within a family on purpose.
DEFAULT_DESCRIPTIONS: dict[str, str] = {
    "T1w": "T1-weighted anatomical MRI with dark cerebrospinal fluid and bright white matter",
    "T1ce": "contrast-enhanced T1-weighted anatomical MRI with dark cerebrospinal fluid and bright "
    "gadolinium-enhancing lesions",
    "T2w": "T2-weighted anatomical MRI with bright cerebrospinal fluid and bright edema",
    "FLAIR": "T2-weighted fluid-attenuated inversion recovery MRI with dark suppressed cerebrospinal fluid and bright "
    "edema",
    "PD": "PD-weighted anatomical MRI: proton density contrast with intermediate cerebrospinal fluid, acquired with "
    "long repetition time and short echo time",
    "SWI": "susceptibility-weighted gradient echo MRI showing dark veins, iron and microbleeds",
    "DWI": "diffusion-weighted MRI of water molecule diffusion, bright in acute stroke",
    "ADC": "apparent diffusion coefficient map computed from diffusion-weighted MRI, dark in acute stroke",
    "T2star": "T2*-weighted gradient echo MRI showing dark iron and microbleeds",
    "DIR": "double inversion recovery MRI with suppressed cerebrospinal fluid and white matter, showing cortical "
    "lesions",
    "TOF": "time-of-flight MR angiography with bright flowing arterial blood",
    "ASL": "arterial spin labeling perfusion MRI of cerebral blood flow",
}

# Alias -> canonical key. Matching ignores case and the characters in _IGNORED (see normalize_key),
# so "T1-Gd", "t1gd" and "T1_GD" are one alias. Canonical keys also match themselves.
DEFAULT_ALIASES: dict[str, str] = {
    **dict.fromkeys(["T1", "T1w", "T1-weighted", "MPRAGE", "T1_MPRAGE", "SPGR", "FSPGR", "T1 weighted"], "T1w"),
    **dict.fromkeys(
        ["T1ce", "T1c", "T1Gd", "T1-Gd", "T1post", "T1_contrast", "T1 post contrast", "T1wce", "T1CE"], "T1ce"
    ),
    **dict.fromkeys(["T2", "T2w", "T2-weighted", "T2 weighted"], "T2w"),
    **dict.fromkeys(["FLAIR", "T2FLAIR", "T2-FLAIR", "T2_FLAIR"], "FLAIR"),
    **dict.fromkeys(["PD", "PDw", "PD-weighted", "proton density", "proton density weighted"], "PD"),
    **dict.fromkeys(["SWI", "susceptibility weighted"], "SWI"),
    **dict.fromkeys(["DWI", "DW", "diffusion", "diffusion weighted"], "DWI"),
    **dict.fromkeys(["ADC", "apparent diffusion coefficient"], "ADC"),
    **dict.fromkeys(["T2star", "T2*", "T2starw", "T2*w", "GRE", "T2star-weighted"], "T2star"),
    **dict.fromkeys(["DIR", "double inversion recovery"], "DIR"),
    **dict.fromkeys(["TOF", "TOF-MRA", "MRA", "angio"], "TOF"),
    **dict.fromkeys(["ASL", "pCASL", "arterial spin labeling"], "ASL"),
}

_IGNORED = str.maketrans("", "", "-_ .")


def normalize_key(name: str) -> str:
    """Lower-case ``name`` and drop '-', '_', ' ' and '.' so spelling variants compare equal.

    Args:
        name: A sequence name as written by a user or a dataset.

    Returns:
        The normalised lookup key, e.g. ``"T1-Gd" -> "t1gd"``.
    """
    return name.casefold().translate(_IGNORED)


def _merged(descriptions: Mapping[str, str] | None, aliases: Mapping[str, str] | None) -> tuple[dict, dict]:
    """Defaults extended/overridden by user mappings; returns (descriptions, normalised alias -> key)."""
    merged_desc = {**DEFAULT_DESCRIPTIONS, **(descriptions or {})}
    lookup: dict[str, str] = {}
    # Later entries win: defaults, then every canonical key as its own alias, then user aliases.
    for alias, key in DEFAULT_ALIASES.items():
        lookup[normalize_key(alias)] = key
    for key in merged_desc:
        lookup[normalize_key(key)] = key
    for alias, key in (aliases or {}).items():
        if not isinstance(alias, str) or not isinstance(key, str) or not alias.strip() or not key.strip():
            raise ValueError(f"aliases must map non-empty strings to non-empty strings, got {alias!r}: {key!r}")
        lookup[normalize_key(alias)] = key.strip()
    return merged_desc, lookup


def canonical_name(
    name: str, descriptions: Mapping[str, str] | None = None, aliases: Mapping[str, str] | None = None
) -> str | None:
    """Resolve ``name`` to its canonical key, or None when it is unknown.

    Args:
        name: Sequence name, e.g. ``"t1_mprage"``.
        descriptions: Extra/overriding canonical key -> text.
        aliases: Extra/overriding alias -> canonical key.

    Returns:
        The canonical key (``"T1w"``), or None for an unknown name.

    Raises:
        ValueError: If ``name`` is empty or not a string.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"modality name must be a non-empty string, got {name!r}")
    name = name.strip()
    merged_desc, lookup = _merged(descriptions, aliases)
    if name in merged_desc:
        return name
    return lookup.get(normalize_key(name))


def describe(name: str, descriptions: Mapping[str, str] | None = None, aliases: Mapping[str, str] | None = None) -> str:
    """Return the text to embed for a sequence name.

    Lookup order: exact canonical key, then alias (case- and punctuation-insensitive). User mappings
    extend and override the defaults. An unknown name is returned as written (stripped), so unseen
    sequences still embed, just less reliably than a described one.

    Args:
        name: Sequence name, e.g. ``"T1_MPRAGE"``, ``"flair"`` or ``"T2*"``.
        descriptions: Extra/overriding canonical key -> text.
        aliases: Extra/overriding alias -> canonical key.

    Returns:
        The description text (or the stripped name when nothing matches).

    Raises:
        ValueError: If ``name`` is empty, or a user description is empty.
    """
    for key, text in (descriptions or {}).items():
        if not isinstance(key, str) or not isinstance(text, str) or not key.strip() or not text.strip():
            raise ValueError(f"descriptions must map non-empty strings to non-empty texts, got {key!r}: {text!r}")
    key = canonical_name(name, descriptions, aliases)
    merged_desc = {**DEFAULT_DESCRIPTIONS, **(descriptions or {})}
    if key is None:
        return name.strip()
    # An alias may point at a key with no description (user alias to a new name): embed that key.
    return merged_desc.get(key, key).strip()
