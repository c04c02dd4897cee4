"""The virtual board's network: its `socket` module, and the host end that carries it.

In:  request lines from the board (tools/micropython/board.mjs writes them to a pipe when
ROM code calls `_vboard_host.net(...)`): open, connect, send, receive, close, reset.
Out: one reply line per request, after the real TCP socket on the host answered, so the
board's interpreter blocks exactly as long as a board blocks in a socket call.
Ctrl-C on the serial line while the board waits in a call raises KeyboardInterrupt there.
On failure: every fault is an OSError on the board with MicroPython's errno numbers
(which are Linux's for the network ones): ETIMEDOUT 110 when a receive, send or connect
outlives the socket's timeout, EAGAIN 11 on a non-blocking socket with nothing to read,
ECONNREFUSED 111, ECONNRESET 104, EPIPE 32, ENOTCONN 107, EBADF 9 on a closed socket,
ECONNABORTED 103 on a connection a test's NetLink.drop() cut,
ENFILE 23 past MAX_SOCKETS open sockets, and EHOSTUNREACH 113 (with a sentence) for any
address but 127.0.0.1: the board reaches loopback only, never a network (project rule).
The board's process ending (power off, kill, unplug) or a soft reset closes its sockets,
so a broker sees the connection drop.

The board side (ROM_SOCKET, the `socket` module in the board's ROM; `usocket` is an alias
for micropython-lib code that still imports the old name) is the subset that
micropython-lib's umqtt.simple and the node firmware use: getaddrinfo, socket(), connect,
settimeout / setblocking, send / sendall / write, recv / read / readinto / readline, close,
setsockopt (accepted, ignored).  TCP over IPv4 only: UDP, server sockets and `ssl` are not
provided (the tests run no TLS to the virtual board; ntptime is absent, so a node takes its
time from the gateway).  Host names: "localhost" and numeric addresses only (no DNS here).

umqtt.simple itself is micropython-lib's (MIT), fetched at setup from PyPI's
`micropython-umqtt.simple` sdist (UMQTT_VERSION, its simple.py pinned by sha256) into
tools/micropython/packages/ by `make setup-test` (`python -m provisioning.vboard_net
fetch-umqtt`; offline once fetched); write_rom puts it in the board's ROM as on an ESP32
image, where it is frozen.  It is not kept in this repository.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
MAX_SOCKETS = 10  # lwIP's socket table on an ESP32 image (CONFIG_LWIP_MAX_SOCKETS)
RECV_MAX_BYTES = 65536
STOP_POLL_S = 0.1  # how often a blocked call looks whether the board is gone

UMQTT_PACKAGE = "micropython-umqtt.simple"
UMQTT_VERSION = "1.3.4"  # the newest on PyPI; micropython-lib publishes newer ones via mip only
UMQTT_SHA256 = "8555d2f654deb8eb0d724f79b0811a78cc94029d070f3d96bbd74288653d63a5"  # simple.py
UMQTT_DIR = REPO / "tools" / "micropython" / "packages"
UMQTT_FILE = UMQTT_DIR / "umqtt" / "simple.py"
UMQTT_HINT = "run `make setup-test` (it fetches micropython-lib's umqtt.simple from PyPI)"


ROM_SOCKET = '''\
# socket, as the virtual board provides it: TCP client sockets that the host carries to
# 127.0.0.1 only (provisioning/vboard_net.py); errno numbers are MicroPython's.
import _vboard_host
from binascii import hexlify, unhexlify

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 0xFFF  # lwIP's values, as on an ESP32
SO_REUSEADDR = 4
TCP_NODELAY = 1
_EBADF = 9
_EAGAIN = 11
_EOPNOTSUPP = 95
_RX_BYTES = 1460  # one TCP segment (lwIP's TCP_MSS): what one host receive asks for


def _call(request):
    reply = _vboard_host.net(request)
    if reply[:1] == "O":
        return reply[2:]
    if reply[:1] == "K":  # Ctrl-C on the serial line while this call waited
        raise KeyboardInterrupt
    parts = reply[2:].split(" ", 1)
    if len(parts) > 1:
        raise OSError(int(parts[0]), parts[1])
    raise OSError(int(parts[0]))


def _resolve(host):
    if isinstance(host, (bytes, bytearray)):
        host = host.decode()
    if host == "localhost":
        return "127.0.0.1"
    parts = host.split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) < 256 for p in parts):
        return host
    # -202: lwIP's "host not found", as an ESP32 reports it
    raise OSError(-202, "virtual board: cannot resolve %r (localhost and numeric "
                        "addresses only)" % host)


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (_resolve(host), int(port)))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        if af != AF_INET or type != SOCK_STREAM:
            raise OSError(_EOPNOTSUPP, "virtual board: TCP over IPv4 only")
        self._id = _call("S")
        self._timeout_ms = -1  # blocking, as a new socket is
        self._rx = b""  # received bytes not yet read
        self._closed = False

    def _sid(self):
        if self._closed:
            raise OSError(_EBADF)
        return self._id

    def settimeout(self, t):
        self._timeout_ms = -1 if t is None else int(t * 1000)

    def setblocking(self, flag):
        self._timeout_ms = -1 if flag else 0

    def setsockopt(self, level, option, value):
        pass

    def connect(self, address):
        _call("C %s %d %s %d" % (self._sid(), self._timeout_ms, _resolve(address[0]),
                                 int(address[1])))

    def send(self, buf):
        if not len(buf):
            self._sid()
            return 0
        data = hexlify(buf).decode()
        return int(_call("W %s %d %s" % (self._sid(), self._timeout_ms, data)))

    def sendall(self, buf):
        mv = memoryview(buf)
        done = 0
        while done < len(mv):
            done += self.send(mv[done:])

    def write(self, buf, off=None, max_len=None):
        # a stream's write(buf), write(buf, max_len), write(buf, off, max_len)
        mv = memoryview(buf)
        if max_len is not None:
            mv = mv[off:off + max_len]
        elif off is not None:
            mv = mv[:off]
        try:
            return self.send(mv)
        except OSError as e:
            if e.args[0] == _EAGAIN:
                return None
            raise

    def recv(self, n):
        if not self._rx:
            got = _call("R %s %d %d" % (self._sid(), self._timeout_ms, max(n, _RX_BYTES)))
            if not got:
                return b""  # the peer closed the connection
            self._rx = unhexlify(got)
        out = self._rx[:n]
        self._rx = self._rx[n:]
        return out

    def _read_upto(self, n):
        # a stream read (py/stream.c mp_stream_rw): up to n bytes (n < 0: to the end of the
        # stream); a non-blocking socket gives what it has, or None for nothing; any other
        # error (a timeout, a reset) raises and the bytes read before it are lost
        chunks = []
        got = 0
        while n < 0 or got < n:
            try:
                chunk = self.recv(_RX_BYTES if n < 0 else n - got)
            except OSError as e:
                if e.args[0] != _EAGAIN:
                    raise
                if got:
                    break
                return None
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read(self, n=-1):
        return self._read_upto(n)

    def readinto(self, buf, nbytes=None):
        want = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = self._read_upto(want)
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        out = bytearray()
        while True:
            c = self._read_upto(1)
            if not c:
                break
            out += c
            if c == b"\\n":
                break
        return bytes(out)

    def makefile(self, mode="rb", buffering=0):
        return self

    def bind(self, address):
        raise OSError(_EOPNOTSUPP, "virtual board: client sockets only")

    listen = accept = bind

    def close(self):
        if not self._closed:
            self._closed = True
            self._rx = b""
            _call("X %s" % self._id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
'''

ROM_USOCKET = '''\
# usocket: the old name of socket (micropython-lib code still imports it)
from socket import *
'''


class _BoardGone(Exception):
    """The board's process went away (or is being stopped) during a call."""


class _Interrupted(Exception):
    """Ctrl-C reached the board while a call waited."""


class NetLink:
    """The host end of one board process's network: two pipes and a thread.

    Give `child_fds` to the Node process (`subprocess.Popen(pass_fds=...)`) with `argv()`
    on its command line, then call `started()`.  `close()` (the board unplugged, reset or
    stopped) closes every socket of the board; the Node process ending does the same by
    itself (end of file on the request pipe).

    Faults for tests: `drop()` cuts the board's connections now, as a Wi-Fi drop would
    (the broker sees them go; the board's next call on one raises OSError(ECONNABORTED),
    new connections work); `drop_after_received(n)` does it once the board has received
    n more bytes (a link lost in the middle of a download).
    """

    def __init__(self, allowed_host: str = LOOPBACK):
        self.allowed_host = allowed_host
        self._req_r, self._req_w = os.pipe()  # board -> host: request lines
        self._rep_r, self._rep_w = os.pipe()  # host -> board: reply lines
        self.child_fds = (self._rep_r, self._req_w)
        self._socks: dict[int, socket.socket | None] = {}
        self._dropped: set[int] = set()  # ids whose connection a drop() cut
        self._drop_budget: int | None = None  # bytes the board receives before a drop()
        self._next_id = 1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = False  # a request is being served (the board waits for the reply)
        self._interrupt = threading.Event()
        self._thread: threading.Thread | None = None
        self.connects: list[tuple[str, int]] = []  # every address a connect was tried to

    def argv(self) -> list[str]:
        return ["--net-fds", f"{self._rep_r},{self._req_w}"]

    def started(self) -> None:
        """The child has its ends: close ours (so its death is end of file), serve."""
        for fd in self.child_fds:
            os.close(fd)
        self.child_fds = ()
        self._thread = threading.Thread(target=self._serve, name="vboard-net", daemon=True)
        self._thread.start()

    def interrupt(self) -> None:
        """Ctrl-C from the host: a call waiting now ends in KeyboardInterrupt on the board
        (as on a board; at any other moment the REPL gets the Ctrl-C as before)."""
        if self._busy:
            self._interrupt.set()

    def drop(self) -> None:
        with self._lock:
            cut = [(sid, s) for sid, s in self._socks.items() if s is not None]
            for sid, _ in cut:
                self._socks[sid] = None
                self._dropped.add(sid)
            self._drop_budget = None
        for _, sock in cut:
            _shut(sock)

    def drop_after_received(self, n_bytes: int) -> None:
        if n_bytes <= 0:
            self.drop()
            return
        with self._lock:
            self._drop_budget = int(n_bytes)

    def open_sockets(self) -> int:
        with self._lock:
            return len(self._socks)

    def close(self) -> None:
        self._stop.set()
        self._close_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for fd in (self._req_r, self._rep_w, *self.child_fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child_fds = ()
        self._req_r = self._rep_w = -1

    # -- the service -----------------------------------------------------------------------

    def _serve(self) -> None:
        pending = b""
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self._req_r], [], [], STOP_POLL_S)
                if not ready:
                    continue
                data = os.read(self._req_r, 65536)
                if not data:
                    return  # the board's process ended: power off
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    self._interrupt.clear()
                    self._busy = True
                    try:
                        reply = self._handle(line.decode("latin1"))
                    finally:
                        self._busy = False
                    self._reply(reply)
        except (_BoardGone, OSError, ValueError):
            return
        finally:
            self._close_all()

    def _reply(self, text: str) -> None:
        data = (text + "\n").encode("latin1")
        while data:
            n = os.write(self._rep_w, data)  # EPIPE (an OSError) once the board is gone
            data = data[n:]

    def _handle(self, line: str) -> str:
        op, _, rest = line.partition(" ")
        args = rest.split(" ") if rest else []
        try:
            if op == "S":
                return f"O {self._open()}"
            if op == "Z":
                self._close_all()
                return "O 0"
            sid = int(args[0])
            if op == "X":
                self._close(sid)
                return "O 0"
            timeout_ms = int(args[1])
            if op == "C":
                self._connect(sid, args[2], int(args[3]), timeout_ms)
                return "O 0"
            if op == "W":
                data = bytes.fromhex(args[2] if len(args) > 2 else "")
                return f"O {self._send(sid, data, timeout_ms)}"
            if op == "R":
                return "O " + self._recv(sid, int(args[2]), timeout_ms).hex()
            return f"E {errno.EINVAL} virtual board: unknown network request {op!r}"
        except _Refused as exc:
            return f"E {exc.code} {exc.message}"
        except _Interrupted:
            return "K"
        except TimeoutError:
            return f"E {errno.ETIMEDOUT}"
        except (BlockingIOError, InterruptedError):
            return f"E {errno.EAGAIN}"
        except OSError as exc:
            return f"E {exc.errno or errno.EIO}"
        except (IndexError, ValueError):
            return f"E {errno.EINVAL} virtual board: malformed network request"

    def _open(self) -> int:
        with self._lock:
            if len(self._socks) >= MAX_SOCKETS:
                raise OSError(errno.ENFILE, "too many sockets")
            sid = self._next_id
            self._next_id += 1
            self._socks[sid] = None
            return sid

    def _get(self, sid: int, connected: bool = True) -> socket.socket | None:
        with self._lock:
            if sid not in self._socks:
                raise OSError(errno.EBADF, "closed")
            if sid in self._dropped:
                raise OSError(errno.ECONNABORTED, "dropped")
            sock = self._socks[sid]
        if connected and sock is None:
            raise OSError(errno.ENOTCONN, "not connected")
        return sock

    def _connect(self, sid: int, host: str, port: int, timeout_ms: int) -> None:
        if self._get(sid, connected=False) is not None:
            raise OSError(errno.EISCONN, "connected")
        self.connects.append((host, port))
        if host != self.allowed_host:
            raise _Refused(errno.EHOSTUNREACH,
                           f"virtual board: only {self.allowed_host} is reachable, not {host}")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # a non-blocking connect completes here at once: loopback answers in microseconds
            sock.settimeout(None if timeout_ms <= 0 else timeout_ms / 1000)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        with self._lock:
            if sid in self._socks:
                self._socks[sid] = sock
                return
        sock.close()
        raise OSError(errno.EBADF, "closed")

    def _wait(self, sock: socket.socket, timeout_ms: int, for_write: bool) -> bool:
        """Until `sock` is ready, the timeout passes (False) or the board is gone."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        while True:
            left = STOP_POLL_S if deadline is None else max(0.0, deadline - time.monotonic())
            watch = [self._req_r]  # readable only at end of file: the board is gone
            try:
                readable, writable, _ = select.select(
                    watch if for_write else [sock, *watch], [sock] if for_write else [], [],
                    min(left, STOP_POLL_S))
            except (OSError, ValueError):  # closed under us by a drop() from another thread
                raise OSError(errno.ECONNABORTED, "dropped") from None
            if (sock in writable) or (sock in readable):
                return True
            if self._req_r in readable or self._stop.is_set():
                raise _BoardGone
            if self._interrupt.is_set():
                raise _Interrupted
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _send(self, sid: int, data: bytes, timeout_ms: int) -> int:
        try:
            return self._send_on(sid, data, timeout_ms)
        except OSError:
            self._get(sid)  # cut by a drop() meanwhile: ECONNABORTED, whatever the socket said
            raise

    def _recv(self, sid: int, max_bytes: int, timeout_ms: int) -> bytes:
        try:
            return self._recv_on(sid, max_bytes, timeout_ms)
        except OSError:
            self._get(sid)
            raise

    def _send_on(self, sid: int, data: bytes, timeout_ms: int) -> int:
        sock = self._get(sid)
        assert sock is not None
        sent = 0
        while sent < len(data):
            if not self._wait(sock, timeout_ms, for_write=True):
                if sent:
                    break
                raise BlockingIOError if timeout_ms == 0 else TimeoutError
            sent += sock.send(data[sent:], socket.MSG_DONTWAIT)
        return sent

    def _recv_on(self, sid: int, max_bytes: int, timeout_ms: int) -> bytes:
        sock = self._get(sid)
        assert sock is not None
        if not self._wait(sock, timeout_ms, for_write=False):
            raise BlockingIOError if timeout_ms == 0 else TimeoutError
        self._get(sid)  # a drop() while it waited: ECONNABORTED, not the end of the stream
        limit = min(max(1, max_bytes), RECV_MAX_BYTES)
        budget = self._drop_budget
        if budget is not None:
            limit = min(limit, budget)
        data = sock.recv(limit, socket.MSG_DONTWAIT)
        if budget is not None and data:
            with self._lock:
                left = self._drop_budget
                if left is not None:
                    self._drop_budget = left - len(data)
            if left is not None and left - len(data) <= 0:
                self.drop()  # these bytes arrived; the link dies behind them
        return data

    def _close(self, sid: int) -> None:
        with self._lock:
            sock = self._socks.pop(sid, None)
            self._dropped.discard(sid)
        if sock is not None:
            _shut(sock)

    def _close_all(self) -> None:
        with self._lock:
            socks = [s for s in self._socks.values() if s is not None]
            self._socks.clear()
            self._dropped.clear()
        for sock in socks:
            _shut(sock)


class _Refused(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a call blocked on it in another thread
    sock.close()


# -- umqtt.simple for the ROM ----------------------------------------------------------------


def umqtt_source() -> bytes | None:
    """The fetched umqtt/simple.py, or None when setup has not fetched it (or it changed)."""
    try:
        data = UMQTT_FILE.read_bytes()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == UMQTT_SHA256 else None


def fetch_umqtt() -> Path:
    """Fetch umqtt/simple.py from PyPI's micropython-umqtt.simple sdist with pip, unless it
    is already here (then nothing touches the network).  The sdist has no setup.py (it was
    made for MicroPython's upip), so pip stops after unpacking it; the file is taken from
    the unpacked tree and checked against UMQTT_SHA256."""
    if umqtt_source() is not None:
        return UMQTT_FILE
    with tempfile.TemporaryDirectory(prefix="dordt-umqtt-") as tmp:
        env = dict(os.environ, TMPDIR=tmp)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--no-clean", "--disable-pip-version-check", "-d", str(Path(tmp) / "out"),
             f"{UMQTT_PACKAGE}=={UMQTT_VERSION}"],
            capture_output=True, text=True, env=env, timeout=300)
        found = [p for p in Path(tmp).rglob("umqtt/simple.py")
                 if hashlib.sha256(p.read_bytes()).hexdigest() == UMQTT_SHA256]
        if not found:
            said = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"fetch-umqtt: could not get {UMQTT_PACKAGE} {UMQTT_VERSION} "
                             f"from PyPI with pip (pip said: {said[:300]})")
        UMQTT_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp_file = UMQTT_FILE.with_suffix(".tmp")
        shutil.copyfile(found[0], tmp_file)
        os.replace(tmp_file, UMQTT_FILE)
    return UMQTT_FILE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch-umqtt"]:
        print("usage: python -m provisioning.vboard_net fetch-umqtt", file=sys.stderr)
        return 2
    path = fetch_umqtt()
    print(f"umqtt.simple {UMQTT_VERSION} for the virtual board: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
