"""Deploy a build to devices and bring back latency.

    base.py      Transport: run a command on the device, verified push (temp name, sha256, rename)
    ssh.py       the system OpenSSH client (BatchMode, the user's ssh config)
    adb.py       Android phones over adb
    local.py     this computer (`edgekit bench`)
    devices.py   --device strings and devices.toml fleets
    runners.py   what runs the artifact there: runtime/runner.py or a native benchmark binary
    native.py    parsers for the native binaries' text output
    records.py   the build dir: device_runs/ records and manifest.json's device_runs
    session.py   the steps for one device, and a fleet in parallel
    service.py   --serve: the model server kept running there (systemd unit or a supervisor)
    serve_load.py  bench --serve: the load test of a build's server, recorded in the build
"""

from edgekit.deploy.base import DeviceFailure
from edgekit.deploy.devices import Device
from edgekit.deploy.session import BenchOptions, DeployFailed, DeployPlan

__all__ = ["BenchOptions", "Device", "DeployFailed", "DeployPlan", "DeviceFailure"]
