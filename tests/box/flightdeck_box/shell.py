"""How the box touches this machine: its log line, commands (`sh`, `nft`), sysctl writes,
mounts and file writes. Knows nothing of hosts or of the emulator; the other modules
build on it."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(f"{stamp} box: {msg}", file=sys.stderr, flush=True)


def sh(*args: str, check: bool = True, quiet: bool = False, input: str | None = None) -> str:
    """Run a command; raise with its stderr when it fails (unless check=False)."""
    res = subprocess.run(args, capture_output=True, text=True, input=input)
    if res.returncode != 0:
        if check:
            raise RuntimeError(f"{' '.join(args)}: exit {res.returncode}: {res.stderr.strip()}")
        if not quiet:
            log(f"(ignored) {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def nft(rules: str, netns: str | None = None) -> None:
    cmd = ["nft", "-f", "-"]
    if netns:
        cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
    sh(*cmd, input=rules)


def write(path: Path, text: str, mode: int = 0o644) -> None:
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def atomic_json(path: Path, data) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.rename(path)


def sysctl(key: str, value: str) -> None:
    try:
        Path("/proc/sys", key).write_text(value)
    except OSError as err:
        log(f"sysctl {key}={value}: {err}")


def umount(path: Path) -> None:
    for _ in range(2):
        if not is_mounted(path):
            return
        res = subprocess.run(["umount", str(path)], capture_output=True, text=True)
        if res.returncode == 0:
            continue
        time.sleep(0.5)
    if is_mounted(path):
        sh("umount", "-l", str(path), check=False)


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)
