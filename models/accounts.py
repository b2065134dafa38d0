"""The people who sign in to the flows console, and what their role lets them do.

Roles (spec: viewer reads; marketer edits and runs flows; admin also manages users). Passwords
are kept only as Argon2id hashes (argon2-cffi, with its recommended parameters); a hash made
with older parameters is replaced at the next successful sign-in. An admin changes roles, sets
new passwords and deactivates users; the last active admin cannot be demoted or deactivated.
Failed sign-ins are counted per account and address and per address (``SignInLimits``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Field, Session, SQLModel, col, func, select

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


def _user(db: Session, user_id: int) -> User:
    user = db.get(User, user_id)
    if user is None:
        raise AccountError(f"no user {user_id}")
    return user


def _keep_an_admin(db: Session, user: User) -> None:
    """Refuses a change that would leave no active admin to manage users."""
    if user.role != Role.admin.value or not user.active:
        return
    admins = db.exec(
        select(func.count()).where(User.role == Role.admin.value, col(User.active).is_(True))
    ).one()
    if admins <= 1:
        raise AccountError(f"{user.email} is the last active admin: make another admin first")


def change_role(db: Session, user_id: int, role: Role) -> User:
    """A new role, effective at the user's next request."""
    user = _user(db, user_id)
    if role is not Role.admin:
        _keep_an_admin(db, user)
    user.role = role.value
    db.add(user)
    return user


def reset_password(db: Session, user_id: int, password: str) -> User:
    """A new password; the user's sessions end (they carry the old hash's fingerprint)."""
    user = _user(db, user_id)
    set_password(user, password)
    db.add(user)
    return user


def set_active(db: Session, user_id: int, active: bool) -> User:
    """A deactivated user cannot sign in, and their sessions end at their next request."""
    user = _user(db, user_id)
    if not active:
        _keep_an_admin(db, user)
    user.active = active
    db.add(user)
    return user


@dataclass
class SignInLimits:
    """Failed sign-ins in a sliding window: at most ``per_account`` for one account from one
    address, and ``per_address`` for all accounts from one address. A refused attempt is not
    checked and not counted; a successful sign-in clears its account's count at that address.
    Others keep signing in: one account's or one address's failures lock out no one else.

    In memory, per console process: the window is short, and a restart forgets it.
    """

    per_account: int = 5
    per_address: int = 30
    window_seconds: float = 15 * 60
    _failures: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window_seconds:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def refused(self, email: str, address: str, now: float) -> float | None:
        """Seconds until an attempt for this account from this address may be made, or None."""
        waits = []
        for key, limit in (
            ((_normal(email), address), self.per_account),
            (("", address), self.per_address),
        ):
            times = self._recent(key, now)
            if len(times) >= limit:
                waits.append(times[len(times) - limit] + self.window_seconds - now)
        return max(waits) if waits else None

    def failed(self, email: str, address: str, now: float) -> None:
        for key in ((_normal(email), address), ("", address)):
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, email: str, address: str) -> None:
        self._failures.pop((_normal(email), address), None)
