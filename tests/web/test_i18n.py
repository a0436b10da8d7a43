"""The catalogues: every string of the foundation's pages has a Chinese translation, placeholders
survive translation, and the locale is negotiated as documented."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from ecoplat.web.templating import (
    LOCALE_DIR,
    PACKAGE_DIR,
    _accept_language,
    get_translations,
    normalize_locale,
)

WEB = PACKAGE_DIR / "web"
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "NC_": ((1, "c"), 2),
            "pgettext": ((1, "c"), 2), "translate": (2,)}
# The foundation's own pages; other domains' templates (web/templates/<domain>/) are theirs.
METHOD_MAP = [("*.py", "python"), ("templates/*.html", "jinja2")]


def _web_messages() -> set[tuple[str | None, str]]:
    found: set[tuple[str | None, str]] = set()
    for _file, _line, message, _comments, context in extract_from_dir(
            str(WEB), METHOD_MAP, options_map={"templates/*.html": {"extensions": "jinja2.ext.i18n"}},
            keywords=KEYWORDS):
        msgid = message[0] if isinstance(message, tuple) else message
        if msgid:
            found.add((context, msgid))
    return found


def _zh_catalog():  # type: ignore[no-untyped-def]
    with (LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po").open("rb") as f:
        return read_po(f, locale="zh_CN")


def test_every_string_of_the_foundation_pages_has_a_chinese_translation() -> None:
    catalog = _zh_catalog()
    messages = _web_messages()
    assert len(messages) > 80
    missing = []
    for context, msgid in sorted(messages, key=lambda m: (m[0] or "", m[1])):
        entry = next((m for m in catalog if (m.id[0] if isinstance(m.id, tuple) else m.id) == msgid
                      and m.context == context), None)
        text = entry.string if entry else None
        if isinstance(text, tuple):
            text = text[0]
        if not text:
            missing.append((context, msgid))
    assert missing == [], "untranslated (run python -m ecoplat.web.i18n, then translate):\n" + "\n".join(
        map(str, missing))


def test_translations_keep_their_placeholders() -> None:
    for message in _zh_catalog():
        if not message.id or not message.string:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(re.findall(r"%\(\w+\)[sd]", ids[0]))
        for s in strings:
            assert set(re.findall(r"%\(\w+\)[sd]", s)) == wanted, message.id


def test_size_class_and_priority_medium_are_translated_apart() -> None:
    zh = get_translations("zh-CN")
    assert zh.pgettext("size class", "Medium") == "中型"
    assert zh.gettext("Medium") != "中型"


def test_locale_negotiation() -> None:
    assert normalize_locale("zh_CN") == normalize_locale("zh-Hans") == "zh-CN"
    assert normalize_locale("en-GB") == "en"
    assert normalize_locale("fr") is None
    assert _accept_language("fr-FR,zh-CN;q=0.8,en;q=0.5") == "zh-CN"
    assert _accept_language("en;q=0.9,zh;q=0.95") == "zh-CN"
    assert _accept_language("zh;q=0,en") == "en"
    assert _accept_language("de") is None


def test_catalogue_files_are_in_the_package() -> None:
    assert Path(LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po").is_file()
    assert Path(LOCALE_DIR / "en" / "LC_MESSAGES" / "messages.po").is_file()
