"""`edgekit deploy --serve`: the pushed build kept running as a service on the device.

Who keeps it running depends on what the device has, found out there:

    systemd (system)   root on a board booted with systemd: /etc/systemd/system/UNIT
    systemd (user)     a user whose systemd user manager answers (Raspberry Pi OS logins):
                       ~/.config/systemd/user/UNIT; started at boot when lingering is on
                       (`loginctl enable-linger`, tried here; said so when it fails)
    supervisor         no systemd (containers, minimal images, edgekit's emulated board):
                       serve.py --supervise restarts the server on failure, as
                       Restart=on-failure does; it does not start at boot, and the record says so

Either way: one service per port (UNIT = edgekit-serve-PORT.service), replaced when
a build is deployed to the same port again; the deploy waits until the server's
/healthz answers on the device and its /v1/model names this build's artifact.
`--serve stop` stops and removes whatever runs on that port.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.deploy.base import DeviceFailure, Transport
from edgekit.errors import UsageError
from edgekit.runtime import last_json
from edgekit.manifest import inside
from edgekit.serve import (
    GENERATION_MODULES,
    SERVER_PATH,
    SPEC_FILE,
    STACK_MODULES,
    Settings,
    generation_spec_doc,
    install_hint,
    spec_doc,
)

SERVER_FILE = "serve.py"
DETECT_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0

# One shell call finds out what manages services there. XDG_RUNTIME_DIR is what pam_systemd sets for
# a login; ssh commands run without a login session on some images, so the standard place is tried.
_DETECT_SH = r"""
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}"
if [ "$(id -u)" = 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  echo "manager=systemd-system"; echo "units=/etc/systemd/system"
elif command -v systemctl >/dev/null 2>&1 && systemctl --user show-environment >/dev/null 2>&1; then
  echo "manager=systemd-user"; echo "units=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user"
else
  echo "manager=supervisor"
fi
echo "home=$HOME"; echo "user=$(id -un)"; echo "runtime_dir=$XDG_RUNTIME_DIR"
"""

# Polls the server from the device itself (its address may not be reachable from here) until it
# answers or the deadline passes; prints one JSON line. Only the standard library.
_WAIT_PY = r"""
import json, sys, time, urllib.request
url, deadline = sys.argv[1], time.time() + float(sys.argv[2])
last = "no answer"
while time.time() < deadline:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as r:
            health = json.load(r)
        with urllib.request.urlopen(url + "/v1/model", timeout=5) as r:
            model = json.load(r)
        if health.get("ok"):
            print(json.dumps({"ok": True, "health": health, "sha256": model.get("sha256")})); sys.exit(0)
        last = "healthz says not ok: " + json.dumps(health)
    except Exception as e:
        last = f"{type(e).__name__}: {e}"
    time.sleep(0.5)
print(json.dumps({"ok": False, "error": last})); sys.exit(1)
"""


@dataclass(frozen=True)
class ServiceOptions:
    settings: Settings
    wait_seconds: float = 120.0  # for /healthz: loading torch and the artifact on a Pi takes seconds

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def unit(self) -> str:
        return unit_name(self.port)


def unit_name(port: int) -> str:
    return f"edgekit-serve-{port}.service"


def check_serve_device(device) -> None:
    """Refuse what cannot serve, before any device is touched."""
    if device.transport == "adb":
        raise UsageError(f"--serve on {device.name}: Android devices are not served by edgekit yet",
                         hint="serve from a Linux board over ssh (or `edgekit serve` on this computer)")
    if device.native_runner:
        raise UsageError(f"--serve on {device.name}: the server runs the artifact with the device's python, "
                         f"not with --native-runner {device.native_runner}",
                         hint="leave out --native-runner and pass --python with a python that has the runtime")


def server_files(build, tmp: Path) -> list[tuple[Path, str]]:
    """serve.py and serve.json, pushed beside the artifact and runner.py; a text-generation build's server
    also reads the tokenizer (the board needs the `tokenizers` package, not transformers)."""
    spec = tmp / SPEC_FILE
    doc = (generation_spec_doc(build.manifest) if build.generating
           else spec_doc(build.manifest, build.format, build.artifact_record, build.runtime))
    spec.write_text(json.dumps(doc, indent=1) + "\n")
    files = [(SERVER_PATH, SERVER_FILE), (spec, SPEC_FILE)]
    if build.generating:
        files.append((inside(build.dir, doc["tokenizer"], "the tokenizer"), doc["tokenizer"]))
    return files


def check_stack(t: Transport, python: str, build) -> None:
    """The HTTP stack imports with the device's python (the runtime was checked by the runner), and
    `tokenizers` for a text-generation build's server."""
    modules = [*STACK_MODULES, *GENERATION_MODULES] if build.generating else list(STACK_MODULES)
    done = t.run([python, "-c", "import " + ", ".join(modules)])
    if done.returncode != 0:
        last = (done.tail().splitlines() or ["exit status " + str(done.returncode)])[-1]
        raise DeviceFailure(f"the server's packages are not importable by '{python}' on {t.name}: {last}",
                            hint="install them on the device: " + install_hint(python, build.generating),
                            stage="serve", detail=done.tail())


def detect(t: Transport) -> dict:
    done = t.check(["sh", "-c", _DETECT_SH], "finding the service manager", stage="serve", timeout=DETECT_TIMEOUT)
    facts = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    if "manager" not in facts:
        raise DeviceFailure(f"cannot tell how {t.name} runs services: {done.stdout.strip() or 'no answer'}", stage="serve")
    return facts


def install(t: Transport, remote: str, build, python: str, options: ServiceOptions, device_host: str) -> dict:
    """Start the server on the device under its service manager; returns the record's `service`."""
    facts = detect(t)
    home = facts.get("home") or ""
    where = remote if remote.startswith("/") else f"{home}/{remote}"  # ssh's relative paths start at home
    base = str(Path(where).parent)
    stop_on(t, options.port, facts, base)  # whatever served this port before (an older build)
    argv = [python, f"{where}/{SERVER_FILE}", f"{where}/{build.artifact.name}", "--spec", f"{where}/{SPEC_FILE}",
            *options.settings.argv()]
    manager = facts["manager"]
    service = {"manager": manager, "port": options.port, "listen": options.settings.host, "unit": None,
               "pidfile": None, "log": None, "starts_at_boot": False, "boot_hint": None}
    if manager.startswith("systemd"):
        system = manager == "systemd-system"
        units = facts["units"]
        unit_text = unit_file(build, argv, where, options.settings, system)
        with tempfile.TemporaryDirectory(prefix="edgekit-unit-") as tmp:
            local = Path(tmp) / options.unit
            local.write_text(unit_text)
            t.check(["mkdir", "-p", units], f"creating {units}", stage="serve")
            t.push([(local, options.unit)], units)
        ctl = _systemctl(system)
        journal = f"journalctl {'' if system else '--user '}-u {options.unit}"
        t.check(["sh", "-c", f'{ctl} daemon-reload && {ctl} enable "$1" && {ctl} restart "$1"', "sh", options.unit],
                f"starting {options.unit}", stage="serve", hint=f"see its log on the device: {journal}")
        service.update(unit=f"{units}/{options.unit}", log=journal)
        if system:
            service["starts_at_boot"] = True
        else:
            linger = t.run(["sh", "-c", 'loginctl enable-linger "$(id -un)" 2>&1'])
            service["starts_at_boot"] = linger.returncode == 0
            if linger.returncode != 0:
                service["boot_hint"] = (f"starts when {facts.get('user')} logs in; to start it at boot run "
                                        f"`sudo loginctl enable-linger {facts.get('user')}` on the device")
    else:
        pidfile, log = f"{base}/serve-{options.port}.pid", f"{base}/serve-{options.port}.log"
        start = shlex.join([*argv, "--supervise", "--pidfile", pidfile])
        # setsid: out of the ssh session's process group, so the session may end; stdin/out/err off the link.
        t.check(["sh", "-c", f"cd {shlex.quote(where)} && setsid nohup {start} >> {shlex.quote(log)} 2>&1 < /dev/null &"],
                "starting the server", stage="serve")
        service.update(pidfile=pidfile, log=log,
                       boot_hint=f"{t.name} has no systemd: the server restarts on failure but does not start at boot")
    local_url = f"http://{_loopback(options.settings.host)}:{options.port}"
    try:
        health = wait_healthy(t, python, local_url, options.wait_seconds, build, service)
    except DeviceFailure:
        # Not left behind restarting forever: a failed deploy --serve removes what it started.
        try:
            stop_on(t, options.port, facts, base)
        except DeviceFailure:
            pass
        raise
    service.update(pid=health["health"].get("pid"), local_url=local_url,
                   url=f"http://{_public(options.settings.host, device_host)}:{options.port}")
    return service


def unit_file(build, argv: list[str], where: str, settings: Settings, system: bool) -> str:
    """The systemd unit: restarted on failure, stopped by SIGTERM with time to drain."""
    name = build.manifest.get("name")
    # Hardening that needs no knowledge of where the build lives (it may be under /tmp or /home):
    # the server reads its files and writes nothing (systemd.exec(5)).
    hardening = "NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=read-only\n" if system else "NoNewPrivileges=yes\n"
    return (f"# Written by edgekit deploy --serve: {name} for {build.manifest.get('target')} ({build.artifact.name},\n"
            f"# sha256 {build.sha256}).\n# `edgekit deploy --serve stop --port {settings.port}` removes it.\n"
            "[Unit]\n"
            f"Description=edgekit model server: {name} ({build.format}) on port {settings.port}\n"
            "After=network-online.target\nWants=network-online.target\n\n"
            "[Service]\n"
            "Type=exec\n"
            f"WorkingDirectory={where.replace('%', '%%')}\n"  # a path as is: systemd takes no quotes here
            f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}\n"
            "Restart=on-failure\nRestartSec=1\n"
            f"TimeoutStopSec={settings.drain_seconds + 10}\n"
            f"{hardening}\n"
            "[Install]\n"
            f"WantedBy={'multi-user.target' if system else 'default.target'}\n")


def _systemd_quote(arg: str) -> str:
    """One ExecStart word (systemd.service(5) "Command lines"): specifiers and variables escaped."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"' if any(c in escaped for c in " \t'\"") or not escaped else escaped


def _systemctl(system: bool) -> str:
    prefix = "" if system else 'XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/run/user/$(id -u)}" '
    return prefix + ("systemctl" if system else "systemctl --user")


def wait_healthy(t: Transport, python: str, url: str, seconds: float, build, service: dict) -> dict:
    done = t.run([python, "-c", _WAIT_PY, url, f"{seconds:g}"], timeout=seconds + 30)
    doc = last_json(done.stdout) or {}
    if not doc.get("ok"):
        raise DeviceFailure(f"the server on {t.name} did not answer {url}/healthz within {seconds:g} s: "
                            f"{doc.get('error', done.tail() or 'no answer')}",
                            hint=f"its log on the device: {service['log']}", stage="serve", detail=done.tail())
    if doc.get("sha256") != build.sha256:
        raise DeviceFailure(f"{url} on {t.name} serves another artifact (sha256 {str(doc.get('sha256'))[:12]}, "
                            f"this build's is {build.sha256[:12]})",
                            hint="another program holds this port: stop it, or pass another --port", stage="serve")
    return doc


def stop_on(t: Transport, port: int, facts: dict, base: str) -> list[str]:
    """Stop and remove what edgekit runs on `port` (a unit, a supervisor); returns what was stopped."""
    unit = unit_name(port)
    stopped = []
    if facts["manager"].startswith("systemd"):
        system = facts["manager"] == "systemd-system"
        path = f"{facts['units']}/{unit}"
        if t.run(["test", "-f", path]).returncode == 0:
            ctl = _systemctl(system)
            t.check(["sh", "-c", f'{ctl} disable --now "$1"; rm -f "$2" && {ctl} daemon-reload', "sh", unit, path],
                    f"stopping {unit}", stage="serve", timeout=STOP_TIMEOUT)
            stopped.append(path)
    pidfile = f"{base}/serve-{port}.pid"
    # The supervisor passes SIGTERM on and waits for the server to drain; wait for it to go.
    script = ('pid=$(cat "$1" 2>/dev/null) || exit 3; kill -TERM "$pid" 2>/dev/null || { rm -f "$1"; exit 3; }; '
              'i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 400 ]; do sleep 0.1; i=$((i+1)); done; '
              'kill -0 "$pid" 2>/dev/null && exit 1; rm -f "$1"; exit 0')
    done = t.run(["sh", "-c", script, "sh", pidfile], timeout=STOP_TIMEOUT)
    if done.returncode == 0:
        stopped.append(pidfile)
    elif done.returncode == 1:
        raise DeviceFailure(f"the server on port {port} of {t.name} did not stop within 40 s of SIGTERM",
                            hint=f"stop it by hand (its supervisor's pid is in {pidfile})", stage="serve")
    return stopped


def stop(t: Transport, port: int, base: str) -> dict:
    """`deploy --serve stop`: {"stopped": [...]}; nothing running there is not an error."""
    facts = detect(t)
    home = facts.get("home") or ""
    base = base if base.startswith("/") else f"{home}/{base}"
    return {"manager": facts["manager"], "port": port, "stopped": stop_on(t, port, facts, base)}


def _loopback(listen: str) -> str:
    return "127.0.0.1" if listen in ("0.0.0.0", "") else "[::1]" if listen == "::" else listen


def _public(listen: str, device_host: str) -> str:
    """The address to reach the server at from elsewhere: the device's own when it listens on all."""
    if listen in ("0.0.0.0", "::", ""):
        return device_host
    return listen
