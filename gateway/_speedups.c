/* gateway._speedups: the metric section of a frame, decoded and formatted in one pass.
 *
 * Optional: gateway/verify.py uses it when it was compiled and falls back to the same
 * logic in Python otherwise; tests/gateway/test_verify.py checks that both give the same
 * answer for any input.  The rules are docs/protocol.md §2.1-§2.4 and §6.4:
 *
 *   metrics(data, count, table) -> (fields, text) | None
 *
 * `data` is a whole frame (header, metrics, tag).  It reads `count` (id, zigzag varint)
 * pairs from byte 19 up to the tag, in strictly ascending id order, each varint minimal
 * and at most 32 bits, each id in `table` and its raw value in the table's range, the
 * last pair ending exactly where the tag begins.  When all of that holds it returns the
 * reading's fields {name: raw / divisor} in frame order and their line-protocol text
 * ("name=value,..." sorted by name, values as Python's repr of the float); otherwise
 * None, and the caller's reference path names what is wrong.
 *
 *   table(entries) -> table
 *
 * `entries`: a sequence of (metric id, name, divisor, raw min, raw max); names must be
 * ASCII.  The result is an opaque object for metrics().
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define HEADER_LEN 19
#define TAG_LEN 16
#define MAX_METRICS 48
#define NAME_MAX_LEN 64

typedef struct {
    int present;
    int rank;          /* position in name order among the table's entries */
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
} Parsed;

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
    const unsigned char *d = (const unsigned char *)data;
    if (count < 1 || count > MAX_METRICS || n < HEADER_LEN + TAG_LEN) {
        Py_RETURN_NONE;
    }
    Py_ssize_t end = n - TAG_LEN, pos = HEADER_LEN;
    int last = -1;
    Parsed parsed[MAX_METRICS];
    for (long i = 0; i < count; i++) {
        if (pos + 1 >= end) {
            Py_RETURN_NONE;
        }
        int id = d[pos++];
        if (id <= last) {
            Py_RETURN_NONE;
        }
        last = id;
        uint64_t z = 0;
        int shift = 0;
        for (;;) {
            if (pos >= end || shift > 28) {
                Py_RETURN_NONE;
            }
            unsigned b = d[pos++];
            z |= (uint64_t)(b & 0x7F) << shift;
            if (b < 0x80) {
                if (shift && (b == 0 || (shift == 28 && b > 0x0F))) {
                    Py_RETURN_NONE;  /* non-minimal, or longer than 32 bits */
                }
                break;
            }
            shift += 7;
        }
        long long raw = (z & 1) ? -(long long)((z + 1) >> 1) : (long long)(z >> 1);
        const Entry *e = &t->entries[id];
        if (!e->present || raw < e->lo || raw > e->hi) {
            Py_RETURN_NONE;
        }
        parsed[i].entry = e;
        parsed[i].value = (double)raw / e->divisor;
    }
    if (pos != end) {
        Py_RETURN_NONE;
    }

    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        return NULL;
    }
    for (long i = 0; i < count; i++) {
        PyObject *v = PyFloat_FromDouble(parsed[i].value);
        if (v == NULL || PyDict_SetItem(fields, parsed[i].entry->name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(fields);
            return NULL;
        }
        Py_DECREF(v);
    }
    /* the text, in name order: an insertion sort of at most 48 */
    Parsed *order[MAX_METRICS];
    for (long i = 0; i < count; i++) {
        long j = i;
        while (j > 0 && order[j - 1]->entry->rank > parsed[i].entry->rank) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = &parsed[i];
    }
    char text[MAX_METRICS * (NAME_MAX_LEN + 2 + 32)];
    Py_ssize_t len = 0;
    for (long i = 0; i < count; i++) {
        const Entry *e = order[i]->entry;
        if (i) {
            text[len++] = ',';
        }
        memcpy(text + len, e->text, (size_t)e->text_len);
        len += e->text_len;
        char *repr = PyOS_double_to_string(order[i]->value, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (repr == NULL) {
            Py_DECREF(fields);
            return NULL;
        }
        size_t rlen = strlen(repr);
        if (rlen > 31) {  /* a repr of a finite double is at most 24 characters */
            PyMem_Free(repr);
            Py_DECREF(fields);
            Py_RETURN_NONE;
        }
        memcpy(text + len, repr, rlen);
        len += (Py_ssize_t)rlen;
        PyMem_Free(repr);
    }
    PyObject *str = PyUnicode_DecodeASCII(text, len, "strict");
    if (str == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, fields, str);
    Py_DECREF(fields);
    Py_DECREF(str);
    return result;
}

static PyMethodDef methods[] = {
    {"metrics", (PyCFunction)(void (*)(void))metrics, METH_FASTCALL,
     "metrics(data, count, table) -> (fields, text) or None"},
    {"table", make_table, METH_O, "table(entries) -> an opaque table for metrics()"},
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
