# Metric registry of wire protocol v1 (docs/protocol.md, section "Metric registry").
#
# One row per metric: id on the wire, name in the store, unit, decimal exponent of the
# fixed-point scale (value = raw * 10**exp), and the physical range a node may send.
# The group says which node kinds may send it: "status" metrics may come from any kind;
# the others only from the kind of the same name.  Ids are never reused: a retired metric
# keeps its row with its range closed, so old recordings still decode.
#
# Runs unchanged under MicroPython (no typing, no dataclasses).
#
# RAM: the rows are one string (_TABLE, ~1.5 KB), read where a metric is looked up.
# BY_ID and BY_NAME map ids and names to Metric objects.  Under CPython (gateway,
# simulators, tools) they are plain dicts holding every Metric, made at import.  Under
# MicroPython they are Registry mappings that make a Metric the first time it is looked
# up and keep it: a node uses about a dozen of the 53 metrics, and a Metric (an instance
# with nine attributes and its strings) takes ~250 bytes of heap.  Holding all of them in
# dicts made this module cost a node 14 KB of heap as installed; now ~6 KB, plus the
# Metrics it looks up (bench/firmware_memory.py).  Same rows, same Metric, same order
# either way; tests/firmware/test_metrics_registry.py checks the two against each other.

import sys

KIND_AIR = 1
KIND_NOISE = 2
KIND_CROWD = 3

KIND_NAMES = {KIND_AIR: "air", KIND_NOISE: "noise", KIND_CROWD: "crowd"}
KIND_IDS = {"air": KIND_AIR, "noise": KIND_NOISE, "crowd": KIND_CROWD}

GROUP_STATUS = "status"

# Nominal 1/3-octave band centres (IEC 61260-1), 31.5 Hz to 8 kHz: ids 0x30 + index.
BAND_CENTRES_HZ = (
    "31_5", "40", "50", "63", "80", "100", "125", "160", "200", "250", "315", "400", "500",
    "630", "800", "1000", "1250", "1600", "2000", "2500", "3150", "4000", "5000", "6300",
    "8000",
)

# Upper edges (dBm, exclusive) of the crowd RSSI histogram bins; the first bin starts at
# the node's RSSI floor, the last one is open-ended.
RSSI_BIN_EDGES_DBM = (-90, -80, -70, -60)

# One metric per line: id, name, unit, exp, min, max, group.  min and max with a decimal
# point are floats, without one ints (to_raw_exp keeps ints exact).  The id is written as
# 0x and two hex digits: lookups by name rely on that width.  The 1/3-octave band metrics,
# 0x30 + index, are not listed: they are made from BAND_CENTRES_HZ (_band_row).
_TABLE = """
0x01 temperature_c       degC     -2  -40.0  85.0        air
0x02 humidity_pct        %RH      -2  0.0    100.0       air
0x03 pressure_hpa        hPa      -2  300.0  1100.0      air
0x04 gas_resistance_ohm  ohm      0   0      16000000    air
0x05 pm25_ugm3           ug/m3    -1  0.0    1000.0      air
0x06 pm10_ugm3           ug/m3    -1  0.0    2000.0      air
0x07 pm1_ugm3            ug/m3    -1  0.0    1000.0      air
0x08 air_faults          bitmask  0   0      65535       air
0x20 laeq_db             dB(A)    -1  0.0    150.0       noise
0x21 lamax_db            dB(A)    -1  0.0    150.0       noise
0x22 la10_db             dB(A)    -1  0.0    150.0       noise
0x23 la50_db             dB(A)    -1  0.0    150.0       noise
0x24 la90_db             dB(A)    -1  0.0    150.0       noise
0x25 noise_faults        bitmask  0   0      65535       noise
0x60 crowd_count         devices  0   0      65535       crowd
0x61 rssi_bin_0          devices  0   0      65535       crowd
0x62 rssi_bin_1          devices  0   0      65535       crowd
0x63 rssi_bin_2          devices  0   0      65535       crowd
0x64 rssi_bin_3          devices  0   0      65535       crowd
0x65 rssi_bin_4          devices  0   0      65535       crowd
0x66 crowd_faults        bitmask  0   0      65535       crowd
0xe0 uptime_s            s        0   0      2147483647  status
0xe1 free_heap_bytes     bytes    0   0      2147483647  status
0xe2 reset_cause         enum     0   0      255         status
0xe3 firmware_version    MMmmpp   0   0      999999      status
0xe4 error_count         count    0   0      2147483647  status
0xe5 dropped_frames      count    0   0      2147483647  status
0xe6 supply_mv           mV       0   0      65535       status
"""
# Groups in the table: air (BME680 and the particulate sensor, SDS011 / PMS5003); noise
# (A-weighted levels over the reporting window); crowd (only counts ever leave a crowd
# node); status (any kind, in a frame of its own: FLAG_STATUS in protocol.py).
_BAND_ID = 0x30
_BAND_PREFIX = "band_"
_BAND_SUFFIX = "hz_db"


class Metric:
    """One registry row.  `raw_min`/`raw_max` bound the fixed-point integer on the wire."""

    def __init__(self, metric_id, name, unit, exp, lo, hi, group):
        self.id = metric_id
        self.name = name
        self.unit = unit
        self.exp = exp
        self.min = lo
        self.max = hi
        self.group = group
        self.raw_min = to_raw_exp(lo, exp)
        self.raw_max = to_raw_exp(hi, exp)

    def to_raw(self, value):
        return to_raw_exp(value, self.exp)

    def to_value(self, raw):
        return to_value_exp(raw, self.exp)

    def __repr__(self):
        return "Metric(0x%02x %s)" % (self.id, self.name)


def to_raw_exp(value, exp):
    # Integers stay integers: an ESP32's single-precision float cannot hold every count
    # or uptime above 2**24 exactly.
    if isinstance(value, int) and exp <= 0:
        return value * (10 ** -exp)
    # Round half away from zero so a node with single-precision floats (ESP32) and the
    # gateway's doubles agree on the integer for every value that fits the scale.
    scaled = value * (10 ** -exp) if exp < 0 else value / (10**exp)
    if scaled >= 0:
        return int(scaled + 0.5)
    return -int(-scaled + 0.5)


def to_value_exp(raw, exp):
    if exp < 0:
        # Dividing by an exact power of ten gives the nearest double to the decimal value.
        return raw / (10 ** -exp)
    return float(raw * (10**exp))


def _number(text):
    return float(text) if "." in text else int(text)


def _row_at(start):
    """The row of the _TABLE line starting at `start`."""
    f = _TABLE[start:_TABLE.find("\n", start)].split()
    return int(f[0], 16), f[1], f[2], int(f[3]), _number(f[4]), _number(f[5]), f[6]


def _band_row(index):
    return (_BAND_ID + index, _BAND_PREFIX + BAND_CENTRES_HZ[index] + _BAND_SUFFIX, "dB", -1,
            0.0, 150.0, "noise")


def _row_of_id(metric_id):
    if not isinstance(metric_id, int) or metric_id < 0 or metric_id > 0xFF:
        return None
    if _BAND_ID <= metric_id < _BAND_ID + len(BAND_CENTRES_HZ):
        return _band_row(metric_id - _BAND_ID)
    at = _TABLE.find("\n0x%02x " % metric_id)
    return None if at < 0 else _row_at(at + 1)


def _row_of_name(name):
    if not isinstance(name, str) or not name or " " in name or "\n" in name:
        return None
    if name.startswith(_BAND_PREFIX) and name.endswith(_BAND_SUFFIX):
        centre = name[len(_BAND_PREFIX):len(name) - len(_BAND_SUFFIX)]
        for i in range(len(BAND_CENTRES_HZ)):
            if BAND_CENTRES_HZ[i] == centre:
                return _band_row(i)
        return None
    at = _TABLE.find(" " + name + " ")
    while at >= 0:
        if _TABLE[at - 5] == "\n":  # the name column: after "\n0xNN"
            return _row_at(at - 4)
        at = _TABLE.find(" " + name + " ", at + 1)
    return None


def _rows():
    """Every row, in registry order: the table's, then the bands'."""
    at = _TABLE.find("\n") + 1
    while at < len(_TABLE):
        yield _row_at(at)
        at = _TABLE.find("\n", at) + 1
    for i in range(len(BAND_CENTRES_HZ)):
        yield _band_row(i)


# MicroPython: the Metrics made so far, each under its id (an int) and its name (a str);
# BY_ID and BY_NAME share them.
_MADE = {}


def _metric(row):
    m = _MADE.get(row[0])
    if m is None:
        m = _MADE[row[0]] = _MADE[row[1]] = Metric(*row)
    return m


class Registry:
    """A read-only mapping of the registry by id (`by_name` False) or by name, that makes
    each Metric on its first lookup and keeps it (see RAM above).  BY_ID and BY_NAME are
    Registry objects under MicroPython."""

    def __init__(self, by_name):
        self._by_name = by_name

    def get(self, key, default=None):
        if isinstance(key, str) if self._by_name else isinstance(key, int):
            m = _MADE.get(key)
            if m is not None:
                return m
            row = _row_of_name(key) if self._by_name else _row_of_id(key)
            if row is not None:
                return _metric(row)
        hash(key)  # an unhashable key raises TypeError, as it would for a dict
        return default

    def __getitem__(self, key):
        m = self.get(key)
        if m is None:
            raise KeyError(key)
        return m

    def __contains__(self, key):
        return self.get(key) is not None

    def keys(self):
        for row in _rows():
            yield row[1] if self._by_name else row[0]

    def __iter__(self):
        return self.keys()

    def values(self):
        for row in _rows():
            yield _metric(row)

    def items(self):
        for row in _rows():
            yield (row[1] if self._by_name else row[0]), _metric(row)

    def __len__(self):
        n = len(BAND_CENTRES_HZ)
        at = _TABLE.find("\n") + 1
        while at < len(_TABLE):
            n += 1
            at = _TABLE.find("\n", at) + 1
        return n

    def __repr__(self):
        return "Registry(by %s, %d made)" % ("name" if self._by_name else "id", len(_MADE) // 2)


if sys.implementation.name == "micropython":
    BY_ID = Registry(False)
    BY_NAME = Registry(True)
else:
    BY_ID = {}
    BY_NAME = {}
    for _row in _rows():
        _m = Metric(*_row)
        BY_ID[_m.id] = _m
        BY_NAME[_m.name] = _m
    del _row, _m


def id_of(name):
    """The id of the metric `name`, or None: read from the table, without making a Metric
    (a node's status frame needs only the ids)."""
    row = _row_of_name(name)
    return None if row is None else row[0]


def allowed_for(kind, metric):
    """True when a node of `kind` (KIND_*) may send `metric` (a Metric)."""
    return metric.group == GROUP_STATUS or KIND_NAMES.get(kind) == metric.group
