"""The device side: `runner.py` is copied to the device as-is and imports nothing of edgekit.

Host code may import its pure helpers (summarize, cpu_from_cpuinfo) so that the
statistics and the cpuinfo parsing exist once.
"""

from pathlib import Path

RUNNER_PATH = Path(__file__).with_name("runner.py")
