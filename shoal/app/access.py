"""Who may use a team's Shoal after signing in with OIDC: an allow-list of emails and domains.

Signing in only proves who someone is; with the documented Google setup any Google account
could sign in. So a server with OIDC configured admits a signed-in user only when their email is
verified by the provider and is on the allow-list, and admits nobody while the list is empty.

Set (comma-separated, case-insensitive) ``SHOAL_ALLOWED_EMAILS=ana@example.org,li@example.org``
and/or ``SHOAL_ALLOWED_DOMAINS=example.org``.

>>> allow = AllowList.from_env({"SHOAL_ALLOWED_DOMAINS": "example.org"})
>>> admission({"email": "ana@example.org", "email_verified": True}, allow) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EMAILS_ENV = "SHOAL_ALLOWED_EMAILS"
DOMAINS_ENV = "SHOAL_ALLOWED_DOMAINS"


@dataclass(frozen=True)
class AllowList:
    emails: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AllowList:
        def names(variable: str) -> frozenset[str]:
            raw = environ.get(variable, "")
            return frozenset(n.strip().lower().lstrip("@") for n in raw.split(",") if n.strip())

        return cls(emails=names(EMAILS_ENV), domains=names(DOMAINS_ENV))

    @property
    def empty(self) -> bool:
        return not self.emails and not self.domains


def admission(user: Mapping[str, Any], allow: AllowList) -> str | None:
    """None when the signed-in ``user`` (the provider's claims) may enter, else why not.

    Refused: an empty allow-list (the server is misconfigured, so nobody enters), a missing or
    unverified email (``email_verified`` must be true), and an email that is neither listed
    nor in a listed domain.
    """
    if allow.empty:
        return (
            "This server uses sign-in but lists nobody who may enter: its administrator must set "
            f"{EMAILS_ENV} and/or {DOMAINS_ENV}."
        )
    email = str(user.get("email") or "").strip().lower()
    if not email or "@" not in email:
        return "Your sign-in did not share an email address, so Shoal cannot check access."
    if user.get("email_verified") is not True:
        return f"Your provider has not verified {email}; Shoal admits verified emails only."
    if email in allow.emails or email.rsplit("@", 1)[1] in allow.domains:
        return None
    return f"{email} is not on this server's list of people who may enter; ask its administrator."
