// A virtual MicroPython board on a serial line: real MicroPython 1.27 (the npm package
// @micropython/micropython-webassembly-pyscript, as runner.mjs uses) behind stdin/stdout,
// so a pty bridged to this process (provisioning/virtual_board.py) looks like a USB board
// to mpremote and to `dordt provision`.
//
// In:  raw bytes on stdin, as a host writes them to a serial port.
// Out: raw bytes on stdout, as a board writes them: the port's own event-driven REPL
//      (pyexec: friendly `>>> ` and raw REPL), with three things done here because this
//      port cannot do them itself:
//      - raw-paste mode (\x05A\x01 at the start of a raw command) is refused with "R\x00":
//        the port's raw-paste reader is a stub that never returns.  mpremote then falls
//        back to the plain raw REPL.
//      - soft reset (Ctrl-D on an empty line, SystemExit, machine.reset()) prints
//        "MPY: soft reboot\r\n" and starts a new interpreter in the same REPL mode, running
//        /boot.py first.  main.py is never run: a node's main.py never returns and a busy
//        Python loop cannot be interrupted here (Ctrl-C is only seen between commands).
//      - print() output is "cooked" (\n -> \r\n) as a board's is.
// Flash: the board's files live in a host directory (--flash DIR).  They are copied into
//      the interpreter's file system (Emscripten MEMFS) at every boot, and after every
//      executed command the files that changed are written back (atomically: temp file +
//      rename), deletions too.  A file still open for writing is not written back until
//      it is closed (as littlefs commits on close), so cutting the power (killing this
//      process) mid-write leaves the previous copy.  Files live at the FS root; the
//      emulated hardware ("ROM", --rom DIR) is copied to /rom, which is on sys.path,
//      never synced and hidden from listings; Emscripten's /dev /proc /tmp /home are not
//      synced either.
// Errors: OSError numbers are MicroPython's own (ENOENT 2, EEXIST 17, ...): the port's
//      file system reports Emscripten's WASI numbers, so `os` and `open` are wrapped to
//      map them (file-object methods other than write-past-the-size-limit keep WASI
//      numbers: a known limit).  --flash-bytes N makes writes past N bytes of files fail
//      with ENOSPC (28).
// Network: with --net-fds R,W the ROM's `socket` module (provisioning/vboard_net.py) has
//      TCP through the host: `_vboard_host.net(request)` writes one request line to fd W
//      and blocks (fs.readSync, as a board blocks in a socket call) until the host's reply
//      line arrives on fd R.  virtual_board.py answers on real TCP sockets to 127.0.0.1
//      only; its reply bounds every wait by the socket's timeout, so a recv that times out
//      raises OSError(ETIMEDOUT) on the board instead of hanging it (and Ctrl-C from the
//      host, seen by virtual_board.py, ends a waiting call in KeyboardInterrupt: this
//      process cannot read stdin while Python runs).  Pending output is flushed before
//      each call, so the host sees what the board printed before it blocked.  Every new
//      interpreter (soft reset) closes the previous one's sockets, as a board's soft reset
//      does; the process ending (power off, kill) closes them all on the host side.
//      Without --net-fds every socket call fails with ENETUNREACH.  os.urandom (absent
//      from this port) comes from Node's crypto.randomBytes.
// On failure: a JS error inside the interpreter prints a line to stderr and the board
//      reboots (as a crashed board would); stdin closing is the power going off: exit 0.
//
// Usage: node board.mjs --flash DIR [--rom DIR] [--flash-bytes N] [--heap-bytes N]
//                       [--reset-cause N] [--net-fds R,W]

import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const RAW_BANNER = "raw REPL; CTRL-B to exit\r\n";
const SOFT_REBOOT = "MPY: soft reboot\r\n";
const EXCLUDED_TOP = new Set(["dev", "proc", "tmp", "home", "rom"]); // not the board's flash
const TMP_SUFFIX = ".vboard-tmp"; // host-side temp files of the atomic write-back
const CTRL_A = 0x01, CTRL_B = 0x02, CTRL_C = 0x03, CTRL_D = 0x04, CTRL_E = 0x05;
// machine.reset_cause() numbering (MicroPython docs, machine module)
const PWRON_RESET = 1;
// MicroPython's errno numbering (py/mperrno.h)
const ENETUNREACH = 101, ECONNABORTED = 103;

// The Python side of the fixes above, run in every new interpreter before boot.py.
// _vb_os / _vb_time are the port's own modules; /rom/os.py and /rom/time.py (shipped by
// the ROM, or the fallbacks below) wrap them.
const SETUP_PY = `
import sys
import os as _os, time as _time
sys.modules["_vb_os"] = _os
sys.modules["_vb_time"] = _time
del sys.modules["os"]
del sys.modules["time"]
if "/rom" not in sys.path:
    sys.path.insert(0, "/rom")
del _os, _time
import builtins, io, _vb_fs
builtins.open = _vb_fs.open
io.open = _vb_fs.open
del builtins, io, _vb_fs, sys
`;

// Module _vb_fs (in /rom): errno mapping and the board-like views of the file system.
const VB_FS_PY = `
# WASI errno (Emscripten's file system) -> MicroPython's errno numbering
import _vb_os
_MAP = {2: 13, 6: 11, 8: 9, 10: 16, 20: 17, 28: 22, 29: 5, 31: 21, 33: 24, 37: 36, 41: 23,
        43: 19, 44: 2, 48: 12, 51: 28, 54: 20, 55: 39, 58: 95, 63: 1, 69: 30, 70: 29,
        73: 110, 75: 18}
HIDDEN = ("dev", "proc", "tmp", "home", "rom")
_open = open


def remap(e):
    if e.args and isinstance(e.args[0], int) and e.args[0] in _MAP:
        return OSError(_MAP[e.args[0]])
    return e


def open(*a, **k):
    try:
        return _open(*a, **k)
    except OSError as e:
        raise remap(e)


def is_root(p):
    if p in ("", "."):
        return _vb_os.getcwd() == "/"
    return p.rstrip("/") == ""
`;

const VB_OS_PY = `
# os, with MicroPython's errno numbers and a board's view of the file system.  Each
# wrapper catches its own OSError, so a traceback shows one extra frame at most.
import _vb_os, _vb_fs
from _vb_os import *
from _vb_fs import remap as _remap


def _visible(path, name):
    return not (_vb_fs.is_root(path) and name in _vb_fs.HIDDEN)


def listdir(path="."):
    try:
        names = _vb_os.listdir(path)
    except OSError as e:
        raise _remap(e)
    return [n for n in names if _visible(path, n)]


def ilistdir(path="."):
    base = path if path not in ("", ".") else _vb_os.getcwd()
    try:
        entries = list(_vb_os.ilistdir(path))
    except OSError as e:
        raise _remap(e)
    for e in entries:
        if not _visible(path, e[0]):
            continue
        size = 0
        if e[1] == 0x8000:
            try:
                size = _vb_os.stat(base.rstrip("/") + "/" + e[0])[6]
            except OSError:
                pass
        yield (e[0], e[1], 0, size)


def stat(path):
    try:
        s = _vb_os.stat(path)
    except OSError as e:
        raise _remap(e)
    mode = 0x4000 if s[0] & 0x4000 else 0x8000
    return (mode, 0, 0, 0, 0, 0, s[6], s[7], s[8], s[9])


def statvfs(path):
    stat(path)
    import _vboard_host
    bsize = 4096
    total = _vboard_host.flash_bytes // bsize
    free = max(0, total - (_vboard_host.used_bytes() + bsize - 1) // bsize)
    return (bsize, bsize, total, free, free, 0, 0, 0, 0, 255)


def mkdir(p):
    try:
        _vb_os.mkdir(p)
    except OSError as e:
        raise _remap(e)


def rmdir(p):
    try:
        _vb_os.rmdir(p)
    except OSError as e:
        raise _remap(e)


def remove(p):
    try:
        _vb_os.remove(p)
    except OSError as e:
        raise _remap(e)


unlink = remove


def rename(a, b):
    try:
        _vb_os.rename(a, b)
    except OSError as e:
        raise _remap(e)


def chdir(p):
    try:
        _vb_os.chdir(p)
    except OSError as e:
        raise _remap(e)


def urandom(n):
    # a board's hardware RNG (this port's os has none): Node's crypto.randomBytes
    import _vboard_host
    from binascii import unhexlify
    return unhexlify(_vboard_host.urandom_hex(n))
`;

// /rom/time.py fallback: sleeps give the board's emulated interrupts (BLE scan results,
// ...) a chance to run, as IRQs do while a real board sleeps.  The ROM may replace it.
const VB_TIME_PY = `
from _vb_time import *
import _vb_time


def _irqs():
    # the ROM's interrupt sources (BLE scan results ...); /rom/_vboard_irq.py
    import _vboard_irq
    _vboard_irq.poll()


def sleep(s):
    sleep_ms(int(s * 1000))


def sleep_ms(ms):
    end = _vb_time.ticks_add(_vb_time.ticks_ms(), int(ms))
    while True:
        _irqs()
        left = _vb_time.ticks_diff(end, _vb_time.ticks_ms())
        if left <= 0:
            return
        _vb_time.sleep_ms(min(left, 10))


def sleep_us(us):
    if us >= 10000:
        sleep_ms(us // 1000)
    else:
        _vb_time.sleep_us(us)
`;

function parseArgs(argv) {
  const args = { flash: null, rom: null, flashBytes: 0, heapBytes: 2 * 1024 * 1024, resetCause: PWRON_RESET,
    netFds: null };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) fail(`${key} needs a value`);
    i++;
    if (key === "--flash") args.flash = value;
    else if (key === "--rom") args.rom = value;
    else if (key === "--flash-bytes") args.flashBytes = parseInt(value, 10);
    else if (key === "--heap-bytes") args.heapBytes = parseInt(value, 10);
    else if (key === "--reset-cause") args.resetCause = parseInt(value, 10);
    else if (key === "--net-fds") {
      const fds = value.split(",").map((v) => parseInt(v, 10));
      if (fds.length !== 2 || fds.some((fd) => !(fd >= 0))) fail("--net-fds takes R,W");
      args.netFds = { read: fds[0], write: fds[1] };
    }
    else fail(`unknown option ${key}`);
  }
  if (!args.flash) fail("--flash DIR is required");
  return args;
}

function fail(message) {
  process.stderr.write(`board.mjs: ${message}\n`);
  process.exit(2);
}

// ---- the host directory that is the board's flash ---------------------------------------

// What the host directory holds, as of the last write-back: rel path -> Buffer; dirs.
class FlashMirror {
  constructor(dir) {
    this.dir = path.resolve(dir);
    this.files = new Map();
    this.dirs = new Set();
    fs.mkdirSync(this.dir, { recursive: true });
    this.load("");
  }

  load(rel) {
    for (const entry of fs.readdirSync(path.join(this.dir, rel), { withFileTypes: true })) {
      const relPath = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.name.endsWith(TMP_SUFFIX)) {
        fs.rmSync(path.join(this.dir, relPath), { force: true }); // a write-back cut short
      } else if (entry.isDirectory()) {
        this.dirs.add(relPath);
        this.load(relPath);
      } else if (entry.isFile()) {
        this.files.set(relPath, fs.readFileSync(path.join(this.dir, relPath)));
      }
    }
  }

  writeFile(rel, data) {
    const target = path.join(this.dir, rel);
    const tmp = target + TMP_SUFFIX;
    const fd = fs.openSync(tmp, "w");
    try {
      fs.writeSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, target);
    this.files.set(rel, Buffer.from(data));
  }

  removeFile(rel) {
    fs.rmSync(path.join(this.dir, rel), { force: true });
    this.files.delete(rel);
  }

  makeDir(rel) {
    fs.mkdirSync(path.join(this.dir, rel), { recursive: true });
    this.dirs.add(rel);
  }

  removeDir(rel) {
    fs.rmSync(path.join(this.dir, rel), { recursive: true, force: true });
    this.dirs.delete(rel);
  }

  usedBytes() {
    let total = 0;
    for (const data of this.files.values()) total += data.length;
    return total;
  }
}

// ---- the board ---------------------------------------------------------------------------

class Board {
  constructor(args) {
    this.args = args;
    this.flash = new FlashMirror(args.flash);
    this.mp = null;
    this.raw = false; // pyexec's REPL mode, mirrored from what goes in and comes out
    this.rawAtStart = false; // raw mode with an empty command line
    this.pending = []; // held bytes of a possible raw-paste request
    this.out = [];
    this.outBytes = 0;
    this.running = false; // inside a command: output is written through
    this.runningOut = 0;
    this.lastOut = 0;
    this.quiet = false;
    this.resetCause = args.resetCause;
    this.resetRequest = 0; // set from Python (machine.reset) before it raises SystemExit
    this.wdtDeadline = 0;
    this.netIn = Buffer.alloc(0); // bytes of the host's next reply line(s)
    this.netDown = false;
    this.host = this.makeHost();
  }

  // The `_vboard_host` module: what ROM code asks of the board.
  makeHost() {
    const board = this;
    return {
      get flash_bytes() {
        return board.args.flashBytes || 8 * 1024 * 1024;
      },
      used_bytes: () => board.memfsUsedBytes(),
      reset_cause: () => board.resetCause,
      request_reset: (cause) => {
        board.resetRequest = cause;
      },
      wdt_arm: (timeoutMs) => {
        board.wdtDeadline = Date.now() + timeoutMs;
      },
      net: (request) => board.netCall(request),
      urandom_hex: (n) => crypto.randomBytes(n).toString("hex"),
    };
  }

  // One request line to the host's network service, its reply line back (both without
  // the newline).  Blocks the interpreter, as a socket call blocks a board.
  netCall(request) {
    const fds = this.args.netFds;
    if (!fds || this.netDown) return `E ${ENETUNREACH} virtual board: no network link`;
    this.flushOut();
    try {
      writeAll(fds.write, Buffer.from(request + "\n", "latin1"));
      for (;;) {
        const nl = this.netIn.indexOf(0x0a);
        if (nl >= 0) {
          const line = this.netIn.subarray(0, nl).toString("latin1");
          this.netIn = this.netIn.subarray(nl + 1);
          return line;
        }
        const chunk = Buffer.alloc(65536);
        let n;
        try {
          n = fs.readSync(fds.read, chunk, 0, chunk.length, null);
        } catch (err) {
          if (err.code === "EAGAIN") continue;
          throw err;
        }
        if (n === 0) throw new Error("the host closed the network link");
        this.netIn = Buffer.concat([this.netIn, chunk.subarray(0, n)]);
      }
    } catch (err) {
      // the host side is gone (it is stopping this board): no more network
      this.netDown = true;
      return `E ${ECONNABORTED} virtual board: network link lost (${err.message || err})`;
    }
  }

  emit(bytes) {
    if (this.quiet) return;
    // cook: \n -> \r\n unless the \r is already there (a board's stdout does this)
    const cooked = [];
    let newline = false;
    for (const b of bytes) {
      if (b === 0x0a && this.lastOut !== 0x0d) cooked.push(0x0d);
      if (b === 0x0a) newline = true;
      cooked.push(b);
      this.lastOut = b;
    }
    this.out.push(Buffer.from(cooked));
    this.outBytes += cooked.length;
    if (this.running) {
      // A command is running and Node cannot return to its event loop until it ends:
      // write through, so the host sees "OK" and each line as a board sends them (and a
      // runaway loop's caller can time out instead of waiting for "OK").
      this.runningOut += cooked.length;
      if (newline || this.outBytes >= 1024 || this.runningOut === 2) this.flushOut();
    }
  }

  say(text) {
    this.out.push(Buffer.from(text, "latin1"));
    this.outBytes += text.length;
    this.lastOut = text.length ? text.charCodeAt(text.length - 1) : this.lastOut;
  }

  // Synchronous writes to fd 1 (a blocking pipe from virtual_board.py): they go out even
  // while Python runs, which process.stdout.write's queue would not.
  flushOut() {
    if (!this.out.length) return;
    const data = Buffer.concat(this.out);
    this.out = [];
    this.outBytes = 0;
    let done = 0;
    while (done < data.length) {
      try {
        done += fs.writeSync(1, data, done, data.length - done);
      } catch (err) {
        if (err.code === "EAGAIN") continue;
        if (err.code === "EPIPE") process.exit(0); // the host side is gone: power off
        throw err;
      }
    }
  }

  // A new interpreter: at power-on, hard reset and every soft reset.  The watchdog keeps
  // running through a soft reset, as a board's hardware watchdog does (it cannot be
  // stopped once started); a new Node process (power-on, hard reset) starts without one.
  async boot() {
    this.resetRequest = 0;
    this.mp = null;
    const mp = await loadMicroPython({
      heapsize: this.args.heapBytes,
      linebuffer: false,
      stdout: (bytes) => this.emit(bytes),
      stderr: (bytes) => this.emit(bytes),
    });
    this.mp = mp;
    const FS = mp.FS;
    const dirs = [...this.flash.dirs].sort();
    for (const rel of dirs) mkdirs(FS, "/" + rel);
    for (const [rel, data] of this.flash.files) {
      mkdirs(FS, "/" + path.posix.dirname(rel));
      FS.writeFile("/" + rel, new Uint8Array(data));
    }
    mkdirs(FS, "/rom");
    FS.writeFile("/rom/_vb_fs.py", VB_FS_PY);
    FS.writeFile("/rom/os.py", VB_OS_PY);
    FS.writeFile("/rom/time.py", VB_TIME_PY);
    FS.writeFile("/rom/_vboard_irq.py", "def poll():\n    pass\n");
    if (this.args.rom) copyInto(FS, this.args.rom, "/rom");
    mp.registerJsModule("_vboard_host", this.host);
    // a new interpreter: the previous one's sockets are gone, as after a board's reset
    if (this.args.netFds) this.netCall("Z");
    this.guardFlashSize();
    mp.runPython(SETUP_PY);
    this.runBootPy();
    // the port prints its own banner; in raw mode a board prints only the raw banner
    this.quiet = this.raw;
    mp.replInit();
    if (this.raw) mp.replProcessChar(CTRL_A);
    this.quiet = false;
    if (this.raw) {
      this.say(RAW_BANNER + ">");
      this.rawAtStart = true;
    }
    this.sync(false);
  }

  runBootPy() {
    if (!this.flash.files.has("boot.py")) return;
    try {
      this.mp.runPython(
        "_f = open('/boot.py')\n_s = _f.read()\n_f.close()\ndel _f\nexec(_s)\ndel _s",
      );
    } catch (err) {
      if (err && err.name === "PythonError") {
        if (err.type !== "SystemExit") this.emit(Buffer.from(err.message));
      } else {
        throw err;
      }
    }
  }

  // --flash-bytes: a write that would take the files past the limit fails with ENOSPC
  // (28 in MicroPython's numbering; it reaches Python unmapped from file.write()).
  guardFlashSize() {
    const limit = this.args.flashBytes;
    if (!limit) return;
    const FS = this.mp.FS;
    FS.writeFile("/tmp/.probe", "");
    const ops = FS.lookupPath("/tmp/.probe").node.stream_ops;
    FS.unlink("/tmp/.probe");
    const write = ops.write;
    const board = this;
    ops.write = function (stream, buffer, offset, length, position, canOwn) {
      if (stream.path && !isExcluded(stream.path)) {
        const node = stream.node;
        const grows = Math.max(0, position + length - node.usedBytes);
        if (grows > 0 && board.memfsUsedBytes() + grows > limit) {
          throw new FS.ErrnoError(28);
        }
      }
      return write.call(this, stream, buffer, offset, length, position, canOwn);
    };
  }

  memfsUsedBytes() {
    let total = 0;
    for (const node of this.walk().files.values()) total += node.usedBytes || 0;
    return total;
  }

  // The board's files and dirs in the interpreter: rel path -> MEMFS node; dirs.
  walk() {
    const FS = this.mp.FS;
    const files = new Map();
    const dirs = new Set();
    const visit = (dir, rel) => {
      for (const name of FS.readdir(dir)) {
        if (name === "." || name === "..") continue;
        if (!rel && EXCLUDED_TOP.has(name)) continue;
        const relPath = rel ? `${rel}/${name}` : name;
        const full = "/" + relPath;
        const node = FS.lookupPath(full).node;
        if (FS.isDir(node.mode)) {
          dirs.add(relPath);
          visit(full, relPath);
        } else if (FS.isFile(node.mode)) {
          files.set(relPath, node);
        }
      }
    };
    visit("/", "");
    return { files, dirs };
  }

  // Write back what changed since the last sync.  `commitOpen`: also files still open for
  // writing (a soft reset closes them, as the finalisers of a real reset do).
  sync(commitOpen) {
    if (!this.mp) return;
    const FS = this.mp.FS;
    const { files, dirs } = this.walk();
    const openForWrite = new Set();
    if (!commitOpen) {
      for (const stream of FS.streams) {
        if (stream && stream.path && (stream.flags & 3) !== 0) {
          openForWrite.add(stream.path.replace(/^\/+/, ""));
        }
      }
    }
    for (const rel of [...dirs].sort()) {
      if (!this.flash.dirs.has(rel)) this.flash.makeDir(rel);
    }
    for (const [rel, node] of files) {
      if (openForWrite.has(rel)) continue;
      const contents = node.contents;
      const used = node.usedBytes || 0;
      const data = contents
        ? Buffer.from(contents.buffer, contents.byteOffset, used)
        : Buffer.alloc(0);
      const old = this.flash.files.get(rel);
      if (!old || !old.equals(data)) this.flash.writeFile(rel, data);
    }
    for (const rel of [...this.flash.files.keys()]) {
      if (!files.has(rel) && !openForWrite.has(rel)) this.flash.removeFile(rel);
    }
    for (const rel of [...this.flash.dirs].sort().reverse()) {
      if (!dirs.has(rel)) this.flash.removeDir(rel);
    }
  }

  // One byte from the host, through pyexec; returns after any command it ran.
  async feed(c) {
    if (this.raw && this.rawAtStart && (this.pending.length || c === CTRL_E)) {
      this.pending.push(c);
      const want = [CTRL_E, 0x41, CTRL_A];
      const n = this.pending.length;
      if (this.pending.every((b, i) => b === want[i])) {
        if (n === want.length) {
          this.pending = [];
          this.say("R\x00"); // raw-paste understood but not supported: see the header
        }
        return;
      }
      const held = this.pending;
      this.pending = [];
      for (const b of held) await this.process(b);
      return;
    }
    await this.process(c);
  }

  async process(c) {
    const wasRaw = this.raw;
    const outBefore = this.out.length;
    let ret;
    const runs = (wasRaw && c === CTRL_D) || (!wasRaw && (c === 0x0d || c === 0x0a));
    this.running = runs;
    this.runningOut = 0;
    try {
      ret = this.mp.replProcessChar(c);
    } catch (err) {
      this.running = false;
      process.stderr.write(`board.mjs: interpreter crashed: ${err && err.stack ? err.stack : err}\n`);
      this.say("\r\n");
      await this.softReset(false);
      return;
    }
    this.running = false;
    if (wasRaw) {
      if (c === CTRL_B) this.raw = false;
      this.rawAtStart = c === CTRL_A || c === CTRL_C || c === CTRL_D;
    } else if (c === CTRL_A) {
      const text = Buffer.concat(this.out.slice(outBefore)).toString("latin1");
      if (text.includes(RAW_BANNER)) {
        this.raw = true;
        this.rawAtStart = true;
      }
    }
    const ran = runs || (!wasRaw && c === CTRL_D);
    if (ret !== 0 || this.resetRequest) {
      if (this.resetRequest) this.resetCause = this.resetRequest;
      await this.softReset(true);
    } else if (ran) {
      this.sync(false);
    }
  }

  async softReset(commitOpen) {
    this.sync(commitOpen);
    this.say(SOFT_REBOOT);
    this.mp = null;
    await this.boot();
  }

  watchdogExpired() {
    return this.wdtDeadline && Date.now() > this.wdtDeadline;
  }
}

function writeAll(fd, data) {
  let done = 0;
  while (done < data.length) {
    try {
      done += fs.writeSync(fd, data, done, data.length - done);
    } catch (err) {
      if (err.code !== "EAGAIN") throw err;
    }
  }
}

function isExcluded(p) {
  const top = p.replace(/^\/+/, "").split("/")[0];
  return EXCLUDED_TOP.has(top);
}

function mkdirs(FS, dir) {
  let p = "";
  for (const part of dir.split("/").filter((s) => s && s !== ".")) {
    p += "/" + part;
    if (!FS.analyzePath(p).exists) FS.mkdir(p);
  }
}

function copyInto(FS, hostDir, target) {
  for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const src = path.join(hostDir, entry.name);
    const dst = `${target}/${entry.name}`;
    if (entry.isDirectory()) {
      mkdirs(FS, dst);
      copyInto(FS, src, dst);
    } else if (entry.isFile()) {
      FS.writeFile(dst, new Uint8Array(fs.readFileSync(src)));
    }
  }
}

// ---- main: stdin bytes in order, one at a time ------------------------------------------

// The interpreter's own logging must not reach the serial line.
console.log = console.error;
console.info = console.error;
console.warn = console.error;
console.debug = console.error;

const board = new Board(parseArgs(process.argv.slice(2)));
const queue = [];
let busy = false;
let inputEnded = false;

async function pump() {
  if (busy) return;
  busy = true;
  try {
    while (queue.length) {
      const chunk = queue.shift();
      for (const c of chunk) await board.feed(c);
      board.flushOut();
    }
    if (board.watchdogExpired()) {
      // the watchdog was not fed in time: the board resets (the REPL session is lost)
      board.sync(false);
      board.resetCause = 3; // WDT_RESET
      board.raw = false;
      board.wdtDeadline = 0;
      board.say("\r\n"); // like the boot ROM's first line on a real reset
      await board.boot();
      board.flushOut();
    }
  } finally {
    busy = false;
  }
  if (inputEnded && !queue.length) process.exit(0);
}

await board.boot();
board.flushOut();
process.stdin.on("data", (chunk) => {
  queue.push(chunk);
  pump();
});
process.stdin.on("end", () => {
  inputEnded = true;
  pump();
});
setInterval(() => {
  if (board.watchdogExpired()) pump();
}, 200);
