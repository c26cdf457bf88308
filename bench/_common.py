"""What every benchmark script shares: timing a command and reporting ratios (work
dirs that may hold mounts are cleared with ``lamina._mount.unmount_under``)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Wall time of ``cmd``; a failing command ends the benchmark with its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr.decode()[-1500:]}")
    return elapsed


def report(name: str, summary: dict[str, Any], line: str) -> None:
    """Print the summary and its one-line verdict; keep it in bench/results/NAME.json."""
    print(json.dumps(summary, indent=2))
    print(line)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
