# The node's hardware, behind one thin interface, so the same node logic runs against
# `machine`/`bluetooth`/`network` on a board (firmware/board.py builds it) and against the
# emulators of simulators/ on a host (simulators/node_host.py builds it).
#
# In:  whatever the builder hands over.  Out: a `Hardware` bundle whose attributes follow
# the contract below; node.py, counter.py, uplink/ and the samplers use nothing else.
# On failure: the parts raise OSError for I/O faults (as `machine` does); an absent part is
# None and its user reports a fault instead of crashing.
#
# RAM: the bundle and Flash are a few small objects; nothing is buffered here.
#
# The contract, attribute by attribute (None when the node kind does not need the part):
#
#   i2c    machine.I2C-like: readfrom_mem_into(addr, reg, buf), writeto_mem(addr, reg, buf),
#          readfrom_into(addr, buf), writeto(addr, buf).  Air node (BME680).
#   uart   machine.UART-like: any(), read([n]), readinto(buf), write(buf).  Air node (PM).
#   i2s    machine.I2S-like (RX): readinto(buf) -> bytes read.  Noise node.
#   ble    a passive scanner: start(callback) makes the radio call callback(addr, rssi) once
#          per advertisement heard (addr: 6 bytes or a memoryview of them, valid only during
#          the call; rssi: int dBm); stop() ends it.  On a board the callback runs from the
#          Bluetooth IRQ (scheduler or stack task), so it must not allocate or block.
#   rng    urandom(n) -> n bytes from a cryptographically secure source (os.urandom on a
#          board, whose ESP32/RP2040 implementation reads the hardware RNG).  Nothing here
#          uses random.getrandbits: it is a non-cryptographic PRNG on MicroPython.
#   clock  ticks_ms(), ticks_add(t, delta), ticks_diff(a, b) with MicroPython semantics
#          (ticks wrap; always compare with ticks_diff); sleep_ms(ms); time() -> Unix seconds
#          (int) or None while the wall clock is not set; set_time(unix_s).
#   flash  a small file API rooted at one directory (class Flash below): read, write,
#          replace (atomic), remove, exists, path, listdir.
#   wdt    the hardware watchdog: feed(); `timeout_ms` attribute when known.
#   net    the IP link, when there is one: connect(ssid, password) starts joining Wi-Fi
#          (returns at once), isconnected(), ntp_time(host) -> Unix seconds or OSError, and
#          mqtt_client(client_id, host, port, keepalive_s, tls) -> an MQTT client with the
#          umqtt.simple interface (see uplink/mqtt.py); `tls` is None or a dict of file
#          paths {"ca", "cert", "key"}.
#   reset_cause() -> int (machine.reset_cause() numbering: 1 power-on, 2 hard, 3 watchdog,
#          4 deep sleep, 5 soft); free_heap() -> bytes free on the Python heap.
#   name   what built it ("esp32", "rp2", "host", ...), for people.

import gc
import os


class Hardware:
    """The bundle of parts a node runs on.  Every part is optional except clock and flash."""

    def __init__(
        self, clock, flash, wdt=None, rng=None, i2c=None, uart=None, i2s=None, ble=None,
        net=None, reset_cause=0, free_heap=None, name="host",
    ):
        self.clock = clock
        self.flash = flash
        self.wdt = wdt
        self.rng = rng
        self.i2c = i2c
        self.uart = uart
        self.i2s = i2s
        self.ble = ble
        self.net = net
        self.name = name
        self._reset_cause = reset_cause
        self._free_heap = free_heap

    def reset_cause(self):
        cause = self._reset_cause
        return cause() if callable(cause) else cause

    def free_heap(self):
        if self._free_heap is not None:
            return self._free_heap()
        return gc.mem_free()  # MicroPython; host builders pass free_heap


class _OsFiles:
    """The file operations Flash needs, from the platform (MicroPython or CPython `os`).
    Tests substitute an object with the same methods to cut the power between any two."""

    def open(self, path, mode):
        return open(path, mode)

    def rename(self, old, new):
        os.rename(old, new)

    def remove(self, path):
        os.remove(path)

    def stat(self, path):
        return os.stat(path)

    def listdir(self, path):
        return os.listdir(path)

    def sync(self, f):
        # Make the data durable before a rename publishes it.  MicroPython's littlefs
        # commits on close(); CPython needs fsync().
        f.flush()
        fsync = getattr(os, "fsync", None)
        fileno = getattr(f, "fileno", None)
        if fsync is not None and fileno is not None:
            fsync(fileno())


TMP_SUFFIX = ".new"  # replace() writes <name>.new, then renames it over <name>


class Flash:
    """Files under one directory on the node's flash (or a host directory).

    `replace(name, data)` is the durable way to change a file: it writes `name.new` in full,
    syncs it, then renames it over `name`.  Where rename cannot replace (FAT refuses an
    existing target) it removes `name` first, so after a power cut at any point either
    `name` or a complete `name.new` holds the newest complete copy, and a torn `name.new`
    only ever sits beside an intact `name` (or stands alone before the very first copy).
    Readers that must survive power cuts check both (counter.py does).
    """

    def __init__(self, root, files=None):
        self.root = root.rstrip("/") if root not in ("", "/") else root
        self._fs = files if files is not None else _OsFiles()

    def path(self, name):
        if not self.root:
            return name
        if self.root == "/":
            return "/" + name
        return self.root + "/" + name

    def read(self, name):
        """The file's bytes, or None when it does not exist."""
        try:
            f = self._fs.open(self.path(name), "rb")
        except OSError:
            return None
        try:
            return f.read()
        finally:
            f.close()

    def write(self, name, data):
        """Plain write (truncate, write, close): not atomic; for data that may be lost."""
        f = self._fs.open(self.path(name), "wb")
        try:
            f.write(data)
        finally:
            f.close()

    def replace(self, name, data):
        """Atomically make `name` hold `data` (see the class comment)."""
        target = self.path(name)
        tmp = target + TMP_SUFFIX
        f = self._fs.open(tmp, "wb")
        try:
            f.write(data)
            self._fs.sync(f)
        finally:
            f.close()
        try:
            self._fs.rename(tmp, target)
        except OSError:
            # FAT: rename onto an existing file fails.  `tmp` is complete now, so the
            # newest copy survives the gap between the two steps.
            self._fs.remove(target)
            self._fs.rename(tmp, target)

    def remove(self, name):
        """Delete `name`; no error when it does not exist."""
        try:
            self._fs.remove(self.path(name))
        except OSError:
            pass

    def exists(self, name):
        try:
            self._fs.stat(self.path(name))
            return True
        except OSError:
            return False

    def listdir(self):
        return sorted(self._fs.listdir(self.root or "."))
