"""The README's first Quick-start command: `make demo` runs examples/demo.py, which sets a shop
up with the operator's commands, serves it, and walks the customer journey against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_sets_up_a_shop_and_walks_the_whole_journey() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "-- Journey complete" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
