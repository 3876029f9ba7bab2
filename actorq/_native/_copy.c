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
 * The GIL is released during a large copy, and a copy of 2 MiB or more is shared with a
 * helper thread (see "a second copying thread" below). Small copies, CPUs without AVX2
 * and non-x86 machines use memcpy. The Python fallback (actorq/_native/__init__.py) is the same
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
#include <stdatomic.h>
#include <pthread.h>
#include <signal.h>
#include <sched.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define HAVE_HELPER 1
#else
#define HAVE_HELPER 0
#endif

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

/* One stretch of a copy: streaming where the CPU can, else memcpy. */
static void
copy_part(char *to, const char *from, size_t n)
{
#if HAVE_STREAMING
    if (streaming) {
        stream_copy_avx2(to, from, n);
        return;
    }
#endif
    memcpy(to, from, n);
}

/* -- a second copying thread -----------------------------------------------------------
 *
 * Why: one core does not saturate this kind of machine's memory bandwidth (8 MiB into
 * mapped shared memory: 0.74 ms with one thread, 0.55 ms with two, streaming stores,
 * AMD EPYC VM), and while a caller copies an array for an actor, that actor is parked:
 * its core is idle. So a copy of at least min_shared bytes is cut into CHUNK-byte chunks
 * that the caller and one helper thread of this process take from a shared counter. The
 * caller never waits for the helper to start: if the helper gets no CPU in time, the
 * caller copies every chunk itself and the helper finds none left. The caller returns only
 * once every chunk taken (by either) is copied and fenced, so nothing touches the source
 * or the destination after copy_into returns.
 *
 * The shared state: `job` (the destination, source, size and chunk count of the current
 * copy) and `claim`, (generation << 32) | next chunk. The helper reads `claim`, then the
 * job, then takes a chunk by a compare-and-swap of the `claim` it read: a successful swap
 * proves that chunk was still untaken, so that copy was still running and its job fields
 * (written before its generation was published, rewritten only after all its chunks are
 * done) were the ones read. `finished` counts the chunks copied. One copy at a time uses
 * the helper (`busy`, a trylock: a second thread copying at the same moment copies alone).
 * The helper sleeps on the futex word `wake` when it finds no chunk; `sleeping` tells the
 * caller whether to wake it (both sides seq_cst: either the helper sees the new `wake`
 * or the caller sees `sleeping`). It is started by the first large copy of each process
 * (after a fork, the child's first large copy starts its own: pthread_atfork resets the
 * state), runs with every signal blocked, and ends with the process.
 */
#define CHUNK ((size_t)128 << 10)

static int copy_threads = 1;             /* 2: copies of min_shared bytes or more share */
static int helper_possible = HAVE_HELPER; /* 0 if pthread_atfork could not be set */
static Py_ssize_t min_shared = 2 << 20;

#if HAVE_HELPER
static struct {
    _Atomic(char *) dst;
    _Atomic(const char *) src;
    _Atomic size_t n;
    _Atomic size_t nchunks;
} job;
static _Atomic uint64_t claim;
static _Atomic size_t finished;
static _Atomic uint32_t wake;
static _Atomic int sleeping;
static _Atomic uint64_t helper_chunks;   /* chunks the helper has copied, ever */
static _Atomic uint64_t shared_copies;   /* copies offered to it, ever */
static int caller_copies = 1;            /* 0 (tests only): the caller leaves every chunk
                                          * to the helper, to test its path alone */
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static int helper_started = 0;           /* only read and written holding `busy` */
static uint32_t generation = 0;          /* likewise */

/* Take the next chunk of the copy whose claim word was *seen*: 1 with *index* set; 0 when
 * that copy has no chunk left; -1 when the word has moved on since (another chunk taken,
 * or another copy begun): read it, and the job, again. */
static int
take_chunk(uint64_t seen, size_t nchunks, size_t *index)
{
    size_t next = (size_t)(seen & 0xffffffffu);
    if (next >= nchunks)
        return 0;
    if (!atomic_compare_exchange_strong_explicit(&claim, &seen, seen + 1,
                                                 memory_order_acq_rel,
                                                 memory_order_acquire))
        return -1;
    *index = next;
    return 1;
}

static void
copy_chunk(size_t index, char *dst, const char *src, size_t n)
{
    size_t start = index * CHUNK;
    size_t len = n - start < CHUNK ? n - start : CHUNK;
    copy_part(dst + start, src + start, len);
    /* published by a release: a streamed chunk is fenced by copy_part already, and the
     * release orders memcpy's stores before it (on x86 a locked add) */
    atomic_fetch_add_explicit(&finished, 1, memory_order_release);
}

static void *
helper_main(void *arg)
{
    (void)arg;
    for (;;) {
        uint32_t seen_wake = atomic_load(&wake);
        for (;;) {
            uint64_t seen = atomic_load_explicit(&claim, memory_order_acquire);
            char *dst = atomic_load_explicit(&job.dst, memory_order_relaxed);
            const char *src = atomic_load_explicit(&job.src, memory_order_relaxed);
            size_t n = atomic_load_explicit(&job.n, memory_order_relaxed);
            size_t nchunks = atomic_load_explicit(&job.nchunks, memory_order_relaxed);
            size_t index;
            int taken = take_chunk(seen, nchunks, &index);
            if (taken == 0)
                break;
            if (taken == 1) {
                copy_chunk(index, dst, src, n);
                atomic_fetch_add_explicit(&helper_chunks, 1, memory_order_relaxed);
            }
        }
        atomic_store(&sleeping, 1);
        if (atomic_load(&wake) == seen_wake)
            syscall(SYS_futex, &wake, FUTEX_WAIT_PRIVATE, seen_wake, NULL, NULL, 0);
        atomic_store(&sleeping, 0);
    }
    return NULL;
}

static int
start_helper(void)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);  /* the thread inherits the mask */
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 << 10);  /* (virtual: a few pages are touched) */
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, helper_main, NULL);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0;
}

static void
reset_after_fork(void)
{
    /* the child has only the thread that forked: no helper, nobody copying */
    pthread_mutex_init(&busy, NULL);
    helper_started = 0;
    atomic_store(&claim, 0);
    atomic_store(&finished, 0);
    atomic_store(&sleeping, 0);
    atomic_store(&shared_copies, 0);
    atomic_store(&helper_chunks, 0);
}

/* Copy with the helper's help; 0 (nothing copied) if the helper is in use or cannot run. */
static int
copy_shared(char *to, const char *from, size_t n)
{
    if (pthread_mutex_trylock(&busy) != 0)
        return 0;
    if (!helper_started) {
        if (!start_helper()) {
            copy_threads = 1;  /* no threads to be had: stop trying */
            pthread_mutex_unlock(&busy);
            return 0;
        }
        helper_started = 1;
    }
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    atomic_store_explicit(&job.dst, to, memory_order_relaxed);
    atomic_store_explicit(&job.src, from, memory_order_relaxed);
    atomic_store_explicit(&job.n, n, memory_order_relaxed);
    atomic_store_explicit(&job.nchunks, nchunks, memory_order_relaxed);
    atomic_store_explicit(&finished, 0, memory_order_relaxed);
    generation++;
    uint64_t base = (uint64_t)generation << 32;
    atomic_store_explicit(&claim, base, memory_order_release);
    atomic_fetch_add(&wake, 1);
    if (atomic_load(&sleeping))
        syscall(SYS_futex, &wake, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    atomic_fetch_add_explicit(&shared_copies, 1, memory_order_relaxed);
    size_t index;
    while (caller_copies) {
        uint64_t seen = atomic_load_explicit(&claim, memory_order_acquire);
        int taken = take_chunk(seen, nchunks, &index);
        if (taken == 0)
            break;
        if (taken == 1)
            copy_chunk(index, to, from, n);
    }
    /* every chunk is taken: wait for the helper's last one (a chunk's copy, unless the
     * helper lost its CPU mid-chunk: then yield it ours) */
    unsigned spins = 0;
    while (atomic_load_explicit(&finished, memory_order_acquire) != nchunks) {
        if (++spins < 4096) {
#if HAVE_STREAMING
            _mm_pause();
#endif
        }
        else {
            sched_yield();
        }
    }
    pthread_mutex_unlock(&busy);
    return 1;
}
#endif  /* HAVE_HELPER */

/* The whole copy of a large buffer, the GIL released by the caller. */
static void
copy_large(char *to, const char *from, size_t n)
{
#if HAVE_HELPER
    if (copy_threads > 1 && n >= (size_t)min_shared && copy_shared(to, from, n))
        return;
#endif
    copy_part(to, from, n);
}

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
        copy_large(to, from, n);
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
set_copy_threads(PyObject *module, PyObject *args)
{
    int threads;
    Py_ssize_t min_bytes = -1;
    if (!PyArg_ParseTuple(args, "i|n:set_copy_threads", &threads, &min_bytes))
        return NULL;
    if (threads != 1 && threads != 2) {
        PyErr_Format(PyExc_ValueError,
                     "set_copy_threads: threads must be 1 or 2, not %d", threads);
        return NULL;
    }
    PyObject *old = Py_BuildValue("(in)", copy_threads, min_shared);
    if (old == NULL)
        return NULL;
    copy_threads = helper_possible ? threads : 1;
    if (min_bytes >= 0)
        min_shared = min_bytes;
    return old;
}

static PyObject *
copy_stats(PyObject *module, PyObject *unused)
{
#if HAVE_HELPER
    return Py_BuildValue("(KK)", (unsigned long long)atomic_load(&shared_copies),
                         (unsigned long long)atomic_load(&helper_chunks));
#else
    return Py_BuildValue("(KK)", 0ULL, 0ULL);
#endif
}

static PyObject *
set_caller_copies(PyObject *module, PyObject *arg)
{
    int value = PyObject_IsTrue(arg);
    if (value < 0)
        return NULL;
#if HAVE_HELPER
    int old = caller_copies;
    caller_copies = value;
    return PyBool_FromLong(old);
#else
    return PyBool_FromLong(1);
#endif
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
    {"set_copy_threads", set_copy_threads, METH_VARARGS,
     "set_copy_threads(threads, min_bytes=-1) -> (threads, min_bytes)\n\n"
     "Copies of at least min_bytes share their chunks with a helper thread when "
     "threads is 2 (1: every copy is the caller's alone; min_bytes -1 keeps the "
     "current size); returns the old settings."},
    {"copy_stats", copy_stats, METH_NOARGS,
     "copy_stats() -> (shared, helper_chunks): this process's copies offered to the "
     "helper thread and the chunks (128 KiB) it copied, since its start."},
    {"_set_caller_copies", set_caller_copies, METH_O,
     "_set_caller_copies(flag) -> bool (tests): False leaves every chunk of a shared copy "
     "to the helper thread, the caller waiting; returns the old flag."},
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
#if HAVE_HELPER
    static int atfork_done = 0;
    if (!atfork_done) {
        if (pthread_atfork(NULL, NULL, reset_after_fork) != 0)
            helper_possible = 0;
        atfork_done = 1;
    }
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
