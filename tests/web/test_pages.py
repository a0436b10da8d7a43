"""Pages through the real app and the seeded demo: sign-in flow, redirects, each page for the
roles that may see it, 403/404 for others' objects, the language switch."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from ecoplat.tenancy.models import AuditEvent, User
from ecoplat.web import templating
from ecoplat.web.templating import register_banner

from .builders import (
    CUSTOMER,
    LARGE_ADMIN,
    OPERATOR,
    PLATFORM_ADMIN,
    SME_ADMIN,
    SME_OPERATOR,
    STEWARD,
    DemoWorld,
    sign_in,
    sign_in_with_form,
    text_of,
)

# ---------------------------------------------------------------- sign in / out


def test_page_without_session_redirects_to_login_with_next(web: TestClient) -> None:
    response = web.get("/users?q=li")
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/users%3Fq%3Dli"


def test_htmx_request_without_session_asks_for_full_page_redirect(web: TestClient) -> None:
    response = web.get("/audit", headers={"HX-Request": "true"})
    assert response.status_code == 303
    assert response.headers["HX-Redirect"].startswith("/login?next=/audit")


def test_login_sets_httponly_lax_cookies_and_returns_to_next(web: TestClient, demo: DemoWorld) -> None:
    response = web.post("/login", data={"email": SME_ADMIN, "password": demo.account(SME_ADMIN).password,
                                        "next": "/users"})
    assert response.status_code == 303
    assert response.headers["location"] == "/users"
    cookies = response.headers.get_list("set-cookie")
    for name in ("ecoplat_access", "ecoplat_refresh"):
        cookie = next(c for c in cookies if c.startswith(name + "="))
        assert "HttpOnly" in cookie
        assert "samesite=lax" in cookie.lower()
    assert web.get("/users").status_code == 200


def test_login_accepts_email_in_any_case(web: TestClient, demo: DemoWorld) -> None:
    response = web.post("/login", data={"email": SME_ADMIN.upper(), "password": demo.account(SME_ADMIN).password})
    assert response.status_code == 303


def test_wrong_password_shows_form_error_and_keeps_email(web: TestClient) -> None:
    response = web.post("/login", data={"email": SME_ADMIN, "password": "not-the-password"})
    assert response.status_code == 401
    assert "The e-mail address or the password is wrong" in response.text
    assert f'value="{SME_ADMIN}"' in response.text
    assert "ecoplat_access" not in response.headers.get("set-cookie", "")


def test_empty_login_fields_show_errors_next_to_each_field(web: TestClient) -> None:
    response = web.post("/login", data={"email": "", "password": ""})
    assert response.status_code == 422
    assert re.search(r'id="e-email"[^>]*>Enter your e-mail address\.', response.text)
    assert re.search(r'id="e-password"[^>]*>Enter your password\.', response.text)


def test_repeated_failed_logins_are_slowed_down(web: TestClient, demo: DemoWorld) -> None:
    statuses = [web.post("/login", data={"email": OPERATOR, "password": "wrong-password"}).status_code
                for _ in range(demo.settings.login_free_attempts + 1)]
    assert statuses[:-1] == [401] * demo.settings.login_free_attempts
    # After the free attempts even the right password must wait.
    response = web.post("/login", data={"email": OPERATOR, "password": demo.account(OPERATOR).password})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "Too many failed sign-ins" in response.text


def test_login_refuses_to_redirect_to_another_site(web: TestClient, demo: DemoWorld) -> None:
    for evil in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = web.post("/login", data={"email": SME_ADMIN, "password": demo.account(SME_ADMIN).password,
                                            "next": evil})
        assert response.headers["location"] == "/", evil


def test_signed_in_user_visiting_login_goes_to_next(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get("/login?next=/audit")
    assert response.status_code == 303
    assert response.headers["location"] == "/audit"


def test_expired_access_cookie_is_renewed_from_refresh_cookie(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    user = demo.user(SME_ADMIN)
    now = datetime.now(UTC)
    expired = jwt.encode({"sub": str(user.id), "ent": user.enterprise_id, "typ": "access",
                          "iat": now - timedelta(hours=1), "exp": now - timedelta(minutes=1)},
                         demo.settings.resolved_secret_key, algorithm="HS256")
    web.cookies.set("ecoplat_access", expired)
    response = web.get("/users")
    assert response.status_code == 200
    renewed = [c for c in response.headers.get_list("set-cookie") if c.startswith("ecoplat_access=")]
    assert renewed and expired not in renewed[0]


def test_expired_access_without_refresh_cookie_goes_to_login(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    web.cookies.delete("ecoplat_refresh")
    web.cookies.set("ecoplat_access", "not-a-token")
    response = web.get("/enterprise")
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


def test_logout_clears_the_session(web: TestClient, demo: DemoWorld) -> None:
    sign_in_with_form(web, demo, SME_ADMIN)
    response = web.post("/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert web.get("/users").status_code == 303


# ---------------------------------------------------------------- overview


def _chart_option(html: str, chart_id: str) -> dict:
    match = re.search(rf'<script type="application/json" id="{chart_id}-option">(.*?)</script>', html, re.S)
    assert match, chart_id
    return json.loads(match.group(1))


def test_overview_charts_members_by_size_class_and_country(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get("/")
    assert response.status_code == 200
    size = _chart_option(response.text, "chart-size")
    assert size["xAxis"]["data"] == ["Large", "Medium", "Small", "Micro"]
    assert size["series"][0]["data"] == [1, 0, 3, 0]
    country = _chart_option(response.text, "chart-country")
    assert {d["name"]: d["value"] for d in country["series"][0]["data"]} == {"China": 2, "Vietnam": 1, "Thailand": 1}
    text = text_of(response.text)
    assert "Chlor-alkali ecosystem" in text
    for name in ("Bohai Chlor-Alkali Group", "Huaxin Salt Chemical Co.", "Mekong Caustic Soda JSC",
                 "Siam Chlor Products Co., Ltd."):
        assert name in text
    # The HVAC ecosystem is not the SME's: neither listed nor its members shown.
    assert "HVAC" not in text and "Harbor Hotels" not in text
    # Only its own enterprise is a link for an ordinary member.
    assert f'href="/enterprises/{demo.enterprise_id("huaxin")}"' in response.text
    assert f'href="/enterprises/{demo.enterprise_id("bohai")}"' not in response.text


def test_overview_pages_the_member_table_but_charts_every_member(web: TestClient, demo: DemoWorld,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from ecoplat.web import pages

    monkeypatch.setattr(pages, "PAGE_LIMIT", 3)
    sign_in(web, demo, SME_ADMIN)
    first = web.get("/")
    assert first.text.count('<td>', first.text.index('id="members"')) == 3 * 5
    assert _chart_option(first.text, "chart-size")["series"][0]["data"] == [1, 0, 3, 0]
    assert re.search(r'data-testid="member-count">4<', first.text)
    link = re.search(r'<nav class="pager"><a href="([^"]+)"', first.text)
    assert link, "no next page link"
    second = web.get("/" + unescape(link.group(1)))
    assert second.status_code == 200
    names = [n for n in ("Bohai Chlor-Alkali Group", "Huaxin Salt Chemical Co.", "Mekong Caustic Soda JSC",
                         "Siam Chlor Products Co., Ltd.") if n in text_of(second.text.split('id="members"')[1])]
    assert len(names) == 1 and 'class="pager"' not in second.text


def test_overview_of_an_ecosystem_one_is_not_in_answers_404(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get(f"/?ecosystem={demo.result.ecosystem_ids['hvac-customization']}")
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert "Not found" in response.text


def test_mistyped_page_link_answers_an_html_page(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get("/?ecosystem=abc")
    assert response.status_code == 422
    assert "text/html" in response.headers["content-type"]
    assert "ecosystem" in text_of(response.text)


def test_platform_admin_overview_lists_every_ecosystem(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, PLATFORM_ADMIN)
    hvac = demo.result.ecosystem_ids["hvac-customization"]
    response = web.get(f"/?ecosystem={hvac}")
    assert response.status_code == 200
    text = text_of(response.text)
    assert "Chlor-alkali ecosystem" in text and "HVAC mass-customization ecosystem" in text
    assert "Qingdao Climate Systems" in text and "Harbor Hotels Ltd." in text
    size = _chart_option(response.text, "chart-size")
    assert size["series"][0]["data"] == [1, 1, 0, 1]


# ---------------------------------------------------------------- enterprise and site tree


def test_enterprise_page_shows_own_site_tree_with_counts(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get("/enterprise")
    assert response.status_code == 303
    assert response.headers["location"] == f"/enterprises/{demo.enterprise_id('huaxin')}"
    page = web.get(response.headers["location"])
    assert page.status_code == 200
    text = text_of(page.text)
    assert "Weifang plant" in text
    assert "3 areas · 3 lines · 3 workstations · 12 pieces of equipment" in text
    for area in ("Electrolysis", "Chlorine liquefaction", "Storage"):
        assert area in text
    assert "Membrane electrolyzer E-101" in text and "MembraneElectrolyzer" in text
    # Equipment sits under its line: the electrolyzer comes after its line, before the next area.
    assert text.index("Membrane cell room line 1") < text.index("Membrane electrolyzer E-101") < text.index(
        "Chlorine liquefaction")
    assert "Asia/Shanghai" in text
    assert re.search(r'<a href="/enterprise" class="active" aria-current="page">', page.text)


def test_site_tree_shows_connected_devices_under_their_equipment(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    html = web.get(f"/enterprises/{demo.enterprise_id('huaxin')}").text
    devices = [d for d in demo.result.devices if d["enterprise"] == "Huaxin Salt Chemical Co."]
    assert devices, "the connect domain seeds demo devices"
    for device in devices:
        assert f'href="/devices/{device["id"]}"' in html
    # Listed inside the electrolyzer's row, with its status (no data yet: offline).
    electrolyzer = re.search(r'<li class="node equipment"[^>]*>(?:(?!</li>).)*Membrane electrolyzer E-101(?:(?!</li>).)*</li>',
                             html, re.S)
    assert electrolyzer and "/devices/" in electrolyzer.group(0) and "offline" in electrolyzer.group(0)
    # Another enterprise's page never lists them.
    sign_in(web, demo, LARGE_ADMIN)
    bohai = web.get(f"/enterprises/{demo.enterprise_id('bohai')}").text
    assert not any(f'href="/devices/{d["id"]}"' in bohai for d in devices)


def test_other_enterprise_page_answers_404_page(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    for key in ("bohai", "mekong", "harbor"):
        response = web.get(f"/enterprises/{demo.enterprise_id(key)}")
        assert response.status_code == 404, key
        assert "Tianjin" not in response.text
    assert web.get("/enterprises/999999").status_code == 404
    assert web.get("/enterprises/99999999999").status_code == 404


def test_steward_sees_member_public_fields_but_not_its_plant(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, STEWARD)
    response = web.get(f"/enterprises/{demo.enterprise_id('huaxin')}")
    assert response.status_code == 200
    text = text_of(response.text)
    assert "Huaxin Salt Chemical Co." in text and "Small" in text
    assert "Weifang plant" not in text and "Site tree" not in text
    # Stewards link to the members of their ecosystem from the overview.
    overview = web.get("/")
    assert f'href="/enterprises/{demo.enterprise_id("huaxin")}"' in overview.text


def test_platform_admin_sees_any_enterprise_tree(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, PLATFORM_ADMIN)
    response = web.get(f"/enterprises/{demo.enterprise_id('qingdao')}")
    assert response.status_code == 200
    text = text_of(response.text)
    assert "Final assembly line" in text
    assert "6 workstations" in text
    assert "Refrigerant piping and brazing" in text


def test_customer_sees_own_enterprise_without_plant_and_no_admin_pages(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, CUSTOMER)
    page = web.get(f"/enterprises/{demo.enterprise_id('harbor')}")
    assert page.status_code == 200
    assert "Site tree" not in page.text
    nav = re.search(r'<nav class="nav".*?</nav>', page.text, re.S)
    assert nav and "/users" not in nav.group(0) and "/audit" not in nav.group(0)
    assert web.get("/users").status_code == 403
    assert web.get("/audit").status_code == 403


def test_enterprise_list_is_scoped_and_searchable(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, PLATFORM_ADMIN)
    everything = text_of(web.get("/enterprises").text)
    for name in ("Ecoplat Platform Operations", "Bohai Chlor-Alkali Group", "Harbor Hotels Ltd.", "Sunrise Clinic"):
        assert name in everything
    found = text_of(web.get("/enterprises?q=chlor&size_class=small").text)
    assert "Siam Chlor Products Co., Ltd." in found and "Bohai Chlor-Alkali Group" not in found
    assert "Mekong" in text_of(web.get("/enterprises?country=vn").text)
    # A steward sees the members of the ecosystem stewarded, not the other ecosystem's.
    sign_in(web, demo, STEWARD)
    page = web.get("/enterprises")
    steward_view = text_of(page.text)
    assert "Huaxin Salt Chemical Co." in steward_view and "Harbor Hotels Ltd." not in steward_view
    assert 'href="/enterprises"' in page.text  # in the navigation
    # An enterprise admin sees only their own, and has no such navigation entry.
    sign_in(web, demo, SME_ADMIN)
    page = web.get("/enterprises")
    own_view = text_of(page.text)
    assert "Huaxin Salt Chemical Co." in own_view and "Bohai" not in own_view
    assert 'href="/enterprises"' not in page.text


# ---------------------------------------------------------------- user admin


def test_user_admin_lists_only_own_enterprise_users(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.get("/users")
    assert response.status_code == 200
    text = text_of(response.text)
    assert SME_ADMIN in text and SME_OPERATOR in text
    assert LARGE_ADMIN not in text and PLATFORM_ADMIN not in text
    # A deactivate button for the plant's staff, none for oneself.
    operator = demo.user(SME_OPERATOR)
    me = demo.user(SME_ADMIN)
    assert f"/users/{me.id}/deactivate" not in response.text
    assert f"/users/{operator.id}/deactivate" in response.text
    # Offered roles: what an enterprise admin may grant (never platform admin or steward).
    offered = set(re.findall(r'name="roles" value="(\w+)"', response.text))
    assert offered == {"enterprise_admin", "engineer", "safety_officer", "operator", "customer"}


def test_operator_may_not_open_user_admin_or_audit(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, OPERATOR)
    for path in ("/users", "/audit"):
        response = web.get(path)
        assert response.status_code == 403, path
        assert "You may not do this" in response.text


def test_create_user_shows_each_problem_next_to_its_field(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.post("/users", data={"email": "not-an-email", "full_name": "X", "password": "short"})
    assert response.status_code == 422
    assert re.search(r'id="e-email"[^>]*>Enter a valid e-mail address', response.text)
    assert re.search(r'id="e-password"[^>]*>The password needs at least 8 characters', response.text)
    assert re.search(r'id="e-roles"[^>]*>Choose at least one role', response.text)
    assert 'value="not-an-email"' in response.text  # nothing typed is lost
    assert 'value="short"' not in response.text  # but the password is never echoed


def test_create_user_with_existing_email_is_a_conflict_on_the_field(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.post("/users", data={"email": LARGE_ADMIN, "password": "long-enough-1",
                                        "roles": "enterprise_admin"})
    assert response.status_code == 409
    assert re.search(r'id="e-email"[^>]*>A user with this e-mail address already exists', response.text)


def test_create_user_cannot_grant_roles_one_lacks(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    assert 'value="platform_admin"' not in web.get("/users").text
    response = web.post("/users", data={"email": "new@huaxin.example.com", "password": "long-enough-1",
                                        "roles": "platform_admin"})
    assert response.status_code == 403
    assert re.search(r'id="e-roles"', response.text)


def test_create_then_deactivate_user_is_audited_and_ends_their_login(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    email = "shift.lead@huaxin.example.com"
    response = web.post("/users", data={"email": email, "full_name": "Shift Lead", "password": "long-enough-1",
                                        "roles": ["operator", "engineer"], "locale": "zh-CN"})
    assert response.status_code == 303, response.text[:800]
    assert response.headers["location"] == "/users?done=created"
    listing = web.get("/users?done=created")
    assert "The user was created." in listing.text and email in listing.text
    with demo.session() as s:
        user = s.scalar(select(User).where(User.email == email))
        assert user is not None and sorted(user.roles) == ["engineer", "operator"] and user.locale == "zh_CN"
        user_id = user.id
    response = web.post(f"/users/{user_id}/deactivate")
    assert response.status_code == 303
    with demo.session() as s:
        assert s.get(User, user_id).is_active is False
        events = s.scalars(select(AuditEvent).where(AuditEvent.entity_type == "user",
                                                    AuditEvent.entity_id == str(user_id))
                           .order_by(AuditEvent.id)).all()
    assert [e.action for e in events] == ["create", "update"]
    assert events[1].before["is_active"] is True and events[1].after["is_active"] is False
    other = TestClient(web.app, follow_redirects=False)
    assert other.post("/login", data={"email": email, "password": "long-enough-1"}).status_code == 401


def test_admin_edits_a_user_s_roles_and_name(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    operator = demo.user(SME_OPERATOR)
    page = web.get(f"/users/{operator.id}")
    assert page.status_code == 200 and SME_OPERATOR in page.text
    assert re.search(r'name="roles" value="operator" checked', page.text)
    response = web.post(f"/users/{operator.id}", data={"full_name": "Zhou Qiang (shift lead)",
                                                       "roles": ["operator", "safety_officer"], "locale": "zh-CN"})
    assert response.status_code == 303 and response.headers["location"] == f"/users/{operator.id}?done=saved"
    updated = demo.user(SME_OPERATOR)
    assert sorted(updated.roles) == ["operator", "safety_officer"]
    assert (updated.full_name, updated.locale) == ("Zhou Qiang (shift lead)", "zh_CN")
    assert "Saved." in web.get(f"/users/{operator.id}?done=saved").text
    with demo.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.entity_type == "user",
                                                   AuditEvent.entity_id == str(operator.id),
                                                   AuditEvent.action == "update")).one()
    assert event.before["roles"] == ["operator"] and sorted(event.after["roles"]) == ["operator", "safety_officer"]


def test_user_edit_without_roles_shows_the_error_and_changes_nothing(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    operator = demo.user(SME_OPERATOR)
    response = web.post(f"/users/{operator.id}", data={"full_name": "Nobody"})
    assert response.status_code == 422
    assert re.search(r'id="e-roles"[^>]*>Choose at least one role', response.text)
    assert 'value="Nobody"' in response.text
    assert demo.user(SME_OPERATOR).full_name == "Zhou Qiang"


def test_other_enterprise_user_page_answers_404_and_operator_gets_403(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    other = demo.user(LARGE_ADMIN)
    assert web.get(f"/users/{other.id}").status_code == 404
    assert web.post(f"/users/{other.id}", data={"roles": "operator"}).status_code == 404
    assert web.get("/users/99999999999").status_code == 404
    sign_in(web, demo, OPERATOR)
    assert web.get(f"/users/{demo.user(OPERATOR).id}").status_code == 403


def test_deactivating_another_enterprise_user_answers_404(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    victim = demo.user(LARGE_ADMIN)
    response = web.post(f"/users/{victim.id}/deactivate")
    assert response.status_code == 404
    assert demo.user(LARGE_ADMIN).is_active is True


def test_admin_cannot_deactivate_themselves(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    me = demo.user(SME_ADMIN)
    response = web.post(f"/users/{me.id}/deactivate")
    assert response.status_code == 409
    assert "You cannot deactivate your own account." in response.text


# ---------------------------------------------------------------- audit log


def test_audit_log_filters_and_shows_before_after(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    operator = demo.user(SME_OPERATOR)
    assert web.post(f"/users/{operator.id}/deactivate").status_code == 303
    response = web.get("/audit?entity_type=user&action=update")
    assert response.status_code == 200
    rows = re.findall(r'<tr data-event-id="\d+">.*?</tr>\s*</tbody>\s*</table></details>', response.text, re.S)
    assert rows, "no audit rows"
    text = text_of(response.text)
    assert f"user #{operator.id}" in text
    assert "Asia/Shanghai" in text
    # The diff marks the changed field with its before and after values.
    assert re.search(r'<tr class="changed"><td>is_active</td>\s*<td class="before">true</td>\s*'
                     r'<td class="after">false</td>', response.text)
    only_sites = text_of(web.get("/audit?entity_type=site").text)
    assert "site #" in only_sites and "user #" not in only_sites
    # The other enterprises' trails stay out.
    bohai_site_events = web.get("/audit?entity_type=site").text.count("data-event-id")
    assert bohai_site_events == 1


def test_audit_log_date_filter_uses_enterprise_days(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    future = (datetime.now(UTC) + timedelta(days=3)).date().isoformat()
    assert "No events match these filters." in web.get(f"/audit?since={future}").text
    assert "data-event-id" in web.get(f"/audit?until={future}").text
    bad = web.get("/audit?since=not-a-date&until=")
    assert bad.status_code == 422
    assert re.search(r'id="e-since"[^>]*>Enter a date like 2026-11-27', bad.text)
    assert 'value="not-a-date"' in bad.text
    # Empty fields (what a submitted filter form sends) mean "no filter".
    assert web.get("/audit?entity_type=&action=&actor=&entity_id=&since=&until=").status_code == 200
    assert "data-event-id" in web.get("/audit?cursor=tampered").text


# ---------------------------------------------------------------- language


def test_language_switch_is_saved_on_the_signed_in_user(web: TestClient, demo: DemoWorld) -> None:
    sign_in(web, demo, SME_ADMIN)
    response = web.post("/locale", data={"locale": "zh-CN", "next": "/enterprise"})
    assert response.status_code == 303 and response.headers["location"] == "/enterprise"
    assert demo.user(SME_ADMIN).locale == "zh_CN"
    page = web.get(f"/enterprises/{demo.enterprise_id('huaxin')}")
    text = text_of(page.text)
    assert "厂区结构" in text and "概览" in text and "3 个区域" in text
    assert '<html lang="zh-CN">' in page.text
    overview = web.get("/")
    assert _chart_option(overview.text, "chart-size")["xAxis"]["data"] == ["大型", "中型", "小型", "微型"]
    assert "氯碱产业生态" in text_of(overview.text)
    # A fresh browser (no locale cookie) gets the saved language after signing in.
    fresh = TestClient(web.app, follow_redirects=False)
    sign_in_with_form(fresh, demo, SME_ADMIN)
    assert "厂区结构" in fresh.get(f"/enterprises/{demo.enterprise_id('huaxin')}").text
    web.post("/locale", data={"locale": "en", "next": "/"})
    assert demo.user(SME_ADMIN).locale == "en"
    assert "Site tree" in web.get(f"/enterprises/{demo.enterprise_id('huaxin')}").text


def test_language_before_sign_in_comes_from_cookie_then_accept_language(web: TestClient) -> None:
    assert "登录 Ecoplat" in web.get("/login", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"}).text
    assert "Sign in to Ecoplat" in web.get("/login", headers={"Accept-Language": "de-DE,en;q=0.5"}).text
    response = web.post("/locale", data={"locale": "zh-CN", "next": "/login"})
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("ecoplat_locale="))
    assert cookie.startswith("ecoplat_locale=zh-CN")
    assert "登录 Ecoplat" in web.get("/login", headers={"Accept-Language": "en"}).text
    # Form errors speak the reader's language too.
    assert "请输入密码" in web.post("/login", data={"email": "a@b.c", "password": ""}).text


def test_language_chosen_before_sign_in_is_saved_on_signing_in(web: TestClient, demo: DemoWorld) -> None:
    web.post("/locale", data={"locale": "zh-CN", "next": "/login"})
    assert demo.user(SME_OPERATOR).locale == "en"
    sign_in_with_form(web, demo, SME_OPERATOR)
    assert demo.user(SME_OPERATOR).locale == "zh_CN"
    assert "厂区结构" in web.get(f"/enterprises/{demo.enterprise_id('huaxin')}").text


def test_unsupported_locale_falls_back_to_english(web: TestClient) -> None:
    response = web.post("/locale", data={"locale": "klingon", "next": "/login"})
    assert any(c.startswith("ecoplat_locale=en") for c in response.headers.get_list("set-cookie"))
    assert "Sign in to Ecoplat" in web.get("/login").text


# ---------------------------------------------------------------- layout hooks


def test_banner_providers_show_under_nav_and_a_broken_one_is_skipped(web: TestClient, demo: DemoWorld) -> None:
    def unacknowledged(request, principal):  # type: ignore[no-untyped-def]
        return f"3 unacknowledged alarms for {principal.label}"

    def broken(request, principal):  # type: ignore[no-untyped-def]
        raise RuntimeError("provider down")

    register_banner(unacknowledged)
    register_banner(broken)
    try:
        sign_in(web, demo, SME_ADMIN)
        response = web.get("/users")
        assert response.status_code == 200
        assert f"3 unacknowledged alarms for {SME_ADMIN}" in text_of(response.text)
        # Not shown to someone not signed in.
        assert "unacknowledged" not in TestClient(web.app).get("/login").text
    finally:
        templating.BANNER_PROVIDERS.remove(unacknowledged)
        templating.BANNER_PROVIDERS.remove(broken)


def test_pages_send_protective_headers(web: TestClient, demo: DemoWorld) -> None:
    for response in (web.get("/login"), web.get("/users")):  # a page and a redirect
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_login_page_points_a_demo_user_to_the_credentials_file(web: TestClient, demo: DemoWorld) -> None:
    assert "demo-hint" not in web.get("/login").text  # no demo in this data dir
    demo.settings.ensure_data_dir()
    (demo.settings.data_dir / "demo-credentials.json").write_text("[]", encoding="utf-8")
    page = web.get("/login").text
    assert "demo-hint" in page and str((demo.settings.data_dir / "demo-credentials.json").resolve()) in page


def test_static_assets_are_served(web: TestClient) -> None:
    assert web.get("/static/css/ecoplat.css").status_code == 200
    assert "ecoplatCharts" in web.get("/static/js/charts.js").text
