// Long-lived MicroPython runner for the test suite: real MicroPython 1.27 (the npm package
// @micropython/micropython-webassembly-pyscript) driven over JSON lines.  See README.md in
// this folder for the protocol; tests/fixtures/micropython.py is its only client.
//
// In:  one JSON request per line on stdin.  Out: one JSON reply per line on stdout, in
// order.  Nothing else is ever written to stdout: the Python program's output is captured
// and returned inside the reply, and console.* goes to stderr.
// On failure: a Python exception is a reply with ok:false and the traceback; a crash of the
// interpreter (any JS error out of runPython, e.g. a WebAssembly trap) is a reply with
// ok:false, crashed:true and the interpreter is thrown away, so the next request gets a new
// one.  A request that cannot be carried out (not JSON, bad field) gets ok:false,
// bad_request:true (and id null when it had none).  The runner exits when stdin closes.

import { createInterface } from "node:readline";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const DEFAULT_HEAP_BYTES = 8 * 1024 * 1024;
// Where firmware/ and other importable files go; also on the default sys.path of this build.
const LIB_DIR = "/lib";

// The protocol owns stdout: anything the package or JS code called from Python logs goes to
// stderr instead.
console.log = console.error;
console.info = console.error;
console.debug = console.error;
console.warn = console.error;

// JS callbacks scheduled from Python may fail after their request has been answered; that
// must not take the runner (and every later test) down with it.
process.on("uncaughtException", (err) => console.error("runner: uncaught:", err));
process.on("unhandledRejection", (err) => console.error("runner: unhandled rejection:", err));

class Interpreter {
  static async create(heapBytes) {
    const self = new Interpreter();
    self.heapBytes = heapBytes;
    self.stdout = [];
    self.stderr = [];
    // linebuffer:false hands over single bytes; decoding once at the end keeps multi-byte
    // UTF-8 characters whole.
    self.mp = await loadMicroPython({
      heapsize: heapBytes,
      linebuffer: false,
      stdout: (bytes) => self.stdout.push(Buffer.from(bytes)),
      stderr: (bytes) => self.stderr.push(Buffer.from(bytes)),
    });
    mkdirs(self.mp.FS, LIB_DIR);
    self.mp.runPython(
      `import sys\nif "${LIB_DIR}" not in sys.path:\n    sys.path.append("${LIB_DIR}")\ndel sys`,
    );
    return self;
  }

  takeOutput() {
    const out = Buffer.concat(this.stdout).toString("utf8");
    const err = Buffer.concat(this.stderr).toString("utf8");
    this.stdout = [];
    this.stderr = [];
    return [out, err];
  }
}

function mkdirs(FS, dir) {
  let path = "";
  for (const part of dir.split("/").filter(Boolean)) {
    path += "/" + part;
    if (!FS.analyzePath(path).exists) FS.mkdir(path);
  }
}

function placeFiles(FS, files) {
  for (const [rawPath, content] of Object.entries(files)) {
    const path = rawPath.startsWith("/") ? rawPath : "/" + rawPath;
    mkdirs(FS, path.slice(0, path.lastIndexOf("/")));
    if (typeof content === "string") {
      FS.writeFile(path, content);
    } else if (content && typeof content.base64 === "string") {
      FS.writeFile(path, new Uint8Array(Buffer.from(content.base64, "base64")));
    } else {
      throw new Error(`file ${path}: content must be a string or {"base64": "..."}`);
    }
  }
}

// SystemExit(0) / SystemExit() is a normal end, as it is for the unix port.
function isCleanExit(err) {
  return err.type === "SystemExit" && /SystemExit: ?0?\s*$/.test(err.message);
}

let current = null;

// A request the runner could not carry out as asked (not a failure of the Python code).
function badRequest(message) {
  return { ok: false, bad_request: true, stdout: "", error: message };
}

async function handle(request) {
  const fresh = request.fresh !== false;
  const heapBytes = request.heap_bytes ?? DEFAULT_HEAP_BYTES;
  if (!Number.isInteger(heapBytes) || heapBytes < 64 * 1024) {
    return badRequest(`heap_bytes must be an integer >= 65536, got ${heapBytes}`);
  }
  if (typeof request.code !== "string") {
    return badRequest('request has no "code" string');
  }
  if (fresh || current === null) {
    current = null;
    current = await Interpreter.create(heapBytes);
  }
  const interp = current;
  try {
    if (request.files) placeFiles(interp.mp.FS, request.files);
  } catch (err) {
    return badRequest(`placing files: ${err.message}`);
  }
  let ok = true;
  let crashed = false;
  let error = "";
  try {
    interp.mp.runPython(request.code);
  } catch (err) {
    if (err && err.name === "PythonError") {
      ok = isCleanExit(err);
      error = ok ? "" : err.message;
    } else {
      // Not a Python exception: the interpreter's C state may be half unwound.  Drop it.
      current = null;
      ok = false;
      crashed = true;
      error = `MicroPython crashed (interpreter discarded): ${err && err.stack ? err.stack : err}`;
    }
  }
  const [stdout, stderr] = interp.takeOutput();
  return { ok, crashed, stdout, stderr, error };
}

function reply(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    reply({ id: null, ...badRequest(`bad request line: ${err.message}`) });
    continue;
  }
  const id = request && request.id !== undefined ? request.id : null;
  let result;
  try {
    result = await handle(request);
  } catch (err) {
    current = null;
    result = { ok: false, crashed: true, stdout: "", error: `runner error: ${err && err.stack ? err.stack : err}` };
  }
  reply({ id, ...result });
}
