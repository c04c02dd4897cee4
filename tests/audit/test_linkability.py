"""The linkability audit on the real crowd firmware: the attacker does no better than
chance, the leaky baseline shows the game would see linkage, and the key checks fail on
a sampler that keeps its key."""

from __future__ import annotations

from audit.linkability import audit_linkability, equal_counts_identical, wilson
from dordt.cli import main
from firmware.measure import crowd


def test_an_attacker_with_everything_the_fleet_emits_links_no_better_than_chance():
    result = audit_linkability(trials=240, seed=3, key_seed=3)
    assert result.ok, result.lines()
    f = result.figures
    for group in ("static", "rotating", "all"):
        lo, hi = f[group]["ci95"]
        assert lo <= 0.5 <= hi, (group, f[group])
        assert f[group]["leaky_ci95"][0] > 0.9  # stable pseudonyms: linked almost always
    assert f["all"]["trials"] == 240 and f["key_checks"] == "ok"
    assert f["equal_counts_identical"] is True


def test_equal_count_populations_give_identical_output():
    assert equal_counts_identical(n=12)
    assert equal_counts_identical(n=40, rssi_dbm=-85)


def test_a_sampler_that_keeps_its_window_key_fails_the_key_checks(monkeypatch):
    real = crowd.CrowdSampler._rekey

    def rekey_once(self):
        if not getattr(self, "_audit_keyed_once", False):
            self._audit_keyed_once = True
            real(self)
        else:
            self.keys_used += 1  # claims a new key, keeps the old one

    monkeypatch.setattr(crowd.CrowdSampler, "_rekey", rekey_once)
    result = audit_linkability(trials=20, seed=1, key_seed=1)
    text = " ".join(f.message for f in result.findings)
    assert "still holds that window's key or key state" in text
    assert "used the same key in two windows" in text
    assert result.figures["key_checks"] == "failed"


def test_wilson_interval():
    assert wilson(50, 100) == (0.40382982859014716, 0.5961701714098528)
    assert wilson(0, 0) == (0.0, 1.0)


def test_the_command_states_the_attacker_model_and_the_numbers(capsys):
    assert main(["audit", "linkability", "--trials", "40"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Attacker model: holds every count and RSSI bin")
    assert "linkability: all holds" in out
    assert "all      phones: linked in" in out and "(95 % interval" in out
    assert main(["audit", "linkability", "--trials", "3"]) == 2
