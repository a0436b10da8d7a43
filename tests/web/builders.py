"""Helpers for page tests: the seeded demo world, signing in through the login form, reading
pages as text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.db import Database
from ecoplat.demo import DEMO_SME_ADMIN, DemoAccount, DemoResult, demo_email
from ecoplat.tenancy.auth import issue_tokens
from ecoplat.tenancy.models import Enterprise, User

SME_ADMIN = DEMO_SME_ADMIN
LARGE_ADMIN = demo_email("bohai", "admin")
STEWARD = demo_email("bohai", "steward")
OPERATOR = demo_email("bohai", "operator")
PLATFORM_ADMIN = demo_email("ops", "admin")
CUSTOMER = demo_email("harbor", "buyer")
SME_OPERATOR = demo_email("huaxin", "operator")


@dataclass
class DemoWorld:
    result: DemoResult
    database: Database
    settings: Settings

    def account(self, email: str) -> DemoAccount:
        return next(a for a in self.result.accounts if a.email == email)

    def enterprise_id(self, key: str) -> int:
        return self.result.enterprise_ids[key]

    def session(self) -> Session:
        return self.database.sessionmaker()

    def user(self, email: str) -> User:
        with self.session() as s:
            user = s.scalar(select(User).where(User.email == email))
            assert user is not None, email
            s.expunge(user)
            return user

    def enterprise(self, key: str) -> Enterprise:
        with self.session() as s:
            ent = s.get(Enterprise, self.enterprise_id(key))
            assert ent is not None
            s.expunge(ent)
            return ent


def sign_in_with_form(client: TestClient, world: DemoWorld, email: str, *, next_url: str = "/") -> None:
    """Signs in through the login form (argon2 verification: slow on a busy machine)."""
    response = client.post("/login", data={"email": email, "password": world.account(email).password,
                                           "next": next_url})
    assert response.status_code == 303, response.text[:500]
    assert response.headers["location"] == next_url


def sign_in(client: TestClient, world: DemoWorld, email: str) -> None:
    """Puts the session cookies the login form would set (the form itself is tested on its own;
    the rest of the tests skip its deliberately slow password hash)."""
    user = world.user(email)
    tokens = issue_tokens(user, secret=world.settings.resolved_secret_key,
                          access_minutes=world.settings.access_token_minutes,
                          refresh_days=world.settings.refresh_token_days)
    client.cookies.set("ecoplat_access", tokens["access_token"])
    client.cookies.set("ecoplat_refresh", tokens["refresh_token"])


def text_of(html: str) -> str:
    """The visible text of a page, whitespace collapsed (scripts and JSON left out)."""
    html = re.sub(r"<script\b.*?</script>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html))).strip()
