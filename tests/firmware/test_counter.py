"""The frame counter survives reboots and power cuts without ever reusing a value
(docs/protocol.md §6.1), on CPython and under real MicroPython.

The power-cut test is SQLite's kind of durability claim: one scenario (boot, take frames,
with marks written every few frames) is run once to count every file-system step it makes
(create, each byte written, sync, close, rename, remove), then once per step with the power
cut just before that step, then "rebooted" on whatever the flash holds.  After every cut
the next counter must be above every counter handed out before it.  Torn writes leave
either a prefix of the record or a record-length of garbage (an erased flash page reads
0xff); renames are atomic (littlefs) or not (FAT: remove, then rename).
"""

import json

import pytest

from firmware import counter as counter_mod
from firmware import hal
from firmware.counter import CounterError, CounterExhausted, FrameCounter

# Runs unchanged under CPython (exec) and MicroPython; prints one JSON line.
SCENARIO = r"""
import json
from firmware import hal
from firmware.counter import FrameCounter


class PowerCut(BaseException):
    pass


class FakeFiles:
    # A flash file system whose every step can be the last: `cut_at` is the index of the
    # step that does not happen.
    def __init__(self, atomic=True, torn="prefix"):
        self.files = {}
        self.atomic = atomic
        self.torn = torn
        self.steps = 0
        self.cut_at = None
        self.dead = False

    def step(self):
        if self.dead or (self.cut_at is not None and self.steps >= self.cut_at):
            self.dead = True
            raise PowerCut()
        self.steps += 1

    def open(self, path, mode):
        if "r" in mode:
            if self.dead:
                raise PowerCut()
            if path not in self.files:
                raise OSError(2)
            return ReadFile(bytes(self.files[path]))
        self.step()
        self.files[path] = bytearray()
        return WriteFile(self, path)

    def rename(self, old, new):
        if not self.atomic and new in self.files:
            self.step()
            raise OSError(17)  # FAT: EEXIST
        self.step()
        self.files[new] = self.files.pop(old)

    def remove(self, path):
        self.step()
        if path not in self.files:
            raise OSError(2)
        del self.files[path]

    def stat(self, path):
        if path not in self.files:
            raise OSError(2)
        return (0,)

    def listdir(self, path):
        return list(self.files)

    def sync(self, f):
        self.step()


class ReadFile:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def close(self):
        pass


class WriteFile:
    def __init__(self, fs, path):
        self.fs = fs
        self.path = path

    def write(self, data):
        buf = self.fs.files[self.path]
        for i in range(len(data)):
            try:
                self.fs.step()
            except PowerCut:
                if self.fs.torn == "garbage":
                    while len(buf) < len(data):  # a half-programmed page: the rest erased
                        buf.append(0xFF)
                raise
            buf.append(data[i])
        return len(data)

    def flush(self):
        pass

    def close(self):
        self.fs.step()


def run(fs, reserve, takes):
    used = []
    try:
        c = FrameCounter(hal.Flash("/n", fs), reserve)
        c.boot()
        for _ in range(takes):
            used.append(c.take())
    except PowerCut:
        pass
    return used


def scenario(atomic, torn, reserve, takes, after):
    probe = FakeFiles(atomic, torn)
    run(probe, reserve, takes)
    total = probe.steps
    results = []
    for cut in range(total + 1):
        fs = FakeFiles(atomic, torn)
        fs.cut_at = cut
        before = run(fs, reserve, takes)
        fs.dead = False
        fs.cut_at = None
        again = run(fs, reserve, after)  # reboot on what the flash holds
        fs.dead = False
        third = run(fs, reserve, 2)  # and once more, uncut
        results.append([cut, before, again, third])
    return {"total_steps": total, "results": results}


out = {}
for atomic in (True, False):
    for torn in ("prefix", "garbage"):
        out["%s-%s" % ("atomic" if atomic else "fat", torn)] = scenario(
            atomic, torn, RESERVE, TAKES, 3)
print(json.dumps(out))
"""


def _run_scenario_cpython(reserve, takes):
    import contextlib
    import io

    code = SCENARIO.replace("RESERVE", str(reserve)).replace("TAKES", str(takes))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(code, "scenario", "exec"), {"__name__": "scenario"})
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _check_power_cuts(out, takes):
    assert set(out) == {"atomic-prefix", "atomic-garbage", "fat-prefix", "fat-garbage"}
    for name, run in out.items():
        total = run["total_steps"]
        assert len(run["results"]) == total + 1, name
        completed = 0
        for cut, before, again, third in run["results"]:
            where = f"{name}, power cut before step {cut} of {total}"
            assert before == sorted(set(before)), where
            assert again, f"{where}: no counter after the reboot"
            if before:
                assert again[0] > before[-1], f"{where}: reused or went back: {before} {again}"
            assert again == list(range(again[0], again[0] + len(again))), where
            assert third[0] > again[-1], f"{where}: second reboot went back"
            completed += len(before) == takes
        assert completed >= 1, f"{name}: the uncut run never completed"


def test_counter_never_reuses_a_value_whatever_step_the_power_is_cut_at():
    out = _run_scenario_cpython(reserve=4, takes=10)
    _check_power_cuts(out, takes=10)
    # marks at boot, 4, 8: three replace() sequences of ~30 steps each, all cut points tried
    assert out["atomic-prefix"]["total_steps"] > 80
    assert out["fat-prefix"]["total_steps"] > out["atomic-prefix"]["total_steps"]


@pytest.mark.micropython
def test_counter_power_cuts_under_micropython(micropython):
    code = SCENARIO.replace("RESERVE", "3").replace("TAKES", "7")
    out = micropython.run_json(code, timeout_s=120)
    _check_power_cuts(out, takes=7)


# -- behaviour without power cuts (CPython) ------------------------------------------------


def test_first_boot_starts_at_zero_and_marks_are_written_once_per_reserve(tmp_path):
    flash = hal.Flash(str(tmp_path))
    c = FrameCounter(flash, reserve=1000)
    assert c.boot() == 0
    assert [c.take() for _ in range(3)] == [0, 1, 2]
    for _ in range(2497):
        c.take()
    assert c.next == 2500
    assert c.writes == 3  # boot (mark 1000), at 1000 (mark 2000), at 2000 (mark 3000)
    assert counter_mod.decode_mark(flash.read("counter")) == 3000
    assert not flash.exists("counter.new")


def test_a_reboot_jumps_ahead_to_the_stored_mark(tmp_path):
    flash = hal.Flash(str(tmp_path))
    c = FrameCounter(flash, reserve=100)
    c.boot()
    used = [c.take() for _ in range(150)]
    c2 = FrameCounter(flash, reserve=100)
    assert c2.boot() == 200  # counters 150..199 are skipped, never reused
    assert c2.take() == 200 > max(used)


def test_mark_records_detect_torn_and_flipped_bytes():
    good = counter_mod.encode_mark(123456)
    assert counter_mod.decode_mark(good) == 123456
    assert len(good) == 25
    for cut in range(len(good)):
        assert counter_mod.decode_mark(good[:cut]) is None
    for i in range(len(good)):
        for bit in range(8):
            flipped = bytearray(good)
            flipped[i] ^= 1 << bit
            assert counter_mod.decode_mark(bytes(flipped)) is None, (i, bit)
    assert counter_mod.decode_mark(counter_mod.encode_mark(1 << 32)) == 1 << 32


def test_a_damaged_counter_with_no_valid_copy_refuses_to_guess(tmp_path):
    flash = hal.Flash(str(tmp_path))
    flash.write("counter", b"DCTR 0000003e8 garbage!!\n")
    with pytest.raises(CounterError, match="re-enrol"):
        FrameCounter(flash).boot()


def test_a_complete_new_copy_beside_a_missing_main_file_is_used(tmp_path):
    # FAT: the power failed between remove(counter) and rename(counter.new, counter)
    flash = hal.Flash(str(tmp_path))
    flash.write("counter.new", counter_mod.encode_mark(5000))
    assert FrameCounter(flash).boot() == 5000


def test_counter_stops_after_0xffffffff(tmp_path):
    flash = hal.Flash(str(tmp_path))
    flash.write("counter", counter_mod.encode_mark(0xFFFFFFFE))
    c = FrameCounter(flash, reserve=1000)
    assert c.boot() == 0xFFFFFFFE
    assert c.take() == 0xFFFFFFFE
    assert c.take() == 0xFFFFFFFF
    with pytest.raises(CounterExhausted):
        c.take()
    with pytest.raises(CounterExhausted):
        FrameCounter(flash).boot()
