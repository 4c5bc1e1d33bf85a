"""The return station's catalogue is complete: every message in the code and the templates is in
pos.pot, and every language has a translation of each (make pos-catalogue refreshes them)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from babel.messages.frontend import CommandLineInterface
from babel.messages.pofile import read_po

from server_stub.pos.language import LANGUAGES, LOCALE_DIR, Words, negotiate, translations

POS = LOCALE_DIR.parent


def extracted() -> set[str]:
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "pos.pot"
        CommandLineInterface().run(
            [
                "pybabel",
                "-q",
                "extract",
                "-F",
                str(POS / "babel.cfg"),
                "-k",
                "words",
                "-k",
                "N_",
                "-k",
                "UnreadablePhoto",
                "--no-location",
                "--omit-header",
                "-o",
                str(out),
                str(POS),
            ]
        )
        with out.open("rb") as handle:
            return {message.id for message in read_po(handle) if message.id}


def test_the_template_holds_every_message_of_the_code_and_the_templates() -> None:
    with (LOCALE_DIR / "pos.pot").open("rb") as handle:
        committed = {message.id for message in read_po(handle) if message.id}
    assert extracted() == committed


def test_every_language_translates_every_message() -> None:
    with (LOCALE_DIR / "pos.pot").open("rb") as handle:
        wanted = {message.id for message in read_po(handle) if message.id}
    for language in LANGUAGES:
        if language == "en":
            continue
        source = LOCALE_DIR / language / "LC_MESSAGES" / "pos.po"
        with source.open("rb") as handle:
            catalogue = read_po(handle)
        translated = {m.id for m in catalogue if m.id and m.string and not m.fuzzy}
        assert wanted - translated == set(), language
        assert translations(language).gettext("Sign out") != "Sign out"


def test_the_store_language_wins_then_the_browser() -> None:
    assert negotiate("pl", "en-GB,en;q=0.9") == "pl"
    assert negotiate(None, "pl-PL,pl;q=0.9,en;q=0.5") == "pl"
    assert negotiate(None, "de-DE, fr;q=0.5") == "en"
    assert negotiate(None, "en;q=0.2, pl;q=0.8") == "pl"


def test_money_and_dates_are_written_for_the_locale_and_the_store_zone() -> None:
    from datetime import UTC, datetime

    moment = datetime(2026, 11, 24, 23, 30, tzinfo=UTC)
    polish = Words("pl", "Europe/Warsaw")
    assert polish.money(89.0, "PLN") == "89,00\xa0zł"
    assert polish.date(moment) == "25 listopada 2026"  # already the next day in Warsaw
    english = Words("en", "Europe/London")
    assert english.money(1234.5, "EUR") == "€1,234.50"
    assert english.date(moment) == "November 24, 2026"
    assert english.moment(moment).endswith("GMT")
