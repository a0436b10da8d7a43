"""Keeps the Babel catalogues in step with the code: `python -m ecoplat.web.i18n` extracts every
`_()`, `N_()` and `translate()` string of src/ecoplat (Python and templates) into messages.pot
and merges it into each locale's messages.po (new strings arrive untranslated, for a translator).

The app compiles the .po in memory at start (see templating._load_translations), so no compiled
.mo has to be committed or built for a fresh clone to speak Chinese."""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.frontend import CommandLineInterface

from ecoplat.web.templating import LOCALE_DIR, LOCALES, PACKAGE_DIR

ROOT = PACKAGE_DIR.parent.parent  # the repository (src/ecoplat → ..)
BABEL_CFG = ROOT / "babel.cfg"
POT = LOCALE_DIR / "messages.pot"


def _babel(*args: str) -> None:
    CommandLineInterface().run(["pybabel", "-q", *args])


def update_catalogues() -> list[Path]:
    """Extracts messages.pot and creates or updates every locale's messages.po."""
    LOCALE_DIR.mkdir(parents=True, exist_ok=True)
    _babel("extract", "-F", str(BABEL_CFG), "-k", "N_", "-k", "NC_:1c,2", "-k", "translate:2", "--no-location", "--sort-output",
           "--project", "Ecoplat", "-o", str(POT), str(PACKAGE_DIR))
    written = []
    for babel_name in LOCALES.values():
        po = LOCALE_DIR / babel_name / "LC_MESSAGES" / "messages.po"
        if po.exists():
            _babel("update", "-i", str(POT), "-d", str(LOCALE_DIR), "-l", babel_name, "--no-fuzzy-matching",
                   "--ignore-obsolete")
        else:
            _babel("init", "-i", str(POT), "-d", str(LOCALE_DIR), "-l", babel_name)
        written.append(po)
    return written


if __name__ == "__main__":
    for path in update_catalogues():
        print(path.relative_to(ROOT))
    sys.exit(0)
