"""pipeline: a group is acked only after it is durable; a failed commit acks nothing and
leaves no trace in the replay windows; state survives a restart."""

from __future__ import annotations

import pytest

from gateway.forward.local import LocalStore
from gateway.model import Envelope
from gateway.pipeline import Gateway
from simulators.fleet import SimFleet

NOW = 1_790_000_000


class Acks:
    def __init__(self):
        self.done = []

    def envelope(self, topic, payload):
        n = len(self.done)
        self.done.append(False)
        return Envelope("mqtt", topic, payload, NOW, lambda: self.done.__setitem__(n, True))


def make_gateway(fleet, tmp_path):
    return Gateway(fleet.keyring(), LocalStore(tmp_path / "store.sqlite"), tmp_path / "gw")


def test_a_group_is_acked_after_commit_and_reaches_the_store(tmp_path):
    fleet = SimFleet(seed=3)
    gw = make_gateway(fleet, tmp_path)
    acks = Acks()
    envs = [acks.envelope(t, f) for t, f in fleet.tick(NOW)]
    envs.append(acks.envelope(*next(iter(fleet.tick(NOW + 10)))))
    envs.append(acks.envelope(envs[-1].topic, envs[-1].payload))  # a replay, in-group
    gw.process(envs)
    assert all(acks.done)
    assert gw.stats.accepted == 28 and gw.stats.rejected == {"replay": 1}
    assert gw.outbox.depth() == 28
    while gw.forwarder.drain_once():
        pass
    assert gw.outbox.depth() == 0
    assert gw.outbox.counters() == {"received": 29, "accepted": 28, "rejected.replay": 1,
                                    "forwarded": 28, "batch.seq": 1}
    assert sum(LocalStore(tmp_path / "store.sqlite").count_by(("zone",)).values()) == 28
    gw.stop(0)


def test_a_failed_commit_acks_nothing_and_the_redelivery_is_accepted(tmp_path, monkeypatch):
    fleet = SimFleet(seed=3)
    gw = make_gateway(fleet, tmp_path)
    frames = list(fleet.tick(NOW))
    acks = Acks()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(gw.outbox, "commit", disk_full)
        with pytest.raises(OSError):
            gw.process([acks.envelope(t, f) for t, f in frames])
    assert not any(acks.done) and gw.outbox.depth() == 0
    # the broker redelivers the same frames: not replays, since none became durable
    acks = Acks()
    gw.process([acks.envelope(t, f) for t, f in frames])
    assert all(acks.done) and gw.stats.rejected == {} and gw.outbox.depth() == len(frames)
    gw.stop(0)


def test_replay_windows_survive_a_restart(tmp_path):
    fleet = SimFleet(seed=3)
    frames = list(fleet.tick(NOW))
    gw = make_gateway(fleet, tmp_path)
    gw.process([Envelope("mqtt", t, f, NOW) for t, f in frames])
    gw.stop(0)
    again = make_gateway(fleet, tmp_path)  # same data dir: a restarted gateway
    again.process([Envelope("mqtt", t, f, NOW) for t, f in frames])
    assert again.stats.rejected == {"replay": len(frames)}
    assert again.outbox.depth() == len(frames)  # the first run's, still waiting
    again.stop(0)
