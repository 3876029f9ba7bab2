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
#include <stdint.h>

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
U64Array_exit(U64Array *self, PyObject *args)
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

static PyMethodDef methods[] = {
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ring",
    "u64 slots of shared memory with acquire loads and release stores (see _ring.c).", -1,
    methods
};

PyMODINIT_FUNC
PyInit__ring(void)
{
    if (PyType_Ready(&U64Array_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "U64Array", (PyObject *)&U64Array_Type) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
