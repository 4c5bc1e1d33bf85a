"""The analytics report as one HTML page: charts drawn as inline SVG on the server.

Nothing is fetched when the page opens (no script, no font, no CDN): it can be mailed, archived
or opened on a till's offline browser and looks the same. Every label is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

import jinja2

PALETTE = (
    "#1f6feb",
    "#d1242f",
    "#1a7f37",
    "#9a6700",
    "#8250df",
    "#bf3989",
    "#0969da",
    "#57606a",
    "#cf222e",
    "#116329",
)
WIDTH = 720


def _text(x: float, y: float, content: str, **attributes: Any) -> str:
    extra = " ".join(f'{k.replace("_", "-")}="{escape(str(v))}"' for k, v in attributes.items())
    return f'<text x="{x:.1f}" y="{y:.1f}" {extra}>{escape(content)}</text>'


def _svg(height: float, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" role="img" aria-label="{escape(title)}" '
        'font-family="system-ui, sans-serif" font-size="12">' + "".join(body) + "</svg>"
    )


def credit_heatmap(attribution: dict[str, Any]) -> str:
    """Channels (rows) x models (columns): each cell the channel's share of conversions."""
    models = attribution["models"]
    channels = sorted({c["channel"] for m in models for c in m["credits"]})
    if not channels:
        return _svg(30, [_text(10, 20, "No journeys in this period.")], "credit per channel")
    left, top, cell_w, cell_h = 150, 96, (WIDTH - 160) / max(1, len(models)), 24
    body = []
    for j, model in enumerate(models):
        x = left + j * cell_w + cell_w / 3
        body.append(
            _text(
                x,
                top - 8,
                model["model"].replace("_", " "),
                text_anchor="start",
                transform=f"rotate(-35 {x:.1f} {top - 8})",
            )
        )
    for i, channel in enumerate(channels):
        y = top + i * cell_h
        body.append(_text(left - 8, y + 16, channel, text_anchor="end"))
        for j, model in enumerate(models):
            share = next((c["share"] for c in model["credits"] if c["channel"] == channel), 0.0)
            shade = max(0.0, min(1.0, share))
            fill = f"rgba(31,111,235,{0.08 + 0.85 * shade:.3f})"
            x = left + j * cell_w
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{cell_w - 2:.1f}" '
                f'height="{cell_h - 2}" fill="{fill}"/>'
            )
            colour = "#fff" if shade > 0.5 else "#1f2328"
            body.append(
                _text(x + cell_w / 2, y + 16, f"{share:.0%}", text_anchor="middle", fill=colour)
            )
    return _svg(top + len(channels) * cell_h + 10, body, "credit share per channel by model")


def credit_bars(model: dict[str, Any]) -> str:
    """One data-driven model's shares with their bootstrap intervals."""
    credits = sorted(model["credits"], key=lambda c: -c["share"])
    left, top, bar_h = 150, 10, 22
    widest = max([c["share"] for c in credits] + [c["share_high"] or 0.0 for c in credits] + [0.01])
    scale = (WIDTH - left - 70) / widest
    body = []
    for i, credit in enumerate(credits):
        y = top + i * bar_h
        body.append(_text(left - 8, y + 15, credit["channel"], text_anchor="end"))
        body.append(
            f'<rect x="{left}" y="{y + 3:.1f}" width="{max(0.0, credit["share"]) * scale:.1f}" '
            f'height="{bar_h - 6}" fill="{PALETTE[0]}"/>'
        )
        if credit["share_low"] is not None and credit["share_high"] is not None:
            lo = left + max(0.0, credit["share_low"]) * scale
            hi = left + max(0.0, credit["share_high"]) * scale
            body.append(
                f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + 11:.1f}" y2="{y + 11:.1f}" '
                'stroke="#1f2328" stroke-width="1.5"/>'
            )
        body.append(
            _text(left + max(0.0, credit["share"]) * scale + 6, y + 15, f"{credit['share']:.1%}")
        )
    return _svg(top + len(credits) * bar_h + 10, body, f"{model['model']} credit with intervals")


def _stacked(rows: list[tuple[str, list[tuple[str, float, str]]]], title: str) -> str:
    left, top, bar_h = 150, 10, 30
    scale = WIDTH - left - 20
    body = []
    for i, (label, parts) in enumerate(rows):
        y = top + i * (bar_h + 26)
        body.append(_text(left - 8, y + 19, label, text_anchor="end"))
        total = sum(value for _, value, _ in parts) or 1.0
        x = float(left)
        for _name, value, colour in parts:
            width = value / total * scale
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{bar_h}" '
                f'fill="{colour}"/>'
            )
            if width > 60:
                body.append(_text(x + 4, y + 19, f"{value / total:.0%}", fill="#fff"))
            x += width
        legend_x = float(left)
        for name, value, colour in parts:
            body.append(
                f'<rect x="{legend_x:.1f}" y="{y + bar_h + 5:.1f}" width="10" height="10" '
                f'fill="{colour}"/>'
            )
            caption = f"{name} {value:,.2f}"
            body.append(_text(legend_x + 14, y + bar_h + 14, caption))
            legend_x += 20 + 7 * len(caption)
    return _svg(top + len(rows) * (bar_h + 26), body, title)


def ropo_flows(ropo: dict[str, Any]) -> str:
    store, online = ropo["store"], ropo["online"]
    links = [
        (method, data["revenue"], PALETTE[(i + 2) % len(PALETTE)])
        for i, (method, data) in enumerate(store["links"].items())
    ]
    return _stacked(
        [
            (
                "store revenue",
                [
                    ("researched online", store["researched_online_revenue"], PALETTE[0]),
                    (
                        "no online touch",
                        store["revenue"] - store["researched_online_revenue"],
                        "#8c959f",
                    ),
                ],
            ),
            (
                "online revenue",
                [
                    ("after a store touch", online["after_store_revenue"], PALETTE[1]),
                    (
                        "no store touch",
                        online["revenue"] - online["after_store_revenue"],
                        "#8c959f",
                    ),
                ],
            ),
            ("store revenue by link", links or [("none", 0.0, "#8c959f")]),
        ],
        "ROPO flows",
    )


def histogram(bins: list[Any], title: str, label: str) -> str:
    if not bins:
        return _svg(30, [_text(10, 20, "No lifetime value fitted yet.")], title)
    left, top, height = 50, 24, 180
    width = (WIDTH - left - 10) / len(bins)
    peak = max(b[2] for b in bins) or 1
    body = [
        f'<line x1="{left}" x2="{WIDTH - 10}" y1="{top + height}" y2="{top + height}" '
        'stroke="#57606a"/>'
    ]
    for i, (low, _high, count) in enumerate(bins):
        h = count / peak * height
        x = left + i * width
        body.append(
            f'<rect x="{x + 1:.1f}" y="{top + height - h:.1f}" width="{width - 2:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[2]}"/>'
        )
        body.append(_text(x + width / 2, top + height - h - 4, str(count), text_anchor="middle"))
        body.append(_text(x + width / 2, top + height + 16, f"{low:,.0f}", text_anchor="middle"))
    body.append(_text(WIDTH / 2, top + height + 34, label, text_anchor="middle"))
    return _svg(top + height + 42, body, title)


def calibration_chart(calibration: dict[str, Any]) -> str:
    rows = calibration["by_frequency"]
    left, top, height = 50, 10, 180
    group = (WIDTH - left - 10) / max(1, len(rows))
    peak = max([max(r["predicted"], r["actual"]) for r in rows] + [1e-9])
    body = [
        f'<line x1="{left}" x2="{WIDTH - 10}" y1="{top + height}" y2="{top + height}" '
        'stroke="#57606a"/>'
    ]
    for i, row in enumerate(rows):
        for k, (key, colour) in enumerate((("predicted", PALETTE[0]), ("actual", PALETTE[3]))):
            h = row[key] / peak * height
            x = left + i * group + 4 + k * (group / 2 - 4)
            body.append(
                f'<rect x="{x:.1f}" y="{top + height - h:.1f}" width="{group / 2 - 6:.1f}" '
                f'height="{h:.1f}" fill="{colour}"/>'
            )
        label = f"{row['frequency']}{'+' if i == len(rows) - 1 and row['frequency'] >= 7 else ''}"
        body.append(
            _text(left + i * group + group / 2, top + height + 16, label, text_anchor="middle")
        )
    body.append(
        _text(
            WIDTH / 2,
            top + height + 34,
            "repeat purchases in calibration: predicted (blue) vs actual (ochre) "
            "purchases per customer in the holdout",
            text_anchor="middle",
        )
    )
    return _svg(top + height + 42, body, "calibration")


_PAGE = jinja2.Environment(
    loader=jinja2.PackageLoader("server_stub.analytics", "templates"), autoescape=True
).get_template("report.html")


def render(
    attribution: dict[str, Any],
    ropo: dict[str, Any],
    ltv: dict[str, Any] | None,
    calibration: dict[str, Any] | None,
) -> str:
    data_driven = [
        {**m, "svg": credit_bars(m)}
        for m in attribution["models"]
        if m["model"] in ("markov_1", "shapley") and m["credits"]
    ]
    return _PAGE.render(
        a=attribution,
        r=ropo,
        ltv=ltv,
        calibration=calibration,
        heatmap=credit_heatmap(attribution),
        data_driven=data_driven,
        ropo_svg=ropo_flows(ropo),
        ltv_svg=histogram(
            ltv["clv_histogram"] if ltv else [],
            "CLV distribution",
            "customer lifetime value (12 months, discounted)",
        ),
        calibration_svg=calibration_chart(calibration) if calibration else "",
    )
