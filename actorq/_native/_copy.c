/* actorq._native._copy: one copy of a large buffer into shared memory, with streaming
 * (non-temporal) stores.
 *
 * Why: an out-of-band buffer (an 8 MiB numpy array) is copied once into a block of shared
 * memory that the receiving process maps; nothing in the sending process reads it again.
 * glibc's memcpy (which numpy and memoryview assignment use) switches to streaming stores
 * only above x86_non_temporal_threshold (48 MiB on our reference VM), so an 8 MiB copy
 * goes through the cache: it reads each destination line before writing it and evicts the
 * caller's working set. Streaming stores skip both. Measured on the reference VM (AMD EPYC,
 * AVX2): 8 MiB into mapped shared memory in 0.74 / 0.88 ms (min / median) against 1.19 /
 * 1.48 ms for numpy's copy.
 *
 * The GIL is released during a large copy. Small copies, CPUs without AVX2 and non-x86
 * machines use memcpy. The Python fallback (actorq/_native/__init__.py) is the same
 * copy by memoryview assignment.
 *
 * BlockView: the receiving side's view of one out-of-band buffer in a mapped block
 * (actorq/_transport/oob.py). An object of its own per message, exporting size bytes
 * of the mapping at offset and holding the mapping's buffer; when the last array over
 * it is gone (it is then deallocated), it clears the block's "viewed" word, so that
 * the sender may reuse the block. The fallback is a ctypes array over the mapping
 * with a weak reference whose Python callback clears the word: 3 us, 5 objects and a
 * Python call in the handler's teardown, against one object here.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_STREAMING 1

__attribute__((target("avx2")))
static void
stream_copy_avx2(char *dst, const char *src, size_t n)
{
    size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    size_t blocks = n / 128;
    for (size_t i = 0; i < blocks; i++) {
        /* the source is read once: fetch it ahead without keeping it in the cache */
        _mm_prefetch(src + 1024, _MM_HINT_NTA);
        _mm_prefetch(src + 1088, _MM_HINT_NTA);
        __m256i a = _mm256_loadu_si256((const __m256i *)src);
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + 96));
        _mm256_stream_si256((__m256i *)dst, a);
        _mm256_stream_si256((__m256i *)(dst + 32), b);
        _mm256_stream_si256((__m256i *)(dst + 64), c);
        _mm256_stream_si256((__m256i *)(dst + 96), d);
        src += 128;
        dst += 128;
    }
    /* streaming stores are weakly ordered: fence them before anyone is told the data is
     * there (the ring's record is written after this returns) */
    _mm_sfence();
    memcpy(dst, src, n - blocks * 128);
}
#else
#define HAVE_STREAMING 0
#endif

static int streaming = 0;  /* set once at import: the CPU has AVX2 */
static Py_ssize_t min_streaming = 1 << 20;

static PyObject *
copy_into(PyObject *module, PyObject *args)
{
    Py_buffer dst, src;
    Py_ssize_t offset;
    if (!PyArg_ParseTuple(args, "w*ny*:copy_into", &dst, &offset, &src))
        return NULL;
    PyObject *result = NULL;
    if (offset < 0 || src.len > dst.len || offset > dst.len - src.len) {
        PyErr_Format(PyExc_ValueError,
                     "copy_into: %zd bytes at offset %zd do not fit a buffer of %zd bytes",
                     src.len, offset, dst.len);
        goto done;
    }
    char *to = (char *)dst.buf + offset;
    const char *from = (const char *)src.buf;
    size_t n = (size_t)src.len;
    if (n >= (size_t)min_streaming) {
        Py_BEGIN_ALLOW_THREADS
#if HAVE_STREAMING
        if (streaming)
            stream_copy_avx2(to, from, n);
        else
#endif
            memcpy(to, from, n);
        Py_END_ALLOW_THREADS
    }
    else {
        memcpy(to, from, n);
    }
    result = PyLong_FromSsize_t(src.len);
done:
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

static PyObject *
set_min_streaming(PyObject *module, PyObject *arg)
{
    Py_ssize_t value = PyLong_AsSsize_t(arg);
    if (value == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t old = min_streaming;
    min_streaming = value < 0 ? 0 : value;
    return PyLong_FromSsize_t(old);
}

/* -- BlockView --------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    Py_buffer owner;  /* the mapping's buffer: keeps it mapped while we are alive */
    char *data;
    Py_ssize_t size;
    uint64_t *flag;   /* stored 0 (a release store) when we are gone, or NULL */
} BlockView;

static PyObject *
BlockView_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *obj;
    Py_ssize_t offset, size, flag;
    static char *kwlist[] = {"mapping", "offset", "size", "flag", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Onnn:BlockView", kwlist,
                                     &obj, &offset, &size, &flag))
        return NULL;
    BlockView *self = (BlockView *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    if (PyObject_GetBuffer(obj, &self->owner, PyBUF_WRITABLE) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    Py_ssize_t len = self->owner.len;
    if (offset < 0 || size < 0 || offset > len - size) {
        PyErr_Format(PyExc_ValueError,
                     "BlockView: %zd bytes at offset %zd do not fit a buffer of %zd bytes",
                     size, offset, len);
        Py_DECREF(self);
        return NULL;
    }
    if (flag != -1 && (flag < 0 || flag > len - 8 ||
                       ((uintptr_t)self->owner.buf + (size_t)flag) % 8 != 0)) {
        PyErr_Format(PyExc_ValueError,
                     "BlockView: flag offset %zd is not an aligned u64 of a buffer of %zd "
                     "bytes (-1 for none)", flag, len);
        Py_DECREF(self);
        return NULL;
    }
    self->data = (char *)self->owner.buf + offset;
    self->size = size;
    self->flag = flag == -1 ? NULL : (uint64_t *)((char *)self->owner.buf + flag);
    return (PyObject *)self;
}

static void
BlockView_dealloc(BlockView *self)
{
    /* only once no buffer exported from us is left: each one holds a reference */
    if (self->flag != NULL)
        __atomic_store_n(self->flag, (uint64_t)0, __ATOMIC_RELEASE);
    if (self->owner.obj != NULL)
        PyBuffer_Release(&self->owner);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
BlockView_getbuffer(BlockView *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data, self->size, 0, flags);
}

static PyBufferProcs BlockView_as_buffer = {
    (getbufferproc)BlockView_getbuffer, NULL,
};

static PyTypeObject BlockViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._copy.BlockView",
    .tp_basicsize = sizeof(BlockView),
    .tp_dealloc = (destructor)BlockView_dealloc,
    .tp_as_buffer = &BlockView_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "BlockView(mapping, offset, size, flag)\n\n"
              "A writable buffer of *size* bytes of *mapping* at *offset*, holding the "
              "mapping; once deallocated (no buffer exported from it is left), the u64 "
              "at byte *flag* of the mapping is stored 0 (-1: none).",
    .tp_new = BlockView_new,
};

static PyMethodDef methods[] = {
    {"copy_into", copy_into, METH_VARARGS,
     "copy_into(dst, offset, src) -> int\n\n"
     "Copy the C-contiguous buffer *src* into the writable buffer *dst* at *offset*; "
     "return the bytes copied. Copies of at least min_streaming bytes release the GIL "
     "and use streaming stores where the CPU has AVX2."},
    {"set_min_streaming", set_min_streaming, METH_O,
     "set_min_streaming(n) -> int: the smallest copy that streams; returns the old value."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_copy",
    "One large copy into shared memory with streaming stores (see _copy.c).", -1, methods
};

PyMODINIT_FUNC
PyInit__copy(void)
{
#if HAVE_STREAMING
    __builtin_cpu_init();
    streaming = __builtin_cpu_supports("avx2");
#endif
    if (PyType_Ready(&BlockViewType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BlockViewType);
    if (PyModule_AddObject(m, "BlockView", (PyObject *)&BlockViewType) < 0) {
        Py_DECREF(&BlockViewType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "STREAMING", streaming) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
