"""Adaptive scaling (``lamina.deploy._autoscale``): usage read from the cgroups of real
containers under generated load (busy-looping replicas read as busy, idle ones as
idle, memory held in a replica's tmpfs as its share of the limit), and the pure
decision with its tolerance, bounds and cooldown."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from leak_check import assert_clean
from runtime_fixtures import IMAGE_REF, cli_image_root, config, remove_all_containers, until

from lamina.deploy._autoscale import Autoscaler, Sampler, Usage, decide, sample
from lamina.deploy._model import AdaptiveScale, ScaleTargets
from lamina.engine import Engine, Resources, open_engine

pytestmark = pytest.mark.timeout(180)

BUSY = ("sh", "-c", "while :; do :; done")
IDLE = ("sleep", "1000")


@dataclass
class Targets:
    cpu: int | None = None
    memory: int | None = None


def usage(cpu: float = 0.0, memory: float = 0.0, replicas: int = 1) -> Usage:
    return Usage(cpu_percent=cpu, memory_percent=memory, replicas=replicas)


# -- the decision (pure) ----------------------------------------------------------------


def test_decide_scales_up_on_the_busiest_target() -> None:
    t = Targets(cpu=50, memory=80)
    assert decide(2, 1, 10, t, usage(cpu=100, memory=10), None, 100.0, 30) == 4
    assert decide(2, 1, 10, t, usage(cpu=10, memory=100), None, 100.0, 30) == 3  # 2*1.25
    assert decide(2, 1, 10, t, usage(cpu=56, memory=10), None, 100.0, 30) == 3  # one at least
    assert decide(2, 1, 3, t, usage(cpu=400), None, 100.0, 30) == 3  # never above max


def test_decide_holds_inside_the_tolerance_and_scales_down_when_well_below() -> None:
    t = Targets(cpu=50)
    assert decide(4, 1, 10, t, usage(cpu=54), None, 100.0, 30) == 4
    assert decide(4, 1, 10, t, usage(cpu=40), None, 100.0, 30) == 4  # 4*0.8/0.9 -> 4
    assert decide(4, 1, 10, t, usage(cpu=20), None, 100.0, 30) == 2  # 4*0.4/0.9 -> 2
    assert decide(4, 1, 10, t, usage(cpu=0), None, 100.0, 30) == 1  # never below min
    assert decide(4, 0, 10, t, usage(cpu=0), None, 100.0, 30) == 0
    # A count chosen on the way down is not scaled up again by the same load.
    down = decide(6, 1, 10, t, usage(cpu=25), None, 100.0, 30)
    assert decide(down, 1, 10, t, usage(cpu=25 * 6 / down), None, 100.0, 30) == down


def test_decide_respects_the_cooldown_but_not_for_bounds() -> None:
    t = Targets(cpu=50)
    busy = usage(cpu=100)
    assert decide(2, 1, 10, t, busy, last_change=90.0, now=100.0, cooldown=30) == 2
    assert decide(2, 1, 10, t, busy, last_change=69.0, now=100.0, cooldown=30) == 4
    assert decide(12, 1, 10, t, busy, last_change=99.0, now=100.0, cooldown=30) == 10
    assert decide(0, 2, 10, t, busy, last_change=99.0, now=100.0, cooldown=30) == 2


def test_decide_without_targets_or_replicas_keeps_the_count() -> None:
    assert decide(3, 1, 10, Targets(), usage(cpu=100), None, 100.0, 0) == 3
    assert decide(3, 1, 10, Targets(cpu=50), usage(cpu=100, replicas=0), None, 100.0, 0) == 3


# -- usage of real containers -----------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = cli_image_root(tmp_path_factory, "autoscale")
    with open_engine(root) as eng:
        yield eng
    remove_all_containers(root)
    assert_clean(root, set())


def start(engine: Engine, *cmd: str, resources: Resources | None = None) -> str:
    image = engine.images.require(IMAGE_REF).id
    c = engine.create(config(image, *cmd, resources=resources or Resources()))
    engine.start(c.id)
    return c.id


def test_busy_replicas_read_high_and_idle_ones_low(engine: Engine) -> None:
    # A fifth of a core each: a busy loop uses all of its limit, whatever else the
    # machine's two cores are doing.
    limit = Resources(cpus=0.2)
    busy = [start(engine, *BUSY, resources=limit) for _ in range(2)]
    idle = [start(engine, *IDLE, resources=limit) for _ in range(2)]
    try:
        hot = sample(engine, busy, window=1.0)
        cold = sample(engine, idle, window=1.0)
        mixed = sample(engine, busy + idle, window=1.0)
        assert hot.replicas == 2 and cold.replicas == 2 and mixed.replicas == 4
        assert hot.cpu_percent > 60, hot
        assert cold.cpu_percent < 10, cold
        assert 25 < mixed.cpu_percent < 60, mixed
        # What the daemon would do with them at a 50 % target.
        t = Targets(cpu=50)
        assert decide(2, 1, 5, t, hot, None, 0.0, 30) > 2
        assert decide(2, 1, 5, t, cold, None, 0.0, 30) == 1
    finally:
        for cid in busy + idle:
            engine.remove(cid, force=True)


def test_memory_is_read_against_the_limit(engine: Engine) -> None:
    fill = "head -c 16000000 /dev/zero > /dev/shm/fill && touch /tmp/full && sleep 1000"
    holder = start(engine, "sh", "-c", fill, resources=Resources(memory=64 * 1024 * 1024))
    light = start(engine, *IDLE, resources=Resources(memory=64 * 1024 * 1024))
    try:
        until(lambda: engine.exec(holder, ["test", "-e", "/tmp/full"]).exit_code == 0, 30)
        full = sample(engine, [holder])
        assert 20 < full.memory_percent < 60, full  # 16 MB of 64 MiB, and the shell
        assert sample(engine, [light]).memory_percent < 10
        assert decide(1, 1, 4, Targets(memory=10), full, None, 0.0, 0) > 1
    finally:
        for cid in (holder, light):
            engine.remove(cid, force=True)


def test_gone_replicas_are_left_out(engine: Engine) -> None:
    cid = start(engine, *IDLE)
    sampler = Sampler()
    both = [cid, "no-such-container"]
    assert sampler.read(engine, both).replicas == 0  # nothing to compare with yet
    assert sampler.read(engine, both).replicas == 0  # too short a window
    until(lambda: sampler.read(engine, both).replicas == 1, 10)
    engine.remove(cid, force=True)
    assert sampler.read(engine, [cid]) == Usage(0.0, 0.0, 0)


def test_the_autoscaler_scales_busy_replicas_up_then_waits_its_cooldown(engine: Engine) -> None:
    busy = [start(engine, *BUSY, resources=Resources(cpus=0.2)) for _ in range(2)]
    scale = AdaptiveScale(min=1, max=5, cooldown=3600,
                          targets=ScaleTargets(cpu=50))  # fmt: skip
    scaler, fresh = Autoscaler(), Autoscaler()
    try:
        # First sight: no usage yet.
        assert scaler.replicas(engine, "shop", "api", scale, busy, 2, now=0.0) == 2
        assert fresh.replicas(engine, "shop", "api", scale, busy, 2, now=0.0) == 2
        # Busy, so up (as soon as a window of usage is there)...
        until(lambda: scaler.replicas(engine, "shop", "api", scale, busy, 2, now=4000.0) > 2, 20)
        # ...and not again within the cooldown, busy as they are.
        assert sample(engine, busy).cpu_percent > 60  # a window goes by
        assert scaler.replicas(engine, "shop", "api", scale, busy, 3, now=4001.0) == 3
        # A service seen for the first time counts as just changed (a restarted daemon).
        assert fresh.replicas(engine, "shop", "api", scale, busy, 2, now=10.0) == 2
        fresh.forget("shop")
        assert fresh._samplers == {} and fresh._changed == {}
    finally:
        for cid in busy:
            engine.remove(cid, force=True)
