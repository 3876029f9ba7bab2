/* actorq._native._pool: a pool call's routing, counting and success hook in C.
 *
 * Why: a pool call's bookkeeping (pick a member, count it in flight, and on its answer
 * count it done and fold its latency in) was ~200 bytecodes, three Python frames and two
 * pairs of the pool's lock per call (benchmarks/callgrind_pool_call.py). Here it is C.
 *
 * Locking: the pool's Python code changes its counters (a member's ``in_flight``,
 * ``calls``, ``ewma``, the pool's ``_calls``, ``_succeeded``, the router's turn and the
 * deadline queue's head) under the pool's lock (``pool._lock``). The C code here does
 * not take that lock: it first checks that nobody holds it (``lock.locked()``), then
 * does its whole read-modify-write holding the GIL and running no Python code (slot
 * reads and writes of ints and floats, list and dict reads of exact built-in types,
 * ``deque.popleft``; nothing that can run a finalizer or the cyclic collector), so no
 * other thread can be inside the lock meanwhile nor enter it before the C code is done:
 * as if it had taken and released the lock. When the lock is held, or the case is not
 * one of the common ones (a router of another type, a hash key not cached yet, a
 * circuit not closed, a failure), the Python function it stands for runs instead
 * (``configure``), which takes the lock as before: the same decisions, the same counts.
 *
 * Reading: the attributes it reads and writes are slots (``__slots__``) of the pool,
 * its members and routers; their offsets are found once (``configure``, from the
 * classes' member descriptors), and an object of exactly that class is read at that
 * offset (an object of another class, or a slot not set, by ``getattr``). The pool's
 * lock's state is read from the lock object where its layout is the one checked at
 * ``configure`` (CPython 3.11/3.12, checked by locking one), else by ``lock.locked()``.
 *
 * - ``bare_call(pool, method, args, kwargs=None, key=None)``: ``PoolCore._bare_call``.
 * - ``pick_first(pool, key)``: ``calls.pick_first``, a retry/circuit/deadline pool's
 *   first pick (the call counted, a member chosen and counted in flight) or None.
 * - ``hook(pool, member, method, args, kwargs, key, deadline, sent)``: the first
 *   attempt's ``on_outcome`` hook, ``first_outcome`` bound to its context: a success is
 *   counted here, a failure goes to ``first_outcome``.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stddef.h>
#include <time.h>

/* set by configure(): the Python functions the C ones stand for, the router classes */
/* the hub's call and call_deadline in C (_ring.c ``hub_call``, ``hub_call_deadline``),
 * or NULL: the hub's methods */
static PyObject *py_hub_call, *py_hub_call_deadline;
static PyObject *py_bare_call, *py_pick_first, *py_first_outcome, *py_send_first,
    *py_first_not_sent, *py_watch, *py_rearm;
static PyTypeObject *rr_type, *ll_type, *fast_type, *hash_type;
static double ewma_alpha = 0.2;

static PyObject *S_locked, *S_attach, *S_call, *S_uncount, *S_done, *S_popleft,
    *S_settled, *S_record_success, *S_circuits_changed, *S_budget_sync, *S_call_deadline,
    *S_release, *S_append;

/* A slot attribute: its name, and the class and offset at which it is read directly
 * (offset 0: always by getattr). */
typedef struct {
    const char *cname;
    PyObject *name;
    PyTypeObject *type;
    Py_ssize_t offset;
} Attr;

enum { P_LOCK, P_CANDIDATES, P_ROUTER, P_CALLS, P_SUCCEEDED, P_DUE, P_CLOSED, P_TIMEOUT,
       P_DUE_AT, P_TOKEN_PREFIX,
       M_IN_FLIGHT, M_CALLS, M_EWMA, M_HUB, M_REF, M_BREAKER, M_SLOT,
       R_TURN, H_SLOTS, H_CACHE, H_BUCKETS, H_SHIFT, H_BUCKET_MASK, N_ATTRS };

static Attr attrs[N_ATTRS] = {
    {"_lock"}, {"_candidates"}, {"_router"}, {"_calls"}, {"_succeeded"}, {"_due"},
    {"_closed"}, {"timeout"}, {"_due_at"}, {"_token_prefix"}, {"in_flight"}, {"calls"}, {"ewma"}, {"hub"}, {"ref"}, {"breaker"},
    {"slot"}, {"_turn"}, {"_slots"}, {"_cache"}, {"_buckets"}, {"_shift"},
    {"_bucket_mask"},
};

#define FIBONACCI 0x9E3779B97F4A7C15ULL  /* routers.FIBONACCI */
static Py_ssize_t slot_cache_keys = 65536;  /* routers.SLOT_CACHE_KEYS */

/* obj.<attr i> (a new reference), NULL with an error */
static inline PyObject *
aget(PyObject *obj, int i)
{
    Attr *a = &attrs[i];
    if (a->offset > 0 && Py_TYPE(obj) == a->type) {
        PyObject *v = *(PyObject **)((char *)obj + a->offset);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, a->name);
}

/* obj.<attr i> = v (v not stolen); 0, or -1 with an error */
static inline int
aset(PyObject *obj, int i, PyObject *v)
{
    Attr *a = &attrs[i];
    if (a->offset > 0 && Py_TYPE(obj) == a->type) {
        PyObject **p = (PyObject **)((char *)obj + a->offset);
        PyObject *old = *p;
        *p = Py_NewRef(v);
        Py_XDECREF(old);  /* an int or a float: no code runs */
        return 0;
    }
    return PyObject_SetAttr(obj, a->name, v);
}

/* The attribute *i*'s slot offset in *cls* (a member descriptor of an object slot), or 0 */
static int
resolve(int i, PyObject *cls)
{
    Attr *a = &attrs[i];
    PyObject *d = PyObject_GetAttr(cls, a->name);
    if (d == NULL)
        return -1;
    Py_XSETREF(a->type, NULL);
    a->offset = 0;
    if (Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyMemberDef *def = ((PyMemberDescrObject *)d)->d_member;
        if (def->type == T_OBJECT_EX && !(def->flags & READONLY)) {
            a->type = (PyTypeObject *)Py_NewRef(cls);
            a->offset = def->offset;
        }
    }
    Py_DECREF(d);
    return 0;
}

/* The layout of a ``_thread.lock`` in CPython 3.11 and 3.12 (Modules/_threadmodule.c):
 * checked at configure() by locking one, else lock.locked() is called. */
typedef struct {
    PyObject_HEAD
    void *lock_lock;
    PyObject *in_weakreflist;
    char locked;
} LockObject;

static PyTypeObject *lock_type;  /* the type whose ``locked`` flag is read, or NULL */

static int
lock_flag(PyObject *lock)
{
    return ((LockObject *)lock)->locked != 0;
}

/* whether reading a lock's flag agrees with lock.locked() on *lock* (a new, free one) */
static int
check_lock_layout(PyObject *lock)
{
    Py_CLEAR(lock_type);
#if PY_VERSION_HEX < 0x030D0000
    if (Py_TYPE(lock)->tp_basicsize != (Py_ssize_t)sizeof(LockObject) || lock_flag(lock))
        return 0;
    PyObject *r = PyObject_CallMethod(lock, "acquire", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    int held = lock_flag(lock);
    r = PyObject_CallMethod(lock, "release", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    if (held && !lock_flag(lock))
        lock_type = (PyTypeObject *)Py_NewRef(Py_TYPE(lock));
#endif
    return 0;
}

#define DUE_POPS 32  /* deadline queue entries popped per success at most (the sweep
                        drops the rest) */

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic's clock on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int
configured(void)
{
    if (py_bare_call == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "actorq._native._pool: configure() first");
        return 0;
    }
    return 1;
}

/* 1 if *pool*'s lock is held by some thread, 0 if free, -1 on error */
static int
lock_held(PyObject *pool)
{
    PyObject *lock = aget(pool, P_LOCK);
    if (lock == NULL)
        return -1;
    if (Py_TYPE(lock) == lock_type) {
        int held = lock_flag(lock);
        Py_DECREF(lock);
        return held;
    }
    PyObject *r = PyObject_VectorcallMethod(S_locked, &lock,
                                            1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(lock);
    if (r == NULL)
        return -1;
    int held = PyObject_IsTrue(r);
    Py_DECREF(r);
    return held;
}

static int
get_long(PyObject *obj, int name, long *out)
{
    PyObject *v = aget(obj, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
set_long(PyObject *obj, int name, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int r = aset(obj, name, v);
    Py_DECREF(v);
    return r;
}

/* obj.name += delta; the new value in *out (if not NULL) */
static int
add_long(PyObject *obj, int name, long delta, long *out)
{
    long v;
    if (get_long(obj, name, &v) < 0 || set_long(obj, name, v + delta) < 0)
        return -1;
    if (out != NULL)
        *out = v + delta;
    return 0;
}

static int
get_double(PyObject *obj, int name, double *out)
{
    PyObject *v = aget(obj, name);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* the router's turn, advanced by one (Router._turn += 1) */
static int
next_turn(PyObject *router, long *turn)
{
    Py_ssize_t off = attrs[R_TURN].offset;  /* a slot of Router: *router* is one */
    PyObject **p = (PyObject **)((char *)router + off);
    if (off == 0 || *p == NULL)
        return add_long(router, R_TURN, 1, turn);
    long t = PyLong_AsLong(*p);
    if (t == -1 && PyErr_Occurred())
        return -1;
    PyObject *v = PyLong_FromLong(t + 1);
    if (v == NULL)
        return -1;
    Py_SETREF(*p, v);
    *turn = t + 1;
    return 0;
}

/* ConsistentHash._cache_slot for an int *key* whose bucket names its owner: 1 and the
 * slot (borrowed: the cache holds it) in *found*; 0 if not done here (a key beyond 64
 * bits, a bucket with a virtual node in it: nothing changed); -1 on error */
static int
new_int_key(PyObject *router, PyObject *cache, PyObject *key, PyObject **found)
{
    int overflow = 0;
    long long k = PyLong_AsLongLongAndOverflow(key, &overflow);
    if (overflow || (k == -1 && PyErr_Occurred()))
        return overflow ? 0 : -1;
    long shift, mask;
    if (get_long(router, H_SHIFT, &shift) < 0 || get_long(router, H_BUCKET_MASK, &mask) < 0)
        return -1;
    if (shift < 0 || shift > 127)
        return 0;
    PyObject *buckets = aget(router, H_BUCKETS);
    if (buckets == NULL)
        return -1;
    /* (key * FIBONACCI >> shift) & mask, as Python computes it (a floor shift) */
    __int128 product = (__int128)k * (__int128)FIBONACCI;
    Py_ssize_t index = (Py_ssize_t)((long long)(product >> shift) & mask);
    if (!PyList_CheckExact(buckets) || index < 0 || index >= PyList_GET_SIZE(buckets)) {
        Py_DECREF(buckets);
        return 0;
    }
    PyObject *slot = Py_NewRef(PyList_GET_ITEM(buckets, index));
    Py_DECREF(buckets);
    long s = PyLong_AsLong(slot);
    if (s == -1 && PyErr_Occurred()) {
        Py_DECREF(slot);
        return -1;
    }
    if (s < 0) {  /* a virtual node in its bucket: bisect (Python) */
        Py_DECREF(slot);
        return 0;
    }
    if (PyDict_GET_SIZE(cache) >= slot_cache_keys)
        PyDict_Clear(cache);  /* (its keys and slots are ints, strs, bytes: no code runs) */
    int r = PyDict_SetItem(cache, key, slot);
    Py_DECREF(slot);
    if (r < 0)
        return -1;
    *found = PyDict_GetItemWithError(cache, key);
    return *found != NULL ? 1 : -1;
}

/* The member *pool*'s router gives a call with *key* among the (non-empty list)
 * *candidates*, as its ``choose`` would: 1 and a borrowed member in *out*, 0 if this
 * case is not done here (nothing changed then), -1 on error. */
static int
choose(PyObject *pool, PyObject *candidates, PyObject *key, PyObject **out)
{
    PyObject *router = aget(pool, P_ROUTER);
    if (router == NULL)
        return -1;
    PyTypeObject *kind = Py_TYPE(router);
    Py_ssize_t n = PyList_GET_SIZE(candidates);
    int r = 0;
    long turn;
    if (kind == rr_type) {
        if (next_turn(router, &turn) < 0)
            goto error;
        *out = PyList_GET_ITEM(candidates, turn % n);
        r = 1;
    }
    else if (kind == ll_type) {
        if (next_turn(router, &turn) < 0)
            goto error;
        Py_ssize_t start = turn % n;
        PyObject *best = PyList_GET_ITEM(candidates, start);
        long low, load;
        if (get_long(best, M_IN_FLIGHT, &low) < 0)
            goto error;
        for (Py_ssize_t i = 1; i < n && low != 0; i++) {
            PyObject *m = PyList_GET_ITEM(candidates, (start + i) % n);
            if (get_long(m, M_IN_FLIGHT, &load) < 0)
                goto error;
            if (load < low) {
                best = m;
                low = load;
            }
        }
        *out = best;
        r = 1;
    }
    else if (kind == fast_type) {
        if (next_turn(router, &turn) < 0)
            goto error;
        Py_ssize_t start = turn % n;
        PyObject *best = PyList_GET_ITEM(candidates, start);
        if (n > 1) {
            double ewma, low, cost;
            long load;
            if (get_double(best, M_EWMA, &ewma) < 0 || get_long(best, M_IN_FLIGHT, &load) < 0)
                goto error;
            low = ewma * (double)(load + 1);
            for (Py_ssize_t i = 1; i < n; i++) {
                PyObject *m = PyList_GET_ITEM(candidates, (start + i) % n);
                if (get_double(m, M_EWMA, &ewma) < 0 || get_long(m, M_IN_FLIGHT, &load) < 0)
                    goto error;
                cost = ewma * (double)(load + 1);
                if (cost < low) {
                    best = m;
                    low = cost;
                }
            }
        }
        *out = best;
        r = 1;
    }
    else if (kind == hash_type) {
        /* ConsistentHash.choose's cached path: every member may take it, a plain key
         * whose slot is cached (hashing a str, int or bytes runs no Python code) */
        PyTypeObject *kt = Py_TYPE(key);
        long slots, slot, s;
        if (kt != &PyLong_Type && kt != &PyUnicode_Type && kt != &PyBytes_Type)
            goto done;
        if (get_long(router, H_SLOTS, &slots) < 0)
            goto error;
        if (slots != n)
            goto done;
        PyObject *cache = aget(router, H_CACHE);
        if (cache == NULL)
            goto error;
        if (!PyDict_CheckExact(cache)) {
            Py_DECREF(cache);
            goto done;
        }
        PyObject *found = PyDict_GetItemWithError(cache, key);  /* borrowed */
        if (found == NULL && !PyErr_Occurred() && kt == &PyLong_Type) {
            /* a new int key: its bucket's owner, cached (_cache_slot), unless a virtual
             * node lies in its bucket (a bisect: the Python code) */
            int r2 = new_int_key(router, cache, key, &found);
            if (r2 < 0) {
                Py_DECREF(cache);
                goto error;
            }
        }
        if (found == NULL) {
            Py_DECREF(cache);
            if (PyErr_Occurred())
                goto error;
            goto done;  /* a new key: placed by the Python code */
        }
        slot = PyLong_AsLong(found);
        Py_DECREF(cache);
        if (slot == -1 && PyErr_Occurred())
            goto error;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *m = PyList_GET_ITEM(candidates, i);
            if (get_long(m, M_SLOT, &s) < 0)
                goto error;
            if (s == slot) {
                *out = m;
                r = 1;
                break;
            }
        }
    }
done:
    Py_DECREF(router);
    return r;
error:
    Py_DECREF(router);
    return -1;
}

/* the pool's candidates (a new reference to a non-empty list), NULL with no error if
 * there are none (or they are not a list), NULL with an error on error */
static PyObject *
candidates_of(PyObject *pool)
{
    PyObject *c = aget(pool, P_CANDIDATES);
    if (c == NULL)
        return NULL;
    if (!PyList_CheckExact(c) || PyList_GET_SIZE(c) == 0) {
        Py_DECREF(c);
        return NULL;
    }
    return c;
}

/* -- the first attempt's hook ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *pool, *member, *method, *args, *kwargs, *key, *deadline;
    double sent;
    vectorcallfunc vectorcall;
} Hook;

static PyTypeObject Hook_Type;
static PyObject *hook_vectorcall(PyObject *, PyObject *const *, size_t, PyObject *);

static PyObject *
hook_make(PyObject *pool, PyObject *member, PyObject *method, PyObject *args,
          PyObject *kwargs, PyObject *key, PyObject *deadline, double sent)
{
    Hook *h = PyObject_GC_New(Hook, &Hook_Type);
    if (h == NULL)
        return NULL;
    h->pool = Py_NewRef(pool);
    h->member = Py_NewRef(member);
    h->method = Py_NewRef(method);
    h->args = Py_NewRef(args);
    h->kwargs = Py_NewRef(kwargs);
    h->key = Py_NewRef(key);
    h->deadline = Py_NewRef(deadline);
    h->sent = sent;
    h->vectorcall = hook_vectorcall;
    PyObject_GC_Track(h);
    return (PyObject *)h;
}

static int
hook_traverse(Hook *h, visitproc visit, void *arg)
{
    Py_VISIT(h->pool);
    Py_VISIT(h->member);
    Py_VISIT(h->method);
    Py_VISIT(h->args);
    Py_VISIT(h->kwargs);
    Py_VISIT(h->key);
    Py_VISIT(h->deadline);
    return 0;
}

static int
hook_clear(Hook *h)
{
    Py_CLEAR(h->pool);
    Py_CLEAR(h->member);
    Py_CLEAR(h->method);
    Py_CLEAR(h->args);
    Py_CLEAR(h->kwargs);
    Py_CLEAR(h->key);
    Py_CLEAR(h->deadline);
    return 0;
}

static void
hook_dealloc(Hook *h)
{
    PyObject_GC_UnTrack(h);
    hook_clear(h);
    PyObject_GC_Del(h);
}

/* first_outcome(ctx, reply, value, exc), the Python hook, with this hook's context */
static PyObject *
hook_slow(Hook *h, PyObject *reply, PyObject *value, PyObject *exc)
{
    PyObject *sent = PyFloat_FromDouble(h->sent);
    if (sent == NULL)
        return NULL;
    PyObject *ctx = PyTuple_Pack(8, h->pool, h->member, h->method, h->args, h->kwargs,
                                 h->key, h->deadline, sent);
    Py_DECREF(sent);
    if (ctx == NULL)
        return NULL;
    PyObject *argv[4] = {ctx, reply, value, exc};
    PyObject *r = PyObject_Vectorcall(py_first_outcome, argv, 4, NULL);
    Py_DECREF(ctx);
    return r;
}

/* the success, counted (first_outcome's success branch); 0, or -1 on error */
static int
hook_succeeded(Hook *h, PyObject *reply, double elapsed, PyObject **popped, int *npopped)
{
    PyObject *pool = h->pool, *member = h->member;
    double ewma;
    if (add_long(member, M_IN_FLIGHT, -1, NULL) < 0 || get_double(member, M_EWMA, &ewma) < 0)
        return -1;
    PyObject *v = PyFloat_FromDouble(ewma == 0.0 ? elapsed
                                                 : ewma + ewma_alpha * (elapsed - ewma));
    if (v == NULL)
        return -1;
    int r = aset(member, M_EWMA, v);
    Py_DECREF(v);
    if (r < 0 || add_long(pool, P_SUCCEEDED, 1, NULL) < 0)
        return -1;
    if (h->deadline == Py_None)
        return 0;
    /* out of the deadline queue, if at its head (in turn); answered ones after it too */
    PyObject *due = aget(pool, P_DUE);
    if (due == NULL)
        return -1;
    int first = 1;
    while (*npopped < DUE_POPS) {
        Py_ssize_t size = PyObject_Size(due);
        if (size < 0)
            goto error;
        if (size == 0)
            break;
        PyObject *head = PySequence_GetItem(due, 0);
        if (head == NULL)
            goto error;
        int out;
        if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) < 2) {
            out = 0;
        }
        else if (first) {
            out = PyTuple_GET_ITEM(head, 1) == reply;
        }
        else {
            PyObject *done = PyObject_GetAttr(PyTuple_GET_ITEM(head, 1), S_done);
            if (done == NULL) {
                Py_DECREF(head);
                goto error;
            }
            out = done == Py_True;
            Py_DECREF(done);
        }
        Py_DECREF(head);  /* the queue holds it still */
        if (!out)
            break;
        first = 0;
        PyObject *gone = PyObject_CallMethodNoArgs(due, S_popleft);
        if (gone == NULL)
            goto error;
        popped[(*npopped)++] = gone;  /* let go after, outside: it may be the last ref */
    }
    Py_DECREF(due);
    return 0;
error:
    Py_DECREF(due);
    return -1;
}

static PyObject *
hook_vectorcall(PyObject *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    Hook *h = (Hook *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "a pool call's hook takes (reply, value, exc)");
        return NULL;
    }
    PyObject *reply = argv[0], *value = argv[1], *exc = argv[2];
    if (h->pool == NULL)  /* cleared by the collector: nothing left to count */
        Py_RETURN_FALSE;
    if (exc != Py_None)
        return hook_slow(h, reply, value, exc);
    double elapsed = monotonic() - h->sent;
    int held = lock_held(h->pool);
    if (held < 0)
        return NULL;
    if (held)
        return hook_slow(h, reply, value, exc);
    PyObject *popped[DUE_POPS];
    int npopped = 0;
    int r = hook_succeeded(h, reply, elapsed, popped, &npopped);
    for (int i = 0; i < npopped; i++)
        Py_DECREF(popped[i]);
    if (r < 0)
        return NULL;
    /* its circuit told, if there is something to tell (outside the section) */
    PyObject *breaker = aget(h->member, M_BREAKER);
    if (breaker == NULL)
        return NULL;
    if (breaker != Py_None) {
        PyObject *settled = PyObject_GetAttr(breaker, S_settled);
        if (settled == NULL) {
            Py_DECREF(breaker);
            return NULL;
        }
        int is = PyObject_IsTrue(settled);
        Py_DECREF(settled);
        if (is == 0) {
            PyObject *x = PyObject_CallMethodNoArgs(breaker, S_record_success);
            if (x == NULL) {
                Py_DECREF(breaker);
                return NULL;
            }
            Py_DECREF(x);
            x = PyObject_CallMethodNoArgs(h->pool, S_circuits_changed);
            if (x == NULL) {
                Py_DECREF(breaker);
                return NULL;
            }
            Py_DECREF(x);
        }
        if (is < 0) {
            Py_DECREF(breaker);
            return NULL;
        }
    }
    Py_DECREF(breaker);
    Py_RETURN_FALSE;
}

static PyTypeObject Hook_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._pool.Hook",
    .tp_basicsize = sizeof(Hook),
    .tp_dealloc = (destructor)hook_dealloc,
    .tp_vectorcall_offset = offsetof(Hook, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "A pool call's first attempt's on_outcome hook (see _pool.c).",
    .tp_traverse = (traverseproc)hook_traverse,
    .tp_clear = (inquiry)hook_clear,
};

/* -- module functions -------------------------------------------------------------------- */

/* pool._uncount(member), the error being raised kept */
static void
uncount(PyObject *pool, PyObject *member)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyObject *argv[2] = {pool, member};
    PyObject *r = PyObject_VectorcallMethod(S_uncount, argv,
                                            2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (r == NULL)
        PyErr_WriteUnraisable(pool);
    Py_XDECREF(r);
    PyErr_Restore(t, v, tb);
}

/* A member picked and counted (the pool's calls, the member's calls and in flight) while
 * the pool's lock is free and the router decides here: 1 and a new reference in *out*
 * (*calls*, if not NULL: the pool's calls now); 0 if not (nothing changed: the Python
 * code decides, and raises if there is no candidate); -1 on error. */
static int
pick_counted(PyObject *pool, PyObject *key, long *calls, PyObject **out)
{
    int held = lock_held(pool);
    if (held != 0)
        return held < 0 ? -1 : 0;
    PyObject *candidates = candidates_of(pool);
    if (candidates == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *member = NULL;
    int chosen = choose(pool, candidates, key, &member);
    if (chosen <= 0) {
        Py_DECREF(candidates);
        return chosen;
    }
    Py_INCREF(member);
    Py_DECREF(candidates);
    if (add_long(pool, P_CALLS, 1, calls) < 0 || add_long(member, M_IN_FLIGHT, 1, NULL) < 0
            || add_long(member, M_CALLS, 1, NULL) < 0) {
        Py_DECREF(member);
        return -1;
    }
    *out = member;
    return 1;
}

static PyObject *
bare_call(PyObject *module, PyObject *const *argv, Py_ssize_t nargs)
{
    if (!configured())
        return NULL;
    if (nargs < 3 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError,
                        "bare_call(pool, method, args, kwargs=None, key=None)");
        return NULL;
    }
    PyObject *pool = argv[0], *method = argv[1], *args = argv[2];
    PyObject *kwargs = nargs > 3 ? argv[3] : Py_None;
    PyObject *key = nargs > 4 ? argv[4] : Py_None;
    PyObject *member = NULL;
    int picked = pick_counted(pool, key, NULL, &member);
    if (picked < 0)
        return NULL;
    if (picked == 0)  /* the lock held, no candidate (it raises), a new key: Python's */
        return PyObject_Vectorcall(py_bare_call, argv, nargs, NULL);
    /* counted: the rest runs outside the section, as _bare_call's does */
    PyObject *hook = NULL, *ref = NULL, *reply = NULL;
    PyObject *hub = aget(member, M_HUB);
    if (hub == Py_None) {
        Py_DECREF(hub);
        hub = PyObject_CallMethodNoArgs(member, S_attach);
    }
    if (hub == NULL)
        goto failed;
    ref = aget(member, M_REF);
    if (ref == NULL)
        goto failed;
    hook = hook_make(pool, member, method, args, kwargs, key, Py_None, monotonic());
    if (hook == NULL)
        goto failed;
    PyObject *cargs[6] = {hub, ref, method, args, kwargs, hook};
    reply = py_hub_call != NULL ? PyObject_Vectorcall(py_hub_call, cargs, 6, NULL)
        : PyObject_VectorcallMethod(S_call, cargs, 6 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (reply == NULL)
        goto failed;
    Py_DECREF(hook);
    Py_DECREF(ref);
    Py_DECREF(hub);
    Py_DECREF(member);
    return reply;
failed:
    uncount(pool, member);
    Py_XDECREF(hook);
    Py_XDECREF(ref);
    Py_XDECREF(hub);
    Py_DECREF(member);
    return NULL;
}

/* A first attempt's pick, counted (the call, and the member in flight), when every
 * circuit is closed, the lock is free and the router decides here: 1 and a new
 * reference in *out*; 0 if not (nothing changed: the Python code decides); -1 on
 * error. The retry budget is told of the calls 16 at a time (after the section). */
static int
pick_fast(PyObject *pool, PyObject *key, PyObject **out)
{
    PyObject *closed = aget(pool, P_CLOSED);
    if (closed == NULL)
        return -1;
    int all_closed = closed == Py_True;
    Py_DECREF(closed);
    if (!all_closed)
        return 0;
    PyObject *member = NULL;
    long calls;
    int picked = pick_counted(pool, key, &calls, &member);
    if (picked <= 0)
        return picked;
    if (!(calls & 15)) {  /* the retry budget is told of calls 16 at a time */
        PyObject *r = PyObject_CallMethodNoArgs(pool, S_budget_sync);
        if (r == NULL) {
            Py_DECREF(member);
            return -1;
        }
        Py_DECREF(r);
    }
    *out = member;
    return 1;
}

static PyObject *
pick_first(PyObject *module, PyObject *const *argv, Py_ssize_t nargs)
{
    if (!configured())
        return NULL;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pick_first(pool, key)");
        return NULL;
    }
    PyObject *member = NULL;
    int r = pick_fast(argv[0], argv[1], &member);
    if (r < 0)
        return NULL;
    if (r == 0)
        return PyObject_Vectorcall(py_pick_first, argv, nargs, NULL);
    return member;
}

/* calls.send_first: a retry, circuit or deadline pool's call (see there) */
static PyObject *
send_first(PyObject *module, PyObject *const *argv, Py_ssize_t nargs)
{
    if (!configured())
        return NULL;
    if (nargs < 3 || nargs > 6) {
        PyErr_SetString(PyExc_TypeError,
                        "send_first(pool, method, args, kwargs=None, key=None, timeout=None)");
        return NULL;
    }
    PyObject *pool = argv[0], *method = argv[1], *args = argv[2];
    PyObject *kwargs = nargs > 3 ? argv[3] : Py_None;
    PyObject *key = nargs > 4 ? argv[4] : Py_None;
    PyObject *timeout = nargs > 5 ? Py_NewRef(argv[5]) : Py_NewRef(Py_None);
    PyObject *member = NULL, *hub = NULL, *ref = NULL, *hook = NULL, *prefix = NULL;
    PyObject *deadline = NULL, *reply = NULL, *due = NULL, *entry_ = NULL;
    if (timeout == Py_None) {
        Py_SETREF(timeout, aget(pool, P_TIMEOUT));
        if (timeout == NULL)
            return NULL;
    }
    double sent = monotonic();  /* (a little early: the routing is in the latency) */
    if (timeout == Py_None) {
        deadline = Py_NewRef(Py_None);
    }
    else {
        double t = PyFloat_AsDouble(timeout);
        if (t == -1.0 && PyErr_Occurred())
            goto error;
        deadline = PyFloat_FromDouble(sent + t);
        if (deadline == NULL)
            goto error;
    }
    int picked = pick_fast(pool, key, &member);
    if (picked < 0)
        goto error;
    if (picked == 0) {  /* a circuit not closed, the lock held, a new hash key: Python's */
        Py_DECREF(timeout);
        Py_DECREF(deadline);
        return PyObject_Vectorcall(py_send_first, argv, nargs, NULL);
    }
    hub = aget(member, M_HUB);
    if (hub == Py_None) {
        Py_DECREF(hub);
        hub = PyObject_CallMethodNoArgs(member, S_attach);
    }
    if (hub == NULL)
        goto not_sent;
    ref = aget(member, M_REF);
    prefix = aget(pool, P_TOKEN_PREFIX);
    if (ref == NULL || prefix == NULL)
        goto not_sent;
    hook = hook_make(pool, member, method, args, kwargs, key, deadline, sent);
    if (hook == NULL)
        goto not_sent;
    PyObject *cargs[9] = {hub, ref, method, args, kwargs, deadline, Py_None, hook, prefix};
    reply = py_hub_call_deadline != NULL
        ? PyObject_Vectorcall(py_hub_call_deadline, cargs, 9, NULL)
        : PyObject_VectorcallMethod(S_call_deadline, cargs,
                                    9 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (reply == NULL)
        goto not_sent;
    if (deadline != Py_None) {  /* watched by the pool's deadline queue */
        entry_ = PyTuple_Pack(4, deadline, reply, method, timeout);
        due = aget(pool, P_DUE);
        if (entry_ == NULL || due == NULL)
            goto error;
        Py_ssize_t size = PyObject_Size(due);
        if (size < 0)
            goto error;
        PyObject *r;
        if (size > 0) {  /* others in the queue: is this one in order? (watch) */
            PyObject *wargs[2] = {pool, entry_};
            r = PyObject_Vectorcall(py_watch, wargs, 2, NULL);
        }
        else {  /* watch's common case: the first in the queue */
            r = PyObject_CallMethodOneArg(due, S_append, entry_);
            if (r != NULL) {
                double due_at;
                Py_DECREF(r);
                r = NULL;
                if (get_double(pool, P_DUE_AT, &due_at) < 0)
                    goto error;
                if (due_at > PyFloat_AS_DOUBLE(deadline))  /* read after the append */
                    r = PyObject_Vectorcall(py_rearm, &pool, 1, NULL);
                else
                    r = Py_NewRef(Py_None);
            }
        }
        if (r == NULL)
            goto error;
        Py_DECREF(r);
    }
    goto done;
not_sent:
    /* ``except (TypeError, AttributeError)``: bad input, nothing sent, the pick undone;
     * ``except Exception``: not sent (the member is gone), retried by policy */
    if (PyErr_ExceptionMatches(PyExc_TypeError) || PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyObject *r = PyObject_CallMethodOneArg(pool, S_release, member);
        if (r == NULL)
            PyErr_WriteUnraisable(pool);
        Py_XDECREF(r);
        PyErr_Restore(t, v, tb);
        goto error;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        goto error;
    {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        if (tb != NULL)
            PyException_SetTraceback(v, tb);
        PyObject *fargv[9] = {pool, member, method, args, kwargs, key, deadline, timeout, v};
        reply = PyObject_Vectorcall(py_first_not_sent, fargv, 9, NULL);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        if (reply == NULL)
            goto error;
    }
    goto done;
error:
    Py_CLEAR(reply);
done:
    Py_XDECREF(due);
    Py_XDECREF(entry_);
    Py_XDECREF(hook);
    Py_XDECREF(prefix);
    Py_XDECREF(ref);
    Py_XDECREF(hub);
    Py_XDECREF(member);
    Py_XDECREF(deadline);
    Py_XDECREF(timeout);
    return reply;  /* NULL after an error */
}

static PyObject *
hook(PyObject *module, PyObject *const *argv, Py_ssize_t nargs)
{
    if (!configured())
        return NULL;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "hook(pool, member, method, args, kwargs, key, deadline, sent)");
        return NULL;
    }
    double sent = PyFloat_AsDouble(argv[7]);
    if (sent == -1.0 && PyErr_Occurred())
        return NULL;
    return hook_make(argv[0], argv[1], argv[2], argv[3], argv[4], argv[5], argv[6], sent);
}

/* the entry *name* of configure()'s dict (borrowed), NULL with an error if missing */
static PyObject *
entry(PyObject *d, const char *name, int a_class)
{
    PyObject *v = PyDict_GetItemString(d, name);
    if (v == NULL) {
        PyErr_Format(PyExc_TypeError, "configure: no %s given", name);
        return NULL;
    }
    if (a_class && !PyType_Check(v)) {
        PyErr_Format(PyExc_TypeError, "configure: %s must be a class", name);
        return NULL;
    }
    return v;
}

static PyObject *
configure(PyObject *module, PyObject *d)
{
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "configure(a dict of names)");
        return NULL;
    }
    const char *funcs[] = {"bare_call", "pick_first", "first_outcome", "send_first",
                           "first_not_sent", "watch", "rearm"};
    PyObject **func_slots[] = {&py_bare_call, &py_pick_first, &py_first_outcome,
                               &py_send_first, &py_first_not_sent, &py_watch, &py_rearm};
    const char *routers[] = {"RoundRobin", "LeastLoaded", "Fastest", "ConsistentHash"};
    PyTypeObject **router_slots[] = {&rr_type, &ll_type, &fast_type, &hash_type};
    PyObject *router = entry(d, "Router", 1), *core = entry(d, "PoolCore", 1);
    PyObject *member = entry(d, "PoolMember", 1), *lock = entry(d, "lock", 0);
    PyObject *alpha_obj = entry(d, "ewma_alpha", 0);
    if (router == NULL || core == NULL || member == NULL || lock == NULL || alpha_obj == NULL)
        return NULL;
    for (int i = 0; i < 7; i++) {
        if (entry(d, funcs[i], 0) == NULL)
            return NULL;
    }
    for (int i = 0; i < 4; i++) {
        PyObject *r = entry(d, routers[i], 1);
        if (r == NULL)
            return NULL;
        if (!PyType_IsSubtype((PyTypeObject *)r, (PyTypeObject *)router)) {
            PyErr_Format(PyExc_TypeError, "configure: %s must be a Router", routers[i]);
            return NULL;
        }
    }
    double alpha = PyFloat_AsDouble(alpha_obj);
    if (alpha == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *hash = PyDict_GetItemString(d, "ConsistentHash");
    for (int i = 0; i < N_ATTRS; i++) {
        PyObject *cls = i <= P_TOKEN_PREFIX ? core : i <= M_SLOT ? member
                        : i == R_TURN ? router : hash;
        if (resolve(i, cls) < 0)
            return NULL;
    }
    if (check_lock_layout(lock) < 0)
        return NULL;
    for (int i = 0; i < 7; i++)
        Py_XSETREF(*func_slots[i], Py_NewRef(PyDict_GetItemString(d, funcs[i])));
    for (int i = 0; i < 4; i++)
        Py_XSETREF(*router_slots[i],
                   (PyTypeObject *)Py_NewRef(PyDict_GetItemString(d, routers[i])));
    PyObject *keys = PyDict_GetItemString(d, "slot_cache_keys");
    if (keys != NULL) {
        Py_ssize_t n = PyLong_AsSsize_t(keys);
        if (n == -1 && PyErr_Occurred())
            return NULL;
        slot_cache_keys = n;
    }
    ewma_alpha = alpha;
    const char *calls[] = {"hub_call", "hub_call_deadline"};
    PyObject **call_slots[] = {&py_hub_call, &py_hub_call_deadline};
    for (int i = 0; i < 2; i++) {  /* optional: None or absent, the hub's methods */
        PyObject *f = PyDict_GetItemString(d, calls[i]);
        Py_XSETREF(*call_slots[i], f != NULL && f != Py_None ? Py_NewRef(f) : NULL);
    }
    Py_RETURN_NONE;
}

/* which direct reads configure() set up: {attribute: offset or 0}, "lock": whether the
 * lock's flag is read (for the tests) */
static PyObject *
direct_reads(PyObject *module, PyObject *unused)
{
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    for (int i = 0; i < N_ATTRS; i++) {
        PyObject *v = PyLong_FromSsize_t(attrs[i].offset);
        if (v == NULL || PyDict_SetItem(d, attrs[i].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(v);
    }
    if (PyDict_SetItemString(d, "lock", lock_type != NULL ? Py_True : Py_False) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static PyMethodDef methods[] = {
    {"configure", configure, METH_O,
     "configure(names): the Python functions the C code stands for (bare_call, "
     "pick_first, first_outcome, send_first, first_not_sent, watch, rearm), the classes "
     "whose slots it reads (PoolCore, PoolMember, Router, RoundRobin, LeastLoaded, "
     "Fastest, ConsistentHash), ewma_alpha and a new lock, by name."},
    {"send_first", (PyCFunction)(void (*)(void))send_first, METH_FASTCALL,
     "send_first(pool, method, args, kwargs=None, key=None, timeout=None): "
     "calls.send_first."},
    {"direct_reads", direct_reads, METH_NOARGS,
     "direct_reads(): {slot name: its offset, read directly (0: by getattr)}, and "
     "\"lock\": whether the pool's lock's state is read from the lock object."},
    {"bare_call", (PyCFunction)(void (*)(void))bare_call, METH_FASTCALL,
     "bare_call(pool, method, args, kwargs=None, key=None): PoolCore._bare_call."},
    {"pick_first", (PyCFunction)(void (*)(void))pick_first, METH_FASTCALL,
     "pick_first(pool, key): calls.pick_first (a first attempt's member, counted)."},
    {"hook", (PyCFunction)(void (*)(void))hook, METH_FASTCALL,
     "hook(pool, member, method, args, kwargs, key, deadline, sent): a first attempt's "
     "on_outcome hook (first_outcome bound to its context)."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_pool",
    "A pool call's routing, counting and success hook (see _pool.c).", -1, methods
};

static int
intern_names(void)
{
    struct { PyObject **slot; const char *name; } names[] = {
        {&S_locked, "locked"}, {&S_attach, "attach"}, {&S_call, "call"},
        {&S_uncount, "_uncount"}, {&S_done, "_done"}, {&S_popleft, "popleft"},
        {&S_settled, "settled"}, {&S_record_success, "record_success"},
        {&S_circuits_changed, "_circuits_changed"}, {&S_budget_sync, "_budget_sync"},
        {&S_call_deadline, "call_deadline"}, {&S_release, "_release"}, {&S_append, "append"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].slot = PyUnicode_InternFromString(names[i].name);
        if (*names[i].slot == NULL)
            return -1;
    }
    for (int i = 0; i < N_ATTRS; i++) {
        attrs[i].name = PyUnicode_InternFromString(attrs[i].cname);
        if (attrs[i].name == NULL)
            return -1;
    }
    return 0;
}

static int pool_caller_init(PyObject *m);

PyMODINIT_FUNC
PyInit__pool(void)
{
    if (intern_names() < 0 || PyType_Ready(&Hook_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Hook", (PyObject *)&Hook_Type) < 0 ||
            pool_caller_init(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}


/* -- ``pool.method``, bound in C (issue #15) ---------------------------------------------
 *
 * ``PoolCaller(pool, core, method, bound)``: what actorq/_routing/pool.py ``_bind``
 * returns with the C pool calls: called with positional arguments only, it is
 * ``core._route(core, method, args)`` (the pool's own path, in C), and with a plain
 * ``key=`` besides ``core._route_key(core, method, args, None, key)``, without the
 * Python frame of *bound* (the closure, which every other call goes to: a handler's
 * keywords, ``timeout=``, a key of another type). A ref's ``ref.method`` is bound in C too (``_ring.c``: ``LoneCaller``), so a
 * pool call costs only its routing more. */

typedef struct {
    PyObject_HEAD
    PyObject *pool;
    PyObject *core;
    PyObject *method;
    PyObject *bound;
    vectorcallfunc vectorcall;
} PoolCaller;

static PyObject *S_route, *S_route_key;

static int
PoolCaller_traverse(PoolCaller *self, visitproc visit, void *arg)
{
    Py_VISIT(self->pool);
    Py_VISIT(self->core);
    Py_VISIT(self->method);
    Py_VISIT(self->bound);
    return 0;
}

static int
PoolCaller_clear(PoolCaller *self)
{
    Py_CLEAR(self->pool);
    Py_CLEAR(self->core);
    Py_CLEAR(self->method);
    Py_CLEAR(self->bound);
    return 0;
}

static void
PoolCaller_dealloc(PoolCaller *self)
{
    PyObject_GC_UnTrack(self);
    PoolCaller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
PoolCaller_vectorcall(PoolCaller *self, PyObject *const *args, size_t nargsf,
                      PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *key = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        /* key= alone, a plain one (the closure's PLAIN_KEYS: str, int, bytes):
         * core._route_key(core, method, args, None, key); anything else: the closure */
        key = args[nargs];
        PyTypeObject *kt = Py_TYPE(key);
        if (PyTuple_GET_SIZE(kwnames) != 1 ||
                PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "key") != 0 ||
                !(kt == &PyUnicode_Type || kt == &PyLong_Type || kt == &PyBytes_Type))
            return PyObject_Vectorcall(self->bound, args, nargsf, kwnames);
    }
    PyObject *route = PyObject_GetAttr(self->core, key == NULL ? S_route : S_route_key);
    if (route == NULL)
        return NULL;
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL) {
        Py_DECREF(route);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    PyObject *rargs[5] = {self->core, self->method, tuple, Py_None, key};
    PyObject *reply = PyObject_Vectorcall(route, rargs, key == NULL ? 3 : 5, NULL);
    Py_DECREF(tuple);
    Py_DECREF(route);
    return reply;
}

static PyObject *
PoolCaller_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *pool, *core, *method, *bound;
    if ((kwds != NULL && PyDict_GET_SIZE(kwds)) ||
            !PyArg_UnpackTuple(args, "PoolCaller", 4, 4, &pool, &core, &method, &bound))
        return PyErr_Occurred() ? NULL
            : PyErr_Format(PyExc_TypeError, "PoolCaller(pool, core, method, bound)");
    if (!PyUnicode_Check(method) || !PyCallable_Check(bound)) {
        PyErr_SetString(PyExc_TypeError, "PoolCaller(pool, core, method, bound): method a "
                        "str, bound callable");
        return NULL;
    }
    PoolCaller *self = (PoolCaller *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->pool = Py_NewRef(pool);
    self->core = Py_NewRef(core);
    self->method = Py_NewRef(method);
    self->bound = Py_NewRef(bound);
    self->vectorcall = (vectorcallfunc)PoolCaller_vectorcall;
    return (PyObject *)self;
}

static PyObject *
PoolCaller_name(PoolCaller *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->method);
}

static PyGetSetDef PoolCaller_getset[] = {
    {"__name__", (getter)PoolCaller_name, NULL, "the handler's name", NULL},
    {"__qualname__", (getter)PoolCaller_name, NULL, "the handler's name", NULL},
    {NULL}
};

static PyMemberDef PoolCaller_members[] = {
    {"pool", T_OBJECT, offsetof(PoolCaller, pool), READONLY, "the pool it calls"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(PoolCaller, vectorcall), READONLY},
    {NULL}
};

static PyTypeObject PoolCaller_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "actorq._native._pool.PoolCaller",
    .tp_doc = "pool.method bound in C: positional calls straight to the pool's route.",
    .tp_basicsize = sizeof(PoolCaller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = PoolCaller_new,
    .tp_dealloc = (destructor)PoolCaller_dealloc,
    .tp_traverse = (traverseproc)PoolCaller_traverse,
    .tp_clear = (inquiry)PoolCaller_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(PoolCaller, vectorcall),
    .tp_members = PoolCaller_members,
    .tp_getset = PoolCaller_getset,
};

static int
pool_caller_init(PyObject *m)
{
    S_route = PyUnicode_InternFromString("_route");
    S_route_key = PyUnicode_InternFromString("_route_key");
    if (S_route == NULL || S_route_key == NULL || PyType_Ready(&PoolCaller_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(m, "PoolCaller", (PyObject *)&PoolCaller_Type);
}
