"""Staged rollout of firmware releases: publish, rollout, step, halt, status.

Evidence comes from a real store: node_status frames signed by simulated nodes go
through the gateway's own pipeline (verify, anonymise, outbox, forwarder) into the
sqlite local store or VictoriaMetrics, and the gateway's `ota` points through its outbox,
as the gateway's OTA server records them (docs/ota.md §3).  Time is injected: a rollout
of hours runs in milliseconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dordt.cli import main as dordt_main
from firmware import protocol
from fleet.offers import OTA_STATES
from fleet.registry import Registry
from fleet.rollout import (
    FleetNode,
    Release,
    RolloutBook,
    RolloutError,
    Rollouts,
    RolloutSettings,
    StatusSample,
    StoreEvidence,
    _error_rise,
    fleet_nodes,
    plan_rollout,
    publish,
    version_code,
)
from gateway.forward.influx import InfluxStore
from gateway.forward.local import LocalStore
from gateway.model import Envelope, Point
from gateway.pipeline import Gateway
from hardware.sites import NodePlacement
from simulators.fleet import SimNode
from simulators.framegen import sim_key
from tests.data import PASSTHROUGH
from tests.fleet.release_fixture import make_release, write_public_key

T0 = 1_790_000_000
SEED = 3
MASTER_KEY = bytes(range(32))
OLD = version_code("0.1.0")
NEW = version_code("1.2.0")
# spoorzone: a canary and two more; maasterras: two; gateways one per zone
NODES = {
    "00c10001": ("air", "spoorzone", "spz-01"),
    "00c10002": ("air", "spoorzone", "spz-02"),
    "00c10003": ("noise", "spoorzone", "spz-03"),
    "00c10004": ("air", "maasterras", "mst-01"),
    "00c10005": ("crowd", "maasterras", "mst-02"),
}
GATEWAYS = {"gw-spz": "spoorzone", "gw-mst": "maasterras"}


# -- the fleet, the gateway and the store ---------------------------------------------------


def make_registry(path: Path) -> Registry:
    """The registry's own calls: zones from the zones file, gateways, nodes whose keys are
    the simulated nodes' keys (so the gateway's keyring comes from the registry)."""
    reg = Registry.open(path, MASTER_KEY, create=True)
    reg.sync_zones()
    for name, zone in GATEWAYS.items():
        reg.add_gateway(name, zone)
    for node, (kind, zone, site) in NODES.items():
        reg.add_node(node, kind, zone, site, sim_key(SEED, int(node, 16)),
                     hardware="esp32-s3-devkitc-1", firmware="0.1.0")
    return reg


class Field:
    """The nodes and a gateway writing their signed status frames and `ota` points to a
    store through its own pipeline."""

    def __init__(self, registry: Registry, store, data_dir: Path):
        self.nodes = {node: SimNode(NodePlacement(int(node, 16), kind, zone, site), seed=SEED)
                      for node, (kind, zone, site) in NODES.items()}
        # one gateway stands in for both: the store is the same, the points name gw-spz
        self.gateway = Gateway(registry.keyring(), store, data_dir, gateway_id="gw-spz",
                               policy_path=PASSTHROUGH)

    def status(self, node: str, t: int, firmware: int, errors: int = 0) -> None:
        sim = self.nodes[node]
        frame = sim.encode({"uptime_s": 60, "firmware_version": firmware,
                            "error_count": errors}, t, 10, protocol.FLAG_STATUS)
        results = self.gateway.process([Envelope("mqtt", sim.topic, frame, t)])
        assert all(type(r).__name__ == "Reading" for r in results), results
        self._drain()

    def ota(self, node: str, t: int, serial: int, state: str) -> None:
        zone = NODES[node][1]
        self.gateway.outbox.add_point(Point(
            "ota", {"zone": zone, "node": node, "gateway": "gw-spz"},
            {"serial": float(serial), "state": float(OTA_STATES[state]),
             "version": float(NEW)}, t))
        self._drain()

    def _drain(self) -> None:
        while self.gateway.forwarder.drain_once():
            pass

    def close(self) -> None:
        self.gateway.stop(drain_timeout_s=1)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def fleet(tmp_path, key):
    """Registry with release 7 (1.2.0) published, a local store, offers directory."""
    reg = make_registry(tmp_path / "fleet.sqlite")
    write_public_key(tmp_path / "release.pub", key)
    book = RolloutBook(reg.db)
    publish(book, make_release(tmp_path / "r7", key, 7), load_key(tmp_path), tmp_path /
            "releases", T0 - 100)
    store_path = tmp_path / "store.sqlite"
    field = Field(reg, LocalStore(store_path), tmp_path / "gw")
    rollouts = Rollouts(book, tmp_path / "offers", StoreEvidence(f"sqlite:{store_path}"))
    yield reg, field, rollouts, tmp_path
    field.close()
    reg.close()


def load_key(tmp_path):
    from fleet.rollout import load_public_key

    return load_public_key(tmp_path / "release.pub")


def offers(tmp_path: Path) -> dict[str, list[str]]:
    """gateway -> the nodes its offers file names (for release 7)."""
    out = {}
    for path in sorted((tmp_path / "offers").glob("*/offers.json")):
        doc = json.loads(path.read_text())
        assert doc["format"] == "dordt-ota-offers" and doc["version"] == 1
        out[path.parent.name] = [o["node"] for o in doc["offers"] if o["serial"] == 7]
    return out


def start(reg, rollouts, **kw):
    kw.setdefault("canaries", ["00c10001"])
    settings = RolloutSettings(canary_timeout_s=600, stage_timeout_s=1800,
                               max_error_rise=kw.pop("max_error_rise", 3))
    return rollouts.start(7, fleet_nodes(reg), T0, settings=settings,
                          store_spec="sqlite:x", **kw)


# -- the stages --------------------------------------------------------------------------------


def test_canaries_confirm_then_one_zone_then_all_zones(fleet):
    reg, field, rollouts, tmp = fleet
    for node in NODES:
        field.status(node, T0 - 50, OLD, errors=2)
    result = start(reg, rollouts)
    assert result.stage_name == "canary" and "00c10001" in result.line
    assert offers(tmp) == {"gw-spz": ["00c10001"], "gw-mst": []}

    field.ota("00c10001", T0 + 20, 7, "downloading")
    before = (tmp / "offers" / "gw-spz" / "offers.json").read_bytes()
    assert rollouts.step(7, T0 + 30).waiting == ("00c10001",)
    canary = rollouts.status(7)["rollout"]["nodes"][0]
    assert (canary["node"], canary["ota_state"], canary["ota_s"]) == ("00c10001",
                                                                      "downloading", T0 + 20)
    # nothing changed: the file is not rewritten (a gateway re-reads it on every change)
    assert (tmp / "offers" / "gw-spz" / "offers.json").read_bytes() == before
    field.status("00c10001", T0 + 100, NEW, errors=0)  # restarted into 1.2.0
    result = rollouts.step(7, T0 + 110)
    assert result.state == "running" and result.stage_name == "zone spoorzone"
    assert offers(tmp) == {"gw-spz": ["00c10002", "00c10003"], "gw-mst": []}

    field.status("00c10002", T0 + 200, NEW)
    assert rollouts.step(7, T0 + 210).waiting == ("00c10003",)
    assert offers(tmp) == {"gw-spz": ["00c10003"], "gw-mst": []}
    field.status("00c10003", T0 + 220, NEW, errors=1)
    result = rollouts.step(7, T0 + 230)
    assert result.stage_name == "zones maasterras"
    assert offers(tmp) == {"gw-spz": [], "gw-mst": ["00c10004", "00c10005"]}

    field.status("00c10004", T0 + 300, NEW)
    field.status("00c10005", T0 + 310, NEW)
    result = rollouts.step(7, T0 + 320)
    assert result.state == "done" and "every node confirmed" in result.line
    assert offers(tmp) == {"gw-spz": [], "gw-mst": []}
    doc = rollouts.status(7)["rollout"]
    assert doc["nodes_by_state"] == {"confirmed": 5}


def test_a_canary_that_never_confirms_halts_before_the_rest_of_its_zone(fleet):
    reg, field, rollouts, tmp = fleet
    seen: dict[str, set] = {}

    def look():
        for gw, nodes in offers(tmp).items():
            seen.setdefault(gw, set()).update(nodes)

    start(reg, rollouts, canaries=["00c10002"])
    look()
    for t in range(T0 + 60, T0 + 600, 60):  # it keeps running the old release
        field.status("00c10002", t, OLD)
        field.ota("00c10002", t, 7, "downloading")
        assert rollouts.step(7, t).state == "running"
        look()
    result = rollouts.step(7, T0 + 600)
    look()
    assert result.state == "halted"
    assert "00c10002 did not confirm 1.2.0 within 600 s" in result.line
    assert "withdrawn from 1 node(s)" in result.line and "4 never offered" in result.line
    assert "\n" not in result.line
    assert seen == {"gw-spz": {"00c10002"}, "gw-mst": set()}  # never the rest of the zone
    assert offers(tmp) == {"gw-spz": [], "gw-mst": []}
    states = {n["node"]: n["state"] for n in rollouts.status(7)["rollout"]["nodes"]}
    assert states == {"00c10002": "withdrawn", "00c10001": "planned", "00c10003": "planned",
                      "00c10004": "planned", "00c10005": "planned"}
    # a step after the halt changes nothing
    field.status("00c10002", T0 + 700, NEW)
    assert rollouts.step(7, T0 + 710).state == "halted"
    assert offers(tmp) == {"gw-spz": [], "gw-mst": []}


def test_a_canary_whose_error_count_rises_halts_the_rollout(fleet):
    reg, field, rollouts, tmp = fleet
    field.status("00c10001", T0 - 30, OLD, errors=10)
    start(reg, rollouts, max_error_rise=3)
    field.status("00c10001", T0 + 60, NEW, errors=0)  # restarted: counter from 0
    assert rollouts.step(7, T0 + 70).stage_name == "zone spoorzone"
    # the zone is updating when the canary's errors climb
    field.status("00c10001", T0 + 120, NEW, errors=2)
    assert rollouts.step(7, T0 + 130).state == "running"
    field.status("00c10001", T0 + 180, NEW, errors=4)
    result = rollouts.step(7, T0 + 190)
    assert result.state == "halted"
    assert "canary 00c10001's error_count rose by 4 (limit 3)" in result.line
    assert offers(tmp) == {"gw-spz": [], "gw-mst": []}


def test_a_node_reporting_rolled_back_halts_at_once(fleet):
    reg, field, rollouts, tmp = fleet
    start(reg, rollouts)
    field.ota("00c10001", T0 + 40, 6, "failed")  # another release's failure does not count
    assert rollouts.step(7, T0 + 50).state == "running"
    field.ota("00c10001", T0 + 90, 7, "rolled_back")
    result = rollouts.step(7, T0 + 100)
    assert result.state == "halted" and "canary 00c10001 reported rolled_back" in result.line


def test_a_node_retired_or_revoked_during_the_rollout_is_not_waited_for(fleet):
    reg, field, rollouts, tmp = fleet
    start(reg, rollouts)
    field.status("00c10001", T0 + 60, NEW)
    assert rollouts.step(7, T0 + 70).stage_name == "zone spoorzone"
    reg.set_state("00c10003", "revoked")  # offered, never confirms
    reg.set_state("00c10005", "retired")  # planned for the last stage
    field.status("00c10002", T0 + 100, NEW)
    result = rollouts.step(7, T0 + 110)
    assert result.stage_name == "zones maasterras"
    assert offers(tmp) == {"gw-spz": [], "gw-mst": ["00c10004"]}
    field.status("00c10004", T0 + 200, NEW)
    assert rollouts.step(7, T0 + 210).state == "done"
    states = {n["node"]: n["state"] for n in rollouts.status(7)["rollout"]["nodes"]}
    assert states["00c10003"] == states["00c10005"] == "left"


def test_two_steps_at_once_move_the_rollout_once(fleet):
    """cron's step and an operator's watch, on two registry connections: the step that
    decided on a state another step has changed meanwhile changes nothing."""
    reg, field, rollouts, tmp = fleet
    start(reg, rollouts)
    field.status("00c10001", T0 + 60, NEW)
    other_reg = Registry.open(reg.path)
    other = Rollouts(RolloutBook(other_reg.db), tmp / "offers", rollouts.evidence)
    real_read = rollouts.evidence.read
    raced = []

    class Interleaved:
        def read(self, since, until):  # the other step runs while this one reads the store
            if not raced:
                raced.append(other.step(7, T0 + 70))
            return real_read(since, until)

    mine = Rollouts(rollouts.book, tmp / "offers", Interleaved())
    result = mine.step(7, T0 + 71)
    assert raced[0].stage_name == "zone spoorzone"
    assert "another step moved the rollout on" in result.line
    assert result.stage_name == "zone spoorzone"
    events = [m for _, m in rollouts.book.events(7)]
    assert sum(m.startswith("stage canary confirmed") for m in events) == 1
    assert sum(m.startswith("confirmed: 00c10001") for m in events) == 1
    other_reg.close()


def test_error_rise_counts_across_counter_resets():
    def samples(*counts):
        return [StatusSample(i, NEW, c) for i, c in enumerate(counts)]

    assert _error_rise(5, samples()) == 0
    assert _error_rise(5, samples(5, 6, 8)) == 3
    assert _error_rise(5, samples(0, 2)) == 2  # restarted at the switch
    assert _error_rise(5, samples(7, 1, 3)) == 2 + 1 + 2
    # no count before the offer: counted from the first one after it
    assert _error_rise(None, samples(40)) == 0
    assert _error_rise(None, samples(40, 43)) == 3


def test_plans_refuse_what_cannot_be_rolled_out(fleet):
    reg, _field, rollouts, _tmp = fleet
    with pytest.raises(RolloutError, match="canary 'ffffffff' is no active node"):
        start(reg, rollouts, canaries=["ffffffff"])
    with pytest.raises(RolloutError, match="release 9 is not published"):
        rollouts.start(9, fleet_nodes(reg), T0)
    with pytest.raises(RolloutError, match="--canary-timeout 0"):
        rollouts.start(7, fleet_nodes(reg), T0, settings=RolloutSettings(canary_timeout_s=0))
    start(reg, rollouts, zones=["spoorzone"])
    with pytest.raises(RolloutError, match="rolled out already"):
        start(reg, rollouts)
    # --zones spoorzone: maasterras is not part of it
    assert all(n["zone"] == "spoorzone" for n in rollouts.status(7)["rollout"]["nodes"])


def test_watch_steps_until_done_and_is_bounded(fleet):
    reg, field, rollouts, tmp = fleet
    start(reg, rollouts)
    clock = [T0]
    updated = []

    def sleep(s):  # the nodes update while the operator waits
        clock[0] += int(s)
        for node in NODES:
            if node not in updated:
                field.status(node, clock[0], NEW)
                updated.append(node)
                break

    seen = []
    result = rollouts.watch(7, clock=lambda: clock[0], sleep=sleep, interval_s=60,
                            max_steps=2, report=seen.append)
    assert len(seen) == 2 and result.state == "running"  # bounded: stopped at 2 steps
    result = rollouts.watch(7, clock=lambda: clock[0], sleep=sleep, interval_s=60,
                            max_steps=50)
    assert result.state == "done" and clock[0] < T0 + 60 * 50
    assert reg.node("00c10005")["firmware"] == "1.2.0"  # the registry knows what runs
    with pytest.raises(RolloutError, match="--max-steps 0"):
        rollouts.watch(7, max_steps=0)


def test_a_plan_leaves_out_nodes_the_release_is_not_for():
    release = Release(
        7, "1.2.0", False, ("air", "noise"), ("pico-w",), "0.1.0", 1, 0, "x")
    nodes = [FleetNode("00000001", "air", "maasterras", "pico-w", ("gw-m",)),
             FleetNode("00000002", "air", "spoorzone", "pico-w", ("gw-s",)),
             FleetNode("00000003", "crowd", "spoorzone", "pico-w", ("gw-s",)),
             FleetNode("00000004", "noise", "spoorzone", "esp32-s3-devkitc-1", ("gw-s",)),
             FleetNode("00000005", "noise", "spoorzone", None, ("gw-s",)),
             FleetNode("00000006", "air", "spuiboulevard", "pico-w", ()),
             FleetNode("00000007", "air", "spuiboulevard", "pico-w", ("gw-b", "gw-b2")),
             FleetNode("00000008", "air", "spuiboulevard", "pico-w", ("gw-b",), "1.3.0"),
             FleetNode("00000009", "air", "spuiboulevard", "pico-w", ("gw-b",), "0.0.9"),
             FleetNode("0000000a", "air", "spuiboulevard", "pico-w", ("gw-b",), "1.1.0")]
    plan = plan_rollout(release, nodes)  # default canary: the first node of the first zone
    assert [(name, [n.node for n in members]) for name, members in plan.stages] == [
        ("canary", ["00000001"]), ("zones spoorzone, spuiboulevard",
                                   ["00000002", "00000005", "00000007", "0000000a"])]
    assert dict(plan.skipped) == {
        "00000003": "the release is for kinds air, noise, the node is crowd",
        "00000004": "the release is for boards pico-w, the node is esp32-s3-devkitc-1",
        "00000006": "no active gateway serves it (its own or its zone's)",
        "00000008": "it runs 1.3.0, newer than 1.2.0 (not a rollback release)",
        "00000009": "it runs 0.0.9, below the release's min_firmware 0.1.0"}
    rollback = Release(8, "1.2.0", True, ("air",), ("pico-w",), "0.1.0", 1, 0, "y")
    assert "00000008" in [n.node for n in plan_rollout(rollback, nodes).nodes]
    plan = plan_rollout(release, nodes, canaries=["00000002"], zones=["spoorzone",
                                                                    "spuiboulevard"])
    assert [name for name, _ in plan.stages] == ["canary", "zone spoorzone",
                                                 "zones spuiboulevard"]
    with pytest.raises(RolloutError, match="canary 00000003 cannot take release 7: the "
                       "release is for kinds air, noise"):
        plan_rollout(release, nodes, canaries=["00000003"])
    with pytest.raises(RolloutError, match="not in --zones spoorzone"):
        plan_rollout(release, nodes, canaries=["00000001"], zones=["spoorzone"])


# -- the command line ----------------------------------------------------------------------


def run(capsys, *argv) -> tuple[int, str, str]:
    code = dordt_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_publish_refuses_a_bad_signature_a_changed_file_and_a_used_serial(
        tmp_path, key, capsys):
    make_registry(tmp_path / "fleet.sqlite").close()
    write_public_key(tmp_path / "release.pub", key)
    reg = ["--registry", str(tmp_path / "fleet.sqlite")]

    other = make_release(tmp_path / "other", Ed25519PrivateKey.generate(), 7)
    code, out, err = run(capsys, "fleet", "release", "publish", str(other), *reg)
    assert code == 1 and "signature does not verify" in err and "Traceback" not in err

    changed = make_release(tmp_path / "changed", key, 7)
    f = changed / "files" / "firmware" / "node.mpy"
    f.write_bytes(f.read_bytes()[:-1] + b"X")
    code, out, err = run(capsys, "fleet", "release", "publish", str(changed), *reg)
    assert code == 1 and "firmware/node.mpy does not match its SHA-256" in err

    good = make_release(tmp_path / "good", key, 7)
    code, out, err = run(capsys, "fleet", "release", "publish", str(good), *reg)
    assert code == 0 and "published release 7 (1.2.0" in out
    stored = tmp_path / "releases" / "7"
    assert (stored / "release.json").read_bytes() == (good / "release.json").read_bytes()
    assert (stored / "files" / "firmware" / "protocol.mpy").is_file()

    again = make_release(tmp_path / "again", key, 7, version="1.2.1")
    code, out, err = run(capsys, "fleet", "release", "publish", str(again), *reg)
    assert code == 1 and "serial 7 is already used by release 1.2.0" in err
    lower = make_release(tmp_path / "lower", key, 5, version="1.2.1")
    code, out, err = run(capsys, "fleet", "release", "publish", str(lower), *reg)
    assert code == 1 and "below the last published serial 7" in err
    assert not (tmp_path / "releases" / "5").exists()

    code, out, err = run(capsys, "fleet", "release", "status", "--json", *reg)
    assert code == 0
    assert [r["serial"] for r in json.loads(out)["releases"]] == [7]

    code, out, err = run(capsys, "fleet", "release", "publish", str(tmp_path / "nothing"),
                         *reg)
    assert code == 1 and "not a release directory" in err
    # the public key as `release key init` writes it (and nodes keep it): 64 hex digits
    code, out, err = run(capsys, "fleet", "release", "publish",
                         str(make_release(tmp_path / "r8", key, 8, version="1.2.1")), *reg,
                         "--public-key", str(tmp_path / "release.pub"))
    assert code == 0 and "published release 8 (1.2.1" in out
    (tmp_path / "bad.pub").write_text("not a key\n")
    code, out, err = run(capsys, "fleet", "release", "publish", str(good), *reg,
                         "--public-key", str(tmp_path / "bad.pub"))
    assert code == 1 and "not a release public key" in err and "Traceback" not in err


def test_cli_rollout_status_json_and_halt_withdraws_offers(tmp_path, key, capsys):
    make_registry(tmp_path / "fleet.sqlite").close()
    write_public_key(tmp_path / "release.pub", key)
    reg = ["--registry", str(tmp_path / "fleet.sqlite")]
    store = tmp_path / "store.sqlite"
    LocalStore(store).close()
    assert run(capsys, "fleet", "release", "publish", str(make_release(tmp_path / "r", key, 7)),
               *reg)[0] == 0
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store", f"sqlite:{store}",
                         "--canary", "00c10001,00c10004", "--canary-timeout", "900", *reg)
    assert code == 0, err
    assert offers(tmp_path) == {"gw-spz": ["00c10001"], "gw-mst": ["00c10004"]}

    code, out, err = run(capsys, "fleet", "release", "step", *reg)  # the running one
    assert code == 0 and "waiting for 2 node(s)" in out

    code, out, err = run(capsys, "fleet", "release", "status", "7", "--json", *reg)
    doc = json.loads(out)
    assert doc["release"]["version"] == "1.2.0" and doc["release"]["serial"] == 7
    r = doc["rollout"]
    assert r["state"] == "running" and r["stage_name"] == "canary"
    assert r["stages"] == ["canary", "zone spoorzone", "zones maasterras"]
    assert r["canary_timeout_s"] == 900 and r["nodes_by_state"] == {"offered": 2,
                                                                     "planned": 3}
    assert {n["node"]: n["gateways"] for n in r["nodes"]}["00c10004"] == ["gw-mst"]
    # the real entry point, in its own process, says the same
    proc = subprocess.run([sys.executable, "-m", "dordt.cli", "fleet", "release", "status", "7",
                           "--json", *reg], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout) == doc

    code, out, err = run(capsys, "fleet", "release", "halt", "7", *reg)
    assert code == 0 and "release 7 HALTED: halted by the operator" in out
    assert offers(tmp_path) == {"gw-spz": [], "gw-mst": []}
    code, out, err = run(capsys, "fleet", "release", "step", "7", *reg)
    assert code == 1 and "halted" in out
    assert run(capsys, "fleet", "release", "step", *reg)[1] == "no rollout is running\n"
    code, out, err = run(capsys, "fleet", "release", "status", *reg)
    assert code == 0 and "halted: halted by the operator" in out

    code, out, err = run(capsys, "fleet", "release", "watch", "7", "--max-steps", "3", *reg)
    assert code == 1 and out.count("\n") == 1 and "the rollout is halted" in out
    code, out, err = run(capsys, "fleet", "release", "halt", "8", *reg)
    assert code == 2 and "release 8 has no rollout" in err
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store", "sqlite:x.db",
                         "--canary", "XYZ", *reg)
    assert code == 2 and "'XYZ' is not a node id" in err


def test_cli_rollout_with_a_store_that_cannot_be_read_records_nothing(tmp_path, key, capsys):
    make_registry(tmp_path / "fleet.sqlite").close()
    write_public_key(tmp_path / "release.pub", key)
    reg = ["--registry", str(tmp_path / "fleet.sqlite")]
    assert run(capsys, "fleet", "release", "publish", str(make_release(tmp_path / "r", key, 7)),
               *reg)[0] == 0
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store",
                         f"sqlite:{tmp_path / 'missing.sqlite'}", *reg)
    assert code == 1 and "cannot read the store" in err and "nothing was changed" in err
    code, out, err = run(capsys, "fleet", "release", "status", "7", *reg)
    assert "not rolled out" in out and not (tmp_path / "offers").exists()
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store", "sqlite:x.db",
                         "--zones", "atlantis", *reg)
    assert code == 2 and "'atlantis' is not a zone of the registry" in err
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store",
                         "http://ops:s3cret@127.0.0.1:1", *reg)
    assert code == 2 and "without a user or password" in err and "s3cret" not in out + err
    code, out, err = run(capsys, "fleet", "release", "rollout", "7", "--store",
                         "http://127.0.0.1:1", *reg)  # nothing listens there
    assert code == 1 and "cannot read the store http://127.0.0.1:1" in err
    assert "Traceback" not in err


# -- VictoriaMetrics ---------------------------------------------------------------------------


@pytest.mark.services
def test_rollout_reads_its_evidence_from_victoriametrics(tmp_path, key, victoriametrics):
    vm = victoriametrics
    t0 = int(time.time()) - 1800  # inside VictoriaMetrics' retention
    reg = make_registry(tmp_path / "fleet.sqlite")
    write_public_key(tmp_path / "release.pub", key)
    book = RolloutBook(reg.db)
    publish(book, make_release(tmp_path / "r7", key, 7), load_key(tmp_path),
            tmp_path / "releases", t0)
    field = Field(reg, InfluxStore(vm.url), tmp_path / "gw")
    try:
        rollouts = Rollouts(book, tmp_path / "offers", StoreEvidence(vm.url))
        field.status("00c10001", t0 - 20, OLD, errors=1)
        vm.flush()
        rollouts.start(7, fleet_nodes(reg), t0, canaries=["00c10001"], store_spec=vm.url,
                       settings=RolloutSettings(canary_timeout_s=600, max_error_rise=2))
        assert book.nodes(7)[0]["baseline_errors"] == 1
        field.ota("00c10001", t0 + 10, 7, "staged")
        field.status("00c10001", t0 + 60, NEW, errors=0)
        vm.flush()
        assert rollouts.step(7, t0 + 70).stage_name == "zone spoorzone"
        assert offers(tmp_path)["gw-spz"] == ["00c10002", "00c10003"]
        field.ota("00c10003", t0 + 80, 7, "refused")
        vm.flush()
        result = rollouts.step(7, t0 + 90)
        assert result.state == "halted" and "node 00c10003 reported refused" in result.line
        assert offers(tmp_path) == {"gw-spz": [], "gw-mst": []}
    finally:
        field.close()
        reg.close()


# -- the offers file -----------------------------------------------------------------------


def test_offers_file_round_trip_and_refusals(tmp_path):
    from fleet.offers import OffersError, read_offers, write_offers

    path = tmp_path / "gw" / "offers.json"
    write_offers(path, [("0001001a", 7), ("0001001b", 7)], T0)
    assert read_offers(path) == [("0001001a", 7), ("0001001b", 7)]
    assert json.loads(path.read_text())["issued"] == T0
    assert path.stat().st_mode & 0o777 == 0o644
    bad = {
        "cannot be read": None,
        "not JSON": "{",
        "not an offers file": json.dumps({"format": "dordt-keyring", "version": 1}),
        "'offers' is not a list": json.dumps({"format": "dordt-ota-offers", "version": 1,
                                              "offers": {}}),
        "offer 1 is not": json.dumps({"format": "dordt-ota-offers", "version": 1,
                                      "offers": [{"node": "0001001a", "serial": 7},
                                                 {"node": "0001001A", "serial": 7}]}),
        "offer 0 is not": json.dumps({"format": "dordt-ota-offers", "version": 1,
                                      "offers": [{"node": "0001001a", "serial": "7"}]}),
    }
    for n, (message, text) in enumerate(bad.items()):
        p = tmp_path / f"{n}.json"
        if text is not None:
            p.write_text(text)
        with pytest.raises(OffersError, match=message):
            read_offers(p)


def resign(root: Path, key: Ed25519PrivateKey, change) -> Path:
    """release.json changed by `change(doc)` and signed again with the release key."""
    doc = json.loads((root / "release.json").read_bytes())
    change(doc)
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    (root / "release.json").write_bytes(body)
    (root / "release.sig").write_text(key.sign(body).hex() + "\n")
    return root


def test_publish_refuses_signed_manifests_that_do_not_add_up(tmp_path, key, monkeypatch):
    from fleet import rollout

    reg = make_registry(tmp_path / "fleet.sqlite")
    pub = write_public_key(tmp_path / "release.pub", key)
    book = RolloutBook(reg.db)
    cases = {
        # the node's own rules (firmware/ota_verify.py through fleet/release.py)
        "size is not the sum of its files": lambda d: d.update(size=d["size"] + 1),
        "does not name the slot's MANIFEST.json": lambda d: d.update(
            files=[f for f in d["files"] if f["path"] != "MANIFEST.json"]),
        "bad or repeated file path '../../etc/passwd'": lambda d: d["files"].append(
            {"path": "../../etc/passwd", "sha256": "0" * 64, "size": 0}),
        "release format 'dordt-keyring'": lambda d: d.update(format="dordt-keyring"),
        "serial is below 1": lambda d: d.update(serial=0),
        "is not a version M.m.p": lambda d: d.update(version="1.2"),
    }
    for n, (message, change) in enumerate(cases.items()):
        root = resign(make_release(tmp_path / f"r{n}", key, 7), key, change)
        with pytest.raises(rollout.ReleaseError, match=re.escape(message)):
            publish(book, root, rollout.load_public_key(pub), tmp_path / "releases", T0)
    assert book.releases() == []

    # a file that changes while it is copied: the copy is checked again, nothing published
    real_copy = rollout.shutil.copyfile

    def copy_then_change(src, dst):
        real_copy(src, dst)
        if str(dst).endswith("protocol.mpy"):
            Path(dst).write_bytes(b"changed")

    monkeypatch.setattr(rollout.shutil, "copyfile", copy_then_change)
    with pytest.raises(rollout.ReleaseError, match="changed while it was being published"):
        publish(book, make_release(tmp_path / "r", key, 7), rollout.load_public_key(pub),
                tmp_path / "releases", T0)
    assert book.releases() == [] and list((tmp_path / "releases").iterdir()) == []
    reg.close()
