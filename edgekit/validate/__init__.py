"""The on-host emulation harness behind `edgekit validate`: prove on the workstation that an
artifact is right, runs on the target's fast kernels, fits its memory, and how fast it may be.

    validate.py       the command: sha256, then the checks, merged into manifest.json
    lint.py           ops off the target runtime's fast path, read from the artifact
    graph.py          per-op MACs and tensor sizes from the exported float graph
    cost.py           the calibrated latency model (docs/cost_model.md)
    resources.py      the runner in a child held to the target's cores and RAM
    limited_child.py  that child (stdlib; runs edgekit/runtime/runner.py)
    profile.py        per-op host times from each runtime's own profiler

Imports are lazy (torch, executorch, onnxruntime load inside the functions), so
`edgekit --help` stays fast.
"""
