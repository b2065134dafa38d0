"""The recipient's clock: which time zone a contact lives in (models.time_zones), as the rule
says and as the activity finds it in a real CRM."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import select

from activities.contacts import ContactActivities, TimeZoneQuestion
from models.crm import Company, Contact
from models.database import session
from models.time_zones import RecipientZone, country_zone, mobile_zone, recipient_zone

FIELD = "contact.extra.time_zone"
FLOW_ZONE = "Europe/Stockholm"


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("SE", "Europe/Stockholm"),
        ("Sweden", "Europe/Stockholm"),
        ("sweden", "Europe/Stockholm"),
        ("United Kingdom", "Europe/London"),
        ("GB", "Europe/London"),
        ("Norway", "Europe/Oslo"),
        # tzdata lists Büsingen's zone beside Berlin's; the numbering plan has one.
        ("Germany", "Europe/Berlin"),
        ("South Korea", "Asia/Seoul"),
        # Several time zones: the country says nothing.
        ("United States", None),
        ("Spain", None),
        ("Australia", None),
        ("Atlantis", None),
        ("", None),
        (None, None),
    ],
)
def test_a_country_with_one_time_zone_names_it(country: str | None, zone: str | None) -> None:
    assert country_zone(country) == zone


@pytest.mark.parametrize(
    ("mobile", "zone"),
    [
        ("+46 70 123 45 67", "Europe/Stockholm"),
        ("070-123 45 67", "Europe/Stockholm"),  # read in the default region
        ("+1 212 555 1234", "America/New_York"),  # the area code decides
        ("+1 415 555 1234", "America/Los_Angeles"),
        ("+1 500 555 0006", None),  # a US number of no one area: all of North America's zones
        ("+44 7700 900123", None),  # not a valid number
        ("call me", None),
        (None, None),
    ],
)
def test_a_mobile_number_names_the_zone_of_its_area(mobile: str | None, zone: str | None) -> None:
    assert mobile_zone(mobile, "SE") == zone


def facts(**values: object) -> dict[str, object]:
    return {"contact.mobile": None, "company.country": None, FIELD: None, **values}


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        pytest.param(
            facts(
                **{FIELD: "America/Chicago"},
                **{"company.country": "Sweden", "contact.mobile": "+12125551234"},
            ),
            RecipientZone(time_zone="America/Chicago", source="field", field=FIELD),
            id="field-first",
        ),
        pytest.param(
            facts(**{FIELD: "Mars/Olympus"}, **{"company.country": "Norway"}),
            RecipientZone(time_zone="Europe/Oslo", source="country"),
            id="unknown-zone-in-field-then-country",
        ),
        pytest.param(
            facts(**{"company.country": "United States", "contact.mobile": "+12125551234"}),
            RecipientZone(time_zone="America/New_York", source="mobile"),
            id="country-of-many-zones-then-mobile",
        ),
        pytest.param(
            facts(**{"contact.mobile": "+1 415 555 1234"}),
            RecipientZone(time_zone="America/Los_Angeles", source="mobile"),
            id="mobile",
        ),
        pytest.param(
            facts(**{"company.country": "Spain", "contact.mobile": "+15005550006"}),
            RecipientZone(time_zone=FLOW_ZONE, source="flow"),
            id="nothing-decides",
        ),
        pytest.param(facts(), RecipientZone(time_zone=FLOW_ZONE, source="flow"), id="nothing"),
    ],
)
def test_the_rule_takes_the_field_then_the_country_then_the_mobile_then_the_flow(
    contact: dict[str, object], expected: RecipientZone
) -> None:
    assert recipient_zone(contact, FIELD, FLOW_ZONE, "SE") == expected


def test_the_zone_says_where_it_came_from() -> None:
    assert RecipientZone(time_zone="Asia/Tokyo", source="field", field=FIELD).describe() == (
        "Asia/Tokyo, from contact.extra.time_zone"
    )
    assert RecipientZone(time_zone="America/New_York", source="mobile").describe() == (
        "America/New_York, from the contact's mobile number"
    )


def _contact(db_engine: Engine, first_name: str) -> Contact:
    with session(db_engine) as db:
        found = db.exec(select(Contact).where(Contact.first_name == first_name)).one()
        db.expunge(found)
        return found


def test_the_activity_reads_the_contacts_facts(engine: Engine) -> None:
    find = ContactActivities(engine).find_time_zone

    def zone_of(first_name: str, field: str = FIELD) -> RecipientZone:
        contact_id = _contact(engine, first_name).id
        assert contact_id is not None
        return find(TimeZoneQuestion(contact_id=contact_id, field=field, flow_time_zone="UTC"))

    with session(engine) as db:
        karin = db.exec(select(Contact).where(Contact.first_name == "Karin")).one()
        karin.extra_fields["time_zone"] = "Asia/Tokyo"
        lars = db.exec(select(Contact).where(Contact.first_name == "Lars")).one()
        lars.user_defined["tz"] = "America/Denver"
        # Charlotte has no company and no mobile; Gustav gets a New York mobile and loses his
        # company.
        gustav = db.exec(select(Contact).where(Contact.first_name == "Gustav")).one()
        gustav.company_id, gustav.mobile = None, "+1 (212) 555-0188"
        harbour = db.exec(select(Company).where(Company.country == "United Kingdom")).one()
        harbour.country = "GB"
        db.commit()

    assert zone_of("Karin") == RecipientZone(time_zone="Asia/Tokyo", source="field", field=FIELD)
    assert zone_of("Lars", "contact.user_defined.tz").time_zone == "America/Denver"
    assert zone_of("Lars") == RecipientZone(time_zone="Europe/Stockholm", source="country")
    assert zone_of("Emily") == RecipientZone(time_zone="Europe/London", source="country")
    assert zone_of("Gustav") == RecipientZone(time_zone="America/New_York", source="mobile")
    assert zone_of("Charlotte") == RecipientZone(time_zone="UTC", source="flow")
