"""Code a node runs only at start-up or in safe mode lives in modules it loads for the job
and drops after it (firmware.use_module / drop_module), so the heap of a node in service
holds none of it (docs/firmware-image.md): node_safe.py (safe mode), config_check.py (the
config checks and Config.describe), noise_design.py (a NoiseSampler's start-up) and
noise_kernels.py (the kernel texts); protocol_decode.py, the receiving side, a node never
loads.  What these tests check: the modules are gone when a node runs, under real
MicroPython; nothing kept by a running node still refers into a dropped module; and what
the node prints and sends is the same as when the code lived in node.py, config.py and
noise.py."""

import sys
from pathlib import Path

import pytest

from firmware import config, node, protocol
from firmware.measure import noise
from simulators import node_host

REPO = Path(__file__).resolve().parents[2]
NODE = 0x0D0A0007
KEY = bytes(range(0x40, 0x60))
STARTUP_MODULES = (
    "firmware.node_safe", "firmware.config_check", "firmware.measure.noise_design",
    "firmware.measure.noise_kernels", "firmware.protocol_decode",
)

_MP = r"""
import json, os, sys
from firmware import node
from simulators import node_host

STARTUP = STARTUP_MODULES
KEY = bytes(range(0x40, 0x60))
out = {}


def loaded():
    return [m for m in STARTUP if m in sys.modules]


# a crowd node in service, with its own sampler (no BLE: a fault bit, frames all the same)
os.mkdir("/flash-a")
hw = node_host.host_hardware("/flash-a", clock=node_host.SimClock())
node_host.enrol(hw.flash, 0x0D0A0007, "crowd", "spuiboulevard", "spui-9", KEY)
n = node.run(hw, max_ms=2 * 60000 + 500)
out["service_frames"] = len(hw.broker.published)
out["service_loaded"] = loaded()

# a node without a config: safe mode; enrolled after 90 s, it leaves safe mode
os.mkdir("/flash-b")
clock = node_host.SimClock()
hw = node_host.host_hardware("/flash-b", clock=clock)
seen = {}


def provision(t0, t1):
    if t0 < 90000 <= t1:
        seen["in_safe_mode"] = loaded()
        node_host.enrol(hw.flash, 0x0D0A0007, "crowd", "spuiboulevard", "spui-9", KEY)


clock.on_advance(provision)
n = node.run(hw, max_ms=4 * 60000)
out["safe_loaded"] = seen["in_safe_mode"]
out["after_safe_loaded"] = loaded()
out["after_safe_problems"] = n.safe_problems
out["after_safe_frames"] = len(hw.broker.published)
print(json.dumps(out))
"""


def _mp_files():
    return {"/lib/simulators/__init__.py": "",
            "/lib/simulators/node_host.py": (REPO / "simulators" / "node_host.py").read_text()}


@pytest.mark.micropython
def test_a_node_in_service_holds_no_start_up_or_safe_mode_module(micropython):
    code = "STARTUP_MODULES = %r\n" % (STARTUP_MODULES,) + _MP  # noqa: UP031
    out = micropython.run_json(code, files=_mp_files(), timeout_s=120)
    assert out["service_frames"] >= 3  # boot status and two windows
    assert out["service_loaded"] == []
    assert out["safe_loaded"] == ["firmware.node_safe"]  # the config is checked and dropped
    assert out["after_safe_problems"] is None and out["after_safe_frames"] >= 2
    assert out["after_safe_loaded"] == []


def test_a_counter_that_cannot_be_stored_means_safe_mode_saying_so(tmp_path, capsys):
    hw = node_host.host_hardware(str(tmp_path), clock=node_host.SimClock())
    node_host.enrol(hw.flash, NODE, "crowd", "spuiboulevard", "spui-9", KEY)

    def full(name, data):
        raise OSError(28, "No space left on device")

    hw.flash.replace = full
    n = node.run(hw, max_ms=90_000)
    out = capsys.readouterr().out
    assert n.safe_problems == ["cannot store the frame counter on flash (OSError: [Errno 28] "
                               "No space left on device): check the flash file system, then "
                               "reset"]
    assert "dordt: SAFE MODE, no frames are sent:\n  cannot store the frame counter" in out
    # the config itself is valid: each re-check (30 s) starts the node, which stops again
    assert out.count("dordt: SAFE MODE") == 3 and "leaving safe mode" in out
    assert hw.broker.published == [] and hw.net.clients == []


def test_the_config_is_described_for_people_without_its_secrets(tmp_path):
    hw = node_host.host_hardware(str(tmp_path), clock=node_host.SimClock())
    node_host.enrol(hw.flash, NODE, "noise", "spuiboulevard", "spui-9", KEY,
                    wifi={"ssid": "lamppost", "password": "hunter22"})
    text = config.load(hw.flash).describe()
    assert text.splitlines()[0] == (
        "node      0d0a0007  kind noise  zone spuiboulevard  site spui-9")
    assert "wifi      ssid 'lamppost'  password (set, not shown)" in text
    assert "hunter22" not in text and KEY.hex() not in text
    assert "firmware.config_check" not in sys.modules


def test_a_noise_kernel_keeps_nothing_of_the_start_up_module(tmp_path):
    class Hw:
        i2s = None

    sampler = noise.NoiseSampler(Hw(), {"viper": False})
    for kernel in (sampler._kernel,):
        names = kernel.__globals__
        kept = {k: getattr(v, "__module__", None) for k, v in names.items() if callable(v)}
        assert "firmware.measure.noise_design" not in kept.values(), kept
    assert "firmware.measure.noise_design" not in sys.modules
    assert sampler.kernel_kind == "reference"


def test_noise_options_are_still_checked_at_start_up():
    class Hw:
        i2s = None

    with pytest.raises(ValueError, match="unknown noise option 'gain'; known: bands, bits"):
        noise.NoiseSampler(Hw(), {"gain": 3})
    with pytest.raises(ValueError, match="sample_rate must be 32000..96000 Hz"):
        noise.NoiseSampler(Hw(), {"sample_rate": 16000})
    with pytest.raises(ValueError, match="bits must be 16 or 32, got 24"):
        noise.NoiseSampler(Hw(), {"bits": 24})


def test_the_receiving_side_is_still_named_from_protocol():
    # moved to protocol_decode.py with what only it uses; one object under both names
    from firmware import protocol_decode
    from firmware.protocol import FrameError

    assert FrameError is protocol_decode.FrameError is protocol.FrameError
    assert (protocol.TRUNCATED, protocol.OVERSIZED, protocol.BAD_VERSION, protocol.MALFORMED,
            protocol.BAD_TAG) == ("truncated", "oversized", "version", "malformed", "bad_tag")
    assert (protocol.REPLAY, protocol.TOO_OLD, protocol.REPLAY_WINDOW) == (
        "replay", "too_old", 64)
    assert protocol.HEADER_LEN == 19 and protocol.MIN_FRAME == 19 + 2 + protocol.TAG_LEN
    with pytest.raises(protocol.FrameError) as err:
        protocol.decode(b"\x01")
    assert err.value.reason == protocol.TRUNCATED
