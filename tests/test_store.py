import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from models.crm import (
    Associate,
    Availability,
    Contact,
    Selection,
    SelectionMember,
    UserGroup,
    contact_facts,
)
from models.database import create_tables, get_engine, session
from models.demo import DEMO_SELECTION_ID, seed_demo
from models.engine import Delivery, Participant, ParticipantStatus


@pytest.fixture
def seeded(empty_engine: Engine) -> Engine:
    with session(empty_engine) as s:
        seed_demo(s)
    return empty_engine


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    return empty_engine


def test_engine_is_cached_and_pragmas_apply(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")
    create_tables(engine)
    assert get_engine(f"sqlite:///{tmp_path}/t.db") is engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000


def test_seed_demo_is_idempotent(seeded: Engine) -> None:
    with session(seeded) as s:
        seed_demo(s)
    with session(seeded) as s:
        assert s.exec(select(func.count()).select_from(Associate)).one() == 4
        assert s.exec(select(func.count()).select_from(UserGroup)).one() == 2
        assert s.exec(select(func.count()).select_from(Contact)).one() == 8
        absent = s.exec(select(Associate).where(Associate.availability == Availability.absent))
        assert len(absent.all()) == 1
        demo = s.get(Selection, DEMO_SELECTION_ID)
        assert demo is not None and demo.name == "Demo recipients"
        members = s.exec(
            select(func.count())
            .select_from(SelectionMember)
            .where(SelectionMember.selection_id == DEMO_SELECTION_ID)
        ).one()
        assert members == 6


def test_contact_facts_shape(seeded: Engine) -> None:
    with session(seeded) as s:
        karin = s.exec(select(Contact).where(Contact.first_name == "Karin")).one()
        charlotte = s.exec(select(Contact).where(Contact.first_name == "Charlotte")).one()
        assert karin.id is not None and charlotte.id is not None
        facts = contact_facts(s, karin.id)
        lonely = contact_facts(s, charlotte.id)
        missing = contact_facts(s, 999_999)

    assert missing is None
    assert facts is not None and lonely is not None
    json.dumps(facts)  # must be JSON-serialisable
    assert facts["contact.first_name"] == "Karin"
    assert facts["contact.full_name"] == "Karin Svensson"
    assert facts["company.name"] == "Nordljus AB"
    assert facts["company.country"] == "Sweden"
    assert facts["company.user_defined.segment"] == "SMB"
    assert facts["contact.user_defined.score"] == 82
    assert facts["contact.extra.x_lead_source"] == "webinar"
    assert facts["contact.selections"] == [DEMO_SELECTION_ID]
    assert facts["contact.projects"] == []
    assert facts["contact.interests"] == ["Webinars", "Product news"]
    assert facts["contact.consents"] == ["emarketing"]
    assert facts["contact.our_contact.name"] == "Anna Lindqvist"
    assert isinstance(facts["contact.created_at"], str)
    datetime.fromisoformat(str(facts["contact.created_at"]))

    assert lonely["company.name"] is None
    assert lonely["company.id"] is None
    assert "contact.our_contact.name" not in lonely


def test_selection_member_unique(seeded: Engine) -> None:
    with session(seeded) as s:
        member = s.exec(select(SelectionMember)).first()
        assert member is not None
        pair = (member.selection_id, member.contact_id)
    with pytest.raises(IntegrityError), session(seeded) as s:
        s.add(SelectionMember(selection_id=pair[0], contact_id=pair[1]))


def test_foreign_keys_enforced(seeded: Engine) -> None:
    with pytest.raises(IntegrityError), session(seeded) as s:
        s.add(SelectionMember(selection_id=DEMO_SELECTION_ID, contact_id=999_999))


def test_delivery_key_unique(engine: Engine) -> None:
    with session(engine) as s:
        s.add(Delivery(key="p1:send-1:1", channel="email", recipient="a@example.com"))
    with pytest.raises(IntegrityError), session(engine) as s:
        s.add(Delivery(key="p1:send-1:1", channel="email", recipient="a@example.com"))
    with session(engine) as s:
        assert len(s.exec(select(Delivery)).all()) == 1


def test_json_in_place_mutation_persists(seeded: Engine) -> None:
    with session(seeded) as s:
        karin = s.exec(select(Contact).where(Contact.first_name == "Karin")).one()
        karin.interests.append("Events")
        karin.user_defined["score"] = 90
    with session(seeded) as s:
        karin = s.exec(select(Contact).where(Contact.first_name == "Karin")).one()
        assert karin.interests[-1] == "Events"
        assert karin.user_defined["score"] == 90


def test_datetimes_round_trip_as_aware_utc(engine: Engine) -> None:
    stockholm_noon = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    with session(engine) as s:
        s.add(
            Participant(
                id="run-chain-1",
                workflow_id="wf-1",
                flow_id="welcome",
                flow_version=1,
                contact_id=1,
                wait_until=stockholm_noon,
            )
        )
    with session(engine) as s:
        p = s.get(Participant, "run-chain-1")
        assert p is not None
        assert p.status == ParticipantStatus.active.value == "Active"
        assert p.wait_until == stockholm_noon
        assert p.wait_until is not None and p.wait_until.tzinfo == UTC
        assert p.wait_until.hour == 11
        assert p.enrolled_at.tzinfo == UTC
        due = s.exec(
            select(Participant).where(
                col(Participant.wait_until) <= datetime(2025, 3, 1, 11, tzinfo=UTC)
            )
        ).all()
        assert [d.id for d in due] == ["run-chain-1"]
