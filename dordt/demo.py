"""The demo pipeline on embedded defaults: broker, simulated fleet, gateway, store.

Library code only; `dordt demo` (dordt/cli.py) presents it.  With no options it needs no
services: an in-process broker (amqtt) and a local SQLite store.  `broker_url` and
`store_spec` point it at real ones (Mosquitto, InfluxDB / VictoriaMetrics).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.embedded_broker import EmbeddedBroker
from gateway.forward import open_store
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet
from simulators.publish import FleetPublisher

# The shipped policy (gateway/policy.toml) withholds crowd windows shorter than 60 s; the
# demo's nodes report every couple of seconds, so it keeps small-count suppression and
# drops only the time resolution.
DEMO_POLICY = """\
version = 1
[defaults]
crowd_min_count = 5
crowd_noise_epsilon = 0.0
daily_epsilon_budget = 0.0
crowd_time_resolution_s = 0
noise_time_resolution_s = 0
"""


@dataclass
class DemoProgress:
    elapsed_s: float
    published: int
    accepted: int
    rejected: int
    buffered: int


@dataclass
class DemoResult:
    data_dir: Path
    broker_url: str
    store_spec: str
    published: int
    published_faults: int
    accepted: int
    rejected: Counter
    # (zone, kind) -> Counter of reasons, for frames from enrolled nodes; frames from
    # unknown or unreadable nodes under ("?", "?")
    rejected_by_zone_kind: dict
    forwarded: int
    buffered: int
    nodes: int
    drained: bool
    notes: list[str] = field(default_factory=list)


def run_demo(
    duration_s: float = 20.0,
    interval_s: float = 2.0,
    data_dir: str | Path = "dordt-demo",
    broker_url: str | None = None,
    store_spec: str | None = None,
    seed: int = 1,
    faults: bool = True,
    on_progress: Callable[[DemoProgress], None] | None = None,
) -> DemoResult:
    data_dir = Path(data_dir)
    # A fresh buffer and keyring each run; the local store is fresh too, so the summary
    # describes this run only.
    for name in ("outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "keyring.json",
                 "store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "privacy.sqlite",
                 "audit.log"):
        (data_dir / name).unlink(missing_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)

    fleet = SimFleet(seed=seed, status_every=5)
    keyring = fleet.keyring()
    keyring.save(data_dir / "keyring.json")

    broker = None
    if broker_url is None:
        broker = EmbeddedBroker().start()
        broker_url = broker.url
    store_spec = store_spec or f"sqlite:{data_dir / 'store.sqlite'}"
    store = open_store(store_spec)
    policy = data_dir / "demo-policy.toml"
    policy.write_text(DEMO_POLICY)
    gateway = Gateway(keyring, store, data_dir, broker_url, client_id=f"dordt-demo-gw-{seed}",
                      policy_path=policy)
    publisher = None
    drained = False
    try:
        gateway.start()
        if gateway.ingest is not None and not gateway.ingest.wait_connected(10):
            raise RuntimeError(f"the gateway could not connect to the broker at {broker_url}")
        publisher = FleetPublisher(fleet, broker_url, interval_s, faults,
                                   client_id=f"dordt-demo-fleet-{seed}")
        runner = threading.Thread(target=publisher.run, args=(duration_s,), daemon=True)
        start = time.monotonic()
        runner.start()
        while runner.is_alive():
            runner.join(0.5)
            if on_progress:
                on_progress(_progress(start, publisher, gateway))
        publisher.wait_acked(10)
        # Every frame the broker accepted is processed and the outbox is empty.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (gateway.stats.received >= publisher.published and gateway.queue.empty()
                    and gateway.outbox.depth() == 0):
                drained = True
                break
            time.sleep(0.1)
        if on_progress:
            on_progress(_progress(start, publisher, gateway))
    finally:
        if publisher is not None:
            publisher.stop()
            publisher.close()
        counters = gateway.outbox.counters() if gateway.outbox else {}
        buffered = gateway.outbox.depth()
        gateway.stop(drain_timeout_s=5)
        if broker is not None:
            broker.stop()
    return DemoResult(
        data_dir=data_dir,
        broker_url=broker_url,
        store_spec=store_spec,
        published=publisher.published if publisher else 0,
        published_faults=publisher.published_faults if publisher else 0,
        accepted=gateway.stats.accepted,
        rejected=gateway.stats.rejected,
        rejected_by_zone_kind=_by_zone_kind(gateway.stats.rejected_by_node, keyring),
        forwarded=counters.get("forwarded", 0),
        buffered=buffered,
        nodes=len(fleet.nodes),
        drained=drained,
    )


def _progress(start: float, publisher: FleetPublisher, gateway: Gateway) -> DemoProgress:
    return DemoProgress(
        elapsed_s=time.monotonic() - start,
        published=publisher.published,
        accepted=gateway.stats.accepted,
        rejected=sum(gateway.stats.rejected.values()),
        buffered=gateway.outbox.depth(),
    )


def _by_zone_kind(by_node: Counter, keyring) -> dict:
    out: dict = {}
    for (node, reason), n in by_node.items():
        entry = keyring.get(int(node, 16)) if node else None
        where = (entry.zone, entry.kind) if entry else ("?", "?")
        out.setdefault(where, Counter())[reason] += n
    return out


def clean(data_dir: str | Path) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
