"""Which time zone a contact lives in: the rule behind a flow's recipient clock.

In order, the first that gives exactly one IANA zone wins:

1. the contact's fact the flow names (``recipient_clock.field``, by default
   ``contact.extra.time_zone``), when it holds a known zone name such as ``America/New_York``;
2. the country of the contact's company (an ISO 3166 code such as ``SE``, or its English name,
   "Sweden", "United Kingdom"), when the country has one time zone: tzdata lists one for it, or
   its telephone numbering plan has one that tzdata lists for it (Sweden and Germany do, the
   United States and Spain do not);
3. the contact's mobile number, when its country, or its area within the country, has one time
   zone (``+1 212 …`` is New York's);
4. the flow's own time zone.

Pure: the facts come in (``models.crm.contact_facts``), the tables come from the ``tzdata`` and
``phonenumbers`` packages, so the same contact gets the same answer on every worker.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Mapping
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from holidays.registry import COUNTRIES
from phonenumbers import timezone as number_zones
from phonenumbers.tzdata import TIMEZONE_DATA
from pydantic import BaseModel

ZoneSource = Literal["field", "country", "mobile", "flow"]

_SOURCE_TEXT: dict[ZoneSource, str] = {
    "field": "{field}",
    "country": "the company's country",
    "mobile": "the contact's mobile number",
    "flow": "the flow: nothing on the contact names one",
}


class RecipientZone(BaseModel):
    """The time zone a contact's clock reads, and where it came from (no personal data: a zone
    name and the kind of fact it was read from)."""

    time_zone: str
    source: ZoneSource
    field: str | None = None  # the fact read, when the source is "field"

    def describe(self) -> str:
        """E.g. ``'America/New_York, from the contact's mobile number'``."""
        return f"{self.time_zone}, from {_SOURCE_TEXT[self.source].format(field=self.field)}"


def known_zone(name: object) -> str | None:
    """``name`` if it names an IANA time zone, else None."""
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def _letters(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.casefold())


def _tzdata_table(name: str) -> list[list[str]]:
    text = importlib.resources.files("tzdata").joinpath("zoneinfo", name).read_text("utf-8")
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]


@functools.cache
def _country_codes() -> Mapping[str, str]:
    """Country names (letters only, case-folded) and codes -> ISO 3166 alpha-2 code: the names of
    tzdata's iso3166.tab ("Britain (UK)") and of the holidays package's calendars
    ("UnitedKingdom"), with their alpha-3 codes and aliases."""
    codes: dict[str, str] = {}
    iso = {row[0]: row[1] for row in _tzdata_table("iso3166.tab")}
    for code, name in iso.items():
        codes[_letters(name)] = code
        codes[_letters(re.sub(r"\(.*\)", "", name))] = code
    for class_name, *aliases in COUNTRIES.values():
        alpha_2 = next((alias for alias in aliases if alias in iso), None)
        if alpha_2 is not None:
            for name in (class_name, *aliases):
                codes.setdefault(_letters(name), alpha_2)
    codes.update({_letters(code): code for code in iso})
    return codes


@functools.cache
def _country_zones() -> Mapping[str, tuple[str, ...]]:
    """ISO 3166 alpha-2 code -> the IANA zones of that country (tzdata's zone.tab)."""
    zones: dict[str, list[str]] = {}
    for row in _tzdata_table("zone.tab"):
        zones.setdefault(row[0], []).append(row[2])
    return {code: tuple(found) for code, found in zones.items()}


def country_zone(country: object) -> str | None:
    """The one time zone of a country given by code or English name; None if the country is
    unknown or has several zones."""
    if not isinstance(country, str):
        return None
    code = _country_codes().get(_letters(country))
    if code is None:
        return None
    zones = _country_zones().get(code, ())
    if len(zones) == 1:
        return known_zone(zones[0])
    # Germany lists Büsingen's zone beside Berlin's; its numbering plan has one zone.
    calling_code = phonenumbers.country_code_for_region(code)
    planned = TIMEZONE_DATA.get(str(calling_code), ())
    if len(planned) == 1 and planned[0] in zones:
        return known_zone(planned[0])
    return None


def mobile_zone(mobile: object, default_region: str) -> str | None:
    """The one time zone of a valid number's area (or country); None if there are several."""
    if not isinstance(mobile, str) or not mobile.strip():
        return None
    try:
        number = phonenumbers.parse(mobile, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    zones = number_zones.time_zones_for_number(number)
    return known_zone(zones[0]) if len(zones) == 1 else None


def recipient_zone(
    facts: Mapping[str, object], field: str, flow_time_zone: str, default_region: str
) -> RecipientZone:
    """The contact's time zone by the module's rule, from its facts (``contact_facts``)."""
    found = known_zone(facts.get(field))
    if found is not None:
        return RecipientZone(time_zone=found, source="field", field=field)
    found = country_zone(facts.get("company.country"))
    if found is not None:
        return RecipientZone(time_zone=found, source="country")
    found = mobile_zone(facts.get("contact.mobile"), default_region)
    if found is not None:
        return RecipientZone(time_zone=found, source="mobile")
    return RecipientZone(time_zone=flow_time_zone, source="flow")
