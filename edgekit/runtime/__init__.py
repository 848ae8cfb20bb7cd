"""The device side: `runner.py` is copied to the device as-is and imports nothing of edgekit.

Host code may import its pure helpers (summarize, cpu_from_cpuinfo) so that the
statistics and the cpuinfo parsing exist once, and reads the runner's answer with
`last_json`.
"""

from __future__ import annotations

import json
from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("runner.py")


def last_json(text: str) -> dict | None:
    """The last line of `text` that parses as JSON, if it is an object: a runner's result,
    printed after whatever its runtime logged."""
    for line in reversed(text.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        return doc if isinstance(doc, dict) else None
    return None

