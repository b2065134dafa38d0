"""The people who sign in to the flows console, and what their role lets them do.

Roles (spec: viewer reads; marketer edits and runs flows; admin also manages users). Passwords
are kept only as Argon2id hashes (argon2-cffi, with its recommended parameters); a hash made
with older parameters is replaced at the next successful sign-in.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Field, Session, SQLModel, select

from models.database import UTCDateTime, utcnow

MIN_PASSWORD_LENGTH = 10
_hasher = PasswordHasher()
# Verified against when no such user exists, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("no such user: the time is the same")


class Role(StrEnum):
    viewer = "viewer"
    marketer = "marketer"
    admin = "admin"

    @property
    def can_change_flows(self) -> bool:
        """Edit, deploy, run, pause, resume, end, delete, enroll, dry-run."""
        return self is not Role.viewer

    @property
    def can_manage_users(self) -> bool:
        return self is Role.admin


class User(SQLModel, table=True):
    """A console account. ``email`` is the sign-in name, stored lower-case."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)
    name: str = ""
    role: str = Field(default=Role.viewer.value)
    password_hash: str
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_sign_in: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AccountError(ValueError):
    """A user that cannot be made as asked (a taken email, a short password)."""


def _normal(email: str) -> str:
    return email.strip().lower()


def add_user(db: Session, email: str, password: str, role: Role, name: str = "") -> User:
    """A new account; the email must be free and the password at least MIN_PASSWORD_LENGTH."""
    address = _normal(email)
    if "@" not in address or address.startswith("@") or address.endswith("@"):
        raise AccountError(f"{email!r} is not an email address")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if db.exec(select(User).where(User.email == address)).first() is not None:
        raise AccountError(f"there is already a user {address}")
    user = User(
        email=address, name=name.strip(), role=role.value, password_hash=_hasher.hash(password)
    )
    db.add(user)
    db.flush()
    return user


def set_password(user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    user.password_hash = _hasher.hash(password)


def authenticate(db: Session, email: str, password: str) -> User | None:
    """The active user with this email and password, or None (the same time either way)."""
    user = db.exec(select(User).where(User.email == _normal(email))).first()
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if user is None or not user.active:
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_sign_in = utcnow()
    db.add(user)
    return user
