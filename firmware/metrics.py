# Metric registry of wire protocol v1 (docs/protocol.md, section "Metric registry").
#
# One row per metric: id on the wire, name in the store, unit, decimal exponent of the
# fixed-point scale (value = raw * 10**exp), and the physical range a node may send.
# The group says which node kinds may send it: "status" metrics may come from any kind;
# the others only from the kind of the same name.  Ids are never reused: a retired metric
# keeps its row with its range closed, so old recordings still decode.
#
# Runs unchanged under MicroPython (no typing, no dataclasses).  RAM: the table is a tuple
# of tuples built once at import (~3 KB on an ESP32-S3).

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

# (id, name, unit, exp, min, max, group)
_ROWS = [
    # air: BME680 and the particulate sensor (SDS011 / PMS5003)
    (0x01, "temperature_c", "degC", -2, -40.0, 85.0, "air"),
    (0x02, "humidity_pct", "%RH", -2, 0.0, 100.0, "air"),
    (0x03, "pressure_hpa", "hPa", -2, 300.0, 1100.0, "air"),
    (0x04, "gas_resistance_ohm", "ohm", 0, 0, 16000000, "air"),
    (0x05, "pm25_ugm3", "ug/m3", -1, 0.0, 1000.0, "air"),
    (0x06, "pm10_ugm3", "ug/m3", -1, 0.0, 2000.0, "air"),
    (0x07, "pm1_ugm3", "ug/m3", -1, 0.0, 1000.0, "air"),
    (0x08, "air_faults", "bitmask", 0, 0, 65535, "air"),
    # noise: A-weighted levels over the reporting window
    (0x20, "laeq_db", "dB(A)", -1, 0.0, 150.0, "noise"),
    (0x21, "lamax_db", "dB(A)", -1, 0.0, 150.0, "noise"),
    (0x22, "la10_db", "dB(A)", -1, 0.0, 150.0, "noise"),
    (0x23, "la50_db", "dB(A)", -1, 0.0, 150.0, "noise"),
    (0x24, "la90_db", "dB(A)", -1, 0.0, 150.0, "noise"),
    (0x25, "noise_faults", "bitmask", 0, 0, 65535, "noise"),
    # crowd: only counts ever leave a crowd node
    (0x60, "crowd_count", "devices", 0, 0, 65535, "crowd"),
    (0x61, "rssi_bin_0", "devices", 0, 0, 65535, "crowd"),
    (0x62, "rssi_bin_1", "devices", 0, 0, 65535, "crowd"),
    (0x63, "rssi_bin_2", "devices", 0, 0, 65535, "crowd"),
    (0x64, "rssi_bin_3", "devices", 0, 0, 65535, "crowd"),
    (0x65, "rssi_bin_4", "devices", 0, 0, 65535, "crowd"),
    (0x66, "crowd_faults", "bitmask", 0, 0, 65535, "crowd"),
    # status: any kind, in a frame of its own (see FLAG_STATUS in protocol.py)
    (0xE0, "uptime_s", "s", 0, 0, 2147483647, GROUP_STATUS),
    (0xE1, "free_heap_bytes", "bytes", 0, 0, 2147483647, GROUP_STATUS),
    (0xE2, "reset_cause", "enum", 0, 0, 255, GROUP_STATUS),
    (0xE3, "firmware_version", "MMmmpp", 0, 0, 999999, GROUP_STATUS),
    (0xE4, "error_count", "count", 0, 0, 2147483647, GROUP_STATUS),
    (0xE5, "dropped_frames", "count", 0, 0, 2147483647, GROUP_STATUS),
    (0xE6, "supply_mv", "mV", 0, 0, 65535, GROUP_STATUS),
]
for _i in range(len(BAND_CENTRES_HZ)):
    _ROWS.append(
        (0x30 + _i, "band_" + BAND_CENTRES_HZ[_i] + "hz_db", "dB", -1, 0.0, 150.0, "noise")
    )


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


BY_ID = {}
BY_NAME = {}
for _row in _ROWS:
    _m = Metric(*_row)
    BY_ID[_m.id] = _m
    BY_NAME[_m.name] = _m
del _row, _m, _i


def allowed_for(kind, metric):
    """True when a node of `kind` (KIND_*) may send `metric` (a Metric)."""
    return metric.group == GROUP_STATUS or KIND_NAMES.get(kind) == metric.group
