"""Micro-VM benchmark (issue 5): ``lamina run --rm --isolation vm IMAGE true`` (the
console script, as a user runs it) cold and with a matching snapshot present,
alternating, in one run; then where the time goes, from ``run_in_vm``'s timings
in-process: VMM start, kernel boot to /init, init to the agent's HELLO and workload
for a cold boot, state restore and agent configuration for a restored VM.

The snapshot is made once with ``lamina vm snapshot create`` (the defaults: what a
container gets); for the cold runs it is moved out of the store and back (a rename).
The image is a local busybox, never pulled.

Goals under TCG: cold run median <= 2.5 s; snapshot/cold <= 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402

LAMINA = [str(Path(sys.executable).with_name("lamina"))]
IMAGE = "bench/busybox:latest"
SNAPSHOT = "bench"


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in runs for k in r})
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def main() -> None:
    from lamina.image import LocalImages
    from lamina.testing import make_busybox_rootfs
    from lamina.vm._config import NetworkAttachment, VmConfig, generate_mac
    from lamina.vm._run import run_in_vm

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "vm")
    args = parser.parse_args()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    root = work / "lamina"
    lam = [*LAMINA, "--root", str(root)]
    run_cmd = [*lam, "run", "--rm", "--isolation", "vm", IMAGE, "true"]
    present = root / "vm" / "snapshots" / SNAPSHOT
    absent = work / "snapshot-away"
    load_start = os.getloadavg()[0]
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        subprocess.run([*lam, "import", str(rootfs), IMAGE], check=True, stdout=subprocess.DEVNULL)
        # First run on a new root: kernel extraction, agent, initramfs, EROFS, KVM probe.
        first = timed(run_cmd)
        t0 = time.perf_counter()
        subprocess.run(
            [*lam, "vm", "snapshot", "create", "--name", SNAPSHOT, IMAGE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        create_s = time.perf_counter() - t0
        (info,) = json.loads(
            subprocess.run(
                [*lam, "vm", "snapshot", "inspect", SNAPSHOT],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        timed(run_cmd)  # warm the snapshot's page cache

        cli: dict[str, list[float]] = {"cold": [], "snapshot": []}
        for _ in range(args.rounds):
            os.rename(present, absent)
            try:
                cli["cold"].append(timed(run_cmd))
            finally:
                os.rename(absent, present)
            cli["snapshot"].append(timed(run_cmd))
        med = {k: statistics.median(v) for k, v in cli.items()}

        # The container really starts from the snapshot (inspect tells).
        subprocess.run(
            [*lam, "run", "--name", "check", "--isolation", "vm", IMAGE, "true"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        inspected = json.loads(
            subprocess.run(
                [*lam, "inspect", "check"], check=True, capture_output=True, text=True
            ).stdout
        )
        restored_from = inspected[0]["VM"].get("RestoredFrom")
        subprocess.run([*lam, "rm", "check"], check=True, stdout=subprocess.DEVNULL)

        # In-process breakdown, the same machine as a container's.
        local = LocalImages.open(root)
        try:
            split: dict[str, list[dict[str, float]]] = {"cold": [], "snapshot": []}
            for _ in range(args.rounds):
                for kind, snap in (("cold", "none"), ("snapshot", "auto")):
                    config = VmConfig(
                        vcpus=1,
                        memory_mib=512,
                        networks=(NetworkAttachment("nat"),),
                        macs=(generate_mac(),),
                    )
                    result = run_in_vm(local, IMAGE, ["true"], config=config, snapshot=snap)
                    if result.exit_code != 0 or (kind == "snapshot") != bool(result.restored_from):
                        raise SystemExit(f"bench: unexpected {kind} run: {result}")
                    split[kind].append(result.timings)
        finally:
            local.close()
        breakdown = {k: medians(v) for k, v in split.items()}
        py = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(5))

        for k, v in med.items():
            print(f"{k:8s} CLI median {v:.3f} s")
        for k, b in breakdown.items():
            parts = ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in b.items())
            print(f"{k:8s} in-process: {parts}")
        summary = {
            "cli_median_s": med,
            "cli_runs_s": cli,
            "snapshot/cold": med["snapshot"] / med["cold"],
            "first_run_on_new_root_s": first,
            "snapshot_create_s": create_s,
            "snapshot_state_bytes": info["state_size"],
            "snapshot_boot_s": info["boot_seconds"],
            "snapshot_save_s": info["save_seconds"],
            "restored_from": restored_from,
            "in_process_median_s": breakdown,
            "cli_overhead_s": {k: med[k] - breakdown[k]["total"] for k in ("cold", "snapshot")},
            "python_floor_s": py,
            "accel": info["accel"],
            "rounds": args.rounds,
            "load_at_start": load_start,
            "load_at_end": os.getloadavg()[0],
        }
        report(
            "vm",
            summary,
            f"vm: cold run median {med['cold']:.2f} s (goal <= 2.5); snapshot/cold = "
            f"{summary['snapshot/cold']:.2f} (goal <= 0.5), {info['accel']}",
        )
    finally:
        if absent.exists() and not present.exists():
            os.rename(absent, present)
        subprocess.run(
            [*lam, "rm", "-f", "check"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
