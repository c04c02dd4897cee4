/* gateway._speedups: a good frame's whole path through verify, in one call (optional).
 *
 * gateway/verify.py uses it when it was compiled and runs the same checks in Python
 * otherwise; tests/gateway/test_verify.py checks the compiled path, Python's fast path
 * and the reference path (firmware/protocol.py) against each other for any input.  The
 * rules are docs/protocol.md §2.1-§2.4 and §6:
 *
 *   verify(env, nodes, windows, topics, dirty) -> Reading | None
 *
 * Verifier._fast in C: the header, the node's prepared entry (Verifier._prepare), the
 * topic, the metric section, the HMAC-SHA256 tag (OpenSSL's SHA-256 from pads hashed
 * once, compared in constant time), the replay window; then the Reading, carrying its
 * line head (series + fields).  None, with nothing changed, whenever anything is not
 * plain: Python then decides, and names any rejection.
 *
 *   metrics(data, count, table) -> (fields, text) | None
 *
 * The metric section alone (Python's fast path uses it): `count` (id, zigzag varint)
 * pairs from byte 19 up to the tag, ids strictly ascending, each varint minimal and at
 * most 32 bits, each id in `table` and its raw value in the table's range, the last pair
 * ending where the tag begins.  Returns the fields {name: raw / divisor} in frame order
 * and their line-protocol text ("name=value,..." sorted by name, each value as Python's
 * repr of the float); None when any rule fails.
 *
 *   table(entries) -> table          entries: (metric id, ASCII name, divisor, min, max)
 *   key(key, table, status_table, series, status_series) -> key
 *   bind(Reading, constants)         once, before verify(): checks the frame layout and
 *                                    that Reading is a slots dataclass
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include "structmember.h"
/* The low-level SHA-256 calls (deprecated in OpenSSL 3 for new code, still part of its
 * API): a prepared HMAC state is a plain struct copy, no allocation per frame. */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define HEADER_LEN 19
#define TAG_LEN 16
#define MAX_METRICS 48
#define NAME_MAX_LEN 64

typedef struct {
    int present;
    int rank;          /* position in name order among the table's entries */
    int decimals;      /* divisor == 10**decimals (0..4), else -1 */
    double divisor;
    long long lo, hi;
    PyObject *name;    /* str */
    char text[NAME_MAX_LEN + 2];  /* "name=" */
    Py_ssize_t text_len;
} Entry;

typedef struct {
    Entry entries[256];
} Table;

static const char *CAPSULE = "gateway._speedups.table";

static void table_free(PyObject *capsule)
{
    Table *t = (Table *)PyCapsule_GetPointer(capsule, CAPSULE);
    if (t == NULL) {
        PyErr_Clear();
        return;
    }
    for (int i = 0; i < 256; i++) {
        Py_XDECREF(t->entries[i].name);
    }
    PyMem_Free(t);
}

static PyObject *make_table(PyObject *self, PyObject *arg)
{
    (void)self;
    PyObject *seq = PySequence_Fast(arg, "table() takes a sequence of entries");
    if (seq == NULL) {
        return NULL;
    }
    Table *t = (Table *)PyMem_Calloc(1, sizeof(Table));
    if (t == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        int id;
        PyObject *name;
        double divisor;
        long long lo, hi;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iUdLL;table entry",
                              &id, &name, &divisor, &lo, &hi)) {
            goto fail;
        }
        Py_ssize_t len;
        const char *utf8 = PyUnicode_AsUTF8AndSize(name, &len);
        if (utf8 == NULL) {
            goto fail;
        }
        if (id < 0 || id > 255 || len > NAME_MAX_LEN || !PyUnicode_IS_ASCII(name)) {
            PyErr_Format(PyExc_ValueError, "bad table entry for metric id %d", id);
            goto fail;
        }
        Entry *e = &t->entries[id];
        if (e->present) {
            PyErr_Format(PyExc_ValueError, "metric id %d twice in the table", id);
            goto fail;
        }
        e->present = 1;
        e->divisor = divisor;
        e->decimals = -1;
        for (int k = 0, p = 1; k <= 4; k++, p *= 10) {
            if (divisor == (double)p) {
                e->decimals = k;
            }
        }
        e->lo = lo;
        e->hi = hi;
        Py_INCREF(name);
        e->name = name;
        memcpy(e->text, utf8, (size_t)len);
        e->text[len] = '=';
        e->text_len = len + 1;
    }
    /* ranks: the order of the names (ASCII, so byte order is Python's str order) */
    for (int a = 0; a < 256; a++) {
        if (!t->entries[a].present) {
            continue;
        }
        int rank = 0;
        for (int b = 0; b < 256; b++) {
            if (b != a && t->entries[b].present &&
                PyUnicode_Compare(t->entries[b].name, t->entries[a].name) < 0) {
                rank++;
            }
        }
        t->entries[a].rank = rank;
    }
    Py_DECREF(seq);
    PyObject *capsule = PyCapsule_New(t, CAPSULE, table_free);
    if (capsule == NULL) {
        for (int i = 0; i < 256; i++) {
            Py_XDECREF(t->entries[i].name);
        }
        PyMem_Free(t);
    }
    return capsule;
fail:
    for (int i = 0; i < 256; i++) {
        Py_XDECREF(t->entries[i].name);
    }
    PyMem_Free(t);
    Py_DECREF(seq);
    return NULL;
}

typedef struct {
    const Entry *entry;
    double value;
    long long raw;
} Parsed;

/* repr(raw / 10**k) for |raw| < 2**53 and k <= 4, without the float: the decimal itself,
 * trailing zeros dropped, at least one digit after the point.  This is the shortest
 * string that reads back as that float (what repr gives): raw / 10**k is the double
 * nearest that decimal, and a double tells apart all decimals of up to 15 significant
 * digits, so no shorter decimal reads back as the same double; |value| is 0 or in
 * [1e-4, 1e16), where repr writes no exponent.  Returns the length written to `out`. */
static Py_ssize_t decimal_repr(long long raw, int k, char *out)
{
    char digits[24];
    int nd = 0;
    unsigned long long u = raw < 0 ? (unsigned long long)(-raw) : (unsigned long long)raw;
    do {
        digits[nd++] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    while (nd <= k) {  /* at least one digit before the point */
        digits[nd++] = '0';
    }
    Py_ssize_t len = 0;
    if (raw < 0) {
        out[len++] = '-';
    }
    for (int i = nd - 1; i >= k; i--) {
        out[len++] = digits[i];
    }
    out[len++] = '.';
    int low = 0;  /* trailing zeros of the fraction */
    while (low < k - 1 && digits[low] == '0') {
        low++;
    }
    if (k == 0) {
        out[len++] = '0';
    }
    for (int i = k - 1; i >= low; i--) {
        out[len++] = digits[i];
    }
    return len;
}

/* The metric section of `d` (n bytes, a whole frame): 1 and `parsed` filled when every
 * rule holds, else 0.  Allocates nothing. */
static int parse_metrics(const unsigned char *d, Py_ssize_t n, long count, const Table *t,
                         Parsed *parsed)
{
    if (count < 1 || count > MAX_METRICS || n < HEADER_LEN + TAG_LEN) {
        return 0;
    }
    Py_ssize_t end = n - TAG_LEN, pos = HEADER_LEN;
    int last = -1;
    for (long i = 0; i < count; i++) {
        if (pos + 1 >= end) {
            return 0;
        }
        int id = d[pos++];
        if (id <= last) {
            return 0;
        }
        last = id;
        uint64_t z = 0;
        int shift = 0;
        for (;;) {
            if (pos >= end || shift > 28) {
                return 0;
            }
            unsigned b = d[pos++];
            z |= (uint64_t)(b & 0x7F) << shift;
            if (b < 0x80) {
                if (shift && (b == 0 || (shift == 28 && b > 0x0F))) {
                    return 0;  /* non-minimal, or longer than 32 bits */
                }
                break;
            }
            shift += 7;
        }
        long long raw = (z & 1) ? -(long long)((z + 1) >> 1) : (long long)(z >> 1);
        const Entry *e = &t->entries[id];
        if (!e->present || raw < e->lo || raw > e->hi) {
            return 0;
        }
        parsed[i].entry = e;
        parsed[i].value = (double)raw / e->divisor;
        parsed[i].raw = raw;
    }
    return pos == end;
}

/* The fields dict (frame order) and their line-protocol text (name order) of parsed
 * metrics.  1 with both set, 0 with neither when a value would not format (cannot happen
 * for a finite double; the caller then returns None), -1 with an exception set. */
#define PREFIX_MAX 512

static int build_fields(const Parsed *parsed, long count, PyObject *prefix,
                        PyObject **fields_out, PyObject **text_out)
{
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        return -1;
    }
    for (long i = 0; i < count; i++) {
        PyObject *v = PyFloat_FromDouble(parsed[i].value);
        if (v == NULL || PyDict_SetItem(fields, parsed[i].entry->name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(fields);
            return -1;
        }
        Py_DECREF(v);
    }
    /* the text, in name order: an insertion sort of at most 48 */
    const Parsed *order[MAX_METRICS];
    for (long i = 0; i < count; i++) {
        long j = i;
        while (j > 0 && order[j - 1]->entry->rank > parsed[i].entry->rank) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = &parsed[i];
    }
    char text[PREFIX_MAX + MAX_METRICS * (NAME_MAX_LEN + 2 + 32)];
    Py_ssize_t len = 0;
    if (prefix != NULL && PyUnicode_IS_ASCII(prefix) &&
        PyUnicode_GET_LENGTH(prefix) <= PREFIX_MAX) {  /* copied in; otherwise joined below */
        len = PyUnicode_GET_LENGTH(prefix);
        memcpy(text, PyUnicode_1BYTE_DATA(prefix), (size_t)len);
        prefix = NULL;
    }
    Py_ssize_t start = len;
    for (long i = 0; i < count; i++) {
        const Entry *e = order[i]->entry;
        if (i > 0 || len > start) {
            text[len++] = ',';
        }
        memcpy(text + len, e->text, (size_t)e->text_len);
        len += e->text_len;
        if (e->decimals >= 0) {  /* raw is at most 32 bits (parse_metrics) */
            len += decimal_repr(order[i]->raw, e->decimals, text + len);
            continue;
        }
        char *repr = PyOS_double_to_string(order[i]->value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (repr == NULL) {
            Py_DECREF(fields);
            return -1;
        }
        size_t rlen = strlen(repr);
        if (rlen > 31) {  /* a repr of a finite double is at most 24 characters */
            PyMem_Free(repr);
            Py_DECREF(fields);
            return 0;
        }
        memcpy(text + len, repr, rlen);
        len += (Py_ssize_t)rlen;
        PyMem_Free(repr);
    }
    PyObject *str = PyUnicode_DecodeASCII(text, len, "strict");
    if (str != NULL && prefix != NULL) {  /* a prefix with other than ASCII, or long */
        PyObject *joined = PyUnicode_Concat(prefix, str);
        Py_DECREF(str);
        str = joined;
    }
    if (str == NULL) {
        Py_DECREF(fields);
        return -1;
    }
    *fields_out = fields;
    *text_out = str;
    return 1;
}

static PyObject *metrics(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "metrics(data, count, table)");
        return NULL;
    }
    char *data;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(args[0], &data, &n) < 0) {
        return NULL;
    }
    long count = PyLong_AsLong(args[1]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const Table *t = (const Table *)PyCapsule_GetPointer(args[2], CAPSULE);
    if (t == NULL) {
        return NULL;
    }
    Parsed parsed[MAX_METRICS];
    if (!parse_metrics((const unsigned char *)data, n, count, t, parsed)) {
        Py_RETURN_NONE;
    }
    PyObject *fields, *text;
    int built = build_fields(parsed, count, NULL, &fields, &text);
    if (built < 0) {
        return NULL;
    }
    if (built == 0) {
        Py_RETURN_NONE;
    }
    PyObject *result = PyTuple_Pack(2, fields, text);
    Py_DECREF(fields);
    Py_DECREF(text);
    return result;
}

/* -- a node key: HMAC-SHA256 with its pads hashed once (RFC 2104 §4) ------------------ */

static const char *KEY_CAPSULE = "gateway._speedups.key";

typedef struct {
    SHA256_CTX inner, outer;  /* the keyed states after one block of ipad / opad */
    const Table *tables[2];   /* measurement frames, status frames */
    PyObject *table_refs[2];  /* keeps the tables alive */
    PyObject *prefixes[2];    /* the series (line_series) of each: str */
} Key;

static void key_free(PyObject *capsule)
{
    Key *k = (Key *)PyCapsule_GetPointer(capsule, KEY_CAPSULE);
    if (k == NULL) {
        PyErr_Clear();
        return;
    }
    Py_XDECREF(k->table_refs[0]);
    Py_XDECREF(k->table_refs[1]);
    Py_XDECREF(k->prefixes[0]);
    Py_XDECREF(k->prefixes[1]);
    OPENSSL_cleanse(k, sizeof(Key));  /* key material */
    PyMem_Free(k);
}

static PyObject *make_key(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer key;
    PyObject *plain, *status, *prefix, *status_prefix;
    if (!PyArg_ParseTuple(args, "y*OOUU:key", &key, &plain, &status, &prefix, &status_prefix)) {
        return NULL;
    }
    const Table *tp = (const Table *)PyCapsule_GetPointer(plain, CAPSULE);
    const Table *ts = tp ? (const Table *)PyCapsule_GetPointer(status, CAPSULE) : NULL;
    if (ts == NULL || key.len > 64) {
        if (ts != NULL) {
            PyErr_SetString(PyExc_ValueError, "a node key is at most 64 bytes");
        }
        PyBuffer_Release(&key);
        return NULL;
    }
    Key *k = (Key *)PyMem_Calloc(1, sizeof(Key));
    if (k == NULL) {
        PyBuffer_Release(&key);
        return PyErr_NoMemory();
    }
    unsigned char ipad[64], opad[64];
    memset(ipad, 0x36, 64);
    memset(opad, 0x5c, 64);
    for (Py_ssize_t i = 0; i < key.len; i++) {
        ipad[i] ^= ((const unsigned char *)key.buf)[i];
        opad[i] ^= ((const unsigned char *)key.buf)[i];
    }
    PyBuffer_Release(&key);
    SHA256_Init(&k->inner);
    SHA256_Update(&k->inner, ipad, 64);
    SHA256_Init(&k->outer);
    SHA256_Update(&k->outer, opad, 64);
    OPENSSL_cleanse(ipad, 64);
    OPENSSL_cleanse(opad, 64);
    k->tables[0] = tp;
    k->tables[1] = ts;
    Py_INCREF(plain);
    Py_INCREF(status);
    k->table_refs[0] = plain;
    k->table_refs[1] = status;
    Py_INCREF(prefix);
    Py_INCREF(status_prefix);
    k->prefixes[0] = prefix;
    k->prefixes[1] = status_prefix;
    PyObject *capsule = PyCapsule_New(k, KEY_CAPSULE, key_free);
    if (capsule == NULL) {
        Py_DECREF(plain);
        Py_DECREF(status);
        Py_DECREF(prefix);
        Py_DECREF(status_prefix);
        OPENSSL_cleanse(k, sizeof(Key));
        PyMem_Free(k);
    }
    return capsule;
}

/* -- the whole path of a good frame --------------------------------------------------- */

/* bind(reading_type, constants): what verify() needs to know, checked once.  The
 * Reading's fields are set through its slots, in the order of READING_SLOTS, exactly as
 * its dataclass __init__ sets them. */
static const char *READING_SLOTS[] = {
    "node", "kind", "zone", "site", "counter", "time_s", "window_s", "fields", "status",
    "time_estimated", "head",
};
#define N_SLOTS 11

static struct {
    int bound;
    PyTypeObject *reading;
    Py_ssize_t offsets[N_SLOTS];
    int version, min_frame, max_frame, flags_known, flag_status, flag_unsynced;
    PyObject *s_payload, *s_topic, *s_received_s, *s_revoked, *s_kind, *s_zone, *s_site,
        *s_highest, *s_seen, *s_size;
} B;

static PyObject *bind(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *type;
    int header_len, tag_len, max_metrics;
    if (!PyArg_ParseTuple(args, "O!(iiiiiiiii):bind", &PyType_Type, &type, &B.version,
                          &B.min_frame, &B.max_frame, &B.flags_known, &B.flag_status,
                          &B.flag_unsynced, &header_len, &tag_len, &max_metrics)) {
        return NULL;
    }
    if (header_len != HEADER_LEN || tag_len != TAG_LEN || max_metrics != MAX_METRICS) {
        PyErr_SetString(PyExc_ValueError, "frame layout differs from the one compiled in");
        return NULL;
    }
    PyTypeObject *tp = (PyTypeObject *)type;
    if (tp->tp_dictoffset != 0 || PyObject_HasAttrString(type, "__post_init__")) {
        PyErr_SetString(PyExc_TypeError, "the Reading type must be a slots dataclass");
        return NULL;
    }
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *descr = PyObject_GetAttrString(type, READING_SLOTS[i]);
        if (descr == NULL) {
            return NULL;
        }
        int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
                 ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX;
        if (ok) {
            B.offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        }
        Py_DECREF(descr);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "Reading.%s is not a slot", READING_SLOTS[i]);
            return NULL;
        }
    }
#define INTERN(field, s)                                \
    if (B.field == NULL) {                              \
        B.field = PyUnicode_InternFromString(s);        \
        if (B.field == NULL) {                          \
            return NULL;                                \
        }                                               \
    }
    INTERN(s_payload, "payload");
    INTERN(s_topic, "topic");
    INTERN(s_received_s, "received_s");
    INTERN(s_revoked, "revoked");
    INTERN(s_kind, "kind");
    INTERN(s_zone, "zone");
    INTERN(s_site, "site");
    INTERN(s_highest, "highest");
    INTERN(s_seen, "seen");
    INTERN(s_size, "size");
#undef INTERN
    Py_INCREF(type);
    Py_XDECREF((PyObject *)B.reading);
    B.reading = tp;
    B.bound = 1;
    Py_RETURN_NONE;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* verify(env, nodes, windows, topics, dirty) -> Reading | None
 *
 * Verifier._fast in one C call, for a frame whose node the verifier has prepared (nodes:
 * node_id << 8 | key_id -> the tuple Verifier._prepare makes, its last item key()).  Same
 * checks in the same order; a Reading when every one passes (the window moved, the node
 * id added to `dirty`), else None with nothing changed, and Python takes over. */
static PyObject *verify(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 5 || !B.bound) {
        PyErr_SetString(PyExc_TypeError, "verify(env, nodes, windows, topics, dirty), after bind()");
        return NULL;
    }
    PyObject *env = args[0], *nodes = args[1], *windows = args[2], *topics = args[3],
             *dirty = args[4];
    PyObject *result = NULL;  /* NULL with an exception, or a new reference */
    PyObject *payload = NULL, *cache_key = NULL, *node_long = NULL, *topic = NULL,
             *fields = NULL, *text = NULL, *time_obj = NULL, *kind = NULL, *zone = NULL,
             *site = NULL, *counter_obj = NULL, *window_obj = NULL, *reading = NULL,
             *highest_obj = NULL, *seen_obj = NULL;
    if (!PyDict_CheckExact(nodes) || !PyDict_CheckExact(windows) ||
        !PyDict_CheckExact(topics) || !PySet_CheckExact(dirty)) {
        goto none;
    }
    payload = PyObject_GetAttr(env, B.s_payload);
    if (payload == NULL) {
        goto done;
    }
    if (!PyBytes_CheckExact(payload)) {
        goto none;
    }
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(payload);
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    if (n > B.max_frame || n < B.min_frame || n < HEADER_LEN + TAG_LEN || d[0] != B.version) {
        goto none;
    }
    int kind_id = d[1], flags = d[2], key_id = d[3];
    uint32_t node_id = be32(d + 4), counter = be32(d + 8), ts = be32(d + 12);
    unsigned window_s = (unsigned)d[16] << 8 | d[17];
    long count = d[18];
    if ((flags & ~B.flags_known) || count < 1 || count > MAX_METRICS) {
        goto none;
    }
    cache_key = PyLong_FromUnsignedLongLong((unsigned long long)node_id << 8 | key_id);
    if (cache_key == NULL) {
        goto done;
    }
    PyObject *cached = PyDict_GetItemWithError(nodes, cache_key);  /* borrowed */
    if (cached == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto none;  /* not prepared yet: Python prepares it */
    }
    if (!PyTuple_CheckExact(cached) || PyTuple_GET_SIZE(cached) < 7) {
        goto none;
    }
    PyObject *entry = PyTuple_GET_ITEM(cached, 2), *node = PyTuple_GET_ITEM(cached, 3),
             *key_obj = PyTuple_GET_ITEM(cached, 6);
    long want_kind = PyLong_AsLong(PyTuple_GET_ITEM(cached, 4));
    if (want_kind == -1 && PyErr_Occurred()) {
        goto done;
    }
    const Key *key = (const Key *)PyCapsule_GetPointer(key_obj, KEY_CAPSULE);
    if (key == NULL) {
        PyErr_Clear();  /* None: no compiled key for this node */
        goto none;
    }
    if (kind_id != want_kind) {
        goto none;
    }
    PyObject *revoked = PyObject_GetAttr(entry, B.s_revoked);
    if (revoked == NULL) {
        goto done;
    }
    int is_revoked = PyObject_IsTrue(revoked);
    Py_DECREF(revoked);
    if (is_revoked) {
        if (is_revoked < 0) {
            goto done;
        }
        goto none;
    }
    node_long = PyLong_FromUnsignedLong(node_id);
    if (node_long == NULL) {
        goto done;
    }
    topic = PyObject_GetAttr(env, B.s_topic);
    if (topic == NULL) {
        goto done;
    }
    int has_topic = PyObject_IsTrue(topic);
    if (has_topic < 0) {
        goto done;
    }
    if (has_topic) {
        PyObject *owner = PyDict_GetItemWithError(topics, topic);  /* borrowed */
        if (owner == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            goto none;  /* a topic not seen yet: Python parses it */
        }
        int same = PyObject_RichCompareBool(owner, node_long, Py_EQ);
        if (same <= 0) {
            if (same < 0) {
                goto done;
            }
            goto none;
        }
    }
    Parsed parsed[MAX_METRICS];
    if (!parse_metrics(d, n, count, key->tables[(flags & B.flag_status) ? 1 : 0], parsed)) {
        goto none;
    }
    /* the tag */
    Py_ssize_t end = n - TAG_LEN;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_CTX ctx = key->inner;
    SHA256_Update(&ctx, d, (size_t)end);
    SHA256_Final(digest, &ctx);
    ctx = key->outer;
    SHA256_Update(&ctx, digest, sizeof digest);
    SHA256_Final(digest, &ctx);
    OPENSSL_cleanse(&ctx, sizeof ctx);
    if (CRYPTO_memcmp(digest, d + end, TAG_LEN) != 0) {
        goto none;
    }
    /* the replay window: ReplayWindow.check, read only */
    window_obj = PyDict_GetItemWithError(windows, node_long);
    if (window_obj == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        goto none;
    }
    Py_INCREF(window_obj);
    highest_obj = PyObject_GetAttr(window_obj, B.s_highest);
    seen_obj = highest_obj ? PyObject_GetAttr(window_obj, B.s_seen) : NULL;
    PyObject *size_obj = seen_obj ? PyObject_GetAttr(window_obj, B.s_size) : NULL;
    if (size_obj == NULL) {
        goto done;
    }
    if (!PyLong_CheckExact(highest_obj) || !PyLong_CheckExact(seen_obj) ||
        !PyLong_CheckExact(size_obj)) {
        Py_DECREF(size_obj);
        goto none;
    }
    int overflow;
    long long highest = PyLong_AsLongLongAndOverflow(highest_obj, &overflow);
    long long size = overflow ? 0 : PyLong_AsLongLongAndOverflow(size_obj, &overflow);
    Py_DECREF(size_obj);
    if (overflow || size < 1 || size > 64 || highest < -1 || highest > 0xFFFFFFFFLL) {
        goto none;  /* not a window this code has seen: Python's arithmetic decides */
    }
    unsigned long long seen = PyLong_AsUnsignedLongLong(seen_obj);
    if (seen == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        goto none;
    }
    unsigned long long mask = size == 64 ? ~0ULL : ((1ULL << size) - 1);
    long long new_highest = highest;
    unsigned long long new_seen;
    if ((long long)counter > highest) {
        long long shift = (long long)counter - highest;
        new_seen = (highest < 0 || shift >= size) ? 1 : (((seen << shift) | 1) & mask);
        new_highest = counter;
    } else {
        long long behind = highest - (long long)counter;
        if (behind >= size || ((seen >> behind) & 1)) {
            goto none;
        }
        new_seen = seen | (1ULL << behind);
    }
    /* everything checks out: make the Reading, then move the window */
    int synced = !(flags & B.flag_unsynced);
    if (synced) {
        time_obj = PyLong_FromUnsignedLong(ts);
    } else {
        PyObject *received = PyObject_GetAttr(env, B.s_received_s);
        if (received == NULL) {
            goto done;
        }
        int truthy = PyObject_IsTrue(received);
        if (truthy < 0) {
            Py_DECREF(received);
            goto done;
        }
        if (truthy && PyLong_CheckExact(received)) {
            time_obj = received;  /* int(received_s) */
        } else if (truthy && PyFloat_CheckExact(received) &&
                   isfinite(PyFloat_AS_DOUBLE(received))) {
            time_obj = PyLong_FromDouble(PyFloat_AS_DOUBLE(received));
            Py_DECREF(received);
        } else {  /* no receive time: Python asks the clock */
            Py_DECREF(received);
            goto none;
        }
    }
    if (time_obj == NULL) {
        goto done;
    }
    int status = (flags & B.flag_status) ? 1 : 0;
    int built = build_fields(parsed, count, key->prefixes[status], &fields, &text);
    if (built <= 0) {
        if (built < 0) {
            goto done;
        }
        goto none;
    }
    kind = PyObject_GetAttr(entry, B.s_kind);
    zone = kind ? PyObject_GetAttr(entry, B.s_zone) : NULL;
    site = zone ? PyObject_GetAttr(entry, B.s_site) : NULL;
    counter_obj = site ? PyLong_FromUnsignedLong(counter) : NULL;
    PyObject *window_s_obj = counter_obj ? PyLong_FromUnsignedLong(window_s) : NULL;
    if (window_s_obj == NULL) {
        goto done;
    }
    reading = B.reading->tp_alloc(B.reading, 0);
    if (reading == NULL) {
        Py_DECREF(window_s_obj);
        goto done;
    }
    PyObject *values[N_SLOTS] = {
        node, kind, zone, site, counter_obj, time_obj, window_s_obj, fields,
        status ? Py_True : Py_False, synced ? Py_False : Py_True, text,
    };
    for (int i = 0; i < N_SLOTS; i++) {
        Py_INCREF(values[i]);
        *(PyObject **)((char *)reading + B.offsets[i]) = values[i];
    }
    Py_DECREF(window_s_obj);
    /* ReplayWindow.accept */
    PyObject *seen_new = PyLong_FromUnsignedLongLong(new_seen);
    if (seen_new == NULL || PyObject_SetAttr(window_obj, B.s_seen, seen_new) < 0) {
        Py_XDECREF(seen_new);
        goto done;
    }
    Py_DECREF(seen_new);
    if (new_highest != highest) {
        PyObject *highest_new = PyLong_FromLongLong(new_highest);
        if (highest_new == NULL || PyObject_SetAttr(window_obj, B.s_highest, highest_new) < 0) {
            Py_XDECREF(highest_new);
            goto done;
        }
        Py_DECREF(highest_new);
    }
    if (PySet_Add(dirty, node_long) < 0) {
        goto done;
    }
    result = reading;
    reading = NULL;
    goto done;
none:
    result = Py_None;
    Py_INCREF(result);
done:
    Py_XDECREF(payload);
    Py_XDECREF(cache_key);
    Py_XDECREF(node_long);
    Py_XDECREF(topic);
    Py_XDECREF(fields);
    Py_XDECREF(text);
    Py_XDECREF(time_obj);
    Py_XDECREF(kind);
    Py_XDECREF(zone);
    Py_XDECREF(site);
    Py_XDECREF(counter_obj);
    Py_XDECREF(window_obj);
    Py_XDECREF(highest_obj);
    Py_XDECREF(seen_obj);
    Py_XDECREF(reading);
    return result;
}

static PyMethodDef methods[] = {
    {"metrics", (PyCFunction)(void (*)(void))metrics, METH_FASTCALL,
     "metrics(data, count, table) -> (fields, text) or None"},
    {"table", make_table, METH_O, "table(entries) -> an opaque table for metrics()"},
    {"key", make_key, METH_VARARGS,
     "key(key, table, status_table, series, status_series) -> a prepared node key"},
    {"bind", bind, METH_VARARGS, "bind(reading_type, constants): once, before verify()"},
    {"verify", (PyCFunction)(void (*)(void))verify, METH_FASTCALL,
     "verify(env, nodes, windows, topics, dirty) -> Reading or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gateway._speedups",
    "The metric section of a frame, decoded and formatted in one pass (optional).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
