"""A measured figure, side by side with its peer or ceiling, and the page that lists them."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime


def load_average() -> str:
    """The machine's load when a figure was taken, for its note: on a shared machine a
    figure means little without it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} on {os.cpu_count()} cores"


BENCH_COMMAND = "python -m bench.run --write"


@dataclass(frozen=True)
class Figure:
    name: str
    ours: float
    peer: float
    peer_name: str
    unit: str
    ratio: float
    goal: str
    met: bool | None  # None: reported for information, no goal set
    note: str = ""

    def row(self) -> str:
        verdict = "—" if self.met is None else "yes" if self.met else "**no**"
        return (
            f"| {self.name} | {self.ours:,.1f} {self.unit} | {self.peer_name}: "
            f"{self.peer:,.1f} {self.unit} | {self.ratio:.2f} | {self.goal} | {verdict} |"
        )


def page(sections: dict[str, list[Figure]], command: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure is measured side by side with its peer or ceiling in the same run, and",
        "reported as a ratio. Written by `make bench` (" + f"`{command}`); do not edit by hand.",
        "",
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}, {platform.system()} {platform.release()}",
        "",
    ]
    for title, figures in sections.items():
        lines += section(title, figures)
    return "\n".join(lines)


def section(
    title: str, figures: list[Figure], when: str | None = None, command: str = BENCH_COMMAND
) -> list[str]:
    """A section's lines; `when`, the time of its run when it was not the page's."""
    lines = [f"## {title}", ""]
    if when:
        lines += [f"Measured on its own, {when} UTC (`{command}`).", ""]
    lines += [
        "| figure | omnisdk | peer / ceiling | ratio | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += [figure.row() for figure in figures]
    notes = [f"- {figure.name}: {figure.note}" for figure in figures if figure.note]
    lines += ["", *notes, ""] if notes else [""]
    return lines


def replace_sections(
    text: str, sections: dict[str, list[Figure]], command: str = BENCH_COMMAND
) -> str:
    """The page with the given sections measured again (the others kept as they were), by
    `command`."""
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    head, *parts = text.split("\n## ")
    kept = {part.split("\n", 1)[0]: "## " + part for part in parts}
    for title, figures in sections.items():
        kept[title] = "\n".join(section(title, figures, when, command))
    return "\n".join(
        [head.rstrip("\n") + "\n", *(body.rstrip("\n") + "\n" for body in kept.values())]
    )
