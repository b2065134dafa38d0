"""Console accounts: the limits on failed sign-ins, and the last admin kept."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from models.accounts import (
    AccountError,
    Role,
    SignInLimits,
    add_user,
    authenticate,
    change_role,
    reset_password,
    set_active,
)
from models.database import session

ADDRESS, OTHER_ADDRESS = "192.0.2.1", "192.0.2.2"


def test_failures_for_one_account_from_one_address_refuse_only_that_pair() -> None:
    limits = SignInLimits(per_account=3, per_address=10, window_seconds=60)
    for second in range(3):
        assert limits.refused("Ada@example.com", ADDRESS, second) is None
        limits.failed("ada@example.com", ADDRESS, second)
    assert limits.refused("ada@example.com", ADDRESS, 10) == pytest.approx(50)
    assert limits.refused("ada@example.com", OTHER_ADDRESS, 10) is None
    assert limits.refused("bo@example.com", ADDRESS, 10) is None
    # The oldest failure leaves the window: one more attempt.
    assert limits.refused("ada@example.com", ADDRESS, 60) is None


def test_failures_from_one_address_over_many_accounts_refuse_that_address() -> None:
    limits = SignInLimits(per_account=3, per_address=4, window_seconds=60)
    for index in range(4):
        limits.failed(f"user{index}@example.com", ADDRESS, 0)
    assert limits.refused("someone@example.com", ADDRESS, 1) is not None
    assert limits.refused("someone@example.com", OTHER_ADDRESS, 1) is None


def test_a_successful_sign_in_clears_its_accounts_failures() -> None:
    limits = SignInLimits(per_account=2, per_address=10, window_seconds=60)
    limits.failed("ada@example.com", ADDRESS, 0)
    limits.succeeded("ada@example.com", ADDRESS)
    limits.failed("ada@example.com", ADDRESS, 1)
    assert limits.refused("ada@example.com", ADDRESS, 2) is None


def test_the_last_active_admin_is_kept(empty_engine: Engine) -> None:
    with session(empty_engine) as db:
        ada = add_user(db, "ada@example.com", "a long enough password", Role.admin)
        assert ada.id is not None
        with pytest.raises(AccountError, match="last active admin"):
            change_role(db, ada.id, Role.viewer)
        with pytest.raises(AccountError, match="last active admin"):
            set_active(db, ada.id, False)
        bo = add_user(db, "bo@example.com", "a long enough password", Role.admin)
        set_active(db, ada.id, False)
        assert bo.id is not None
        with pytest.raises(AccountError, match="last active admin"):
            change_role(db, bo.id, Role.marketer)
        assert authenticate(db, "ada@example.com", "a long enough password") is None


def test_a_new_password_replaces_the_old_one(empty_engine: Engine) -> None:
    with session(empty_engine) as db:
        bo = add_user(db, "bo@example.com", "the first password", Role.viewer)
        old_hash = bo.password_hash
        assert bo.id is not None
        reset_password(db, bo.id, "the second password")
        assert bo.password_hash != old_hash  # the session fingerprint changes with it
        assert authenticate(db, "bo@example.com", "the first password") is None
        assert authenticate(db, "bo@example.com", "the second password") is not None
        with pytest.raises(AccountError, match="at least 10"):
            reset_password(db, bo.id, "short")
