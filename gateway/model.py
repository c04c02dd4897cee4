"""Types that travel between the gateway's stages, declared once.

ingest → Envelope → verify → Reading | Rejected → anonymise → Reading → buffer → forward
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Envelope:
    """Bytes as they arrived, before anything trusts them.

    `ack` is called once the reading it carried is durably committed (or the frame was
    rejected and counted); for MQTT that releases the broker's QoS 1 PUBACK.
    """

    source: str  # "mqtt", "serial", "ble", "replay"
    topic: str
    payload: bytes
    received_s: float
    ack: object = None  # callable() or None


@dataclass(slots=True)
class Reading:
    """One verified frame, as the store will see it.  Treat it as immutable (a stage that
    changes a reading makes a new one with dataclasses.replace); it is not frozen only
    because frozen dataclasses cost ~3x more to build, on the gateway's hot path."""

    node: str  # 8 lower-case hex digits (protocol.node_name)
    kind: str  # "air" | "noise" | "crowd"
    zone: str
    site: str
    counter: int
    time_s: int  # end of the measurement window, Unix seconds
    window_s: int
    fields: dict[str, float] = field(hash=False)
    status: bool = False  # a status frame (uptime, heap, ...) rather than a measurement
    time_estimated: bool = False  # node had no clock: the gateway stamped it on receipt
    # the reading's line-protocol text without its timestamp (forward.line_head), when
    # verify made it on the way; a stage that changes the fields makes a new Reading,
    # which starts without it
    head: str | None = field(default=None, compare=False, repr=False)

    @property
    def measurement(self) -> str:
        return "node_status" if self.status else self.kind

    @property
    def tags(self) -> dict[str, str]:
        return {"zone": self.zone, "site": self.site, "node": self.node, "kind": self.kind}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame the gateway refused; `reason` is a counter name (see verify.REASONS)."""

    reason: str
    detail: str
    source: str
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Point:
    """A store point that is not a node's reading: gap records, gateway heartbeats.
    Carries the same attributes the stores read from a Reading."""

    measurement: str
    tags: dict[str, str] = field(hash=False)
    fields: dict[str, float] = field(hash=False)
    time_s: int = 0

    @property
    def node(self) -> str:
        return self.tags.get("node") or self.tags.get("gateway", "-")

    @property
    def zone(self) -> str:
        return self.tags.get("zone", "-")

    @property
    def site(self) -> str:
        return self.tags.get("site", "-")

    @property
    def kind(self) -> str:
        return self.tags.get("kind", "gateway")
