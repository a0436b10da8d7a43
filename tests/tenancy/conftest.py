"""Fixtures for the tenancy tests: two enterprises with full trees, a platform admin, a steward."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from ecoplat.config import Settings
from ecoplat.tenancy.models import MembershipRole, Role, User

from .builders import Tree, headers_for, make_enterprise, make_tree, make_user


@dataclass
class World:
    a: Tree
    b: Tree
    platform_admin: User
    platform_headers: dict[str, str]
    steward: User  # steward of A's ecosystem, working for a co-builder in it
    steward_headers: dict[str, str]


@pytest.fixture
def world(db: Session, settings: Settings) -> World:
    a = make_tree(db, settings)
    b = make_tree(db, settings)
    platform = make_enterprise(db, name="Ecoplat operator")
    admin = make_user(db, platform, Role.platform_admin)
    co_builder = make_enterprise(db, ecosystem=a.ecosystem, role=MembershipRole.co_builder, size_class="large")
    steward = make_user(db, co_builder, Role.ecosystem_steward)
    return World(a=a, b=b, platform_admin=admin, platform_headers=headers_for(settings, admin),
                 steward=steward, steward_headers=headers_for(settings, steward))
