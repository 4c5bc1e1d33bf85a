"""`make bench`: run every benchmark and write docs/benchmarks.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench import (
    bench_analytics,
    bench_analytics_jobs,
    bench_cart_history,
    bench_cart_load,
    bench_carts,
    bench_console,
    bench_content,
    bench_feed,
    bench_identify_locks,
    bench_ingest,
    bench_notifications,
    bench_orders,
    bench_outbox,
    bench_pos_network_loss,
    bench_scale_jobs,
    bench_sdk_overhead,
    bench_server_write,
    bench_tokens,
    bench_track,
)
from bench.report import Figure, page, replace_sections

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

SUITES = {
    "Server stack (issue 2)": bench_server_write.run,
    "SDK client overhead (issue 2)": bench_sdk_overhead.run,
    "Event tracking in the SDK (issue 8)": bench_track.run,
    "Event ingestion and identity merges on the server (issue 8)": bench_ingest.run,
    "Return codes: tokens and QR images (issue 5)": bench_tokens.run,
    "Durable outbox (issue 9)": bench_outbox.run,
    "Shared cart and change feed (issue 3)": bench_carts.run,
    "Cart cost with a long history (issue 13)": bench_cart_history.run,
    "Cart add under load (issue 13)": bench_cart_load.run,
    "Personalised content and consent checks (issues 7 and 4)": bench_content.run,
    bench_feed.TITLE: bench_feed.run,
    "POS station on a network that drops packets (issue 17)": bench_pos_network_loss.run,
    "Sign-ins without a tenant-wide lock (issue 21)": bench_identify_locks.run,
    "Recommendations rebuild as a bounded job (issue 21)": bench_scale_jobs.run,
    "Orders on every channel (issue 18)": bench_orders.run,
    "Attribution and lifetime value (issue 18)": bench_analytics.run,
    "Journey refresh a day at a time (issue 21)": bench_analytics_jobs.run,
    "Customer-service console and segments (issue 19)": bench_console.run,
    "Stock alerts and messages (issue 20)": bench_notifications.run,
}


# Benchmarks drive one API key far beyond a shop's request budget (429 rate-limited): they
# measure the stack, so the servers they start take no budget.
os.environ.setdefault("OMNISDK_RATE_LIMIT_PER_SECOND", "0")


def main(argv: list[str]) -> int:
    """Run every suite (or those whose title contains one of `argv`) and write the page; a
    partial run replaces its sections in the page only with `--write`."""
    write = "--write" in argv
    argv = [word for word in argv if word != "--write"]
    sections: dict[str, list[Figure]] = {}
    for title, suite in SUITES.items():
        if argv and not any(word.lower() in title.lower() for word in argv):
            continue
        print(f"== {title}", flush=True)
        sections[title] = suite()
        for figure in sections[title]:
            print("  " + figure.row(), flush=True)
    if argv and write:
        OUTPUT.write_text(replace_sections(OUTPUT.read_text(), sections))
        print(f"updated {len(sections)} section(s) of {OUTPUT}")
        return 0
    if argv:
        print("a partial run: docs/benchmarks.md left as it was (--write replaces its sections)")
        return 0
    OUTPUT.write_text(page(sections, "python -m bench.run"))
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
