"""The station's languages: a gettext catalogue per locale (Babel), and dates and money written
the way the store's clerks read them.

The catalogues are the .po files in `locale/`; they are compiled in memory when the station
starts (Babel's own compiler), so the repository holds no compiled file that could drift from
its source. The locale is the store's when the shop set one, else the browser's best match.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency, format_decimal
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
DOMAIN = "pos"
DEFAULT_LOCALE = "en"
LANGUAGES = ("en", "pl")  # a catalogue for each but English, the source language


@cache
def translations(language: str) -> Translations:
    """The compiled catalogue of `language` (English: the messages as written)."""
    source = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    if not source.exists():
        return Translations()
    with source.open("rb") as handle:
        catalogue = read_po(handle, locale=language, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalogue)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


def negotiate(store_language: str | None, accept_language: str) -> str:
    """The store's language if the shop chose one we have, else the browser's best match."""
    if store_language in LANGUAGES:
        return store_language
    wanted = [tag for tag, _ in _accepted(accept_language)]
    chosen = Locale.negotiate(wanted, list(LANGUAGES), sep="-") if wanted else None
    return str(chosen.language) if chosen is not None else DEFAULT_LOCALE


def _accepted(header: str) -> list[tuple[str, float]]:
    """Accept-Language (RFC 9110, 12.5.4) as (tag, weight), the most wanted first."""
    tags = []
    for part in header.split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        weight = 1.0
        if params.strip().startswith("q="):
            try:
                weight = float(params.strip()[2:])
            except ValueError:
                weight = 0.0
        if tag and tag != "*" and weight > 0:
            tags.append((tag.strip(), weight))
    return sorted(tags, key=lambda item: -item[1])


@dataclass(frozen=True)
class Words:
    """What a page needs to speak to one clerk: the catalogue, the locale and the time zone."""

    language: str
    time_zone: str = "UTC"

    @property
    def catalogue(self) -> Translations:
        return translations(self.language)

    def __call__(self, message: str, **values: object) -> str:
        """The message in the clerk's language, with %(name)s placeholders filled in."""
        text = self.catalogue.gettext(message)
        return text % values if values else text

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @property
    def locale(self) -> Locale:
        try:
            return Locale.parse(self.language)
        except (UnknownLocaleError, ValueError):
            return Locale.parse(DEFAULT_LOCALE)

    def date(self, moment: datetime) -> str:
        """A day as the locale writes it in full (14 November 2026, 14 listopada 2026)."""
        return str(format_date(moment.astimezone(self.zone), "long", locale=self.locale))

    def moment(self, moment: datetime) -> str:
        """A date and time in the store's time zone, with the zone named."""
        local = moment.astimezone(self.zone)
        text = format_datetime(local, "medium", tzinfo=self.zone, locale=self.locale)
        return f"{text} {local.tzname()}"

    def money(self, amount: float | None, currency: str | None) -> str:
        """An amount with its currency as the locale writes it (89,00 zł; €89.00)."""
        if amount is None:
            return "—"
        if currency is None:
            return str(format_decimal(amount, "#,##0.00", locale=self.locale))
        return str(format_currency(amount, currency, locale=self.locale))
