"""A small demo CRM so flows can be run end to end without real data."""

from typing import Any

from sqlmodel import Session, select

from models.crm import (
    Associate,
    AssociateGroupMembership,
    Availability,
    Company,
    Contact,
    Form,
    Project,
    RequestCategory,
    RequestType,
    SaleType,
    Selection,
    SelectionMember,
    TrackedLink,
    UserGroup,
)

DEMO_SELECTION_ID = 1
VIP_SELECTION_ID = 2
DEMO_PROJECT_ID = 1
DEMO_FORM_ID = 1
SPRING_OFFER_URL = "https://www.example.com/spring-offer"


def _consent(source: str) -> dict[str, Any]:
    return {
        "purpose": "emarketing",
        "legal_basis": "consent",
        "source": source,
        "comment": "",
    }


def seed_demo(session: Session) -> None:
    """Fill an empty CRM with demo data; does nothing if any associate exists.

    Run it on a fresh database: the demo selection and project get their ids (1, 2 and 1) from
    the normal sequence rather than explicit ids, which would desynchronise PostgreSQL sequences.
    """
    if session.exec(select(Associate.id).limit(1)).first() is not None:
        return

    sales = UserGroup(name="Sales")
    support = UserGroup(name="Support")
    session.add_all([sales, support])
    session.flush()

    anna = Associate(
        name="Anna Lindqvist",
        email="anna.lindqvist@example.com",
        mobile="+46701110001",
        user_group_id=sales.id,
    )
    erik = Associate(
        name="Erik Johansson",
        email="erik.johansson@example.com",
        mobile="+46701110002",
        user_group_id=sales.id,
        availability=Availability.absent.value,
    )
    james = Associate(
        name="James Carter",
        email="james.carter@example.com",
        mobile="+447700900001",
        user_group_id=support.id,
    )
    sofia = Associate(
        name="Sofia Berg",
        email="sofia.berg@example.com",
        mobile=None,
        user_group_id=support.id,
    )
    session.add_all([anna, erik, james, sofia])
    session.flush()
    assert sales.id is not None and sofia.id is not None
    session.add(AssociateGroupMembership(associate_id=sofia.id, user_group_id=sales.id))

    nordljus = Company(
        name="Nordljus AB",
        category="Customer",
        business="Software",
        country="Sweden",
        phone="+46812345600",
        email="info@nordljus.example.com",
        website="https://nordljus.example.com",
        our_contact_id=anna.id,
        user_defined={"segment": "SMB", "employees": 45},
        extra_fields={"x_org_number": "556000-0001"},
    )
    harbour = Company(
        name="Harbour & Finch Ltd",
        category="Prospect",
        business="Retail",
        country="United Kingdom",
        phone="+442079460000",
        email="hello@harbourfinch.example.org",
        website="https://harbourfinch.example.org",
        our_contact_id=james.id,
        user_defined={"segment": "Enterprise", "employees": 1200},
    )
    fjallgarden = Company(
        name="Fjällgården Konsult AB",
        category="Partner",
        business="Consulting",
        country="Sweden",
        email="kontakt@fjallgarden.example.com",
    )
    session.add_all([nordljus, harbour, fjallgarden])
    session.flush()

    newsletter = ["newsletter"]
    contacts = [
        Contact(
            company_id=nordljus.id,
            first_name="Karin",
            last_name="Svensson",
            title="Marketing Manager",
            department="Marketing",
            email="karin.svensson@example.com",
            emails=["karin@example.org"],
            mobile="+46 70 123 45 67",
            phones=["+46812345601"],
            position="Manager",
            category="Decision maker",
            our_contact_id=anna.id,
            interests=["Webinars", "Product news"],
            subscriptions=list(newsletter),
            consents=[_consent("web form")],
            user_defined={"score": 82, "birthday": "1985-04-12"},
            extra_fields={"x_lead_source": "webinar"},
        ),
        Contact(
            company_id=nordljus.id,
            first_name="Lars",
            last_name="Nilsson",
            title="CTO",
            department="IT",
            email="lars.nilsson@example.com",
            position="Director",
            category="Influencer",
            interests=["Integrations"],
            subscriptions=list(newsletter),
            consents=[_consent("trade fair")],
            user_defined={"score": 40},
        ),
        Contact(
            company_id=harbour.id,
            first_name="Emily",
            last_name="Clarke",
            title="Head of Digital",
            department="E-commerce",
            email="emily.clarke@example.org",
            mobile="+44 7700 900123",
            position="Manager",
            category="Decision maker",
            our_contact_id=james.id,
            our_service_contact_id=sofia.id,
            interests=["Product news", "Case studies"],
            subscriptions=list(newsletter),
            consents=[_consent("web form")],
        ),
        Contact(
            company_id=harbour.id,
            first_name="Oliver",
            last_name="Hughes",
            title="Buyer",
            department="Purchasing",
            email="oliver.hughes@example.org",
            mobile="+447700900456",
            position="Specialist",
            category="User",
            no_mailings=True,
            subscriptions=list(newsletter),
            consents=[_consent("import")],
        ),
        Contact(
            company_id=fjallgarden.id,
            first_name="Maja",
            last_name="Ek",
            title="Konsult",
            email="maja.ek@example.com",
            mobile="+46709876543",
            position="Consultant",
            category="User",
            interests=["Webinars"],
            subscriptions=list(newsletter),
            consents=[_consent("web form")],
        ),
        Contact(
            company_id=fjallgarden.id,
            first_name="Gustav",
            last_name="Holm",
            title="VD",
            email="gustav.holm@example.com",
            mobile="+46 73 555 12 34",
            position="CEO",
            category="Decision maker",
            retired=True,
            subscriptions=list(newsletter),
            consents=[_consent("web form")],
        ),
        Contact(
            first_name="Charlotte",
            last_name="Evans",
            email="charlotte.evans@example.org",
            category="Private",
            interests=["Case studies"],
            subscriptions=list(newsletter),
            consents=[_consent("web form")],
        ),
        Contact(
            company_id=nordljus.id,
            first_name="Johan",
            last_name="Åberg",
            title="Säljare",
            department="Sales",
            email="johan.aberg@example.com",
            mobile="+46 76 222 33 44",
            position="Specialist",
            category="User",
            our_contact_id=erik.id,
        ),
    ]
    session.add_all(contacts)

    demo = Selection(name="Demo recipients")
    vip = Selection(name="VIP")
    session.add(demo)
    session.flush()
    session.add(vip)
    session.add(Project(name="Spring campaign"))
    session.flush()

    # A form and a tracked link with actions of their own (spec §5), as flows may name them.
    session.add(
        Form(
            name="Webinar sign-up",
            actions=[
                {"kind": "add_to_selection", "selection_id": VIP_SELECTION_ID},
                {"kind": "add_interest", "interest": "Webinars"},
            ],
        )
    )
    session.add(
        TrackedLink(
            name="Spring offer",
            url=SPRING_OFFER_URL,
            actions=[{"kind": "add_to_project", "project_id": DEMO_PROJECT_ID}],
        )
    )
    session.flush()

    session.add_all(
        [
            RequestType(
                name="Customer success",
                statuses=["Open", "In progress", "Waiting for customer", "Closed"],
                priorities=["Low", "Medium", "High"],
                closed_statuses=["Closed"],
            ),
            RequestType(
                name="Support",
                statuses=["New", "Open", "In progress", "Resolved", "Closed"],
                priorities=["Low", "Medium", "High", "Critical"],
                closed_statuses=["Resolved", "Closed"],
            ),
            RequestCategory(name="Account management", user_group_id=sales.id),
            RequestCategory(name="General", user_group_id=support.id),
            SaleType(
                name="New business",
                stages=["Lead", "Qualified", "Proposal", "Negotiation", "Won", "Lost"],
                default_stage="Lead",
                estimate_amount=30,
                estimate_unit="days",
            ),
            SaleType(
                name="Renewal",
                stages=["Proposal", "Negotiation", "Won", "Lost"],
                estimate_amount=8,
                estimate_unit="weeks",
            ),
        ]
    )

    # Karin, Lars, Emily, Oliver (no mailings), Maja, Charlotte (no company, no mobile).
    assert demo.id is not None
    for contact in [*contacts[:5], contacts[6]]:
        assert contact.id is not None
        session.add(SelectionMember(selection_id=demo.id, contact_id=contact.id))
    session.flush()
