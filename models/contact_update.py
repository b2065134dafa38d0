"""update_contact rows (spec §3): which actions each type of field allows, which values they
take, and what a row does to a contact or its company.

The actions follow the CRM's bulk update. ``row_problems`` is what validation reports for a row
(before a flow runs); ``apply_row`` is what the step does (pure: it changes the record object it
is given and says what changed; the activity owns the transaction).

| kind      | fields                                       | actions                               |
|-----------|----------------------------------------------|---------------------------------------|
| text      | names, title, department, email, mobile, ... | set, clear, replace, regex_replace    |
| list      | position, category, business, country        | select, clear                         |
| associate | our_contact_id, our_service_contact_id       | select (an associate id), clear       |
| multi     | emails, phones                               | add, remove, replace_with, clear,     |
|           |                                              | replace, regex_replace                |
| tags      | interests, subscriptions                     | add, remove (one item or a list)      |
| consent   | consents                                     | add {purpose, legal_basis, source?,   |
|           |                                              | comment?}, remove (a purpose)         |
| bool      | user-defined checkboxes                      | check, uncheck, toggle                |
| flag      | no_mailings, retired                         | check, uncheck (never toggled)        |
| date      | user-defined dates (yyyy-mm-dd)              | set, clear                            |
| number    | user-defined integers and decimals           | set                                   |
| extra.*   | extra fields, any kind                       | set (a value of the field's kind),    |
|           |                                              | clear                                 |

``replace`` finds ``find`` literally (``match_case``, ``whole_word``) and puts ``value`` in its
place; ``regex_replace`` takes ``find`` as a regular expression (run by RE2, see
``models.patterns``) and ``value`` as its replacement (``\\1`` for groups). There is no
add/subtract for numbers and no text append (spec).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import inspect

from models.crm import EXTRA_FIELDS, USER_DEFINED_FIELDS, Company, Contact
from models.flow import UpdateRow
from models.patterns import Pattern, PatternError, compile_pattern
from models.personal_data import mask_email, mask_phone, mask_text

Kind = Literal[
    "text", "list", "associate", "multi", "tags", "consent", "bool", "flag", "date", "number"
]

Store = Literal["column", "user_defined", "extra_fields"]

CONTACT_UPDATE_FIELDS: dict[str, Kind] = {
    "first_name": "text",
    "last_name": "text",
    "title": "text",
    "department": "text",
    "email": "text",
    "mobile": "text",
    "emails": "multi",
    "phones": "multi",
    "position": "list",
    "category": "list",
    "our_contact_id": "associate",
    "our_service_contact_id": "associate",
    "no_mailings": "flag",
    "retired": "flag",
    "interests": "tags",
    "subscriptions": "tags",
    "consents": "consent",
}
COMPANY_UPDATE_FIELDS: dict[str, Kind] = {
    "name": "text",
    "phone": "text",
    "email": "text",
    "website": "text",
    "category": "list",
    "business": "list",
    "country": "list",
    "our_contact_id": "associate",
}

ACTIONS: dict[Kind, frozenset[str]] = {
    "text": frozenset({"set", "clear", "replace", "regex_replace"}),
    "list": frozenset({"select", "clear"}),
    "associate": frozenset({"select", "clear"}),
    "multi": frozenset({"add", "remove", "replace_with", "clear", "replace", "regex_replace"}),
    "tags": frozenset({"add", "remove"}),
    "consent": frozenset({"add", "remove"}),
    "bool": frozenset({"check", "uncheck", "toggle"}),
    "flag": frozenset({"check", "uncheck"}),
    "date": frozenset({"set", "clear"}),
    "number": frozenset({"set"}),
}
EXTRA_FIELD_ACTIONS = frozenset({"set", "clear"})
VALUELESS_ACTIONS = frozenset({"clear", "check", "uncheck", "toggle"})
LEGAL_BASES = frozenset(
    {
        "consent",
        "contract",
        "legal_obligation",
        "vital_interests",
        "public_task",
        "legitimate_interest",
    }
)
CONSENT_KEYS = frozenset({"purpose", "legal_basis", "source", "comment"})
# Kinds whose values are the contact's own data (names, addresses, numbers, dates such as a
# birthday): a change description shows them masked, since it is kept in the participant's
# history. Lists, flags, tags, consents, associates and numbers are shown as they are.
PERSONAL_KINDS: frozenset[Kind] = frozenset({"text", "multi", "date"})
_EMAIL_KEYS = frozenset({"email", "emails"})
_PHONE_KEYS = frozenset({"mobile", "phone", "phones"})

# The value kinds of user-defined and extra fields (models.crm) as update kinds.
_OPEN_KINDS: dict[str, Kind] = {
    "text": "text",
    "number": "number",
    "decimal": "number",
    "date": "date",
    "bool": "bool",
}


@dataclass(frozen=True)
class FieldSpec:
    """Where a row's field lives and what may be done to it."""

    target: Literal["contact", "company"]
    name: str  # as written in the row
    kind: Kind
    actions: frozenset[str]
    store: Store
    key: str  # the column, or the key inside the JSON store
    integer: bool = False  # a number field that takes whole numbers only

    @property
    def label(self) -> str:
        return self.name if self.target == "contact" else f"company.{self.name}"


def field_spec(target: Literal["contact", "company"], name: str) -> FieldSpec | None:
    stores: tuple[tuple[str, Store, dict[str, dict[str, str]]], ...] = (
        ("user_defined.", "user_defined", USER_DEFINED_FIELDS),
        ("extra.", "extra_fields", EXTRA_FIELDS),
    )
    for prefix, store, catalogue in stores:
        if name.startswith(prefix):
            key = name.removeprefix(prefix)
            value_kind = catalogue[target].get(key)
            if value_kind is None:
                return None
            kind = _OPEN_KINDS[value_kind]
            actions = EXTRA_FIELD_ACTIONS if store == "extra_fields" else ACTIONS[kind]
            return FieldSpec(
                target, name, kind, actions, store, key, integer=value_kind == "number"
            )
    column_kind = (CONTACT_UPDATE_FIELDS if target == "contact" else COMPANY_UPDATE_FIELDS).get(
        name
    )
    if column_kind is None:
        return None
    return FieldSpec(target, name, column_kind, ACTIONS[column_kind], "column", name)


# --- checking a row ----------------------------------------------------------------------------


def _flags(row: UpdateRow) -> int:
    return 0 if row.match_case else re.IGNORECASE


def _nonempty_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _value_problem(spec: FieldSpec, row: UpdateRow, pattern: Pattern | None) -> str | None:
    value, action, kind = row.value, row.action, spec.kind
    if action in VALUELESS_ACTIONS:
        return None if value is None else f"{action} takes no value"
    if value is None:
        return f"{action} needs a value"
    if action in ("replace", "regex_replace"):
        if not isinstance(value, str):
            return f"{action} needs the replacement text as value"
        if pattern is not None:
            try:
                pattern.check_replacement(value)
            except PatternError as error:
                return f"not a valid replacement: {error}"
        return None
    if kind == "text":
        return None if isinstance(value, str) else "a text field takes a text value"
    if kind == "list":
        return None if _nonempty_text(value) else "select needs the list item as text"
    if kind == "associate":
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        return None if ok else "select needs an associate id (a whole number)"
    if kind == "multi":
        if not _nonempty_text(value):
            return f"{action} needs one value as text"
        if spec.key == "emails":
            try:
                validate_email(str(value), check_deliverability=False)
            except EmailNotValidError as error:
                return f"not an email address: {error}"
        return None
    if kind == "tags":
        items = value if isinstance(value, list) else [value]
        ok = bool(items) and all(_nonempty_text(item) for item in items)
        return None if ok else f"{action} needs an item or a list of items (text)"
    if kind == "consent":
        if action == "remove":
            return None if _nonempty_text(value) else "remove needs the consent purpose as text"
        if not isinstance(value, dict):
            return "add needs {purpose, legal_basis, source?, comment?}"
        unknown = sorted(set(value) - CONSENT_KEYS)
        if unknown:
            return f"unknown consent keys: {', '.join(unknown)}"
        if not _nonempty_text(value.get("purpose")):
            return "a consent needs a purpose"
        if value.get("legal_basis") not in LEGAL_BASES:
            return f"legal_basis must be one of {', '.join(sorted(LEGAL_BASES))}"
        return None
    if kind == "date":
        if isinstance(value, str):
            try:
                date.fromisoformat(value)
                return None
            except ValueError:
                pass
        return "a date field takes a date as yyyy-mm-dd"
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "a number field takes a number"
        if spec.integer and not isinstance(value, int):
            return "this number field takes whole numbers"
        return None
    if kind in ("bool", "flag"):  # extra fields: set with true/false
        return None if isinstance(value, bool) else "a checkbox takes true or false"
    return None


def row_problems(row: UpdateRow) -> list[tuple[str, str]]:
    """What is wrong with one row, as (field of the row, message); empty when it can run."""
    spec = field_spec(row.target, row.field)
    if spec is None:
        return [("field", f"{row.target} has no field {row.field!r} that a flow can update")]
    if row.action not in spec.actions:
        allowed = ", ".join(sorted(spec.actions))
        what = "an extra" if spec.store == "extra_fields" else f"a {spec.kind}"
        return [("action", f"{row.action!r} is not an action for {what} field ({allowed})")]
    problems: list[tuple[str, str]] = []
    pattern: Pattern | None = None
    if row.action in ("replace", "regex_replace"):
        if not row.find:
            problems.append(("find", f"{row.action} needs find"))
        elif row.action == "regex_replace":
            try:
                pattern = compile_pattern(row.find, ignore_case=not row.match_case)
            except PatternError as error:
                problems.append(("find", f"not a regular expression: {error}"))
    elif row.find is not None:
        problems.append(("find", "only replace and regex_replace use find"))
    value_problem = _value_problem(spec, row, pattern)
    if value_problem is not None:
        problems.append(("value", value_problem))
    return problems


# --- applying a row ----------------------------------------------------------------------------


def _replace(text: str, row: UpdateRow) -> str:
    assert row.find and isinstance(row.value, str)
    if row.action == "regex_replace":
        # PatternError (a ValueError): the step fails naming the row, as for any refused row.
        return compile_pattern(row.find, ignore_case=not row.match_case).sub(row.value, text)
    found = re.escape(row.find)
    if row.whole_word:
        found = rf"(?<!\w){found}(?!\w)"
    replacement = row.value
    return re.sub(found, lambda _: replacement, text, flags=_flags(row))


def _same(a: object, b: object, spec: FieldSpec) -> bool:
    if spec.key == "emails" or spec.kind == "tags":
        return str(a).casefold() == str(b).casefold()
    return a == b


def _new_value(spec: FieldSpec, row: UpdateRow, current: Any, nullable: bool) -> Any:
    action, value = row.action, row.value
    if action == "clear":
        if spec.kind in ("multi", "tags", "consent"):
            return []
        return None if nullable else ""
    if action in ("set", "select"):
        return value
    if action in ("check", "uncheck"):
        return action == "check"
    if action == "toggle":
        return not bool(current)
    if spec.kind == "consent":
        consents = [dict(c) for c in current or []]
        if action == "remove":
            return [c for c in consents if c.get("purpose") != value]
        assert isinstance(value, dict)
        given = {"source": "", "comment": "", **value}
        kept = [c for c in consents if c.get("purpose") != value["purpose"]]
        mine = [c for c in consents if c.get("purpose") == value["purpose"]]
        # The same consent again changes nothing (and keeps its place in the list).
        return consents if mine == [given] else [*kept, given]
    if spec.kind in ("multi", "tags"):
        items: list[str] = list(current or [])
        given_items = value if isinstance(value, list) else [value]
        if action == "add":
            for item in given_items:
                if not any(_same(item, old, spec) for old in items):
                    items.append(str(item))
            return items
        if action == "remove":
            return [old for old in items if not any(_same(old, g, spec) for g in given_items)]
        if action == "replace_with":  # the first value updated, the rest removed
            return [str(value)]
        return [new for new in (_replace(old, row) for old in items) if new]
    # replace / regex_replace on a text field
    return current if current is None else _replace(str(current), row)


def _nullable(record: Contact | Company, column: str) -> bool:
    return bool(inspect(type(record)).columns[column].nullable)


def apply_row(record: Contact | Company, row: UpdateRow) -> str | None:
    """Apply one (checked) row to ``record``; a description of the change (the contact's own
    values masked), or None if the row changed nothing. Raises ValueError for a row
    ``row_problems`` would refuse."""
    spec = field_spec(row.target, row.field)
    problems = row_problems(row)
    if spec is None or problems:
        raise ValueError("; ".join(message for _, message in problems))
    if spec.store == "column":
        current = getattr(record, spec.key)
        new = _new_value(spec, row, current, _nullable(record, spec.key))
        if new == current:
            return None
        setattr(record, spec.key, new)
    else:
        store: dict[str, Any] = getattr(record, spec.store)
        current = store.get(spec.key)
        new = _new_value(spec, row, current, nullable=True)
        if new == current:
            return None
        if new is None:
            store.pop(spec.key, None)
        else:
            store[spec.key] = new
    return f"{spec.label}: {_shown(current, spec)} → {_shown(new, spec)}"


def _shown(value: object, spec: FieldSpec) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return repr(sorted(str(c.get("purpose")) for c in value))
    if spec.kind in PERSONAL_KINDS:
        return repr(_masked(value, spec))
    return repr(value)


def _masked(value: object, spec: FieldSpec) -> object:
    if isinstance(value, list):
        return [_masked(item, spec) for item in value]
    if not isinstance(value, str):
        return value
    if spec.kind == "date":
        return "…"
    if spec.key in _EMAIL_KEYS:
        return mask_email(value)
    if spec.key in _PHONE_KEYS:
        return mask_phone(value)
    return mask_text(value)
