"""Jinja2 for every page: one environment, Babel translations (zh-CN, en) chosen per request,
one navigation list, and banner providers (e.g. the alarms domain's unacknowledged-alarm count).

Other domains use it like this::

    from ecoplat.web.templating import NAV, NavItem, N_, render, register_banner

    NAV.append(NavItem("/alarms", N_("Alarms"), permission="alarms:read", order=40))

    @router.get("/alarms", response_class=HTMLResponse)
    def alarm_console(request: Request, principal: PagePrincipal, db: DbSession) -> HTMLResponse:
        return render(request, "alarms/console.html", {"alarms": ...})

Templates live in ``ecoplat/web/templates`` or in ``ecoplat/<domain>/templates`` (searched in that
order), extend ``base.html`` and fill the blocks ``title``, ``content`` and ``scripts``.
"""

from __future__ import annotations

import gettext
import io
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_datetime as babel_format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal
from babel.support import Translations
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # src/ecoplat
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
LOCALE_DIR = PACKAGE_DIR / "locale"

# Locales the UI speaks: the value stored on the user and in the cookie, and its Babel name.
LOCALES: dict[str, str] = {"en": "en", "zh-CN": "zh_CN"}
DEFAULT_LOCALE = "en"
LOCALE_COOKIE = "ecoplat_locale"
LOCALE_LABELS: dict[str, str] = {"en": "English", "zh-CN": "中文"}


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark, translate later"
    """Marks a string for extraction (pybabel) without translating it now; templates translate it."""
    return message


def NC_(context: str, message: str) -> str:  # noqa: N802 - as N_, with a msgctxt
    """Marks a string with a context (same English word, different meaning: 'Medium' size class
    vs 'Medium' priority); translate it with pgettext(context, message)."""
    return message


@dataclass(frozen=True)
class NavItem:
    """One entry of the navigation bar. `label` is an untranslated msgid (mark it with N_)."""

    path: str
    label: str
    permission: str | None = None
    order: int = 100
    # Also shown to users who hold any of these roles even without the permission.
    roles: tuple[str, ...] = ()

    def visible_to(self, principal: Any) -> bool:
        if principal is None:
            return False
        if self.roles and set(self.roles) & set(principal.roles):
            return True
        return self.permission is None or principal.can(self.permission)


# The navigation, shared by every domain: append NavItems at import of your pages module.
NAV: list[NavItem] = [
    NavItem("/", N_("Overview"), "ecosystem:read", order=10),
    NavItem("/enterprise", N_("Enterprise"), "enterprise:read", order=20),
    NavItem("/enterprises", N_("Enterprises"), "platform:admin", order=21, roles=("ecosystem_steward",)),
    NavItem("/users", N_("Users"), "users:read", order=80),
    NavItem("/audit", N_("Audit log"), "audit:read", order=90),
]

# A banner provider returns HTML (Markup) or text to show under the navigation, or None.
# The alarms domain registers one that counts unacknowledged alarms.
BannerProvider = Callable[[Request, Any], "Markup | str | None"]
BANNER_PROVIDERS: list[BannerProvider] = []


def register_banner(fn: BannerProvider) -> BannerProvider:
    """Adds a banner provider (usable as a decorator); registering the same function twice is a no-op."""
    if fn not in BANNER_PROVIDERS:
        BANNER_PROVIDERS.append(fn)
    return fn


# ---------------------------------------------------------------- translations

_translations: dict[str, gettext.NullTranslations] = {}
_translations_lock = threading.Lock()


def _load_translations(babel_name: str) -> gettext.NullTranslations:
    """Reads the .po catalogue and compiles it in memory, so a fresh clone needs no compile step;
    a compiled .mo next to it is used only when it is newer than the .po."""
    folder = LOCALE_DIR / babel_name / "LC_MESSAGES"
    po_path, mo_path = folder / "messages.po", folder / "messages.mo"
    if mo_path.exists() and (not po_path.exists() or mo_path.stat().st_mtime >= po_path.stat().st_mtime):
        with mo_path.open("rb") as f:
            return Translations(f, domain="messages")
    if po_path.exists():
        with po_path.open("rb") as f:
            catalog = read_po(f, locale=babel_name)
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        return Translations(buf, domain="messages")
    return gettext.NullTranslations()


def get_translations(locale: str) -> gettext.NullTranslations:
    babel_name = LOCALES.get(normalize_locale(locale) or DEFAULT_LOCALE, "en")
    with _translations_lock:
        if babel_name not in _translations:
            _translations[babel_name] = _load_translations(babel_name)
        return _translations[babel_name]


def reload_translations() -> None:
    with _translations_lock:
        _translations.clear()


def normalize_locale(value: str | None) -> str | None:
    """'zh', 'zh_CN', 'zh-cn', 'zh-Hans' → 'zh-CN'; 'en-US' → 'en'; anything else → None."""
    if not value:
        return None
    v = value.strip().replace("_", "-").lower()
    if v.startswith("zh"):
        return "zh-CN"
    if v.startswith("en"):
        return "en"
    return None


def _accept_language(header: str) -> str | None:
    """The best supported locale of an Accept-Language header (RFC 9110 §12.5.4 q-values)."""
    choices: list[tuple[float, int, str]] = []
    for i, part in enumerate(header.split(",")):
        piece = part.strip()
        if not piece:
            continue
        lang, _, params = piece.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        loc = normalize_locale(lang)
        if loc and q > 0:
            choices.append((-q, i, loc))
    return sorted(choices)[0][2] if choices else None


def request_locale(request: Request) -> str:
    """The signed-in user's saved locale, else the ecoplat_locale cookie, else Accept-Language, else en."""
    principal = getattr(request.state, "principal", None)
    if principal is not None and getattr(principal, "user_id", None) is not None:
        saved = normalize_locale(getattr(principal, "locale", None))
        if saved:
            return saved
    cookie = normalize_locale(request.cookies.get(LOCALE_COOKIE))
    if cookie:
        return cookie
    accepted = _accept_language(request.headers.get("accept-language", ""))
    return accepted or DEFAULT_LOCALE


# ---------------------------------------------------------------- formatting

def to_zone(value: datetime, tz: str | None) -> datetime:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        zone = ZoneInfo(tz) if tz else UTC
    except (ZoneInfoNotFoundError, ValueError):
        zone = UTC
    return value.astimezone(zone)


def format_dt(value: datetime | str | None, tz: str | None = None, locale: str = DEFAULT_LOCALE,
              fmt: str = "medium") -> str:
    """A UTC timestamp shown in the site's or enterprise's time zone, in the reader's locale."""
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    local = to_zone(value, tz)
    text = babel_format_datetime(local, format=fmt, locale=LOCALES.get(locale, "en"), tzinfo=local.tzinfo)
    return f"{text} ({tz or 'UTC'})" if fmt != "full" else text


def _environment() -> Environment:
    dirs = [TEMPLATES_DIR]
    for child in sorted(PACKAGE_DIR.iterdir()):
        if child.is_dir() and child.name != "web" and (child / "templates").is_dir():
            dirs.append(child / "templates")
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(str(d)) for d in dirs]),
        autoescape=select_autoescape(["html", "xml"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["ext.i18n.trimmed"] = True
    return env


_env: Environment | None = None
_env_lock = threading.Lock()


def environment() -> Environment:
    """The shared Jinja2 environment (built on first use, not at import)."""
    global _env
    with _env_lock:
        if _env is None:
            _env = _environment()
        return _env


def _nav_for(principal: Any, path: str) -> list[dict[str, Any]]:
    items = sorted((n for n in NAV if n.visible_to(principal)), key=lambda n: (n.order, n.path))

    def matches(n: NavItem) -> bool:
        return path == n.path if n.path == "/" else (path == n.path or path.startswith(n.path.rstrip("/") + "/"))

    # Only the most specific entry is active (/alarms/kpis, not also /alarms).
    best = max((n.path for n in items if matches(n)), key=len, default=None)
    return [{"path": n.path, "label": n.label, "active": n.path == best} for n in items]


def _banners(request: Request, principal: Any) -> list[Markup | str]:
    out: list[Markup | str] = []
    if principal is None:
        return out
    for provider in list(BANNER_PROVIDERS):
        try:
            banner = provider(request, principal)
        except Exception:
            # A broken banner must never take the page down with it.
            log.exception("banner provider %s failed", getattr(provider, "__name__", provider))
            continue
        if banner:
            out.append(banner)
    return out


def render(request: Request, name: str, context: dict[str, Any] | None = None, *,
           status_code: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """Renders a template in the request's locale with the shared context (principal, nav,
    banners, locale, translated `_`), and re-sets renewed auth cookies if the page
    dependency refreshed the session."""
    locale = request_locale(request)
    translations = get_translations(locale)
    principal = getattr(request.state, "principal", None)
    env = environment()
    template = env.get_template(name)

    def _(message: str, **variables: Any) -> str:
        text = translations.gettext(message)
        return text % variables if variables else text

    def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
        text = translations.ngettext(singular, plural, n)
        variables.setdefault("num", n)
        return text % variables

    def pgettext(context: str, message: str, **variables: Any) -> str:
        text = translations.pgettext(context, message)
        return text % variables if variables else text

    def dt(value: datetime | str | None, tz: str | None = None, fmt: str = "medium") -> str:
        return format_dt(value, tz, locale, fmt)

    def number(value: float | int | None, fmt: str | None = None) -> str:
        if value is None:
            return ""
        return format_decimal(value, format=fmt, locale=LOCALES.get(locale, "en"))

    ctx: dict[str, Any] = {
        "request": request,
        "principal": principal,
        "nav": _nav_for(principal, request.url.path),
        "banners": _banners(request, principal),
        "locale": locale,
        "html_lang": locale,
        "locales": LOCALE_LABELS,
        "babel_locale": Locale.parse(LOCALES.get(locale, "en")),
        "_": _,
        "gettext": _,
        "ngettext": ngettext,
        "pgettext": pgettext,
        "dt": dt,
        "number": number,
        "is_htmx": request.headers.get("hx-request") == "true",
        "current_path": request.url.path,
        "current_url": str(request.url.path) + (f"?{request.url.query}" if request.url.query else ""),
    }
    if context:
        ctx.update(context)
        if context.get("nav_active"):
            # A page can say which entry it belongs to (/enterprises/7 is "/enterprise" for its own people).
            ctx["nav"] = [dict(item, active=item["path"] == context["nav_active"]) for item in ctx["nav"]]
    html = template.render(ctx)
    response = HTMLResponse(html, status_code=status_code, headers=headers)
    apply_session_cookies(request, response)
    return response


def apply_session_cookies(request: Request, response: Any) -> Any:
    """Copies cookies a dependency decided to (re)set (e.g. renewed tokens) onto a response."""
    pending = getattr(request.state, "pending_cookies", None)
    while pending:
        # Consumed once, so a page route and render() never set the same cookie twice.
        pending.pop(0)(response)
    return response


def translate(request: Request, message: str, **variables: Any) -> str:
    """`_()` for Python code that builds page text (e.g. form errors) in the request's locale."""
    text = get_translations(request_locale(request)).gettext(message)
    return text % variables if variables else text


def available_templates() -> Iterable[str]:
    return environment().list_templates()
