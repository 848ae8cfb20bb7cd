"""Run the device runner inside the target's limits (stdlib only; started as a script).

    python limited_child.py --cores 0,1 --budget-mb 384 --runtime-mb -1 --runner runner.py -- ARTIFACT --runtime NAME [runner args]

1. pins the process to `--cores` (sched_setaffinity: the target's core count);
2. imports the artifact's runtime and measures it (the baseline every model pays);
3. caps the address space (RLIMIT_AS) so it can grow by no more than what the
   model may use on the target: the budget (target RAM minus the OS reserve)
   minus the runtime's footprint on the device (`--runtime-mb`, or -1 for the
   baseline measured here), then runs the runner. Address space over-counts
   resident memory (reserved, untouched pages), so a pass is trustworthy; the
   parent also compares the peak RSS growth with the same budget.
Prints one JSON line `{"limits": ...}` before the runner starts, then the runner's own JSON line,
then `{"peak": {"vm_hwm_kb": ...}}`, the true peak resident memory of this process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import sys

MIB = 1 << 20
EXIT_OVER_BUDGET = 5


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    split = argv.index("--")
    opts = dict(zip(argv[:split:2], argv[1:split:2]))
    runner_args = argv[split + 1:]
    cores = [int(c) for c in opts["--cores"].split(",")]
    os.sched_setaffinity(0, cores)
    spec = importlib.util.spec_from_file_location("edgekit_runner", opts["--runner"])
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    runner.runtime_for(runner_args[runner_args.index("--runtime") + 1])  # imported now: its memory is the baseline
    budget_kb = int(opts["--budget-mb"]) * 1024
    base_rss, base_vm = status_kb("VmRSS"), status_kb("VmSize")
    runtime_kb = base_rss if int(opts["--runtime-mb"]) < 0 else int(opts["--runtime-mb"]) * 1024
    model_kb = budget_kb - runtime_kb  # what the artifact may add on the device
    limits = {"cores": cores, "budget_kb": budget_kb, "baseline_rss_kb": base_rss, "baseline_vm_kb": base_vm,
              "device_runtime_kb": runtime_kb, "address_space_limit_kb": None}
    if model_kb <= 0:
        limits["error"] = f"the runtime alone takes {runtime_kb // 1024} MB, the whole {budget_kb // 1024} MB budget"
        print(json.dumps({"limits": limits}), flush=True)
        return EXIT_OVER_BUDGET
    limit = (base_vm + model_kb) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    limits["address_space_limit_kb"] = limit // 1024
    print(json.dumps({"limits": limits}), flush=True)
    try:
        code = runner.main(runner_args)
    except MemoryError:
        print(json.dumps({"ok": False, "error_kind": "out_of_memory", "error": "MemoryError"}), flush=True)
        return 1
    # The peak of THIS program: VmHWM starts afresh at exec. The runner's getrusage() maxrss does
    # not: Linux carries the parent's high-water mark across fork+exec, so a child of a process
    # that had torch loaded would report the parent's ~400 MB as its own peak.
    print(json.dumps({"peak": {"vm_hwm_kb": status_kb("VmHWM")}}), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
