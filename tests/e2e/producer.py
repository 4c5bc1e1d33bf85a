"""A backend process that tracks events as fast as it can and prints each id once `track`
returned. Run by the outbox tests, which kill it with SIGKILL in the middle of the burst."""

from __future__ import annotations

import sys

import omnisdk


def main() -> None:
    url, key, data_dir, durability, count, prefix = sys.argv[1:7]
    client = omnisdk.Client(
        url,
        key,
        channel="web",
        data_dir=data_dir,
        durability=durability,  # type: ignore[arg-type]
        commit_window=0.02,
        max_group=100,
    )
    for n in range(int(count)):
        event_id = f"{prefix}-{n:06d}"
        client.events.track("product_viewed", anonymous_id=f"visitor-{n % 7}", event_id=event_id)
        sys.stdout.write(event_id + "\n")
        sys.stdout.flush()
    left = client.events.flush(60)
    client.close()
    sys.exit(1 if left else 0)


if __name__ == "__main__":
    main()
