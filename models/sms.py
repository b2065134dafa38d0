"""An SMS text and its recipient number: length in segments (spec §3), E.164 mobile numbers.

One SMS holds 160 GSM-7 septets, or 70 UCS-2 code units as soon as one character is outside the
GSM-7 alphabet. A longer text is split into parts of 153 septets / 67 code units (the rest of each
part carries the concatenation header). An extension character (``^{}\\[~]|€`` and form feed)
takes two septets (escape + character) and an astral character (most emoji) two UTF-16 units;
neither is ever split across two parts, so parts are filled character by character.
"""

from __future__ import annotations

from typing import Literal

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import phonenumbers
from pydantic import BaseModel

GSM_CODEC = "gsm03.38"

Encoding = Literal["GSM-7", "UCS-2"]

# encoding -> (capacity of a single SMS, capacity of each part of a split SMS)
CAPACITY: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}
# The longest text sent, in ``SmsLength.characters`` (Twilio refuses longer bodies): 11 GSM-7
# segments, 24 UCS-2 ones. A text grown past it by merge tags is not sent.
MAX_CHARACTERS = 1600
# Numbers an SMS may go to: a premium-rate, toll-free or fixed-line number costs money or
# reaches nobody (FIXED_LINE_OR_MOBILE: plans like the US one that do not tell the two apart).
MOBILE_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


class SmsLength(BaseModel):
    """How long a text is as an SMS.

    ``characters`` counts what the limits count: GSM-7 septets (extension characters twice) or
    UTF-16 code units (astral characters twice), not Python characters.
    """

    characters: int
    encoding: Encoding
    segments: int

    def __str__(self) -> str:
        unit = "segment" if self.segments == 1 else "segments"
        return f"{self.segments} {unit}, {self.encoding}"


def _gsm_costs(text: str) -> list[int] | None:
    """Septets per character, or None when a character is outside GSM-7."""
    try:
        return [len(character.encode(GSM_CODEC)) for character in text]
    except UnicodeEncodeError:
        return None


def _ucs2_costs(text: str) -> list[int]:
    return [len(character.encode("utf-16-le")) // 2 for character in text]


def _parts(costs: list[int], per_part: int) -> int:
    parts, used = 1, 0
    for cost in costs:
        if used + cost > per_part:
            parts, used = parts + 1, 0
        used += cost
    return parts


def segments(text: str) -> SmsLength:
    """The encoding, counted length and number of SMS segments of ``text``."""
    gsm = _gsm_costs(text)
    encoding: Encoding = "GSM-7" if gsm is not None else "UCS-2"
    costs = gsm if gsm is not None else _ucs2_costs(text)
    single, per_part = CAPACITY[encoding]
    characters = sum(costs)
    if characters == 0:
        count = 0
    elif characters <= single:
        count = 1
    else:
        count = _parts(costs, per_part)
    return SmsLength(characters=characters, encoding=encoding, segments=count)


def normalise_number(raw: str, default_region: str = "SE") -> str | None:
    """``raw`` as an E.164 number (+46701234567), or None when it is not a valid number.

    Numbers without a country code are read in ``default_region``.
    """
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return None
    # format_number happily formats invalid numbers too: validity must be checked on its own.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def too_long(text: str) -> str | None:
    """Why ``text`` is too long to send as an SMS (None: it is not)."""
    length = segments(text)
    if length.characters <= MAX_CHARACTERS:
        return None
    return (
        f"{length.characters} characters ({length.segments} segments): "
        f"an SMS holds at most {MAX_CHARACTERS:,}"
    )


def number_kind(number: str) -> str | None:
    """What kind of number an E.164 ``number`` is ("mobile", "premium rate", "fixed line", …),
    or None when it is not a valid number."""
    try:
        parsed = phonenumbers.parse(number)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    kind = phonenumbers.number_type(parsed)
    if kind in MOBILE_TYPES:
        return "mobile"
    return str(phonenumbers.PhoneNumberType.to_string(kind)).lower().replace("_", " ")


def is_mobile(number: str) -> bool:
    """Whether an E.164 ``number`` (from ``normalise_number``) is one an SMS may go to."""
    return number_kind(number) == "mobile"
