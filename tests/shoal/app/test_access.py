"""shoal.app.access: the OIDC allow-list (regression: any signed-in account passed the gate)."""

from __future__ import annotations

import pytest

from shoal.app.access import AllowList, admission

ALLOW = AllowList.from_env(
    {
        "SHOAL_ALLOWED_EMAILS": " Ana@Partner.com ,li@example.org",
        "SHOAL_ALLOWED_DOMAINS": "@example.org",
    }
)


@pytest.mark.parametrize(
    ("user", "admitted"),
    [
        ({"email": "ana@partner.com", "email_verified": True}, True),  # listed, any case
        ({"email": "BO@Example.org", "email_verified": True}, True),  # in a listed domain
        ({"email": "eve@gmail.com", "email_verified": True}, False),  # any Google account
        ({"email": "eve@example.org.evil.com", "email_verified": True}, False),
        ({"email": "eve@sub.example.org", "email_verified": True}, False),  # not the domain
        ({"email": "bo@example.org", "email_verified": False}, False),
        ({"email": "bo@example.org"}, False),  # the provider did not say it is verified
        ({"email": "bo@example.org", "email_verified": "true"}, False),  # only a real True
        ({"name": "no email", "email_verified": True}, False),
    ],
)
def test_only_verified_listed_emails_enter(user: dict, admitted: bool) -> None:
    reason = admission(user, ALLOW)
    assert (reason is None) == admitted, reason


def test_an_empty_allow_list_admits_nobody_and_says_how_to_fix_it() -> None:
    allow = AllowList.from_env({"SHOAL_ALLOWED_EMAILS": " , "})
    assert allow.empty
    reason = admission({"email": "ana@example.org", "email_verified": True}, allow)
    assert reason is not None and "SHOAL_ALLOWED_EMAILS" in reason
