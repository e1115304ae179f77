"""The command line: `run` (the box, in the foreground), `hosts`, `exec` and `cleanup`,
which work from the state directory and the running box's record in /run/flightdeck-box.
tests/box/box.py is its entry point; the usage is in that file's docstring."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .box import Box
from .hosts import leader_of
from .layout import PATH_ENV, POINTER, forget_running_box
from .network import teardown_network
from .shell import atomic_json, log


HERE = Path(__file__).resolve().parent.parent  # tests/box: rootfs.sh


def default_state(given: str | None) -> Path:
    if given:
        return Path(given).resolve()
    pointer = POINTER / "state"
    if pointer.exists():
        return Path(pointer.read_text().strip())
    sys.exit("box: no --state given and no box is running")


def read_hosts(state: Path) -> list[dict]:
    try:
        return json.loads((state / "hosts.json").read_text())
    except FileNotFoundError:
        return []


def cmd_run(args) -> int:
    if os.geteuid() != 0:
        sys.exit("box: run needs root")
    state = Path(args.state).resolve()
    state.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("FLIGHTDECK_CACHE", Path.home() / ".cache" / "flightdeck")) / "box"
    if args.rootfs:
        rootfs = Path(args.rootfs).resolve()
    else:
        out = subprocess.run([str(HERE / "rootfs.sh")], stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.exit(f"box: tests/box/rootfs.sh failed (exit {out.returncode})")
        rootfs = Path(out.stdout.strip().splitlines()[-1])
    if not (rootfs / "etc" / "os-release").exists():
        sys.exit(f"box: {rootfs} is not a root file system")
    for tool in ("systemd-nspawn", "nft", "nsenter", "ip", "openssl", "ssh-keygen"):
        if not shutil.which(tool):
            sys.exit(f"box: {tool} is missing (apt-get install systemd-container nftables "
                     "util-linux iproute2 openssl openssh-client)")
    box = Box(args.endpoint, state, args.region, rootfs, cache / "ca")

    def on_signal(signum, frame) -> None:
        if not box.stop_event.is_set():
            log(f"got {signal.Signals(signum).name}")
        box.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return box.run()


def cmd_hosts(args) -> int:
    state = default_state(args.state)
    for rec in read_hosts(state):
        lib = Path(rec["dir"]) / "root" / "var" / "lib" / "box"
        rec["userdata_started"] = None
        rec["userdata_exit"] = None
        try:
            rec["userdata_started"] = float((lib / "userdata-started").read_text())
        except (OSError, ValueError):
            pass
        try:
            rec["userdata_exit"] = (lib / "userdata-exit").read_text().strip()
        except OSError:
            pass
        print(json.dumps(rec))
    return 0


def cmd_exec(args) -> int:
    state = default_state(args.state)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("box: exec needs a command after --")
    rec = next((r for r in read_hosts(state)
                if args.target in (r["id"], r["ip"], r.get("public_ip"), r.get("hostname"))), None)
    if rec is None:
        sys.exit(f"box: no live host {args.target} in {state / 'hosts.json'}")
    leader = None
    deadline = time.monotonic() + 10
    while leader is None and time.monotonic() < deadline:
        leader = leader_of(rec["pid"]) if rec.get("pid") else None
        if leader is None:
            time.sleep(0.2)
    if leader is None:
        sys.exit(f"box: host {rec['id']} has no running container")
    env = ["env", "-i", f"PATH={PATH_ENV}", "HOME=/root", "USER=root", "LOGNAME=root",
           "LANG=C.UTF-8", f"TERM={os.environ.get('TERM', 'dumb')}"]
    argv = ["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *env,
            *command]
    os.execvp("nsenter", argv)
    return 127


def cmd_cleanup(args) -> int:
    pid_file = POINTER / "pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
            if "box.py" in Path(f"/proc/{pid}/cmdline").read_text():
                sys.exit(f"box: a box runs (pid {pid}): stop it with SIGTERM instead")
        except (ValueError, ProcessLookupError, FileNotFoundError):
            pass
    state = Path(args.state).resolve() if args.state else None
    if state is None and (POINTER / "state").exists():
        state = Path((POINTER / "state").read_text().strip())
    if state:
        for rec in read_hosts(state):
            pid = rec.get("pid")
            try:
                if pid and "systemd-nspawn" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)
                    log(f"killed the container of {rec['id']} (nspawn pid {pid})")
            except (OSError, ProcessLookupError):
                pass
        time.sleep(0.5)
    teardown_network(state)
    if state:
        atomic_json(state / "hosts.json", [])
    forget_running_box()
    log("cleaned up")
    return 0


def main(argv: list[str], usage: str) -> int:
    """The command line of tests/box/box.py; `usage` is that file's docstring."""
    parser = argparse.ArgumentParser(prog="box.py", description=usage.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="make the emulator's instances real hosts (foreground)")
    p.add_argument("--endpoint", required=True, help="the emulator, http://127.0.0.1:PORT")
    p.add_argument("--state", required=True, help="directory for the hosts' disks and logs")
    p.add_argument("--region", default="eu-west-2")
    p.add_argument("--rootfs", help="root file system directory (default: run rootfs.sh)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("hosts", help="the live hosts, as JSON lines")
    p.add_argument("--state")
    p.set_defaults(func=cmd_hosts)
    p = sub.add_parser("exec", help="run a command in a host")
    p.add_argument("--state")
    p.add_argument("target", help="instance id, private or public IP, or hostname")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser("cleanup", help="remove what a killed box left behind")
    p.add_argument("--state")
    p.set_defaults(func=cmd_cleanup)
    args = parser.parse_args(argv[1:])
    return args.func(args)
