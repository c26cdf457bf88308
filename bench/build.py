"""Image build benchmark (issue 4): ``lamina build`` against ``buildah bud`` on the same
two-stage Dockerfile of about ten steps (a COPY of 2,000 small files, several RUNs),
from the same busybox base image, alternating, in one run.

Per round and per tool, in this order (the tool going first alternates):

- cold: nothing cached: before it (untimed) the previous image and the build cache
  are removed (``lamina rmi`` + ``lamina builder prune``; ``buildah rmi`` + ``buildah
  rmi --prune``), leaving the base image; then ``lamina build --no-cache`` and
  ``buildah bud --layers --no-cache``. Both run every step and commit one layer per
  step, which is what makes a later warm build possible. Buildah's default
  (``--layers=false``: a single layer, no cache) is also timed and reported as
  ``buildah-nolayers``. (Without the clean-up, buildah's next ``--layers`` build
  misses the cache after a ``--no-cache`` build: it finds the older of two identical
  WORKDIR steps and follows that one.)
- warm: the same build again, nothing changed (lamina's default, buildah ``--layers``).
- edit: one of the 2,000 files changed, then rebuilt with the cache: the steps from the
  COPY on run again.

Goals: cold lamina/buildah <= 1.0, warm lamina/buildah <= 0.3. Prints both median
ratios and writes bench/results/build.json.

Run: ``.venv/bin/python bench/build.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lamina._mount import unmount_under  # noqa: E402

# The console script, as a user runs it (python -m would add runpy to start-up).
LAMINA = [str(Path(sys.executable).with_name("lamina"))]
BASE = "localhost/bench/base:latest"
TAG = "localhost/bench/app:latest"
FILES = 2000
CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
"""
DOCKERFILE = f"""\
FROM {BASE} AS builder
WORKDIR /src
COPY files/ /src/files/
RUN find files -type f | sort | xargs cat | md5sum > /src/files.md5
RUN mkdir -p /out && tar -cf /out/files.tar files && cp files.md5 /out/
RUN for i in $(seq 1 100); do echo "line $i" >> /out/log; done

FROM {BASE}
ENV APP=/app GREETING=hello
LABEL org.example.bench=build
COPY --from=builder /out/ /app/
RUN mkdir -p /app/data && tar -xf /app/files.tar -C /app/data && rm /app/files.tar
RUN echo "app:x:1000:1000::/app:/bin/sh" >> /etc/passwd && chown -R 1000 /app/data
USER 1000
WORKDIR /app
CMD ["/bin/sh", "-c", "cat /app/files.md5"]
"""


def make_context(ctx: Path) -> Path:
    """The Dockerfile and FILES small files (100 dirs of 20, 64 to 1,000 bytes)."""
    (ctx / "files").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    for i in range(FILES):
        d = ctx / "files" / f"d{i // 20:03d}"
        d.mkdir(exist_ok=True)
        size = 64 + (i * 7919) % 937
        line = f"file {i} of the benchmark context, deterministic filler text.\n"
        (d / f"f{i:04d}.txt").write_text((line * (size // len(line) + 1))[:size])
    return ctx


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr[-1500:]}")
    return elapsed, proc.stdout + proc.stderr


def lamina_cached(output: str) -> tuple[int, int]:
    """(steps, cached) from lamina's closing ``Built ID (N steps, M cached)`` line."""
    m = re.search(r"\((\d+) steps, (\d+) cached\)", output)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def buildah_cached(output: str) -> int:
    return output.count("Using cache")


def main() -> None:
    from lamina.testing import make_busybox_rootfs

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "build")
    args = parser.parse_args()
    work: Path = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lam = [*LAMINA, "--root", str(work / "lamina")]
    # as installed: compiled modules are cached (some CI shells set this variable)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    conf = work / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    benv = dict(os.environ, CONTAINERS_CONF=str(conf))
    bah = [
        "buildah",
        "--root",
        str(work / "buildah"),
        "--runroot",
        str(work / "buildah-run"),
        "--storage-driver",
        "overlay",
    ]
    bud = [
        *bah,
        "bud",
        "--format",
        "docker",
        "--runtime",
        "runc",
        "--network",
        "none",
        "--pull=never",
        "-t",
        TAG,
    ]
    ctx = make_context(work / "ctx")
    edited = ctx / "files" / "d050" / "f1000.txt"
    lbuild = [*lam, "build", "--progress", "plain", "-t", TAG]
    try:
        rootfs = make_busybox_rootfs(work / "rootfs")
        subprocess.run(
            [*lam, "import", str(rootfs), BASE, "-c", 'CMD ["/bin/sh"]'],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        archive = work / "base.tar"
        subprocess.run(
            [*lam, "save", "-o", str(archive), "--format", "docker-archive", BASE], check=True
        )
        subprocess.run(
            [*bah, "pull", "-q", f"docker-archive:{archive}"],
            check=True,
            env=benv,
            stdout=subprocess.DEVNULL,
        )
        # one untimed build each: page cache, python bytecode, storage dirs
        timed([*lbuild, "--no-cache", str(ctx)])
        timed([*bud, "--layers", "--no-cache", str(ctx)], benv)

        kinds = ("cold", "warm", "edit")
        times: dict[str, dict[str, list[float]]] = {k: {"lamina": [], "buildah": []} for k in kinds}
        times["cold"]["buildah-nolayers"] = []
        cached: dict[str, list[object]] = {"lamina": [], "buildah": []}

        def clean_lamina() -> None:
            subprocess.run([*lam, "rmi", TAG], capture_output=True)
            subprocess.run([*lam, "builder", "prune", "-f"], capture_output=True, check=True)

        def clean_buildah() -> None:
            subprocess.run([*bah, "rmi", TAG], env=benv, capture_output=True)
            subprocess.run([*bah, "rmi", "--prune"], env=benv, capture_output=True, check=True)

        def run_lamina(r: int) -> None:
            edited.write_text(f"round {r} lamina\n")
            clean_lamina()
            t, _ = timed([*lbuild, "--no-cache", str(ctx)])
            times["cold"]["lamina"].append(t)
            t, out = timed([*lbuild, str(ctx)])
            times["warm"]["lamina"].append(t)
            warm = lamina_cached(out)
            edited.write_text(f"round {r} lamina edited\n")
            t, out = timed([*lbuild, str(ctx)])
            times["edit"]["lamina"].append(t)
            cached["lamina"].append({"warm": warm, "edit": lamina_cached(out)})

        def run_buildah(r: int) -> None:
            edited.write_text(f"round {r} buildah\n")
            clean_buildah()
            t, _ = timed([*bud, "--layers", "--no-cache", str(ctx)], benv)
            times["cold"]["buildah"].append(t)
            t, out = timed([*bud, "--layers", str(ctx)], benv)
            times["warm"]["buildah"].append(t)
            warm = buildah_cached(out)
            edited.write_text(f"round {r} buildah edited\n")
            t, out = timed([*bud, "--layers", str(ctx)], benv)
            times["edit"]["buildah"].append(t)
            cached["buildah"].append({"warm": warm, "edit": buildah_cached(out)})
            clean_buildah()
            t, _ = timed([*bud, "--layers=false", str(ctx)], benv)
            times["cold"]["buildah-nolayers"].append(t)

        for r in range(args.rounds):
            order = (run_lamina, run_buildah) if r % 2 == 0 else (run_buildah, run_lamina)
            for fn in order:
                fn(r)
            print(
                f"round {r + 1}/{args.rounds}: "
                + "; ".join(
                    f"{k} lamina {times[k]['lamina'][-1]:.2f}s buildah "
                    f"{times[k]['buildah'][-1]:.2f}s"
                    for k in kinds
                ),
                flush=True,
            )

        med = {k: {tool: statistics.median(v) for tool, v in t.items()} for k, t in times.items()}
        ratios = {k: med[k]["lamina"] / med[k]["buildah"] for k in kinds}
        ratios["cold_vs_nolayers"] = med["cold"]["lamina"] / med["cold"]["buildah-nolayers"]
        summary = {
            "median_s": med,
            "ratios_lamina_over_buildah": ratios,
            "goals": {"cold": 1.0, "warm": 0.3},
            "cache_hits": cached,
            "rounds": args.rounds,
            "files": FILES,
            "times_s": times,
            "dockerfile": DOCKERFILE,
        }
        for k in kinds:
            print(
                f"{k:5s} median: lamina {med[k]['lamina']:.3f}s, buildah {med[k]['buildah']:.3f}s"
                f" -> lamina/buildah = {ratios[k]:.2f}"
            )
        print(
            f"cold  buildah --layers=false median {med['cold']['buildah-nolayers']:.3f}s"
            f" -> lamina/buildah-nolayers = {ratios['cold_vs_nolayers']:.2f}"
        )
        print(
            f"build: cold lamina/buildah = {ratios['cold']:.2f} (goal <= 1.0); "
            f"warm lamina/buildah = {ratios['warm']:.2f} (goal <= 0.3)"
        )
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "build.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        subprocess.run([*bah, "rm", "--all"], env=benv, capture_output=True)
        subprocess.run([*bah, "rmi", "--all", "-f"], env=benv, capture_output=True)
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
