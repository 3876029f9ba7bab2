/* actorq._native._ring: the u64 slots of shared memory that two processes share (a
 * ring's header and record headers, a control block), read and written as one C call.
 *
 * Why: actorq's rings and control blocks are arrays of u64 counters in shared memory.
 * Through a memoryview cast to 'Q' each item access costs 250-330 instructions (the
 * format is parsed, struct-like unpacking runs), and a synchronous call makes ~47 of
 * them (benchmarks/msgpath_harness.py call-real). ``U64Array`` is the same array with
 * an item access of a bounds check and one load or store.
 *
 * Memory order: every load is an acquire and every store a release (__atomic builtins),
 * so that "write the record, then publish the tail" and "see the tail, then read the
 * record" hold on any architecture, not only on x86-64 (where both are plain moves).
 * Store-then-load handshakes still need a full fence, as with the Python fallback
 * (actorq/_transport/channel.py: ``fence()``).
 *
 * The Python fallback (actorq/_native/__init__.py) is a memoryview cast to 'Q': the
 * same bytes, the same indices (negative ones count from the end), IndexError out of
 * range, ValueError once released.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <marshal.h>
#include <stdint.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    Py_buffer view;      /* held while not released */
    uint64_t *words;     /* NULL once released */
    Py_ssize_t n;        /* number of u64 items */
    PyObject *weakrefs;
} U64Array;

static PyTypeObject U64Array_Type;

static int
released(U64Array *self)
{
    if (self->words == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation forbidden on a released U64Array");
        return 1;
    }
    return 0;
}

static PyObject *
U64Array_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    static char *kwlist[] = {"buffer", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:U64Array", kwlist, &obj))
        return NULL;
    U64Array *self = (U64Array *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(obj, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    const char *why = NULL;
    if ((uintptr_t)self->view.buf & 7)
        why = "is not 8-byte aligned";
    else if (self->view.len & 7)
        why = "is not a whole number of u64 items";
    if (why != NULL) {
        PyErr_Format(PyExc_ValueError, "U64Array: a buffer of %zd bytes that %s",
                     self->view.len, why);
        PyBuffer_Release(&self->view);
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    self->words = (uint64_t *)self->view.buf;
    self->n = self->view.len / 8;
    return (PyObject *)self;
}

static void
U64Array_release_buffer(U64Array *self)
{
    if (self->words != NULL) {
        self->words = NULL;
        self->n = 0;
        PyBuffer_Release(&self->view);
    }
}

static void
U64Array_dealloc(U64Array *self)
{
    if (self->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    U64Array_release_buffer(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t
U64Array_length(U64Array *self)
{
    if (released(self))
        return -1;
    return self->n;
}

/* The item index of *key*, or -1 with an exception set. */
static Py_ssize_t
index_of(U64Array *self, PyObject *key)
{
    Py_ssize_t i;
    if (PyLong_CheckExact(key)) {
        i = PyLong_AsSsize_t(key);
    }
    else if (PyIndex_Check(key)) {
        i = PyNumber_AsSsize_t(key, PyExc_IndexError);
    }
    else {
        PyErr_Format(PyExc_TypeError, "U64Array indices must be integers, not %.100s",
                     Py_TYPE(key)->tp_name);
        return -1;
    }
    if (i == -1 && PyErr_Occurred())
        return -1;
    if (released(self))
        return -1;
    if (i < 0)
        i += self->n;
    if (i < 0 || i >= self->n) {
        PyErr_Format(PyExc_IndexError, "U64Array index out of range (%zd items)", self->n);
        return -1;
    }
    return i;
}

static PyObject *
U64Array_subscript(U64Array *self, PyObject *key)
{
    Py_ssize_t i = index_of(self, key);
    if (i < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_load_n(&self->words[i], __ATOMIC_ACQUIRE));
}

static int
U64Array_ass_subscript(U64Array *self, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "U64Array items cannot be deleted");
        return -1;
    }
    Py_ssize_t i = index_of(self, key);
    if (i < 0)
        return -1;
    unsigned long long v;
    if (PyLong_CheckExact(value)) {
        v = PyLong_AsUnsignedLongLong(value);
    }
    else {
        PyObject *num = PyNumber_Index(value);
        if (num == NULL)
            return -1;
        v = PyLong_AsUnsignedLongLong(num);
        Py_DECREF(num);
    }
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "U64Array: %R is not a u64 (0 <= value < 2**64)", value);
        }
        return -1;
    }
    __atomic_store_n(&self->words[i], (uint64_t)v, __ATOMIC_RELEASE);
    return 0;
}

static PyObject *
U64Array_release(U64Array *self, PyObject *Py_UNUSED(ignored))
{
    U64Array_release_buffer(self);
    Py_RETURN_NONE;
}

static PyObject *
U64Array_tolist(U64Array *self, PyObject *Py_UNUSED(ignored))
{
    if (released(self))
        return NULL;
    PyObject *list = PyList_New(self->n);
    if (list == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < self->n; i++) {
        PyObject *item = PyLong_FromUnsignedLongLong(
            __atomic_load_n(&self->words[i], __ATOMIC_ACQUIRE));
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *
U64Array_enter(U64Array *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *
U64Array_exit(U64Array *self, PyObject *Py_UNUSED(args))
{
    U64Array_release_buffer(self);
    Py_RETURN_NONE;
}

static PyMappingMethods U64Array_as_mapping = {
    (lenfunc)U64Array_length,
    (binaryfunc)U64Array_subscript,
    (objobjargproc)U64Array_ass_subscript,
};

static PyMethodDef U64Array_methods[] = {
    {"release", (PyCFunction)U64Array_release, METH_NOARGS,
     "Let go of the buffer (its segment can then be closed); later accesses raise "
     "ValueError."},
    {"tolist", (PyCFunction)U64Array_tolist, METH_NOARGS, "The items, as a list of ints."},
    {"__enter__", (PyCFunction)U64Array_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)U64Array_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL}
};

static PyTypeObject U64Array_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._ring.U64Array",
    .tp_basicsize = sizeof(U64Array),
    .tp_dealloc = (destructor)U64Array_dealloc,
    .tp_as_mapping = &U64Array_as_mapping,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "U64Array(buffer): the writable, 8-byte aligned *buffer* as an array of u64, "
              "each load an acquire and each store a release.",
    .tp_weaklistoffset = offsetof(U64Array, weakrefs),
    .tp_methods = U64Array_methods,
    .tp_new = U64Array_new,
};

/* -- RingCore: the record write and read of actorq/_transport/ring.py ------------------
 *
 * The ring's layout (ring.py's docstring: the two must agree, tests/transport/
 * test_u64_slots.py checks the constants): a 256-byte header of u64 slots, then the
 * data area; a record is u32 length | u32 count | payload | pad to 8, a u32 0xFFFFFFFF
 * marks where a record did not fit before the end. ``try_write`` writes the record,
 * then stores ``sent`` and ``tail`` with release semantics (the tail last); ``read_at``
 * loads the tail with acquire semantics before it reads the record behind it. The
 * producer's own counts (tail, sent, and a cached head) are kept here. */

#define RING_HEADER 256
#define H_HEAD 0           /* actorq/_transport/ring.py's header slots */
#define H_HANDLED 1
#define H_CUR_REC 2
#define H_CUR_SUB 3
#define H_READER 4
#define H_TAIL 8
#define H_SENT 9
#define H_WANT 10
#define READER_EXPECTED 2  /* ring.py: a caller said it will spin on the ring */
#define REC_HEADER 8
#define WRAP 0xFFFFFFFFu
#define PICKLE_PROTO 0x80  /* a pickle's first byte (oob.py: PICKLE_PROTO) */

typedef struct {
    PyObject_HEAD
    Py_buffer view;          /* the whole ring (header and data), held while not released */
    uint64_t *hdr;           /* NULL once released */
    char *data;
    PyObject *data_view;     /* the ring's data memoryview: payloads are slices of it */
    PyTypeObject *record;    /* ring.Record, a tuple subclass of 4 fields */
    PyTypeObject *loaded;    /* ring.Loaded, the same with the messages (or NULL) */
    uint64_t capacity;
    uint64_t max_payload;
    unsigned long long tail; /* the producer's own counts */
    unsigned long long sent;
    unsigned long long cached_head;
} RingCore;

static PyTypeObject RingCore_Type;

static int
core_released(RingCore *self)
{
    if (self->hdr == NULL) {
        PyErr_SetString(PyExc_ValueError, "operation forbidden on a released ring");
        return 1;
    }
    return 0;
}

static PyObject *
RingCore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *buf, *data, *record, *loaded = NULL;
    static char *kwlist[] = {"buffer", "data", "record", "loaded", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO!|O!:RingCore", kwlist, &buf, &data,
                                     &PyType_Type, &record, &PyType_Type, &loaded))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)record, &PyTuple_Type) || (loaded != NULL &&
            !PyType_IsSubtype((PyTypeObject *)loaded, &PyTuple_Type))) {
        PyErr_SetString(PyExc_TypeError,
                        "RingCore: record and loaded must be tuple subclasses");
        return NULL;
    }
    if (!PyMemoryView_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "RingCore: data must be a memoryview");
        return NULL;
    }
    RingCore *self = (RingCore *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    Py_buffer *dv = PyMemoryView_GET_BUFFER(data);
    Py_ssize_t len = self->view.len;
    const char *why = NULL;
    if ((uintptr_t)self->view.buf & 7)
        why = "is not 8-byte aligned";
    else if (len < RING_HEADER + 64 || (len - RING_HEADER) & 7)
        why = "is not the 256-byte header and a multiple of 8 bytes, at least 64";
    else if (dv->buf != (char *)self->view.buf + RING_HEADER || dv->len != len - RING_HEADER)
        why = "is not the one whose data area *data* is";
    if (why != NULL) {
        PyErr_Format(PyExc_ValueError, "RingCore: a ring buffer of %zd bytes that %s",
                     len, why);
        PyBuffer_Release(&self->view);
        self->view.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    self->hdr = (uint64_t *)self->view.buf;
    self->data = (char *)self->view.buf + RING_HEADER;
    self->data_view = Py_NewRef(data);
    self->record = (PyTypeObject *)Py_NewRef(record);
    self->loaded = (PyTypeObject *)Py_XNewRef(loaded);
    self->capacity = (uint64_t)(len - RING_HEADER);
    self->max_payload = self->capacity / 2 - REC_HEADER;
    self->cached_head = __atomic_load_n(&self->hdr[H_HEAD], __ATOMIC_ACQUIRE);
    self->tail = __atomic_load_n(&self->hdr[H_TAIL], __ATOMIC_ACQUIRE);
    self->sent = __atomic_load_n(&self->hdr[H_SENT], __ATOMIC_ACQUIRE);
    return (PyObject *)self;
}

static void
RingCore_release_buffer(RingCore *self)
{
    if (self->hdr != NULL) {
        self->hdr = NULL;
        self->data = NULL;
        PyBuffer_Release(&self->view);
    }
    Py_CLEAR(self->data_view);
}

static void
RingCore_dealloc(RingCore *self)
{
    RingCore_release_buffer(self);
    Py_CLEAR(self->record);
    Py_CLEAR(self->loaded);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A counter position from a Python int, or (unsigned long long)-1 with an error. */
static unsigned long long
position_of(PyObject *obj, const char *what)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (PyErr_ExceptionMatches(PyExc_OverflowError) ||
                PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "ring: %s %R is not a ring position (an int, 0 <= value < 2**64)",
                         what, obj);
        }
    }
    return v;
}

/* One record of *count* messages holding the *n* bytes at *src*: the new tail, 0 if it
 * does not fit now, NULL with ValueError if it never could (``try_write``). */
static PyObject *
write_bytes(RingCore *self, const char *src, uint64_t n, unsigned long long count)
{
    if (n > self->max_payload) {
        PyErr_Format(PyExc_ValueError,
                     "record of %llu bytes exceeds the ring's limit of %llu",
                     (unsigned long long)n, (unsigned long long)self->max_payload);
        return NULL;
    }
    uint64_t cap = self->capacity;
    uint64_t tail = self->tail;
    uint64_t need = REC_HEADER + ((n + 7) & ~(uint64_t)7);
    uint64_t pos = tail % cap;
    uint64_t to_end = cap - pos;
    uint64_t end = need <= to_end ? tail + need : tail + to_end + need;
    if (end - self->cached_head > cap) {
        self->cached_head = __atomic_load_n(&self->hdr[H_HEAD], __ATOMIC_ACQUIRE);
        if (end - self->cached_head > cap)
            return PyLong_FromLong(0);
    }
    if (need > to_end) {
        *(uint32_t *)(self->data + pos) = WRAP;
        pos = 0;
    }
    /* u32 length, u32 count: one little-endian u64, as ring.py stores it */
    uint64_t head = n | (uint64_t)count << 32;
    memcpy(self->data + pos, &head, 8);
    memmove(self->data + pos + REC_HEADER, src, n);  /* (a payload may be a view of this ring) */
    self->sent += count;
    __atomic_store_n(&self->hdr[H_SENT], (uint64_t)self->sent, __ATOMIC_RELEASE);
    self->tail = end;
    __atomic_store_n(&self->hdr[H_TAIL], end, __ATOMIC_RELEASE);  /* publish last */
    return PyLong_FromUnsignedLongLong(end);
}

static PyObject *
RingCore_try_write(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "try_write(payload, count=1) takes 1 or 2 arguments "
                     "(%zd given)", nargs);
        return NULL;
    }
    unsigned long long count = 1;
    if (nargs == 2) {
        count = PyLong_AsUnsignedLongLong(args[1]);
        if (count == (unsigned long long)-1 && PyErr_Occurred())
            count = 1ULL << 32;  /* reported below */
        if (count >> 32) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError,
                         "try_write: count %R is not a message count (0 <= count < 2**32)",
                         args[1]);
            return NULL;
        }
    }
    if (core_released(self))
        return NULL;
    Py_buffer payload;
    if (PyObject_GetBuffer(args[0], &payload, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    PyObject *result = write_bytes(self, payload.buf, (uint64_t)payload.len, count);
    PyBuffer_Release(&payload);
    return result;
}

/* Where the record at args[0] is: 1 with *pos, *off (its header's offset in the data
 * area), *head (u32 length | u32 count) set; 0 if *pos* is the tail (no record); -1
 * with an exception set. *name*: the method, for its argument error. */
static int
locate(RingCore *self, PyObject *const *args, Py_ssize_t nargs, const char *name,
       unsigned long long *pos_out, uint64_t *off_out, uint64_t *head_out)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "%s(pos, tail=None) takes 1 or 2 arguments "
                     "(%zd given)", name, nargs);
        return -1;
    }
    unsigned long long pos = position_of(args[0], "pos");
    if (pos == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (core_released(self))
        return -1;
    unsigned long long tail;
    if (nargs == 2 && args[1] != Py_None) {
        tail = position_of(args[1], "tail");
        if (tail == (unsigned long long)-1 && PyErr_Occurred())
            return -1;
    }
    else {
        tail = __atomic_load_n(&self->hdr[H_TAIL], __ATOMIC_ACQUIRE);
    }
    if (pos == tail)
        return 0;
    uint64_t cap = self->capacity;
    uint64_t off = pos % cap;
    /* a qword index, as ring.py's ``qwords[off >> 3]``: within the data area whatever
     * *pos* is (the capacity is a multiple of 8) */
    uint64_t head = __atomic_load_n((uint64_t *)(self->data + (off & ~(uint64_t)7)),
                                    __ATOMIC_ACQUIRE);
    uint64_t n = head & 0xFFFFFFFFu;
    if (n == WRAP) {
        pos += cap - off;
        if (pos == tail)
            return 0;
        off = 0;
        head = __atomic_load_n((uint64_t *)self->data, __ATOMIC_ACQUIRE);
        n = head & 0xFFFFFFFFu;
    }
    if (n > self->max_payload) {
        PyErr_Format(PyExc_RuntimeError, "corrupt ring: record length %llu at position %llu",
                     (unsigned long long)n, pos);
        return -1;
    }
    *pos_out = pos;
    *off_out = off;
    *head_out = head;
    return 1;
}

/* A record tuple of *type* (pos, body, count, end); steals *body*. */
static PyObject *
make_record(PyTypeObject *type, unsigned long long pos, PyObject *body, uint64_t head)
{
    uint64_t n = head & 0xFFFFFFFFu;
    PyObject *fields[4];
    fields[0] = PyLong_FromUnsignedLongLong(pos);
    fields[1] = body;
    fields[2] = PyLong_FromUnsignedLongLong(head >> 32);
    fields[3] = PyLong_FromUnsignedLongLong(pos + REC_HEADER + ((n + 7) & ~(uint64_t)7));
    PyObject *rec = NULL;
    if (fields[0] != NULL && fields[2] != NULL && fields[3] != NULL)
        rec = type->tp_alloc(type, 4);
    if (rec == NULL) {
        for (int i = 0; i < 4; i++)
            Py_XDECREF(fields[i]);
        return NULL;
    }
    for (int i = 0; i < 4; i++)
        PyTuple_SET_ITEM(rec, i, fields[i]);
    return rec;
}

/* The record at *pos* with its payload as a view of the data area. */
static PyObject *
record_view(RingCore *self, unsigned long long pos, uint64_t off, uint64_t head)
{
    Py_ssize_t start = (Py_ssize_t)(off + REC_HEADER);
    /* a slice of the data memoryview (clamped to it, as in Python), so that the
     * mapping cannot go away under the payload */
    PyObject *payload = PySequence_GetSlice(self->data_view, start,
                                            start + (Py_ssize_t)(head & 0xFFFFFFFFu));
    if (payload == NULL)
        return NULL;
    return make_record(self->record, pos, payload, head);
}

/* read_at (*plain* 0), or read_plain (*plain* 1): read_at, and a marshalled payload
 * (one whose first byte is not a pickle's PROTO opcode, 0x80: actorq/_transport/oob.py)
 * unmarshalled here, straight from the ring: a ``loaded`` record (pos, msgs, count,
 * end) then, with no view of the ring made. Any other payload (a pickle, an empty one,
 * one that does not unmarshal) comes back as read_at returns it, for the Python code
 * to decode (and to report). */
static PyObject *
read_record(RingCore *self, PyObject *const *args, Py_ssize_t nargs, int plain)
{
    unsigned long long pos;
    uint64_t off, head;
    int found = locate(self, args, nargs, plain ? "read_plain" : "read_at", &pos, &off,
                       &head);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    uint64_t n = head & 0xFFFFFFFFu;
    const char *body = self->data + off + REC_HEADER;
    if (plain && self->loaded != NULL && n > 0 && (unsigned char)body[0] != PICKLE_PROTO) {
        PyObject *msgs = PyMarshal_ReadObjectFromString(body, (Py_ssize_t)n);
        if (msgs != NULL)
            return make_record(self->loaded, pos, msgs, head);
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;  /* (a MemoryError is one: only a KeyboardInterrupt goes up) */
        PyErr_Clear();  /* the Python path decodes it again, and reports it */
    }
    return record_view(self, pos, off, head);
}

static PyObject *
RingCore_read_at(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    return read_record(self, args, nargs, 0);
}

static PyObject *
RingCore_read_plain(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    return read_record(self, args, nargs, 1);
}

static PyObject *
RingCore_resume(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    if (core_released(self))
        return NULL;
    self->tail = __atomic_load_n(&self->hdr[H_TAIL], __ATOMIC_ACQUIRE);
    self->sent = __atomic_load_n(&self->hdr[H_SENT], __ATOMIC_ACQUIRE);
    self->cached_head = __atomic_load_n(&self->hdr[H_HEAD], __ATOMIC_ACQUIRE);
    Py_RETURN_NONE;
}

static PyObject *
RingCore_release(RingCore *self, PyObject *Py_UNUSED(ignored))
{
    RingCore_release_buffer(self);
    Py_RETURN_NONE;
}

static PyObject *RingCore_write_lone(RingCore *self, PyObject *const *args,
                                     Py_ssize_t nargs);  /* the last section */

static PyMethodDef RingCore_methods[] = {
    {"try_write", (PyCFunction)(void (*)(void))RingCore_try_write, METH_FASTCALL,
     "try_write(payload, count=1) -> int: append one record; the new tail, or 0 if it "
     "does not fit now (ring.py: ``Ring.try_write``)."},
    {"read_at", (PyCFunction)(void (*)(void))RingCore_read_at, METH_FASTCALL,
     "read_at(pos, tail=None) -> Record | None: the record at *pos* (ring.py: "
     "``Ring.read_at``)."},
    {"read_plain", (PyCFunction)(void (*)(void))RingCore_read_plain, METH_FASTCALL,
     "read_plain(pos, tail=None) -> Loaded | Record | None: read_at, a marshalled "
     "payload unmarshalled (ring.py: ``Ring.read_plain``)."},
    {"resume", (PyCFunction)RingCore_resume, METH_NOARGS,
     "Read the producer's counts (tail, sent, head) from the header again."},
    {"release", (PyCFunction)RingCore_release, METH_NOARGS,
     "Let go of the buffer; later writes and reads raise ValueError."},
    {"write_lone", (PyCFunction)(void (*)(void))RingCore_write_lone, METH_FASTCALL,
     "write_lone(msg, version, limit) -> int: a lone message to an idle receiver: -2 if "
     "it is busy, else [msg] marshalled and written if at most *limit* bytes (the new "
     "tail; 0: no room now; -1: over *limit*). ring.py: ``RingCorePy.write_lone``."},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef RingCore_members[] = {
    {"tail", T_ULONGLONG, offsetof(RingCore, tail), READONLY,
     "the producer's tail (bytes published)"},
    {"sent", T_ULONGLONG, offsetof(RingCore, sent), READONLY,
     "the producer's count of messages published"},
    {"capacity", T_ULONGLONG, offsetof(RingCore, capacity), READONLY, "data bytes"},
    {"max_payload", T_ULONGLONG, offsetof(RingCore, max_payload), READONLY,
     "the largest payload of a record"},
    {NULL}
};

static PyTypeObject RingCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._ring.RingCore",
    .tp_basicsize = sizeof(RingCore),
    .tp_dealloc = (destructor)RingCore_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "RingCore(buffer, data, record, loaded=None): the record write and read of "
              "one ring "
              "(actorq/_transport/ring.py) in C.",
    .tp_methods = RingCore_methods,
    .tp_members = RingCore_members,
    .tp_new = RingCore_new,
};


/* A full memory barrier (the store->load handshakes of parking need one): one fenced
 * instruction, where the fallback takes and releases a threading.Lock (~900 instructions
 * through the interpreter for the same locked instruction). */
static PyObject *
fence(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* the caller's reply step: the last section */
#define OP_REPLY 2          /* actorq/_core/protocol.py (tests/native check it) */
static PyTypeObject ReplyCore_Type;
static PyObject *take_reply(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static PyObject *serve_lone(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static PyObject *send_lone(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static int intern_names(void);
static int lone_caller_init(PyObject *m);
static PyObject *hub_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static PyObject *hub_call_deadline(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static PyObject *configure_calls(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
static PyObject *running_loop_fn;

/* ---------------------------------------------------------------------------------
 * The actor's lone call (actorq/_actorproc/handling.py ``serve_alone``), its steps that
 * are only loads and stores of shared counters and one record write, each one C call
 * where the interpreter ran 15-40 bytecodes and as many item accesses (issue 15: the
 * round trip's instructions). Each does exactly what the Python code beside it does
 * (ACTORQ_NO_NATIVE=1 runs that code): the same slots, the same bytes, in the same
 * order.
 * --------------------------------------------------------------------------------- */

/* control block slots (actorq/_core/protocol.py) */
#define SV_C_BUSY 8
#define SV_C_TOKEN 9
#define SV_C_REPLY_TO 10
#define SV_C_SEQ 12
#define SV_C_HANDLED 18
#define SV_C_STOP 20
#define SV_C_SLOTS 21          /* at least this many slots */
#define SV_LONE_MARSHAL 2   /* actorq/_transport/oob.py LONE_MARSHAL */

/* The words of *obj*, a live U64Array of at least *need* items; NULL with an exception
 * set otherwise. */
static uint64_t *
words_of(PyObject *obj, Py_ssize_t need, const char *what)
{
    if (Py_TYPE(obj) != &U64Array_Type) {
        PyErr_Format(PyExc_TypeError, "%s must be a U64Array, not %.100s", what,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    U64Array *a = (U64Array *)obj;
    if (released(a))
        return NULL;
    if (a->n < need) {
        PyErr_Format(PyExc_ValueError, "%s has %zd slots, fewer than %zd", what, a->n,
                     need);
        return NULL;
    }
    return a->words;
}

#define SV_LOAD(w, i) __atomic_load_n(&(w)[i], __ATOMIC_ACQUIRE)
#define SV_STORE(w, i, v) __atomic_store_n(&(w)[i], (uint64_t)(v), __ATOMIC_RELEASE)

/* A lone call's start: -1 (nothing stored) if a stop is asked or a predecessor began
 * the record at *pos*; else the crash attribution slots set and the ring's handled
 * count returned (the call's sequence number). ``lone_begin`` and ``serve_lone``. */
static int64_t
begin_stores(uint64_t *slots, uint64_t *hdr, uint64_t pos, uint64_t token,
             uint64_t reply_to, uint64_t busy)
{
    if (SV_LOAD(slots, SV_C_STOP) ||
            (SV_LOAD(hdr, H_CUR_REC) == pos && SV_LOAD(hdr, H_CUR_SUB)))
        return -1;
    SV_STORE(slots, SV_C_TOKEN, token);
    if (token)
        SV_STORE(slots, SV_C_REPLY_TO, reply_to + 1);
    uint64_t seq = SV_LOAD(hdr, H_HANDLED);
    SV_STORE(slots, SV_C_SEQ, seq);
    SV_STORE(slots, SV_C_BUSY, busy);
    return (int64_t)seq;
}

/* A lone call handled: counted, its record committed (handled seq + 1, head *end*),
 * the busy slot cleared; then a full fence and the producer's want loaded.
 * ``lone_commit`` and ``serve_lone``. */
static uint64_t
commit_stores(uint64_t *slots, uint64_t *hdr, uint64_t seq, uint64_t end)
{
    SV_STORE(slots, SV_C_HANDLED, SV_LOAD(slots, SV_C_HANDLED) + 1);
    SV_STORE(hdr, H_HANDLED, seq + 1);  /* one call */
    SV_STORE(hdr, H_HEAD, end);
    SV_STORE(slots, SV_C_BUSY, 0);  /* after the commit: a crash in between must not
                                     * redeliver it */
    /* store handled, then load want (channel.py ``InChannel.credit_returned``) */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return SV_LOAD(hdr, H_WANT);
}

/* lone_begin(slots, hdr, pos, token, reply_to, busy) -> int */
static PyObject *
lone_begin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "lone_begin(slots, hdr, pos, token, reply_to, busy) "
                     "takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    uint64_t *slots = words_of(args[0], SV_C_SLOTS, "lone_begin: slots");
    if (slots == NULL)
        return NULL;
    uint64_t *hdr = words_of(args[1], H_READER + 1, "lone_begin: hdr");
    if (hdr == NULL)
        return NULL;
    unsigned long long v[4];
    static const char *names[4] = {"pos", "token", "reply_to", "busy"};
    for (int i = 0; i < 4; i++) {
        v[i] = position_of(args[2 + i], names[i]);
        if (v[i] == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
    }
    int64_t seq = begin_stores(slots, hdr, v[0], v[1], v[2], v[3]);
    return seq < 0 ? PyLong_FromLong(-1) : PyLong_FromUnsignedLongLong((uint64_t)seq);
}

/* lone_commit(slots, hdr, seq, end) -> int: the producer's want, loaded after a fence */
static PyObject *
lone_commit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "lone_commit(slots, hdr, seq, end) takes 4 "
                     "arguments (%zd given)", nargs);
        return NULL;
    }
    uint64_t *slots = words_of(args[0], SV_C_SLOTS, "lone_commit: slots");
    if (slots == NULL)
        return NULL;
    uint64_t *hdr = words_of(args[1], H_WANT + 1, "lone_commit: hdr");
    if (hdr == NULL)
        return NULL;
    unsigned long long seq = position_of(args[2], "seq");
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    unsigned long long end = position_of(args[3], "end");
    if (end == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromUnsignedLongLong(commit_stores(slots, hdr, seq, end));
}

/* A reply's value that marshal writes as it is (actorq/_serialization.py SAFE_TYPES). */
static int
plain_value(PyObject *v)
{
    return v == Py_None || PyLong_CheckExact(v) || PyBool_Check(v) ||
        PyFloat_CheckExact(v) || PyUnicode_CheckExact(v) || PyBytes_CheckExact(v) ||
        PyComplex_CheckExact(v);
}

/* write_reply(core, msg, max_inline, hold) -> int | None */
static PyObject *
write_reply(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "write_reply(core, msg, max_inline, hold) takes 4 "
                     "arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *core = args[0], *msg = args[1];
    if (Py_TYPE(core) != &RingCore_Type)
        Py_RETURN_NONE;  /* the Python core (ring.py): the caller writes it */
    if (!PyTuple_CheckExact(msg) || PyTuple_GET_SIZE(msg) != 5) {
        PyErr_SetString(PyExc_TypeError, "write_reply: msg must be a reply tuple of 5");
        return NULL;
    }
    if (!plain_value(PyTuple_GET_ITEM(msg, 3)))
        Py_RETURN_NONE;
    Py_ssize_t max_inline = PyLong_AsSsize_t(args[2]);
    if (max_inline == -1 && PyErr_Occurred())
        return NULL;
    int hold = PyObject_IsTrue(args[3]);
    if (hold < 0)
        return NULL;
    PyObject *list = PyList_New(1);
    if (list == NULL)
        return NULL;
    PyList_SET_ITEM(list, 0, Py_NewRef(msg));
    PyObject *body = PyMarshal_WriteObjectToString(list, SV_LONE_MARSHAL);
    Py_DECREF(list);
    if (body == NULL)
        return NULL;
    if (PyBytes_GET_SIZE(body) > max_inline) {
        Py_DECREF(body);
        Py_RETURN_NONE;  /* the spill path (Python) */
    }
    PyObject *written = RingCore_try_write((RingCore *)core, &body, 1);
    Py_DECREF(body);
    if (written == NULL)
        return NULL;
    unsigned long long end = PyLong_AsUnsignedLongLong(written);
    if (end == 0) {
        Py_DECREF(written);
        Py_RETURN_NONE;  /* no room now: the caller queues it */
    }
    if (hold && SV_LOAD(((RingCore *)core)->hdr, H_READER) == READER_EXPECTED) {
        Py_DECREF(written);
        return PyLong_FromLongLong(-(long long)end);
    }
    return written;
}

static PyMethodDef methods[] = {
    {"fence", fence, METH_NOARGS,
     "fence(): a full memory barrier (sequentially consistent)."},
    {"take_reply", (PyCFunction)(void (*)(void))take_reply, METH_FASTCALL,
     "take_reply(core, pos, tail, pending) -> int | Loaded | Record | None: complete a "
     "lone plain reply from the ring and commit it (the new cursor), else read_plain's "
     "record for the Python path (see the last section of _ring.c)."},
    {"lone_begin", (PyCFunction)(void (*)(void))lone_begin, METH_FASTCALL,
     "lone_begin(slots, hdr, pos, token, reply_to, busy) -> int: a lone call's start "
     "(handling.py ``serve_alone``): -1 if a stop is asked or a predecessor handled the "
     "record at *pos*; else the crash attribution slots set, and the ring's handled "
     "count (the call's sequence number)."},
    {"lone_commit", (PyCFunction)(void (*)(void))lone_commit, METH_FASTCALL,
     "lone_commit(slots, hdr, seq, end) -> int: a lone call handled: counted, its "
     "record committed (handled seq + 1, head *end*), the busy slot cleared; then a full "
     "fence and the ring's want (a producer waiting for credit) loaded."},
    {"write_reply", (PyCFunction)(void (*)(void))write_reply, METH_FASTCALL,
     "write_reply(core, msg, max_inline, hold) -> int | None: a reply of plain data "
     "marshalled and written as its own record (replies.py ``send_reply``): the new tail, "
     "its negative if *hold* and the reader said it would spin on the ring; None if not "
     "written (not plain data, too big, no room, or a Python core)."},
    {"serve_lone", (PyCFunction)(void (*)(void))serve_lone, METH_FASTCALL,
     "serve_lone(hub, ctx) -> int | (int, record | None): an idle actor's lone calls "
     "served from its one inbound ring, each read, run, committed and answered in this "
     "one call (handling.py ``drain``; the last section of _ring.c)."},
    {"send_lone", (PyCFunction)(void (*)(void))send_lone, METH_FASTCALL,
     "send_lone(hub, target, msg) -> bool: sending.py ``_send_now`` in one C call: a "
     "lone call of plain data written to an idle receiver's ring at once, or False with "
     "nothing sent."},
    {"hub_call", (PyCFunction)(void (*)(void))hub_call, METH_FASTCALL,
     "hub_call(hub, ref, method, args, kwargs, on_outcome) -> Reply: Sending.call, in C "
     "for one argument of plain data (the C pool calls send through it)."},
    {"hub_call_deadline", (PyCFunction)(void (*)(void))hub_call_deadline, METH_FASTCALL,
     "hub_call_deadline(hub, ref, method, args, kwargs, deadline, call_token, on_outcome, "
     "token_prefix) -> Reply: Sending.call_deadline, in C for one argument of plain data."},
    {"configure_calls", (PyCFunction)(void (*)(void))configure_calls, METH_FASTCALL,
     "configure_calls(reply_type, next_token, safe_types, no_kwargs): what hub_call and "
     "hub_call_deadline make replies and tokens with (actorq/_core/sending.py)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ring",
    "u64 slots of shared memory and a ring's record write and read (see _ring.c).", -1,
    methods
};

PyMODINIT_FUNC
PyInit__ring(void)
{
    if (PyType_Ready(&U64Array_Type) < 0 || PyType_Ready(&RingCore_Type) < 0 ||
            PyType_Ready(&ReplyCore_Type) < 0 || intern_names() < 0)
        return NULL;
    PyObject *asyncio = PyImport_ImportModule("asyncio");
    if (asyncio == NULL)
        return NULL;
    running_loop_fn = PyObject_GetAttrString(asyncio, "_get_running_loop");
    Py_DECREF(asyncio);
    if (running_loop_fn == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "U64Array", (PyObject *)&U64Array_Type) < 0 ||
            PyModule_AddObjectRef(m, "RingCore", (PyObject *)&RingCore_Type) < 0 ||
            PyModule_AddObjectRef(m, "ReplyCore", (PyObject *)&ReplyCore_Type) < 0 ||
            PyModule_AddIntConstant(m, "OP_REPLY", OP_REPLY) < 0 ||
            PyModule_AddIntConstant(m, "HEADER", RING_HEADER) < 0 ||
            PyModule_AddIntConstant(m, "H_HEAD", H_HEAD) < 0 ||
            PyModule_AddIntConstant(m, "H_TAIL", H_TAIL) < 0 ||
            PyModule_AddIntConstant(m, "H_SENT", H_SENT) < 0 ||
            PyModule_AddIntConstant(m, "REC_HEADER", REC_HEADER) < 0 ||
            PyModule_AddObject(m, "WRAP", PyLong_FromUnsignedLong(WRAP)) < 0 ||
            lone_caller_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}


/* -- The caller's reply step (issue #15): ReplyCore and take_reply ---------------------
 *
 * ``ReplyCore`` is the C base of ``actorq._core.reply.Reply``: its fields (the Python
 * ``__slots__`` it had) and its construction in C, so that making a reply per call runs
 * no Python frame; ``done()`` is one C call. Everything else of a reply (completion with
 * hooks, callbacks, events and awaiters, waiting) stays in Python, in the subclass.
 *
 * ``take_reply(core, pos, tail, pending)`` is the reply step of a synchronous caller
 * spinning on its reply's ring (``SystemHub.wait_spin``): it reads the record at *pos*
 * and, when that record is the common case -- one marshalled reply message
 * ``[(OP_REPLY, token, True, value, "")]`` nobody handled before (no progress kept for
 * it), whose pending reply (or none: a late answer, dropped) is a ``ReplyCore`` that is
 * not done and has no event and no callbacks -- completes the reply (the ``pending``
 * entry popped, its hook asked first if it has one, as ``set_result`` asks it:
 * ``complete``; ``_value`` set, ``_done`` True), commits the record (the ring's
 * ``handled`` and ``head``) and returns the new cursor, an int. Anything else comes back
 * untouched, as ``read_plain`` returns it (a record, or None at the tail), for the Python
 * path (``Receiving._take_record``) to handle: an error reply, a pickle (out of band
 * buffers, a class), a batch, a reply with waiters to wake.
 * Nothing in shared memory is written that the Python path would not write the same.
 * A core that is not a C ``RingCore`` (the fallback's, ring.py) is asked ``read_plain``. */

typedef struct {
    PyObject_HEAD
    PyObject *hub;
    PyObject *target_id;
    PyObject *ref;
    PyObject *token;
    PyObject *method;
    PyObject *done;       /* Py_True or Py_False (anything the Python side stores) */
    PyObject *value;
    PyObject *exc;
    PyObject *event;
    PyObject *hook;
    PyObject *callbacks;  /* () until someone awaits or adds a callback */
} ReplyCore;

static PyObject *
ReplyCore_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *hub, *ref, *token, *method, *target_id = NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (kwds == NULL && (n == 4 || n == 5)) {  /* the way the hubs make one */
        hub = PyTuple_GET_ITEM(args, 0);
        ref = PyTuple_GET_ITEM(args, 1);
        token = PyTuple_GET_ITEM(args, 2);
        method = PyTuple_GET_ITEM(args, 3);
        if (n == 5)
            target_id = PyTuple_GET_ITEM(args, 4);
    }
    else {
        static char *kwlist[] = {"hub", "ref", "token", "method", "target_id", NULL};
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOO|O:Reply", kwlist, &hub, &ref,
                                         &token, &method, &target_id))
            return NULL;
    }
    ReplyCore *self = (ReplyCore *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->hub = Py_NewRef(hub);
    self->target_id = target_id != NULL ? Py_NewRef(target_id) : PyLong_FromLong(0);
    self->ref = Py_NewRef(ref);
    self->token = Py_NewRef(token);
    self->method = Py_NewRef(method);
    self->done = Py_NewRef(Py_False);
    self->value = Py_NewRef(Py_None);
    self->exc = Py_NewRef(Py_None);
    self->event = Py_NewRef(Py_None);
    self->hook = Py_NewRef(Py_None);
    self->callbacks = PyTuple_New(0);
    if (self->target_id == NULL || self->callbacks == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* Every object field of a ReplyCore, listed once: traverse and clear go over them all. */
#define REPLY_CORE_FIELDS(X) \
    X(hub) X(target_id) X(ref) X(token) X(method) X(done) X(value) X(exc) X(event) \
    X(hook) X(callbacks)

static int
ReplyCore_traverse(ReplyCore *self, visitproc visit, void *arg)
{
#define VISIT_FIELD(name) Py_VISIT(self->name);
    REPLY_CORE_FIELDS(VISIT_FIELD)
#undef VISIT_FIELD
    return 0;
}

static int
ReplyCore_clear(ReplyCore *self)
{
#define CLEAR_FIELD(name) Py_CLEAR(self->name);
    REPLY_CORE_FIELDS(CLEAR_FIELD)
#undef CLEAR_FIELD
    return 0;
}

static void
ReplyCore_dealloc(ReplyCore *self)
{
    PyObject_GC_UnTrack(self);
    ReplyCore_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
    /* (a Python subclass's type is released by its own dealloc, subtype_dealloc) */
}

static PyObject *
ReplyCore_done(ReplyCore *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self->done != NULL && PyObject_IsTrue(self->done) == 1
                     ? Py_True : Py_False);
}

static PyMethodDef ReplyCore_methods[] = {
    {"done", (PyCFunction)ReplyCore_done, METH_NOARGS,
     "True once the reply (value or error) has arrived; never waits."},
    {NULL, NULL, 0, NULL}
};

static PyMemberDef ReplyCore_members[] = {
    {"_hub", T_OBJECT_EX, offsetof(ReplyCore, hub), 0, NULL},
    {"target_id", T_OBJECT_EX, offsetof(ReplyCore, target_id), 0,
     "the actor id the call went to (0 for a composite reply)"},
    {"_ref", T_OBJECT_EX, offsetof(ReplyCore, ref), 0, NULL},
    {"token", T_OBJECT_EX, offsetof(ReplyCore, token), 0, "the call's token"},
    {"_method", T_OBJECT_EX, offsetof(ReplyCore, method), 0, NULL},
    {"_done", T_OBJECT_EX, offsetof(ReplyCore, done), 0, NULL},
    {"_value", T_OBJECT_EX, offsetof(ReplyCore, value), 0, NULL},
    {"_exc", T_OBJECT_EX, offsetof(ReplyCore, exc), 0, NULL},
    {"_event", T_OBJECT_EX, offsetof(ReplyCore, event), 0, NULL},
    {"_hook", T_OBJECT_EX, offsetof(ReplyCore, hook), 0, NULL},
    {"_callbacks", T_OBJECT_EX, offsetof(ReplyCore, callbacks), 0, NULL},
    {NULL}
};

static PyTypeObject ReplyCore_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._ring.ReplyCore",
    .tp_basicsize = sizeof(ReplyCore),
    .tp_dealloc = (destructor)ReplyCore_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "ReplyCore(hub, ref, token, method, target_id=0): the fields of a Reply "
              "(actorq/_core/reply.py) and its construction in C.",
    .tp_traverse = (traverseproc)ReplyCore_traverse,
    .tp_clear = (inquiry)ReplyCore_clear,
    .tp_methods = ReplyCore_methods,
    .tp_members = ReplyCore_members,
    .tp_new = ReplyCore_new,
};

/* The reply *reply* (a pending entry) may be completed here: a ReplyCore not done, with
 * no event and no callbacks (a hook it may have: ``complete``). */
static int
completes_here(PyObject *reply)
{
    if (!PyObject_TypeCheck(reply, &ReplyCore_Type))
        return 0;
    ReplyCore *r = (ReplyCore *)reply;
    return r->done == Py_False && r->event == Py_None &&
           r->callbacks != NULL && PyTuple_CheckExact(r->callbacks) &&
           PyTuple_GET_SIZE(r->callbacks) == 0;
}

/* ``Reply.set_result(value)`` of a reply that ``completes_here``: its hook, if it has one
 * (``ActorRef.call_with(on_outcome=)``: a pool's first attempt), asked first exactly as
 * set_result asks it -- the hook cleared, the error slot cleared, ``hook(reply, value,
 * exc)`` called; True, or the reply done by then, means the hook took the reply over.
 * An exception the hook raises is handed to ``reply._hook_raised(exc)`` (which logs it,
 * as set_result does) and the reply is published; a BaseException that is not an
 * Exception propagates (as from set_result). If the hook left the reply with a waiter
 * or callbacks to tell, ``reply.set_result(value)`` publishes it (the hook is gone by
 * then). 0 on success, -1 with an exception set. */
static int
complete(ReplyCore *r, PyObject *value)
{
    if (r->hook != Py_None) {
        PyObject *hook = r->hook;  /* its reference moves to us */
        r->hook = Py_NewRef(Py_None);
        PyObject *exc = r->exc;
        r->exc = Py_NewRef(Py_None);  /* cleared first: a taker may complete it at once */
        PyObject *argv[3] = {(PyObject *)r, value, exc};
        PyObject *res = PyObject_Vectorcall(hook, argv, 3, NULL);
        Py_DECREF(hook);
        int taken;
        if (res == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(exc);
                return -1;
            }
            PyObject *type, *err, *tb;
            PyErr_Fetch(&type, &err, &tb);
            PyErr_NormalizeException(&type, &err, &tb);
            if (tb != NULL)
                PyException_SetTraceback(err, tb);
            Py_XDECREF(type);
            Py_XDECREF(tb);
            PyObject *logged = PyObject_CallMethod((PyObject *)r, "_hook_raised", "O",
                                                   err);
            Py_XDECREF(err);
            if (logged == NULL) {
                Py_DECREF(exc);
                return -1;
            }
            Py_DECREF(logged);
            taken = 0;
        }
        else {
            taken = PyObject_IsTrue(res);
            Py_DECREF(res);
            if (taken < 0) {
                Py_DECREF(exc);
                return -1;
            }
        }
        if (taken || r->done != Py_False) {
            Py_DECREF(exc);
            return 0;
        }
        Py_SETREF(r->exc, exc);
        if (r->event != Py_None || !PyTuple_CheckExact(r->callbacks) ||
                PyTuple_GET_SIZE(r->callbacks) != 0) {
            PyObject *res2 = PyObject_CallMethod((PyObject *)r, "set_result", "O", value);
            if (res2 == NULL)
                return -1;
            Py_DECREF(res2);
            return 0;
        }
    }
    Py_SETREF(r->value, Py_NewRef(value));
    Py_SETREF(r->done, Py_NewRef(Py_True));
    return 0;
}

static PyObject *
take_reply(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "take_reply(core, pos, tail, pending) takes 4 "
                     "arguments (%zd given)", nargs);
        return NULL;
    }
    if (!Py_IS_TYPE(args[0], &RingCore_Type))  /* a Python core (ring.py's RingCorePy) */
        return PyObject_CallMethod(args[0], "read_plain", "OO", args[1], args[2]);
    if (!PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "take_reply: pending must be a dict");
        return NULL;
    }
    RingCore *self = (RingCore *)args[0];
    PyObject *pending = args[3];
    unsigned long long pos;
    uint64_t off, head;
    int found = locate(self, args + 1, 2, "take_reply", &pos, &off, &head);
    if (found <= 0) {
        if (found < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    uint64_t n = head & 0xFFFFFFFFu;
    const char *body = self->data + off + REC_HEADER;
    if (self->loaded == NULL || n == 0 || (unsigned char)body[0] == PICKLE_PROTO)
        return record_view(self, pos, off, head);
    PyObject *msgs = PyMarshal_ReadObjectFromString(body, (Py_ssize_t)n);
    if (msgs == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return NULL;
        PyErr_Clear();  /* the Python path decodes it again, and reports it */
        return record_view(self, pos, off, head);
    }
    uint64_t *hdr = self->hdr;
    PyObject *msg, *reply;
    int overflow;
    /* the common case, else the record for the Python path (read_plain's Loaded) */
    if (!PyList_CheckExact(msgs) || PyList_GET_SIZE(msgs) != 1 ||
            (head >> 32) != 1 ||
            !PyTuple_CheckExact(msg = PyList_GET_ITEM(msgs, 0)) ||
            PyTuple_GET_SIZE(msg) != 5 ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(msg, 0)) ||
            PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(msg, 0), &overflow) != OP_REPLY ||
            PyTuple_GET_ITEM(msg, 2) != Py_True ||
            (__atomic_load_n(&hdr[H_CUR_REC], __ATOMIC_ACQUIRE) == pos &&
             __atomic_load_n(&hdr[H_CUR_SUB], __ATOMIC_ACQUIRE) != 0))
        return make_record(self->loaded, pos, msgs, head);
    PyObject *token = PyTuple_GET_ITEM(msg, 1);
    reply = PyDict_GetItemWithError(pending, token);  /* borrowed */
    if (reply == NULL && PyErr_Occurred()) {
        Py_DECREF(msgs);
        return NULL;
    }
    if (reply != NULL && !completes_here(reply))
        return make_record(self->loaded, pos, msgs, head);
    if (reply != NULL) {
        ReplyCore *r = (ReplyCore *)Py_NewRef(reply);
        if (PyDict_DelItem(pending, token) < 0) {
            Py_DECREF(r);
            Py_DECREF(msgs);
            return NULL;
        }
        int failed = complete(r, PyTuple_GET_ITEM(msg, 3));
        Py_DECREF(r);
        if (failed) {
            Py_DECREF(msgs);
            return NULL;
        }
    }
    Py_DECREF(msgs);
    /* InChannel.commit_now: handled, then head (the consumer's slots; a caller that said
     * it would spin and did not is what resets READER_EXPECTED: _take_record's look) */
    if (__atomic_load_n(&hdr[H_READER], __ATOMIC_ACQUIRE) == READER_EXPECTED)
        __atomic_store_n(&hdr[H_READER], 0, __ATOMIC_RELEASE);
    uint64_t end = pos + REC_HEADER + ((n + 7) & ~(uint64_t)7);
    __atomic_store_n(&hdr[H_HANDLED], __atomic_load_n(&hdr[H_HANDLED], __ATOMIC_ACQUIRE)
                     + 1, __ATOMIC_RELEASE);
    __atomic_store_n(&hdr[H_HEAD], end, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(end);
}


/* -- The caller's write step (issue #15): RingCore.write_lone --------------------------
 *
 * ``Sending._send_now``'s record: the receiver idle (every message this producer sent
 * handled: ``sent == hdr[H_HANDLED]``), ``[msg]`` marshalled (*version*), at most
 * *limit* bytes, written as one record of one message (``try_write``). One C call for
 * what were an idle check, a marshal, a length check and the write; the same bytes as
 * ring.py's ``RingCorePy.write_lone``. Returns -2 (busy), -1 (over *limit*), 0 (no room
 * now) or the new tail. */
/* The bytes ``marshal.dumps(obj, 2)`` writes, for the plain data a lone call holds
 * (None, booleans, ints of 32 bits, floats, ASCII strings, bytes, and tuples, lists and
 * dicts of them), written straight into *buf* (no bytes object, no UTF-8 copy of a
 * string): marshal's version 2 has no references and no short forms (CPython's
 * Python/marshal.c, w_object), so each value is its type byte and its data. Returns the
 * end of what was written, or NULL if *obj* holds anything else or does not fit before
 * *end*: the caller then asks marshal itself (tests/native/test_lone_write.py checks the
 * two byte for byte). */
#define PLAIN_DEPTH 8

static char *
put_u32(char *p, char *end, uint32_t v)
{
    if (end - p < 4)
        return NULL;
    memcpy(p, &v, 4);  /* marshal's w_long: little-endian (x86-64, arm64) */
    return p + 4;
}

static char *
put_plain(PyObject *obj, char *p, char *end, int depth)
{
    if (p == NULL || end - p < 1 || depth > PLAIN_DEPTH)
        return NULL;
    if (obj == Py_None) { *p = 'N'; return p + 1; }
    if (obj == Py_True) { *p = 'T'; return p + 1; }
    if (obj == Py_False) { *p = 'F'; return p + 1; }
    PyTypeObject *tp = Py_TYPE(obj);
    if (tp == &PyLong_Type) {
        int overflow;
        long x = PyLong_AsLongAndOverflow(obj, &overflow);
        if (overflow || x < INT32_MIN || x > INT32_MAX)
            return NULL;  /* marshal's TYPE_LONG: left to marshal */
        *p = 'i';
        return put_u32(p + 1, end, (uint32_t)(int32_t)x);
    }
    if (tp == &PyFloat_Type) {
        if (end - p < 9)
            return NULL;
        *p = 'g';
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), p + 1, 1) < 0) {
            PyErr_Clear();
            return NULL;
        }
        return p + 9;
    }
    if (tp == &PyUnicode_Type) {
        if (!PyUnicode_IS_ASCII(obj))
            return NULL;
        Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
        *p = 'u';
        p = put_u32(p + 1, end, (uint32_t)n);
        if (p == NULL || end - p < n)
            return NULL;
        memcpy(p, PyUnicode_DATA(obj), n);
        return p + n;
    }
    if (tp == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        *p = 's';
        p = put_u32(p + 1, end, (uint32_t)n);
        if (p == NULL || end - p < n)
            return NULL;
        memcpy(p, PyBytes_AS_STRING(obj), n);
        return p + n;
    }
    if (tp == &PyTuple_Type || tp == &PyList_Type) {
        Py_ssize_t n = Py_SIZE(obj);
        PyObject **items = tp == &PyTuple_Type ? ((PyTupleObject *)obj)->ob_item
                                               : ((PyListObject *)obj)->ob_item;
        *p = tp == &PyTuple_Type ? '(' : '[';
        p = put_u32(p + 1, end, (uint32_t)n);
        for (Py_ssize_t i = 0; i < n && p != NULL; i++)
            p = put_plain(items[i], p, end, depth + 1);
        return p;
    }
    if (tp == &PyDict_Type) {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        *p++ = '{';
        while (p != NULL && PyDict_Next(obj, &pos, &key, &value)) {
            p = put_plain(key, p, end, depth + 1);
            p = put_plain(value, p, end, depth + 1);
        }
        if (p == NULL || end - p < 1)
            return NULL;
        *p = '0';  /* TYPE_NULL ends a dict */
        return p + 1;
    }
    return NULL;
}

#define LONE_BUF 512  /* bytes a lone call is written in directly; larger: marshal's */

static PyObject *
RingCore_write_lone(RingCore *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "write_lone(msg, version, limit) takes 3 arguments "
                     "(%zd given)", nargs);
        return NULL;
    }
    long version = PyLong_AsLong(args[1]);
    if (version == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (core_released(self))
        return NULL;
    if (self->sent != __atomic_load_n(&self->hdr[H_HANDLED], __ATOMIC_ACQUIRE))
        return PyLong_FromLong(-2);
    if (version == 2) {  /* [msg] as marshal writes it, without marshal (put_plain) */
        char buf[LONE_BUF];
        buf[0] = '[';
        char *end = put_plain(args[0], put_u32(buf + 1, buf + LONE_BUF, 1),
                              buf + LONE_BUF, 0);
        if (end != NULL) {
            if (end - buf > limit)
                return PyLong_FromLong(-1);
            return write_bytes(self, buf, (uint64_t)(end - buf), 1);
        }
    }
    PyObject *list = PyList_New(1);
    if (list == NULL)
        return NULL;
    PyList_SET_ITEM(list, 0, Py_NewRef(args[0]));
    PyObject *body = PyMarshal_WriteObjectToString(list, (int)version);
    Py_DECREF(list);
    if (body == NULL)
        return NULL;
    PyObject *result;
    if (PyBytes_GET_SIZE(body) > limit)
        result = PyLong_FromLong(-1);
    else
        result = RingCore_try_write(self, &body, 1);
    Py_DECREF(body);
    return result;
}


/* -- An actor's lone call, served in one C call (issue #15: the round trip's p99) ------
 *
 * ``serve_lone(hub, ctx)`` is the latency path of an idle actor with one inbound ring
 * (actorq/_actorproc/handling.py ``drain``), what ``serve_alone`` and ``send_reply`` do
 * for a lone call, without their Python frames: while the ring has unread records, it
 * reads the next one (``read_plain``); if that is one marshalled call, ``OP_CALL`` or
 * ``OP_DCALL`` with its deadline not passed, to a known handler, of an actor that is
 * idle (nothing queued, not busy, not stopping, no reply held back, nothing dirty), it
 * runs the handler between the same crash attribution stores as ``lone_begin`` and
 * ``lone_commit`` and with the hub's state set as ``serve_alone`` sets it (``busy``,
 * ``sync_depth``, ``alone``, and ``deadline`` for ``OP_DCALL``), commits the record and
 * writes the reply as its own record under its channel's lock (``write_reply``).
 *
 * Whatever is not that common case goes back to Python at the point where it differs:
 * - a record not servable here comes back as ``(n, record)`` (n: calls served before
 *   it), for ``drain`` to handle as before (``serve_alone`` or ``_take_record``);
 * - ``(n, None)``: the actor is busy or has something queued or open (the general
 *   ``Receiving.drain``); an int *n*: the ring has nothing more to read;
 * - a handler that raised: ``hub.lone_raised(...)``; one that returned something that
 *   may be awaitable, or read its rings meanwhile (its record tracked):
 *   ``hub.lone_tail(...)``; a reply not written here (no channel yet, a backlog on it,
 *   not plain data, too big, no room): ``hub.send_reply(reply_to, msg, True)``.
 * After the reply is written (off the round trip's path), the doorbell is held back or
 * rung and credit is handed back by the same Python methods ``serve_alone`` calls.
 *
 * ctx (``Handling.lone_context``): (chan, core, hdr, slots, handlers, outbound,
 * max_inline, busy, host), built once per inbound channel. */

#define OP_CALL 1           /* actorq/_core/protocol.py */
#define OP_DCALL 4
#define LONE_CTX 9

/* attribute and method names, interned once (``intern_names``): the actor's side, then
 * the caller's (``send_lone``, ``LoneCaller``, ``hub_call``) */
static PyObject *s_cursor, *s_open_records, *s_busy, *s_queue, *s_stopping, *s_held,
    *s_dirty, *s_sync_depth, *s_alone, *s_alone_entry, *s_deadline, *s_lock, *s_acquire,
    *s_release, *s_outbox, *s_encoded, *s_ring, *s_core, *s_lone_raised, *s_lone_tail,
    *s_send_reply, *s_hold_doorbell, *s_ring_if_parked, *s_credit_returned, *s_empty,
    *s_outbound, *s_burst, *s_pending, *s_loop_thread_id, *s_credits, *s_gate, *s_waiting,
    *s_expects_readers, *s_inbound, *s_hdr, *s_max_inline, *s_ctl, *s_slots, *s_call,
    *s_send, *s_id, *s_pop, *s_call_deadline, *s_actor_id;

static int
intern_names(void)
{
    static const struct { PyObject **slot; const char *name; } names[] = {
        {&s_cursor, "cursor"}, {&s_open_records, "open_records"}, {&s_busy, "busy"},
        {&s_queue, "queue"}, {&s_stopping, "stopping"}, {&s_held, "held"},
        {&s_dirty, "dirty"}, {&s_sync_depth, "sync_depth"}, {&s_alone, "alone"},
        {&s_alone_entry, "alone_entry"}, {&s_deadline, "deadline"}, {&s_lock, "lock"},
        {&s_acquire, "acquire"}, {&s_release, "release"}, {&s_outbox, "outbox"},
        {&s_encoded, "encoded"}, {&s_ring, "ring"}, {&s_core, "core"},
        {&s_lone_raised, "lone_raised"}, {&s_lone_tail, "lone_tail"},
        {&s_send_reply, "send_reply"}, {&s_hold_doorbell, "hold_doorbell"},
        {&s_ring_if_parked, "ring_if_parked"}, {&s_credit_returned, "credit_returned"},
        {&s_empty, ""},
        {&s_outbound, "outbound"}, {&s_burst, "burst"}, {&s_pending, "pending"},
        {&s_loop_thread_id, "loop_thread_id"}, {&s_credits, "credits"}, {&s_gate, "gate"},
        {&s_waiting, "waiting"}, {&s_expects_readers, "expects_readers"},
        {&s_inbound, "inbound"}, {&s_hdr, "hdr"}, {&s_max_inline, "max_inline"},
        {&s_ctl, "ctl"}, {&s_slots, "slots"}, {&s_call, "call"}, {&s_send, "send"},
        {&s_id, "id"}, {&s_pop, "pop"}, {&s_call_deadline, "call_deadline"},
        {&s_actor_id, "actor_id"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL)
            return -1;
    }
    return 0;
}

/* The truth of obj.name: 1, 0, or -1 with an exception set. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    int t = PyObject_IsTrue(v);
    Py_DECREF(v);
    return t;
}

/* hub.sync_depth += delta */
static int
add_depth(PyObject *hub, long delta)
{
    PyObject *v = PyObject_GetAttr(hub, s_sync_depth);
    if (v == NULL)
        return -1;
    long d = PyLong_AsLong(v);
    Py_DECREF(v);
    if (d == -1 && PyErr_Occurred())
        return -1;
    PyObject *nv = PyLong_FromLong(d + delta);
    if (nv == NULL)
        return -1;
    int rc = PyObject_SetAttr(hub, s_sync_depth, nv);
    Py_DECREF(nv);
    return rc;
}

/* A result ``serve_alone`` knows is not awaitable (handling.py ``_PLAIN``). */
static int
never_awaitable(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    return v == Py_None || t == &PyLong_Type || t == &PyFloat_Type || t == &PyUnicode_Type ||
        t == &PyBytes_Type || t == &PyBool_Type || t == &PyTuple_Type || t == &PyList_Type ||
        t == &PyDict_Type || t == &PySet_Type || t == &PyFrozenSet_Type ||
        t == &PyComplex_Type || t == &PyByteArray_Type;
}

/* time.monotonic() */
static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* lock.release(), whatever happened under it (a ``finally``), and the reference to *lock*
 * let go: 0, with a pending exception kept; -1 if the release itself failed (its error
 * replaces the pending one). ``lone_reply`` and ``send_lone``. */
static int
release_lock(PyObject *lock)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *r = PyObject_CallMethodNoArgs(lock, s_release);
    Py_DECREF(lock);
    if (r == NULL) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return -1;
    }
    Py_DECREF(r);
    PyErr_Restore(et, ev, etb);
    return 0;
}

/* The reply *msg* to *reply_to*, as ``send_reply(reply_to, msg, True)``: written here
 * under its channel's lock when that is the common case, else by ``send_reply``. */
static int
lone_reply(PyObject *hub, PyObject *outbound, PyObject *max_inline, PyObject *reply_to,
           PyObject *msg)
{
    PyObject *out = PyDict_GetItemWithError(outbound, reply_to);
    if (out == NULL && PyErr_Occurred())
        return -1;
    long long written = 0;
    if (out != NULL) {
        Py_INCREF(out);
        PyObject *lock = PyObject_GetAttr(out, s_lock);
        if (lock == NULL) {
            Py_DECREF(out);
            return -1;
        }
        PyObject *r = PyObject_CallMethodNoArgs(lock, s_acquire);
        if (r == NULL) {
            Py_DECREF(lock);
            Py_DECREF(out);
            return -1;
        }
        Py_DECREF(r);
        int err = 0;
        int backlog = attr_true(out, s_outbox);
        if (backlog == 0)
            backlog = attr_true(out, s_encoded);
        if (backlog < 0) {
            err = 1;
        } else if (backlog == 0) {
            PyObject *ring = PyObject_GetAttr(out, s_ring);
            PyObject *core = ring != NULL ? PyObject_GetAttr(ring, s_core) : NULL;
            Py_XDECREF(ring);
            PyObject *w = NULL;
            if (core != NULL) {
                PyObject *wargs[4] = {core, msg, max_inline, Py_True};
                w = write_reply(NULL, wargs, 4);
                Py_DECREF(core);
            }
            if (w == NULL)
                err = 1;
            else if (w != Py_None && (written = PyLong_AsLongLong(w)) == -1 &&
                     PyErr_Occurred())
                err = 1;
            Py_XDECREF(w);
        }
        if (release_lock(lock) < 0 || err) {
            Py_DECREF(out);
            return -1;
        }
        if (written != 0) {
            /* the release was the fence ``ring_if_parked`` needs (send_reply) */
            if (written < 0)
                r = PyObject_CallMethod(hub, "hold_doorbell", "OL", out, -written);
            else
                r = PyObject_CallMethodNoArgs(out, s_ring_if_parked);
            Py_DECREF(out);
            if (r == NULL)
                return -1;
            Py_DECREF(r);
            return 0;
        }
        Py_DECREF(out);
    }
    PyObject *r = PyObject_CallMethodObjArgs(hub, s_send_reply, reply_to, msg, Py_True,
                                             NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Serve one record (already read: *rec*, a ``Loaded``) if it is the common case.
 * 1: served; 0: not (nothing changed but the hub's ``deadline``); -1: an error. */
static int
serve_one(PyObject *hub, PyObject *const *ctx, PyObject *rec)
{
    PyObject *chan = ctx[0], *handlers = ctx[4];
    uint64_t *hdr = ((U64Array *)ctx[2])->words, *slots = ((U64Array *)ctx[3])->words;
    PyObject *msgs = PyTuple_GET_ITEM(rec, 1);
    if (!PyList_CheckExact(msgs) || PyList_GET_SIZE(msgs) != 1)
        return 0;
    PyObject *msg = PyList_GET_ITEM(msgs, 0);
    if (!PyTuple_CheckExact(msg) || PyTuple_GET_SIZE(msg) < 6 ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(msg, 0)))
        return 0;
    int overflow;
    long op = PyLong_AsLongAndOverflow(PyTuple_GET_ITEM(msg, 0), &overflow);
    PyObject *deadline = NULL;
    int t = 0;
    if (op == OP_DCALL && PyTuple_GET_SIZE(msg) == 9) {
        PyObject *due = PyTuple_GET_ITEM(msg, 6);
        if (due != Py_None) {
            if (!PyFloat_CheckExact(due) || PyFloat_AS_DOUBLE(due) <= monotonic_now())
                return 0;  /* expired (``pump`` drops it), or not a float: Python's */
        }
        deadline = PyTuple_Pack(4, PyTuple_GET_ITEM(msg, 1), due, PyTuple_GET_ITEM(msg, 7),
                                PyTuple_GET_ITEM(msg, 8));
        if (deadline == NULL)
            return -1;
    } else if (op != OP_CALL || PyTuple_GET_SIZE(msg) != 6) {
        return 0;
    }
    PyObject *token = PyTuple_GET_ITEM(msg, 1), *reply_to = PyTuple_GET_ITEM(msg, 2);
    PyObject *method = PyTuple_GET_ITEM(msg, 3), *args = PyTuple_GET_ITEM(msg, 4);
    PyObject *kwargs = PyTuple_GET_ITEM(msg, 5);
    if (!PyLong_CheckExact(token) || !PyLong_CheckExact(reply_to) ||
            !PyTuple_CheckExact(args) || !PyDict_CheckExact(kwargs) ||
            (t = attr_true(hub, s_queue)) != 0 || (t = attr_true(hub, s_busy)) != 0 ||
            (t = attr_true(ctx[8], s_stopping)) != 0 || (t = attr_true(hub, s_dirty)) != 0)
        goto not_here;
    PyObject *held = PyObject_GetAttr(hub, s_held);
    if (held == NULL)
        goto error;
    Py_DECREF(held);
    if (held != Py_None)
        goto not_here;  /* serve_alone rings it first */
    PyObject *fn = PyDict_GetItemWithError(handlers, method);
    if (fn == NULL) {
        if (PyErr_Occurred())
            goto error;
        goto not_here;
    }
    /* lone_begin */
    unsigned long long pos = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(rec, 0));
    unsigned long long tok = PyLong_AsUnsignedLongLong(token);
    unsigned long long to = PyLong_AsUnsignedLongLong(reply_to);
    unsigned long long busy_id = PyLong_AsUnsignedLongLong(ctx[7]);
    if (PyErr_Occurred())
        goto error;
    int64_t began = begin_stores(slots, hdr, pos, tok, to, busy_id);  /* lone_begin */
    if (began < 0)
        goto not_here;
    uint64_t seq = (uint64_t)began;
    /* From here on the call is ours: the hub's state as serve_alone sets it. The
     * message's list is emptied and the message let go of (its arguments are freed
     * before the reply goes out: serve_alone's docstring). */
    Py_INCREF(token);
    Py_INCREF(reply_to);
    Py_INCREF(fn);
    Py_INCREF(args);
    Py_INCREF(kwargs);
    if (PyList_SetSlice(msgs, 0, 1, NULL) < 0)
        goto error_own;
    if (deadline != NULL && PyObject_SetAttr(hub, s_deadline, deadline) < 0)
        goto error_own;
    Py_CLEAR(deadline);
    PyObject *unlink = PyList_New(0);
    PyObject *alone = unlink != NULL ? PyTuple_Pack(3, chan, rec, unlink) : NULL;
    if (alone == NULL || PyObject_SetAttr(hub, s_busy, Py_True) < 0 ||
            add_depth(hub, 1) < 0 || PyObject_SetAttr(hub, s_alone, alone) < 0) {
        Py_XDECREF(alone);
        Py_XDECREF(unlink);
        goto error_own;
    }
    Py_DECREF(alone);
    PyObject *result = PyObject_Call(fn, args, PyDict_GET_SIZE(kwargs) ? kwargs : NULL);
    Py_DECREF(fn);
    Py_DECREF(args);
    Py_DECREF(kwargs);
    int rc = 1;
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {  /* KeyboardInterrupt & co: up */
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            add_depth(hub, -1);
            PyErr_Clear();
            PyErr_Restore(et, ev, etb);
            rc = -1;
        } else {
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyErr_NormalizeException(&et, &ev, &etb);
            if (etb != NULL)
                PyException_SetTraceback(ev, etb);
            Py_XDECREF(et);
            Py_XDECREF(etb);
            PyObject *r = PyObject_CallMethodObjArgs(hub, s_lone_raised, chan, rec, unlink,
                                                     token, reply_to, ev, NULL);
            Py_XDECREF(ev);
            Py_XDECREF(r);
            if (r == NULL)
                rc = -1;
            if (add_depth(hub, -1) < 0 && rc == 1)
                rc = -1;
        }
        goto done;
    }
    if (add_depth(hub, -1) < 0) {
        Py_DECREF(result);
        rc = -1;
        goto done;
    }
    /* _end_alone(), as serve_alone writes it out */
    PyObject *entry = PyObject_GetAttr(hub, s_alone_entry);
    if (entry == NULL || PyObject_SetAttr(hub, s_alone, Py_None) < 0 ||
            (entry != Py_None && PyObject_SetAttr(hub, s_alone_entry, Py_None) < 0)) {
        Py_XDECREF(entry);
        Py_DECREF(result);
        rc = -1;
        goto done;
    }
    if (entry != Py_None || !never_awaitable(result)) {
        PyObject *seq_obj = PyLong_FromUnsignedLongLong(seq);
        PyObject *r = seq_obj == NULL ? NULL : PyObject_CallMethodObjArgs(
            hub, s_lone_tail, chan, rec, unlink, seq_obj, token, reply_to, result, entry,
            NULL);
        Py_XDECREF(seq_obj);
        Py_DECREF(entry);
        Py_DECREF(result);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
        goto done;
    }
    Py_DECREF(entry);
    if (PyObject_SetAttr(hub, s_busy, Py_False) < 0) {
        Py_DECREF(result);
        rc = -1;
        goto done;
    }
    /* lone_commit: its credit is back before the reply is */
    unsigned long long end = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(rec, 3));
    if (end == (unsigned long long)-1 && PyErr_Occurred()) {
        Py_DECREF(result);
        rc = -1;
        goto done;
    }
    uint64_t want = commit_stores(slots, hdr, seq, end);
    if (tok) {
        PyObject *op_reply = PyLong_FromLong(OP_REPLY);
        PyObject *reply = op_reply == NULL ? NULL : PyTuple_Pack(5, op_reply, token, Py_True,
                                                                  result, s_empty);
        Py_XDECREF(op_reply);
        Py_DECREF(result);
        if (reply == NULL || lone_reply(hub, ctx[5], ctx[6], reply_to, reply) < 0) {
            Py_XDECREF(reply);
            rc = -1;
            goto done;
        }
        Py_DECREF(reply);
        SV_STORE(slots, SV_C_TOKEN, 0);  /* the reply is out: a crash now fails no caller */
    } else {
        Py_DECREF(result);
    }
    if (want) {
        PyObject *r = PyObject_CallMethodObjArgs(chan, s_credit_returned,
                                                 tok ? Py_True : Py_False, NULL);
        if (r == NULL)
            rc = -1;
        Py_XDECREF(r);
    }
done:
    Py_DECREF(unlink);
    Py_DECREF(token);
    Py_DECREF(reply_to);
    return rc;
error_own:
    Py_DECREF(token);
    Py_DECREF(reply_to);
    Py_DECREF(fn);
    Py_DECREF(args);
    Py_DECREF(kwargs);
error:
    Py_XDECREF(deadline);
    return -1;
not_here:
    Py_XDECREF(deadline);
    return t < 0 ? -1 : 0;
}

static PyObject *
serve_lone(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[1]) ||
            PyTuple_GET_SIZE(args[1]) != LONE_CTX) {
        PyErr_SetString(PyExc_TypeError, "serve_lone(hub, ctx): ctx is a tuple of "
                        "(chan, core, hdr, slots, handlers, outbound, max_inline, busy, host)");
        return NULL;
    }
    PyObject *hub = args[0];
    PyObject *const *ctx = &PyTuple_GET_ITEM(args[1], 0);
    PyObject *chan = ctx[0];
    if (Py_TYPE(ctx[1]) != &RingCore_Type || !PyDict_CheckExact(ctx[4]) ||
            !PyDict_CheckExact(ctx[5])) {
        PyErr_SetString(PyExc_TypeError, "serve_lone: ctx needs a RingCore and two dicts");
        return NULL;
    }
    RingCore *core = (RingCore *)ctx[1];
    if (words_of(ctx[2], H_WANT + 1, "serve_lone: hdr") == NULL ||
            words_of(ctx[3], SV_C_SLOTS, "serve_lone: slots") == NULL)
        return NULL;
    uint64_t *hdr = ((U64Array *)ctx[2])->words;
    long n = 0;
    for (;;) {
        PyObject *cursor = PyObject_GetAttr(chan, s_cursor);
        if (cursor == NULL)
            return NULL;
        unsigned long long pos = PyLong_AsUnsignedLongLong(cursor);
        if (pos == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(cursor);
            return NULL;
        }
        if (SV_LOAD(hdr, H_TAIL) == pos) {
            Py_DECREF(cursor);
            return PyLong_FromLong(n);
        }
        int t = attr_true(hub, s_busy);
        if (t == 0)
            t = attr_true(hub, s_queue);
        if (t == 0)
            t = attr_true(chan, s_open_records);
        if (t != 0) {
            Py_DECREF(cursor);
            return t < 0 ? NULL : Py_BuildValue("(lO)", n, Py_None);
        }
        PyObject *rec = RingCore_read_plain(core, &cursor, 1);
        Py_DECREF(cursor);
        if (rec == NULL)
            return NULL;
        if (rec == Py_None)  /* a published tail always has a record */
            return Py_BuildValue("(lN)", n, rec);
        if (PyObject_SetAttr(chan, s_cursor, PyTuple_GET_ITEM(rec, 3)) < 0) {
            Py_DECREF(rec);
            return NULL;
        }
        int served = Py_TYPE(rec) == core->loaded ? serve_one(hub, ctx, rec) : 0;
        if (served <= 0) {
            if (served < 0) {
                Py_DECREF(rec);
                return NULL;
            }
            return Py_BuildValue("(lN)", n, rec);
        }
        Py_DECREF(rec);
        n++;
    }
}


/* -- A lone call sent (issue #15): ``send_lone(hub, target, msg)`` ----------------------
 *
 * ``Sending._send_now`` (actorq/_core/sending.py) in one C call, the same steps in the
 * same order: a call of plain data to an idle receiver written to its ring at once
 * under the channel's lock (``write_lone``), the spin hint set on the reply's ring for a
 * caller without an event loop, one credit spent, and the receiver's doorbell rung if it
 * is parked. False with nothing sent whenever anything is unusual (``send`` handles it
 * then). */

#define SL_C_PARKED 0        /* actorq/_transport/channel.py */
#define SL_BURST_PENDING 16  /* actorq/_core/outbox.py */
#define SL_LONE_MARSHAL 2    /* actorq/_transport/oob.py */

/* len(obj.name), or -1 with an exception set */
static Py_ssize_t
attr_len(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    Py_ssize_t n = PyObject_Length(v);
    Py_DECREF(v);
    return n;
}

/* obj.name as a C long, or -1 with an exception set */
static long
attr_long(PyObject *obj, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(obj, name);
    if (v == NULL)
        return -1;
    long n = PyLong_AsLong(v);
    Py_DECREF(v);
    return n;
}

static int
set_long(PyObject *obj, PyObject *name, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, v);
    Py_DECREF(v);
    return rc;
}

/* Under the channel's lock: 1 written, 0 not (the slow path's), -1 an error. */
static int
send_locked(PyObject *hub, PyObject *chan, PyObject *target, PyObject *msg, int no_loop)
{
    long credits = attr_long(chan, s_credits);
    if (credits == -1 && PyErr_Occurred())
        return -1;
    if (credits <= 0)
        return 0;
    PyObject *gate = PyObject_GetAttr(chan, s_gate);
    if (gate == NULL)
        return -1;
    int t = attr_true(gate, s_waiting);
    Py_DECREF(gate);
    if (t == 0)
        t = attr_true(chan, s_outbox);
    if (t == 0)
        t = attr_true(chan, s_encoded);
    if (t != 0)
        return t < 0 ? -1 : 0;
    if (no_loop) {
        /* the spin hint: a lone call from a thread without an event loop (its caller
         * spins on the reply's ring: sending.py ``_send_now``) */
        t = attr_true(hub, s_expects_readers);
        if (t < 0)
            return -1;
        if (t) {
            Py_ssize_t n = attr_len(hub, s_pending);
            if (n < 0)
                return -1;
            if (n == 1) {
                PyObject *inbound = PyObject_GetAttr(hub, s_inbound);
                PyObject *back = inbound != NULL ? PyObject_GetItem(inbound, target) : NULL;
                Py_XDECREF(inbound);
                PyObject *ring = back != NULL ? PyObject_GetAttr(back, s_ring) : NULL;
                Py_XDECREF(back);
                PyObject *hdr = ring != NULL ? PyObject_GetAttr(ring, s_hdr) : NULL;
                Py_XDECREF(ring);
                if (hdr != NULL && Py_TYPE(hdr) == &U64Array_Type) {
                    uint64_t *w = ((U64Array *)hdr)->words;  /* NULL: released (pass) */
                    if (w != NULL && ((U64Array *)hdr)->n > H_READER && !SV_LOAD(w, H_READER))
                        SV_STORE(w, H_READER, READER_EXPECTED);
                } else if (hdr != NULL) {  /* the Python slots: as sending.py writes it */
                    PyObject *cur = PySequence_GetItem(hdr, H_READER);
                    int mark = cur != NULL ? !PyObject_IsTrue(cur) : -1;
                    Py_XDECREF(cur);
                    if (mark == 1) {
                        PyObject *v = PyLong_FromLong(READER_EXPECTED);
                        if (v == NULL || PySequence_SetItem(hdr, H_READER, v) < 0)
                            mark = -1;
                        Py_XDECREF(v);
                    }
                    if (mark < 0)
                        PyErr_Clear();  /* released meanwhile: as below */
                }
                Py_XDECREF(hdr);
                if (hdr == NULL) {
                    /* no reply ring (yet), or released: KeyError, ValueError */
                    if (!PyErr_ExceptionMatches(PyExc_KeyError) &&
                            !PyErr_ExceptionMatches(PyExc_ValueError))
                        return -1;
                    PyErr_Clear();
                }
            }
        }
    }
    PyObject *ring = PyObject_GetAttr(chan, s_ring);
    PyObject *core = ring != NULL ? PyObject_GetAttr(ring, s_core) : NULL;
    Py_XDECREF(ring);
    if (core == NULL)
        return -1;
    PyObject *limit = PyObject_GetAttr(hub, s_max_inline);
    if (limit == NULL) {
        Py_DECREF(core);
        return -1;
    }
    PyObject *written;
    if (Py_TYPE(core) == &RingCore_Type) {
        PyObject *wargs[3] = {msg, NULL, limit};
        wargs[1] = PyLong_FromLong(SL_LONE_MARSHAL);
        written = wargs[1] != NULL ? RingCore_write_lone((RingCore *)core, wargs, 3) : NULL;
        Py_XDECREF(wargs[1]);
    } else {
        written = PyObject_CallMethod(core, "write_lone", "OiO", msg, SL_LONE_MARSHAL, limit);
    }
    Py_DECREF(limit);
    Py_DECREF(core);
    if (written == NULL)
        return -1;
    long long end = PyLong_AsLongLong(written);
    Py_DECREF(written);
    if (end == -1 && PyErr_Occurred())
        return -1;
    if (end <= 0)
        return 0;
    return set_long(chan, s_credits, credits - 1) < 0 ? -1 : 1;
}

static PyObject *
send_lone(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "send_lone(hub, target, msg) takes 3 arguments "
                     "(%zd given)", nargs);
        return NULL;
    }
    PyObject *hub = args[0], *target = args[1], *msg = args[2];
    PyObject *outbound = PyObject_GetAttr(hub, s_outbound);
    if (outbound == NULL)
        return NULL;
    PyObject *chan = PyDict_CheckExact(outbound)
        ? Py_XNewRef(PyDict_GetItemWithError(outbound, target))
        : PyObject_CallMethod(outbound, "get", "O", target);
    Py_DECREF(outbound);
    if (chan == NULL && PyErr_Occurred())
        return NULL;
    if (chan == Py_None)
        Py_CLEAR(chan);
    long burst = attr_long(hub, s_burst);
    if ((burst == -1 && PyErr_Occurred()) || set_long(hub, s_burst, burst + 1) < 0) {
        Py_XDECREF(chan);
        return NULL;
    }
    burst += 1;
    PyObject *loop = PyObject_CallNoArgs(running_loop_fn);
    if (loop == NULL) {
        Py_XDECREF(chan);
        return NULL;
    }
    int no_loop = loop == Py_None;
    Py_DECREF(loop);
    if (chan == NULL)
        Py_RETURN_FALSE;
    if (burst > SL_BURST_PENDING) {
        Py_ssize_t n = attr_len(hub, s_pending);
        if (n < 0 || n > SL_BURST_PENDING) {
            Py_DECREF(chan);
            return n < 0 ? NULL : Py_NewRef(Py_False);
        }
    }
    if (!no_loop) {  /* the loop thread runs its loop whenever it runs our code */
        PyObject *tid = PyObject_GetAttr(hub, s_loop_thread_id);
        if (tid == NULL) {
            Py_DECREF(chan);
            return NULL;
        }
        int same = tid != Py_None &&
            PyLong_AsUnsignedLong(tid) == PyThread_get_thread_ident();
        Py_DECREF(tid);
        if (PyErr_Occurred()) {
            Py_DECREF(chan);
            return NULL;
        }
        if (same) {
            Py_DECREF(chan);
            Py_RETURN_FALSE;
        }
    }
    PyObject *lock = PyObject_GetAttr(chan, s_lock);
    PyObject *r = lock != NULL ? PyObject_CallMethodNoArgs(lock, s_acquire) : NULL;
    if (r == NULL) {
        Py_XDECREF(lock);
        Py_DECREF(chan);
        return NULL;
    }
    Py_DECREF(r);
    int sent = send_locked(hub, chan, target, msg, no_loop);
    if (release_lock(lock) < 0) {
        Py_DECREF(chan);
        return NULL;
    }
    if (sent <= 0) {
        Py_DECREF(chan);
        return sent < 0 ? NULL : Py_NewRef(Py_False);
    }
    /* The release is a full fence between the tail stored and the parked flag loaded:
     * a receiver that spins (not parked) needs no call (``ring_if_parked``) */
    PyObject *ctl = PyObject_GetAttr(chan, s_ctl);
    PyObject *slots = ctl != NULL ? PyObject_GetAttr(ctl, s_slots) : NULL;
    Py_XDECREF(ctl);
    int parked = -1;
    if (slots != NULL && Py_TYPE(slots) == &U64Array_Type) {
        if (!released((U64Array *)slots) && ((U64Array *)slots)->n > SL_C_PARKED)
            parked = (int)(SV_LOAD(((U64Array *)slots)->words, SL_C_PARKED) & 1);
    } else if (slots != NULL) {
        PyObject *v = PySequence_GetItem(slots, SL_C_PARKED);
        if (v != NULL) {
            long p = PyLong_AsLong(v);
            Py_DECREF(v);
            if (!(p == -1 && PyErr_Occurred()))
                parked = (int)(p & 1);
        }
    }
    Py_XDECREF(slots);
    if (parked < 0) {
        if (!PyErr_Occurred() || PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();  /* the channel was closed meanwhile: its actor is gone */
            Py_DECREF(chan);
            Py_RETURN_TRUE;
        }
        Py_DECREF(chan);
        return NULL;
    }
    if (parked) {
        r = PyObject_CallMethodNoArgs(chan, s_ring_if_parked);
        if (r == NULL && PyErr_ExceptionMatches(PyExc_ValueError))
            PyErr_Clear();
        else if (r == NULL) {
            Py_DECREF(chan);
            return NULL;
        }
        Py_XDECREF(r);
    }
    Py_DECREF(chan);
    Py_RETURN_TRUE;
}


/* -- ``ref.method``, bound in C (issue #15): ``LoneCaller`` ------------------------------
 *
 * What ``ActorRef._bind`` returns when the C helpers are in use: a callable that does
 * what ``Sending.call`` does for the common call, one argument of plain data
 * (``SAFE_TYPES``) and no keywords, in C: a token taken, the ``Reply`` made and
 * registered as pending, the message written at once (``send_lone``) or, failing that,
 * handed to ``hub.send``; the reply returned. Any other call (keywords, several
 * arguments, not plain data) is ``hub.call(ref, method, args, kwargs)``, as before.
 *
 * LoneCaller(hub, ref, method, target, reply_type, next_token, safe_types, no_kwargs) */

typedef struct {
    PyObject_HEAD
    PyObject *hub;
    PyObject *ref;
    PyObject *method;
    PyObject *target;
    PyObject *reply_type;
    PyObject *next_token;
    PyObject *safe_types;
    PyObject *no_kwargs;
    vectorcallfunc vectorcall;
} LoneCaller;

#define LONE_CALLER_FIELDS(X) X(hub) X(ref) X(method) X(target) X(reply_type) \
    X(next_token) X(safe_types) X(no_kwargs)

static PyObject *op_call_obj, *op_dcall_obj, *send_kwnames, *nowait_kwnames;

static int
LoneCaller_traverse(LoneCaller *self, visitproc visit, void *arg)
{
#define LC_VISIT(f) Py_VISIT(self->f);
    LONE_CALLER_FIELDS(LC_VISIT)
#undef LC_VISIT
    return 0;
}

static int
LoneCaller_clear(LoneCaller *self)
{
#define LC_CLEAR(f) Py_CLEAR(self->f);
    LONE_CALLER_FIELDS(LC_CLEAR)
#undef LC_CLEAR
    return 0;
}

static void
LoneCaller_dealloc(LoneCaller *self)
{
    PyObject_GC_UnTrack(self);
    LoneCaller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* hub.call(ref, method, args, kwargs): everything but the common call */
static PyObject *
lone_caller_slow(LoneCaller *self, PyObject *const *args, size_t nargs, PyObject *kwnames)
{
    PyObject *tuple = PyTuple_New((Py_ssize_t)nargs);
    if (tuple == NULL)
        return NULL;
    for (size_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(tuple, (Py_ssize_t)i, Py_NewRef(args[i]));
    PyObject *kwargs = PyDict_New();
    if (kwargs == NULL) {
        Py_DECREF(tuple);
        return NULL;
    }
    Py_ssize_t nk = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nk; i++) {
        if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + (size_t)i]) < 0) {
            Py_DECREF(tuple);
            Py_DECREF(kwargs);
            return NULL;
        }
    }
    PyObject *r = PyObject_CallMethodObjArgs(self->hub, s_call, self->ref, self->method, tuple,
                                             kwargs, NULL);
    Py_DECREF(tuple);
    Py_DECREF(kwargs);
    return r;
}

/* ``Sending.call`` (*dcall* NULL) or ``call_deadline`` (*dcall*: the deadline, call token
 * and token prefix) for a call already known to be plain data, one argument in the
 * tuple *call_args* and no keywords: a token taken, the ``Reply`` (*reply_type*) made
 * with its hook (*hook*, or None) and registered as pending, the message written at once
 * (``send_lone``) or handed to ``hub.send``; the reply. */
static PyObject *
plain_call(PyObject *hub, PyObject *ref, PyObject *method, PyObject *target,
           PyObject *call_args, PyObject *hook, PyObject *const *dcall,
           PyObject *reply_type, PyObject *next_token, PyObject *no_kwargs)
{
    PyObject *token = PyObject_CallNoArgs(next_token);
    if (token == NULL)
        return NULL;
    PyObject *rargs[5] = {hub, ref, token, method, target};
    PyObject *reply = PyObject_Vectorcall(reply_type, rargs, 5, NULL);
    if (reply != NULL && hook != Py_None) {  /* reply._hook = on_outcome */
        if (PyObject_TypeCheck(reply, &ReplyCore_Type)) {
            Py_XSETREF(((ReplyCore *)reply)->hook, Py_NewRef(hook));
        } else {
            PyErr_SetString(PyExc_TypeError, "plain_call: the reply type is not a ReplyCore");
            Py_CLEAR(reply);
        }
    }
    PyObject *pending = reply != NULL ? PyObject_GetAttr(hub, s_pending) : NULL;
    PyObject *hub_id = pending != NULL ? PyObject_GetAttr(hub, s_id) : NULL;
    PyObject *msg = NULL;
    if (hub_id != NULL && dcall == NULL) {
        msg = PyTuple_Pack(6, op_call_obj, token, hub_id, method, call_args, no_kwargs);
    } else if (hub_id != NULL) {
        /* its empty kwargs and its deadline are objects only it holds (a new {} and
         * float): see call_deadline */
        PyObject *kw = PyDict_New();
        PyObject *due = kw == NULL ? NULL : dcall[0] == Py_None ? Py_NewRef(Py_None)
            : PyFloat_FromDouble(PyFloat_AsDouble(dcall[0]));
        if (due != NULL && PyErr_Occurred())
            Py_CLEAR(due);
        if (due != NULL)
            msg = PyTuple_Pack(9, op_dcall_obj, token, hub_id, method, call_args, kw, due,
                               dcall[1], dcall[2]);
        Py_XDECREF(kw);
        Py_XDECREF(due);
    }
    Py_XDECREF(hub_id);
    if (msg == NULL || PyObject_SetItem(pending, token, reply) < 0) {
        Py_XDECREF(msg);
        Py_XDECREF(pending);
        Py_XDECREF(reply);
        Py_DECREF(token);
        return NULL;
    }
    PyObject *sargs[3] = {hub, target, msg};
    PyObject *sent = send_lone(NULL, sargs, 3);
    if (sent == Py_False) {  /* hub.send(ref, msg, nowait=False[, plain=True]) */
        PyObject *margs[5] = {hub, ref, msg, Py_False, Py_True};
        Py_DECREF(sent);
        sent = PyObject_VectorcallMethod(s_send, margs, 3,
                                         dcall == NULL ? send_kwnames : nowait_kwnames);
    }
    Py_DECREF(msg);
    if (sent == NULL) {  /* nothing sent: the pending entry goes (``call``'s except) */
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyObject *r = PyObject_CallMethodObjArgs(pending, s_pop, token, Py_None, NULL);
        Py_XDECREF(r);
        PyErr_Clear();
        PyErr_Restore(et, ev, etb);
        Py_DECREF(pending);
        Py_DECREF(reply);
        Py_DECREF(token);
        return NULL;
    }
    Py_DECREF(sent);
    Py_DECREF(pending);
    Py_DECREF(token);
    return reply;
}

static PyObject *
LoneCaller_vectorcall(LoneCaller *self, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    size_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0))
        return lone_caller_slow(self, args, nargs, kwnames);
    int plain = PySet_Contains(self->safe_types, (PyObject *)Py_TYPE(args[0]));
    if (plain < 0)
        return NULL;
    if (!plain)
        return lone_caller_slow(self, args, nargs, kwnames);
    PyObject *call_args = PyTuple_Pack(1, args[0]);
    if (call_args == NULL)
        return NULL;
    PyObject *reply = plain_call(self->hub, self->ref, self->method, self->target, call_args,
                                 Py_None, NULL, self->reply_type, self->next_token,
                                 self->no_kwargs);
    Py_DECREF(call_args);
    return reply;
}

static PyObject *
LoneCaller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *f[8];
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "LoneCaller() takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "LoneCaller", 8, 8, &f[0], &f[1], &f[2], &f[3], &f[4],
                           &f[5], &f[6], &f[7]))
        return NULL;
    if (!PyAnySet_Check(f[6]) || !PyDict_CheckExact(f[7]) || !PyCallable_Check(f[4]) ||
            !PyCallable_Check(f[5])) {
        PyErr_SetString(PyExc_TypeError, "LoneCaller(hub, ref, method, target, reply_type, "
                        "next_token, safe_types, no_kwargs): reply_type and next_token "
                        "callable, safe_types a set, no_kwargs a dict");
        return NULL;
    }
    LoneCaller *self = (LoneCaller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    int i = 0;
#define LC_SET(fld) self->fld = Py_NewRef(f[i++]);
    LONE_CALLER_FIELDS(LC_SET)
#undef LC_SET
    self->vectorcall = (vectorcallfunc)LoneCaller_vectorcall;
    return (PyObject *)self;
}

static PyMemberDef LoneCaller_members[] = {
    {"ref", T_OBJECT, offsetof(LoneCaller, ref), READONLY, "the ref it calls through"},
    {"method", T_OBJECT, offsetof(LoneCaller, method), READONLY, "the handler's name"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(LoneCaller, vectorcall), READONLY},
    {NULL}
};

/* ``__name__`` and ``__qualname__``: the handler's name, as the Python closure had */
static PyObject *
LoneCaller_name(LoneCaller *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->method);
}

static PyGetSetDef LoneCaller_getset[] = {
    {"__name__", (getter)LoneCaller_name, NULL, "the handler's name", NULL},
    {"__qualname__", (getter)LoneCaller_name, NULL, "the handler's name", NULL},
    {NULL}
};

static PyTypeObject LoneCaller_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._ring.LoneCaller",
    .tp_doc = "ref.method bound in C: the common call sent without a Python frame.",
    .tp_basicsize = sizeof(LoneCaller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = LoneCaller_new,
    .tp_dealloc = (destructor)LoneCaller_dealloc,
    .tp_traverse = (traverseproc)LoneCaller_traverse,
    .tp_clear = (inquiry)LoneCaller_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(LoneCaller, vectorcall),
    .tp_members = LoneCaller_members,
    .tp_getset = LoneCaller_getset,
};

static int
lone_caller_init(PyObject *m)
{
    op_call_obj = PyLong_FromLong(OP_CALL);
    op_dcall_obj = PyLong_FromLong(OP_DCALL);
    send_kwnames = Py_BuildValue("(ss)", "nowait", "plain");
    nowait_kwnames = Py_BuildValue("(s)", "nowait");
    if (op_call_obj == NULL || op_dcall_obj == NULL || send_kwnames == NULL || nowait_kwnames == NULL ||
            PyType_Ready(&LoneCaller_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "LoneCaller", (PyObject *)&LoneCaller_Type);
}



/* -- ``hub_call``, ``hub_call_deadline``: a hub's calls for the C pool (issue #15) --------
 *
 * ``hub_call(hub, ref, method, args, kwargs, on_outcome)`` and ``hub_call_deadline(hub,
 * ref, method, args, kwargs, deadline, call_token, on_outcome, token_prefix)`` are
 * ``Sending.call`` and ``Sending.call_deadline`` (actorq/_core/sending.py): in C
 * (``plain_call``) for one argument of plain data, no keywords and a plain call token,
 * else the hub's own method. The C pool calls (``_pool.c``) send through them, so that a
 * pool's call costs what a ref's does (``LoneCaller``). ``configure_calls(reply_type,
 * next_token, safe_types, no_kwargs)`` gives them what ``LoneCaller`` is given. */

static PyObject *cfg_reply_type, *cfg_next_token, *cfg_safe_types, *cfg_no_kwargs;

static int
one_plain(PyObject *args, PyObject *kwargs)
{
    if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 1 ||
            (kwargs != Py_None && (!PyDict_Check(kwargs) || PyDict_GET_SIZE(kwargs) != 0)))
        return 0;
    return PySet_Contains(cfg_safe_types, (PyObject *)Py_TYPE(PyTuple_GET_ITEM(args, 0)));
}

static PyObject *
hub_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_Format(PyExc_TypeError, "hub_call(hub, ref, method, args, kwargs, on_outcome) "
                     "takes 6 arguments (%zd given)", nargs);
        return NULL;
    }
    int plain = cfg_reply_type != NULL ? one_plain(args[3], args[4]) : 0;
    if (plain < 0)
        return NULL;
    if (!plain)
        return PyObject_VectorcallMethod(s_call, args, 6, NULL);
    PyObject *target = PyObject_GetAttr(args[1], s_actor_id);
    if (target == NULL)
        return NULL;
    PyObject *reply = plain_call(args[0], args[1], args[2], target, args[3], args[5], NULL,
                                 cfg_reply_type, cfg_next_token, cfg_no_kwargs);
    Py_DECREF(target);
    return reply;
}

static PyObject *
hub_call_deadline(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "hub_call_deadline(hub, ref, method, args, kwargs, "
                     "deadline, call_token, on_outcome, token_prefix) takes 9 arguments "
                     "(%zd given)", nargs);
        return NULL;
    }
    int plain = cfg_reply_type != NULL ? one_plain(args[3], args[4]) : 0;
    if (plain > 0 && args[6] != Py_None)
        plain = PySet_Contains(cfg_safe_types, (PyObject *)Py_TYPE(args[6]));
    if (plain > 0 && args[8] != Py_None)
        plain = PyUnicode_CheckExact(args[8]);
    if (plain > 0 && args[5] != Py_None)
        plain = PyFloat_CheckExact(args[5]);
    if (plain < 0)
        return NULL;
    if (!plain) {  /* hub.call_deadline(ref, method, args, kwargs, deadline, call_token,
                    * on_outcome, token_prefix), by position */
        return PyObject_VectorcallMethod(s_call_deadline, args, 9, NULL);
    }
    PyObject *target = PyObject_GetAttr(args[1], s_actor_id);
    if (target == NULL)
        return NULL;
    PyObject *dcall[3] = {args[5], args[6], args[8]};
    PyObject *reply = plain_call(args[0], args[1], args[2], target, args[3], args[7], dcall,
                                 cfg_reply_type, cfg_next_token, cfg_no_kwargs);
    Py_DECREF(target);
    return reply;
}

static PyObject *
configure_calls(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyAnySet_Check(args[2]) || !PyDict_CheckExact(args[3]) ||
            !PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "configure_calls(reply_type, next_token, "
                        "safe_types, no_kwargs): two callables, a set and a dict");
        return NULL;
    }
    Py_XSETREF(cfg_reply_type, Py_NewRef(args[0]));
    Py_XSETREF(cfg_next_token, Py_NewRef(args[1]));
    Py_XSETREF(cfg_safe_types, Py_NewRef(args[2]));
    Py_XSETREF(cfg_no_kwargs, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}
