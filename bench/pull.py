"""Pull benchmark (issue 2): lamina against podman and skopeo, alternating, one run.

An image of about 300 MB in 4 layers (half random bytes, half compressible text) is
generated with lamina's own layer writer, pushed to a docker-registry started on
127.0.0.1, then pulled again and again into fresh stores:

- ``lamina pull`` (download, verify, unpack into snapshots: all a container needs)
  against ``podman pull`` into a fresh podman storage (which also unpacks);
- lamina's transfer alone (download + verify into the content store) against
  ``skopeo copy docker://... oci:DIR``.

Prints each timing and the two median ratios. Goals: lamina/podman <= 0.5,
lamina-transfer/skopeo <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from registry_server import start_registry  # noqa: E402

sys.path.insert(0, str(HERE))
from _common import report, timed  # noqa: E402

from lamina._mount import unmount_under  # noqa: E402

LAYERS = 4
LAYER_BYTES = 75_000_000  # x4 = 300 MB uncompressed


def _text_block(rng: random.Random, size: int) -> bytes:
    words = [
        b"container",
        b"layer",
        b"registry",
        b"manifest",
        b"digest",
        b"overlay",
        b"snapshot",
        b"kernel",
        b"namespace",
        b"cgroup",
        b"runtime",
        b"image",
    ]
    out = bytearray()
    n = 0
    while len(out) < size:
        n += 1
        line = b"%08d " % n + b" ".join(rng.choice(words) for _ in range(12)) + b"\n"
        out += line
    return bytes(out[:size])


def generate_image(work: Path, root: Path, name: str) -> None:
    """Write the image with lamina's layer writer into ``root`` under ``name``."""
    from lamina.image import LocalImages, dump_json, write_layer
    from lamina.image import media as mt

    rng = random.Random(42)
    local = LocalImages.open(root)
    layers = []
    diff_ids = []
    for i in range(LAYERS):
        src = work / f"layer{i}"
        shutil.rmtree(src, ignore_errors=True)
        (src / f"data{i}" / "text").mkdir(parents=True)
        (src / f"data{i}" / "random.bin").write_bytes(rng.randbytes(LAYER_BYTES // 2))
        text = _text_block(rng, LAYER_BYTES // 2)
        chunk = len(text) // 200
        for j in range(200):
            (src / f"data{i}" / "text" / f"f{j:03d}.log").write_bytes(
                text[j * chunk : (j + 1) * chunk]
            )
        with local.content.writer(f"bench-layer-{i}") as w:
            w.truncate()
            written = write_layer(src, w)
            digest = w.commit()
        assert digest == written.digest
        layers.append({"mediaType": mt.OCI_LAYER_GZIP, "digest": digest, "size": written.size})
        diff_ids.append(written.diff_id)
        shutil.rmtree(src)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"bench layer {i}"} for i in range(LAYERS)],
    }
    config_bytes = dump_json(config)
    config_digest = local.content.add(config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layers,
    }
    manifest_digest = local.content.add(dump_json(manifest))
    local.images.put(local.record(manifest_digest), [name])
    local.close()


TRANSFER_ONLY = """
import sys
from pathlib import Path
from lamina.image import LocalImages
from lamina.registry import pull
local = LocalImages.open(Path(sys.argv[1]))
pull(local, sys.argv[2], policy="always", unpack=False)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "pull")
    args = parser.parse_args()

    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lamina = [sys.executable, "-m", "lamina.cli.main"]
    registry = start_registry(work / "registry")
    try:
        src_root = work / "src-root"
        ref = f"{registry.host}/bench/pull:latest"
        print("generating a ~300 MB image in 4 layers ...", flush=True)
        generate_image(work, src_root, ref)
        subprocess.run([*lamina, "--root", str(src_root), "push", "-q", ref], check=True)
        shutil.rmtree(src_root)

        results: dict[str, list[float]] = {"lamina": [], "podman": [], "transfer": [], "skopeo": []}
        for r in range(args.rounds):
            runs = {
                "lamina": lambda: timed([*lamina, "--root", str(work / "l"), "pull", "-q", ref]),
                "podman": lambda: timed(
                    [
                        "podman",
                        "--root",
                        str(work / "p"),
                        "--runroot",
                        str(work / "pr"),
                        "--storage-driver",
                        "overlay",
                        "pull",
                        "-q",
                        "--tls-verify=false",
                        ref,
                    ]
                ),
                "transfer": lambda: timed(
                    [sys.executable, "-c", TRANSFER_ONLY, str(work / "t"), ref]
                ),
                "skopeo": lambda: timed(
                    [
                        "skopeo",
                        "copy",
                        "-q",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"oci:{work / 's'}:latest",
                    ]
                ),
            }
            for name, run in runs.items():
                for d in ("l", "p", "pr", "t", "s"):
                    _wipe(work / d)
                subprocess.run(["sync"], check=False)
                results[name].append(run())
                print(f"round {r + 1}: {name:9s} {results[name][-1]:.3f} s", flush=True)
        for d in ("l", "p", "pr", "t", "s"):
            _wipe(work / d)
        med = {k: statistics.median(v) for k, v in results.items()}
        summary = {
            "median_s": med,
            "lamina/podman": med["lamina"] / med["podman"],
            "lamina-transfer/skopeo": med["transfer"] / med["skopeo"],
            "rounds": args.rounds,
        }
        report(
            "pull",
            summary,
            f"pull: lamina/podman = {summary['lamina/podman']:.2f} (goal <= 0.5); "
            f"transfer lamina/skopeo = {summary['lamina-transfer/skopeo']:.2f} (goal <= 1.2)",
        )
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


def _wipe(path: Path) -> None:
    if path.exists():
        unmount_under(path)  # podman's storage holds overlay mounts
        shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path.parent, exist_ok=True)


if __name__ == "__main__":
    main()
