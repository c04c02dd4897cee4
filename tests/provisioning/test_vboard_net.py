"""The virtual board's network (provisioning/vboard_net.py + board.mjs --net-fds) against a
real Mosquitto: the unmodified firmware/board.py UmqttClient (micropython-lib's
umqtt.simple over the ROM's `socket`) connects, publishes at QoS 1 and gets the PUBACK,
subscribes and receives; a receive past its timeout raises ETIMEDOUT within its time; a
broker that goes away gives an OSError, not a hang; a refused port is ECONNREFUSED, a
peer's reset ECONNRESET; any address but 127.0.0.1 is refused before any traffic;
killing, unplugging or soft resetting the board closes its TCP connections (the broker
logs them closed); Ctrl-C ends a socket call that waits; a link dropped mid-message
raises ECONNABORTED and the board reconnects; the unmodified node firmware publishes its
first frame.  Every read from the board has a timeout."""

import json
import os
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mpremote.transport_serial import SerialTransport

from dordt.errors import UserError
from provisioning import vboard_net
from provisioning.virtual_board import RECORDS_ENV, VirtualBoard, running_boards
from tests.fixtures.services import publish_qos1
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(120), pytest.mark.services, pytest.mark.micropython]


@pytest.fixture
def net_board(tmp_path, monkeypatch):
    """A started VirtualBoard whose Wi-Fi joins, with firmware/ in its flash at
    lib/firmware (as `dordt provision install` lays it out)."""
    assert vboard_net.umqtt_source() is not None, vboard_net.UMQTT_HINT
    monkeypatch.setenv(RECORDS_ENV, str(tmp_path / "records"))
    flash = tmp_path / "board-flash"
    shutil.copytree(REPO / "firmware", flash / "lib" / "firmware",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    board = VirtualBoard(flash, wifi=True)
    try:
        board.start()
    except UserError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield board
    finally:
        board.stop()


class Repl:
    """mpremote's SerialTransport in the raw REPL; globals persist between run() calls."""

    def __init__(self, board, soft_reset=False):
        self.t = SerialTransport(str(board.port), baudrate=115200)
        self.t.enter_raw_repl(soft_reset=soft_reset)

    def run(self, code, timeout_s=30):
        """Run `code`; its last printed line, parsed as JSON."""
        out, err = self.t.exec_raw(code, timeout=timeout_s)
        assert not err, err.decode()
        return json.loads(out.decode().splitlines()[-1])

    def close(self):
        try:
            self.t.exit_raw_repl()
        except Exception:  # noqa: BLE001  # the board may be gone on purpose
            pass
        try:
            self.t.close()
        except Exception:  # noqa: BLE001
            pass


@pytest.fixture
def repl(net_board):
    r = Repl(net_board)
    yield r
    r.close()


def host_subscriber(broker, topic):
    """A paho client subscribed to `topic` (QoS 1); its list of (topic, payload)."""
    got = []
    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="host-sub")
    client.on_message = lambda c, u, m: got.append((m.topic, m.payload))
    client.on_subscribe = lambda *a: ready.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.subscribe(topic, qos=1)
    assert ready.wait(10), "the host subscriber got no SUBACK"
    return client, got


def closed_in_log(broker, client_id, timeout_s=10):
    wait_until(lambda: f"Client {client_id} closed its connection" in broker.log_text()
               or f"Client {client_id} disconnected" in broker.log_text(),
               timeout_s, f"the broker to see {client_id} drop")


CONNECT = """
import json, time
from firmware import board
c = board.UmqttClient({cid!r}, '127.0.0.1', {port}, 30, None, timeout_s={timeout_s})
got = []
c.set_callback(lambda t, m: got.append([t.decode(), m.decode()]))
t0 = time.ticks_ms()
c.connect()
print(json.dumps({{'connect_ms': time.ticks_diff(time.ticks_ms(), t0)}}))
"""


def test_umqtt_connects_publishes_qos1_subscribes_and_receives(net_board, repl, mosquitto):
    host, got_on_host = host_subscriber(mosquitto, "vb/up/#")
    try:
        repl.run(CONNECT.format(cid="vb-node", port=mosquitto.port, timeout_s=5))
        # QoS 1: publish() returns only after the broker's PUBACK with the same packet id
        out = repl.run("""
t0 = time.ticks_ms()
for i in range(20):
    c.publish(b'vb/up/%d' % i, b'frame-%d' % i, qos=1)
elapsed = time.ticks_diff(time.ticks_ms(), t0)
print(json.dumps({'acked': i + 1, 'ms': elapsed, 'pid': c._c.pid}))
""")
        assert out["acked"] == 20 and out["pid"] == 20
        wait_until(lambda: len(got_on_host) == 20, 10, "the host to get the 20 frames")
        assert got_on_host == [(f"vb/up/{i}", b"frame-%d" % i) for i in range(20)]
        print(f"virtual board: 20 QoS 1 publishes in {out['ms']} ms")

        repl.run("c.subscribe(b'vb/down', 1)\nprint(json.dumps(True))")
        publish_qos1(mosquitto.host, mosquitto.port,
                     [("vb/down", b"time-1"), ("vb/down", b"time-2")])
        out = repl.run("""
t0 = time.ticks_ms()
while len(got) < 2 and time.ticks_diff(time.ticks_ms(), t0) < 5000:
    c.check_msg()
print(json.dumps(got))
""")
        assert out == [["vb/down", "time-1"], ["vb/down", "time-2"]]
        repl.run("c.disconnect()\nprint(json.dumps(True))")
        closed_in_log(mosquitto, "vb-node")
        assert net_board.net.open_sockets() == 0
    finally:
        host.loop_stop()
        host.disconnect()
    assert set(net_board.net.connects) == {("127.0.0.1", mosquitto.port)}


def test_recv_timeout_raises_etimedout_in_time_and_nonblocking_is_eagain(repl, mosquitto):
    out = repl.run(f"""
import json, socket, time, errno
s = socket.socket()
s.connect(socket.getaddrinfo('localhost', {mosquitto.port})[0][-1])
res = {{}}
for timeout_s in (0.3, 1.0):
    s.settimeout(timeout_s)
    t0 = time.ticks_ms()
    try:
        s.recv(1)
        res[str(timeout_s)] = 'data'
    except OSError as e:
        res[str(timeout_s)] = [e.args[0], time.ticks_diff(time.ticks_ms(), t0)]
s.setblocking(False)
try:
    s.recv(1)
except OSError as e:
    res['nonblocking'] = e.args[0]
res['read'] = repr(s.read(1))
s.close()
try:
    s.send(b'x')
except OSError as e:
    res['closed'] = e.args[0]
res['errno'] = [errno.ETIMEDOUT, errno.EAGAIN, errno.EBADF]
print(json.dumps(res))
""")
    assert out["errno"] == [110, 11, 9]
    for key, timeout_ms in (("0.3", 300), ("1.0", 1000)):
        code, elapsed_ms = out[key]
        assert code == 110  # ETIMEDOUT, MicroPython's number
        assert timeout_ms - 20 <= elapsed_ms <= timeout_ms + 1500, out  # slack: 2 busy cores
    assert out["nonblocking"] == 11 and out["read"] == "None"  # EAGAIN; a stream read: None
    assert out["closed"] == 9  # EBADF


def test_a_broker_that_goes_away_gives_oserror_not_a_hang(net_board, repl, mosquitto_factory):
    broker = mosquitto_factory()
    repl.run(CONNECT.format(cid="vb-gone", port=broker.port, timeout_s=2))
    broker.stop(graceful=False)  # the broker crashes: its sockets close
    out = repl.run("""
res = []
for attempt in range(3):
    t0 = time.ticks_ms()
    try:
        c.publish(b'vb/up', b'frame', qos=1)
        res.append(['acked', 0])
    except OSError as e:
        res.append([e.args[0], time.ticks_diff(time.ticks_ms(), t0)])
print(json.dumps(res))
""")
    # the first publish reads the end of the stream (umqtt: OSError(-1)) or a reset (104);
    # the next writes meet the reset connection (104) or a broken pipe (32)
    assert all(code in (-1, 104, 32) for code, _ in out), out
    assert all(ms < 4000 for _, ms in out), out  # within the 2 s socket timeout, plus slack
    out = repl.run(f"""
import socket
s = socket.socket()
try:
    s.connect(('127.0.0.1', {broker.port}))
    print(json.dumps('connected'))
except OSError as e:
    print(json.dumps(e.args[0]))
""")
    assert out == 111  # ECONNREFUSED: nothing listens there any more


def test_a_reset_connection_is_econnreset(net_board, repl):
    """A peer that aborts (RST: SO_LINGER 0) gives ECONNRESET (104), MicroPython's number."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def abort_first_client():
        conn, _ = server.accept()
        conn.settimeout(10)
        conn.recv(1)  # the board is connected and waiting: now abort
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    thread = threading.Thread(target=abort_first_client, daemon=True)
    thread.start()
    try:
        out = repl.run(f"""
import json, socket, time
s = socket.socket()
s.settimeout(5)
s.connect(('127.0.0.1', {port}))
s.send(b'x')
try:
    print(json.dumps(['read', repr(s.recv(1))]))
except OSError as e:
    print(json.dumps(e.args[0]))
""")
    finally:
        thread.join(5)
        server.close()
    assert out == 104


def test_only_127_0_0_1_is_reachable(net_board, repl):
    out = repl.run("""
import json, socket
res = []
for host in ('10.0.0.1', '192.168.4.1', '8.8.8.8', '127.0.0.2'):
    s = socket.socket()
    try:
        s.connect((host, 1883))
        res.append('connected')
    except OSError as e:
        res.append([e.args[0], str(e)])
    s.close()
try:
    socket.getaddrinfo('broker.example.org', 1883)
except OSError as e:
    res.append([e.args[0], str(e)])
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
except OSError as e:
    res.append([e.args[0], str(e)])
print(json.dumps(res))
""")
    for (code, text), host in zip(out[:4], ("10.0.0.1", "192.168.4.1", "8.8.8.8", "127.0.0.2"),
                                  strict=True):
        assert code == 113, out  # EHOSTUNREACH
        assert f"only 127.0.0.1 is reachable, not {host}" in text
    assert out[4][0] == -202 and "cannot resolve 'broker.example.org'" in out[4][1]
    assert out[5][0] == 95 and "TCP over IPv4 only" in out[5][1]
    assert net_board.net.open_sockets() == 0  # refused sockets made no connection


@pytest.mark.parametrize("how", ["kill", "unplug", "soft_reset"])
def test_the_boards_connections_close_when_it_loses_power_or_resets(net_board, mosquitto, how):
    repl = Repl(net_board)
    try:
        repl.run(CONNECT.format(cid=f"vb-{how}", port=mosquitto.port, timeout_s=5))
        assert net_board.net.open_sockets() == 1
        assert f"Client vb-{how} closed" not in mosquitto.log_text()
        if how == "kill":
            os.kill(running_boards()[0]["node_pid"], signal.SIGKILL)  # power cut from outside
            wait_until(lambda: not net_board.plugged, 10, "the board to be unplugged")
        elif how == "unplug":
            net_board.unplug()
        else:
            repl.close()
            repl = Repl(net_board, soft_reset=True)  # Ctrl-D: a new interpreter
            assert net_board.plugged
        closed_in_log(mosquitto, f"vb-{how}")
        assert net_board.net.open_sockets() == 0
    finally:
        repl.close()


def test_umqtt_is_fetched_pinned_and_in_the_rom(tmp_path):
    from provisioning import virtual_board as vb

    data = vboard_net.UMQTT_FILE.read_bytes()
    assert vboard_net.umqtt_source() == data  # sha256-pinned
    assert b"class MQTTClient" in data
    vb.write_rom(tmp_path, vb.DEFAULT_PROFILE, b"\0" * 6, "sds011")
    assert (tmp_path / "umqtt" / "simple.py").read_bytes() == data
    assert (tmp_path / "socket.py").read_text() == vboard_net.ROM_SOCKET
    assert "wifi_connects = False" in (tmp_path / "vboard.py").read_text()
    # fetching again touches no network when the pinned file is there
    before = vboard_net.UMQTT_FILE.stat().st_mtime_ns
    t0 = time.monotonic()
    assert vboard_net.fetch_umqtt() == vboard_net.UMQTT_FILE
    assert time.monotonic() - t0 < 1 and vboard_net.UMQTT_FILE.stat().st_mtime_ns == before


def test_ctrl_c_ends_a_socket_call_that_waits_without_timeout(net_board, repl, mosquitto):
    # a blocking socket (no timeout) that never gets data: only Ctrl-C ends the wait
    repl.t.exec_raw_no_follow(f"""
import socket
s = socket.socket()
s.connect(('127.0.0.1', {mosquitto.port}))
print('waiting')
s.recv(1)
""")
    time.sleep(0.5)
    t0 = time.monotonic()
    repl.t.serial.write(b"\x03")
    out, err = repl.t.follow(10)
    assert out.strip() == b"waiting"
    assert b"KeyboardInterrupt" in err
    assert time.monotonic() - t0 < 3
    # the board goes on: the next command runs (the Ctrl-C left over is harmless at idle)
    assert repl.run("s.close()\nprint(1)") == 1
    assert net_board.net.open_sockets() == 0


def test_the_unmodified_node_firmware_sends_a_frame_through_mosquitto(net_board, mosquitto):
    """node.run on board.build(): Wi-Fi joins, the uplink connects over umqtt.simple and
    publishes its first frame at QoS 1 (its back-off jitter uses os.urandom)."""
    flash = net_board.flash_dir
    (flash / "config.json").write_text(json.dumps({
        "version": 1, "node_id": "0d0a0b01", "kind": "air", "zone": "spoorzone",
        "site": "spz-01", "broker": {"host": "127.0.0.1", "port": mosquitto.port},
        "wifi": {"ssid": "practice", "password": "practice-only"},
        "board": {"pins": {"i2c_sda": 8, "i2c_scl": 9, "uart_tx": 17, "uart_rx": 18}}}))
    (flash / "node.key").write_text("5a" * 32)
    host, got_on_host = host_subscriber(mosquitto, "dordt/v1/spoorzone/0d0a0b01/up")
    net_board.reset()  # the board reads its flash again
    repl = Repl(net_board)
    try:
        out = repl.run("""
import json, os
from firmware import board, node
n = node.run(board.build(wdt_timeout_ms=None), max_ms=20000,
             until=lambda n: n.uplink is not None and n.uplink.sent >= 1)
print(json.dumps([n.uplink.sent, n.uplink.connects, len(os.urandom(16)),
                  os.urandom(8) != os.urandom(8)]))
""", timeout_s=60)
    finally:
        repl.close()
        host.loop_stop()
        host.disconnect()
    assert out == [1, 1, 16, True]
    wait_until(lambda: got_on_host, 10, "the frame at the host")
    assert got_on_host[0][0] == "dordt/v1/spoorzone/0d0a0b01/up"


def test_a_link_dropped_mid_message_raises_and_the_board_reconnects(net_board, repl, mosquitto):
    """NetLink.drop_after_received(n): the link dies after n more bytes reach the board
    (a download cut in the middle); NetLink.drop(): it dies now.  The board's next call
    raises OSError(ECONNABORTED), the broker sees the client go, a new connection works."""
    repl.run(CONNECT.format(cid="vb-drop", port=mosquitto.port, timeout_s=5)
             + "c.subscribe(b'vb/big', 1)\n")
    net_board.net.drop_after_received(1000)
    publish_qos1(mosquitto.host, mosquitto.port, [("vb/big", bytes(4000))])
    out = repl.run("""
res = None
t0 = time.ticks_ms()
try:
    while not got and time.ticks_diff(time.ticks_ms(), t0) < 5000:
        c.check_msg()
except OSError as e:
    res = e.args[0]
print(json.dumps([res, len(got)]))
""")
    assert out == [103, 0]  # ECONNABORTED; no truncated message reached the callback
    closed_in_log(mosquitto, "vb-drop")
    out = repl.run(CONNECT.format(cid="vb-drop2", port=mosquitto.port, timeout_s=5)
                   + "c.publish(b'vb/up', b'after', qos=1)\n")
    assert out["connect_ms"] < 2000
    net_board.net.drop()
    closed_in_log(mosquitto, "vb-drop2")
    out = repl.run("""
try:
    c.publish(b'vb/up', b'x', qos=1)
    print(json.dumps('sent'))
except OSError as e:
    print(json.dumps(e.args[0]))
""")
    assert out == 103
    # a drop while the board waits in a receive ends the wait at once
    repl.run(CONNECT.format(cid="vb-drop3", port=mosquitto.port, timeout_s=5))
    repl.t.exec_raw_no_follow("""
t0 = time.ticks_ms()
try:
    c._c.sock.recv(1)
    print(json.dumps('data'))
except OSError as e:
    print(json.dumps([e.args[0], time.ticks_diff(time.ticks_ms(), t0)]))
""")
    time.sleep(0.5)
    net_board.net.drop()
    out, err = repl.t.follow(10)
    assert not err, err.decode()
    code, waited_ms = json.loads(out.decode().splitlines()[-1])
    assert code == 103 and waited_ms < 4000  # not the 5 s timeout
