/*
 * tunneld.native._cnative: the datapath's arithmetic and crypto on caller buffers.
 *
 *   checksum(data, initial=0)  RFC 1071 ones'-complement sum, not inverted (this file)
 *   ChaChaRun(key)             RFC 8439 ChaCha20-Poly1305 over runs of WireGuard transport
 *                              messages, through OpenSSL's EVP interface (_chacharun.c)
 *
 * _fallback.py is the reference: same results, same exception types, in the same order of
 * checks. No protocol decision is made here. Callers own every buffer; the functions pin them
 * with Py_buffer for the length of the call and never keep a reference.
 */
#include "_cnative.h"

#include <string.h>

/* ---------------------------------------------------------------- arguments */

/* Binds vectorcall arguments to out[0..nmax) by position or keyword; TypeError like Python's. */
int
bind_args(const char *fname, const char *const *names, Py_ssize_t nrequired, Py_ssize_t nmax,
          PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t i, k, nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > nmax) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", fname,
                     nmax, nargs);
        return -1;
    }
    for (i = 0; i < nmax; i++)
        out[i] = i < nargs ? args[i] : NULL;
    for (k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        for (i = 0; i < nmax && PyUnicode_CompareWithASCIIString(key, names[i]) != 0; i++)
            ;
        if (i == nmax) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                         key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* TypeError unless every object is an integer (the fallback's operator.index stage). */
int
require_ints(PyObject *const *objs, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyIndex_Check(objs[i])) {
            PyErr_Format(PyExc_TypeError, "'%.200s' object cannot be interpreted as an integer",
                         Py_TYPE(objs[i])->tp_name);
            return -1;
        }
    }
    return 0;
}

/*
 * An offset, stride or length, clipped to the Py_ssize_t range: a clipped value is exactly as
 * negative or as far outside every buffer as the real one, so the checks give the fallback's
 * answer (including "fits" where the value does not matter, e.g. a stride with count 1).
 */
int
as_size(PyObject *obj, Py_ssize_t *out)
{
    Py_ssize_t v = PyNumber_AsSsize_t(obj, NULL);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* A count past Py_ssize_t is refused (ValueError), as the fallback's counter or ok check does. */
int
as_count(PyObject *obj, Py_ssize_t *out)
{
    Py_ssize_t v = PyNumber_AsSsize_t(obj, PyExc_ValueError);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* An integer in 0..max, else ValueError(message). */
int
as_uint(PyObject *obj, uint64_t max, const char *message, uint64_t *out)
{
    PyObject *num = PyNumber_Index(obj);
    if (num == NULL)
        return -1;
    unsigned long long v = PyLong_AsUnsignedLongLong(num);
    Py_DECREF(num);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, message);
        return -1;
    }
    if (v > max) {
        PyErr_SetString(PyExc_ValueError, message);
        return -1;
    }
    *out = v;
    return 0;
}

/* Pins a writable C-contiguous buffer, viewed as flat bytes; TypeError for anything else. */
int
get_writable(PyObject *obj, Py_buffer *view)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE) < 0) {
        PyErr_SetString(PyExc_TypeError, "expected a writable contiguous buffer");
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- checksum */

/* Folds with end-around carry to 16 bits; a non-zero value never folds to 0. */
static uint32_t
fold16(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint32_t)sum;
}

/*
 * Ones'-complement sum of the buffer's native-order 16-bit words (RFC 1071 4.1: sum 32-bit
 * words into a 64-bit accumulator, which the compiler vectorizes; fold at the end). A final
 * odd byte counts as if followed by a zero byte.
 */
static uint32_t
sum_native(const unsigned char *p, size_t n)
{
    uint64_t total = 0;
    while (n >= 4) {
        /* 2**31 words of at most 2**32-1 never overflow 64 bits */
        size_t words = n / 4 > ((size_t)1 << 31) ? ((size_t)1 << 31) : n / 4;
        uint64_t acc = 0;
        for (size_t i = 0; i < words; i++) {
            uint32_t w;
            memcpy(&w, p + 4 * i, 4);
            acc += w;
        }
        total += fold16(acc);
        p += 4 * words;
        n -= 4 * words;
    }
    if (n) {
        uint32_t w = 0;
        memcpy(&w, p, n); /* zero padding after the tail, where the words continue */
        total += w;
    }
    return fold16(total);
}

/* `initial` as a 16-bit partial sum: a non-negative int, folded; non-zero stays non-zero. */
static int
initial_sum(PyObject *obj, uint32_t *out)
{
    PyObject *num = PyNumber_Index(obj);
    if (num == NULL)
        return -1;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(num, &overflow);
    if (v == -1 && PyErr_Occurred())
        goto fail;
    if (overflow < 0 || (!overflow && v < 0)) {
        PyErr_SetString(PyExc_ValueError, "initial must be non-negative");
        goto fail;
    }
    if (overflow > 0) { /* beyond 2**63: reduce mod 0xffff (2**16 == 1), it is not zero */
        PyObject *modulus = PyLong_FromLong(0xffff);
        PyObject *rest = modulus ? PyNumber_Remainder(num, modulus) : NULL;
        Py_XDECREF(modulus);
        if (rest == NULL)
            goto fail;
        long r = PyLong_AsLong(rest);
        Py_DECREF(rest);
        *out = r ? (uint32_t)r : 0xffff;
    }
    else {
        *out = fold16((uint64_t)v);
    }
    Py_DECREF(num);
    return 0;
fail:
    Py_DECREF(num);
    return -1;
}

static PyObject *
native_checksum(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs,
                PyObject *kwnames)
{
    static const char *const names[] = {"data", "initial"};
    PyObject *a[2];
    Py_buffer view;
    uint32_t initial = 0, sum;
    unsigned char *copy = NULL;

    if (bind_args("checksum", names, 1, 2, args, nargs, kwnames, a) < 0)
        return NULL;
    if (a[1] != NULL && initial_sum(a[1], &initial) < 0)
        return NULL;
    if (PyObject_GetBuffer(a[0], &view, PyBUF_FULL_RO) < 0)
        return NULL;
    const unsigned char *data = view.buf;
    if (!PyBuffer_IsContiguous(&view, 'C')) { /* a strided view: sum its bytes in C order */
        copy = PyMem_Malloc(view.len ? (size_t)view.len : 1);
        if (copy == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        if (PyBuffer_ToContiguous(copy, &view, view.len, 'C') < 0)
            goto fail;
        data = copy;
    }
    sum = sum_native(data, (size_t)view.len);
#if PY_LITTLE_ENDIAN
    /* RFC 1071 2(B): the sum of byte-swapped words is the byte-swapped sum */
    sum = ((sum & 0xff) << 8) | (sum >> 8);
#endif
    sum = fold16((uint64_t)sum + initial);
    PyMem_Free(copy);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(sum);
fail:
    PyMem_Free(copy);
    PyBuffer_Release(&view);
    return NULL;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef module_methods[] = {
    {"checksum", FASTCALL_KW(native_checksum), "RFC 1071 ones'-complement sum, not inverted."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tunneld.native._cnative",
    .m_doc = "Checksum and batched ChaCha20-Poly1305 on caller buffers (see _fallback.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__cnative(void)
{
    PyObject *m;
    if (PyType_Ready(&ChaChaRunType) < 0)
        return NULL;
    m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "ChaChaRun", (PyObject *)&ChaChaRunType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
