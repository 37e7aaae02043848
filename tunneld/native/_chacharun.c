/*
 * ChaChaRun: ChaCha20-Poly1305 (RFC 8439) with one key, over WireGuard transport messages
 * (whitepaper 5.4.6) sealed and opened in place, one at a time or as a run at a fixed stride.
 * OpenSSL EVP: one context per direction, keyed once; per message only the nonce is set
 * (EVP_CipherInit_ex with a NULL cipher and key) and the tag read or set through the ctrl.
 */
#include "_cnative.h"

#include <pythread.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#define KEY_LEN 32
#define NONCE_LEN 12
#define TAG_LEN 16
#define HEADER_LEN 16
#define MESSAGE_TRANSPORT 4
/* EVP lengths are ints: feed longer bodies in pieces of this size. */
#define EVP_CHUNK (1 << 30)
/* Dropping and retaking the GIL costs about 0.1 us: worth it only for runs that take a while. */
#define GIL_RELEASE_BYTES 8192

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *seal_ctx; /* keyed once; per message only the nonce is set */
    EVP_CIPHER_CTX *open_ctx;
    PyThread_type_lock lock; /* the contexts are used with the GIL released */
} ChaChaRunObject;

static void
put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void
put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static int
cipher_update(EVP_CIPHER_CTX *ctx, unsigned char *out, const unsigned char *in, size_t len)
{
    int outl;
    while (len) {
        int n = len > EVP_CHUNK ? EVP_CHUNK : (int)len;
        if (!EVP_CipherUpdate(ctx, out, &outl, in, n))
            return 0;
        if (out != NULL)
            out += n;
        in += n;
        len -= (size_t)n;
    }
    return 1;
}

/* Seals data[0:len] in place and writes the tag to tag[0:16]. Returns 0 on an OpenSSL error. */
static int
seal_one(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad,
         size_t aad_len, unsigned char *data, size_t len, unsigned char *tag)
{
    unsigned char unused[TAG_LEN];
    int outl;
    return EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 1)
        && cipher_update(ctx, NULL, aad, aad_len)
        && cipher_update(ctx, data, data, len)
        && EVP_CipherFinal_ex(ctx, unused, &outl)
        && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_LEN, tag) > 0;
}

/* Opens data[0:len] in place against tag[0:16]: 1 if it verifies, 0 if not, -1 on error. */
static int
open_one(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad,
         size_t aad_len, unsigned char *data, size_t len, unsigned char *tag)
{
    unsigned char unused[TAG_LEN];
    int outl;
    if (!EVP_CipherInit_ex(ctx, NULL, NULL, NULL, nonce, 0)
        || !cipher_update(ctx, NULL, aad, aad_len)
        || !cipher_update(ctx, data, data, len)
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_LEN, tag) <= 0)
        return -1;
    if (EVP_CipherFinal_ex(ctx, unused, &outl) <= 0) {
        ERR_clear_error(); /* a bad tag is peer input, not an error to leave queued */
        return 0;
    }
    return 1;
}

static PyObject *
openssl_failed(void)
{
    ERR_clear_error();
    PyErr_SetString(PyExc_RuntimeError, "OpenSSL ChaCha20-Poly1305 call failed");
    return NULL;
}

/* Waits for the object's lock (with the GIL released if another thread holds it). */
static void
lock_contexts(ChaChaRunObject *self)
{
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

/* Locks the contexts and, for work of GIL_RELEASE_BYTES or more, drops the GIL. */
static PyThreadState *
enter_crypto(ChaChaRunObject *self, double bytes)
{
    lock_contexts(self);
    return bytes >= GIL_RELEASE_BYTES ? PyEval_SaveThread() : NULL;
}

static void
leave_crypto(ChaChaRunObject *self, PyThreadState *ts)
{
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    PyThread_release_lock(self->lock);
}

/* The seal_run loop, in order (overlapping strides give the fallback's bytes). 0 on error. */
static int
seal_messages(EVP_CIPHER_CTX *ctx, unsigned char *base, Py_ssize_t stride, Py_ssize_t count,
              size_t plain_len, size_t last_plain_len, uint32_t receiver, uint64_t counter0)
{
    unsigned char nonce[NONCE_LEN] = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned char *d = base + i * stride;
        size_t len = i == count - 1 ? last_plain_len : plain_len;
        d[0] = MESSAGE_TRANSPORT;
        d[1] = d[2] = d[3] = 0;
        put_le32(d + 4, receiver);
        put_le64(d + 8, counter0 + (uint64_t)i);
        memcpy(nonce + 4, d + 8, 8); /* nonce = 4 zero bytes || counter (u64 LE) */
        if (!seal_one(ctx, nonce, NULL, 0, d + HEADER_LEN, len, d + HEADER_LEN + len))
            return 0;
    }
    return 1;
}

/* The open_run loop: opens datagram i where ok[i] != 0, zeroes ok[i] where its tag fails.
   Returns how many verified, or -1 on an OpenSSL error. */
static Py_ssize_t
open_messages(EVP_CIPHER_CTX *ctx, unsigned char *base, Py_ssize_t stride, Py_ssize_t count,
              size_t cipher_len, size_t last_cipher_len, unsigned char *ok)
{
    unsigned char nonce[NONCE_LEN] = {0};
    Py_ssize_t good = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!ok[i])
            continue;
        unsigned char *d = base + i * stride;
        size_t len = (i == count - 1 ? last_cipher_len : cipher_len) - TAG_LEN;
        memcpy(nonce + 4, d + 8, 8); /* the counter field is the nonce's last 8 bytes */
        int r = open_one(ctx, nonce, NULL, 0, d + HEADER_LEN, len, d + HEADER_LEN + len);
        if (r < 0)
            return -1;
        if (r)
            good++;
        else
            ok[i] = 0;
    }
    return good;
}

/* ValueError unless counter0 .. counter0+count-1 fit in 64 bits (count < 0 is checked later). */
static int
check_counters(uint64_t counter0, Py_ssize_t count)
{
    if (count > 1 && (uint64_t)(count - 1) > UINT64_MAX - counter0) {
        PyErr_SetString(PyExc_ValueError, "counters must fit in 64 bits");
        return -1;
    }
    return 0;
}

/*
 * ValueError unless every datagram lies inside buf_len bytes: datagram i < count-1 at
 * start + i*stride is body_len + overhead bytes, the last one last_body_len + overhead.
 * Unsigned arithmetic, every step checked, so no argument can overflow it.
 */
static int
check_run(Py_ssize_t buf_len, Py_ssize_t start, Py_ssize_t stride, Py_ssize_t count,
          Py_ssize_t body_len, Py_ssize_t last_body_len, Py_ssize_t overhead)
{
    if (start < 0 || stride < 0 || count < 0 || body_len < 0 || last_body_len < 0) {
        PyErr_SetString(PyExc_ValueError, "negative run argument");
        return -1;
    }
    if (count == 0)
        return 0;
    size_t len = (size_t)buf_len, last = (size_t)last_body_len + (size_t)overhead;
    if (last > len || (size_t)start > len - last)
        goto outside;
    if (count > 1) {
        size_t room = len - last - (size_t)start, size = (size_t)body_len + (size_t)overhead;
        if (stride && (size_t)(count - 1) > room / (size_t)stride)
            goto outside;
        size_t before_last = (size_t)start + (size_t)(count - 2) * (size_t)stride;
        if (size > len - before_last)
            goto outside;
    }
    return 0;
outside:
    PyErr_SetString(PyExc_ValueError, "run falls outside the buffer");
    return -1;
}

static PyObject *
ChaChaRun_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    ChaChaRunObject *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*:ChaChaRun", kwlist, &key))
        return NULL;
    if (key.len != KEY_LEN) {
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "a ChaCha20-Poly1305 key is 32 bytes");
        return NULL;
    }
    self = (ChaChaRunObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        goto done;
    self->lock = PyThread_allocate_lock();
    self->seal_ctx = EVP_CIPHER_CTX_new();
    self->open_ctx = EVP_CIPHER_CTX_new();
    if (self->lock == NULL || self->seal_ctx == NULL || self->open_ctx == NULL) {
        Py_CLEAR(self);
        PyErr_NoMemory();
        goto done;
    }
    if (!EVP_CipherInit_ex(self->seal_ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL, 1)
        || !EVP_CipherInit_ex(self->open_ctx, EVP_chacha20_poly1305(), NULL, key.buf, NULL, 0)) {
        Py_CLEAR(self);
        openssl_failed();
    }
done:
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

static void
ChaChaRun_dealloc(ChaChaRunObject *self)
{
    /* EVP_CIPHER_CTX_free wipes the key schedule (OPENSSL_clear_free of the cipher state);
       the key itself was never copied into this object. */
    EVP_CIPHER_CTX_free(self->seal_ctx);
    EVP_CIPHER_CTX_free(self->open_ctx);
    if (self->lock != NULL)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
ChaChaRun_seal_run(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    static const char *const names[] = {"buf",       "start",          "stride",   "count",
                                        "plain_len", "last_plain_len", "receiver", "counter0"};
    PyObject *a[8];
    Py_buffer buf;
    Py_ssize_t start, stride, count, plain_len, last_plain_len;
    uint64_t receiver, counter0;

    if (bind_args("seal_run", names, 8, 8, args, nargs, kwnames, a) < 0
        || get_writable(a[0], &buf) < 0)
        return NULL;
    if (require_ints(a + 1, 7) < 0
        || as_uint(a[6], UINT32_MAX, "receiver must fit in 32 bits", &receiver) < 0
        || as_uint(a[7], UINT64_MAX, "counters must fit in 64 bits", &counter0) < 0
        || as_size(a[1], &start) < 0 || as_size(a[2], &stride) < 0
        || as_count(a[3], &count) < 0 || as_size(a[4], &plain_len) < 0
        || as_size(a[5], &last_plain_len) < 0 || check_counters(counter0, count) < 0
        || check_run(buf.len, start, stride, count, plain_len, last_plain_len,
                     HEADER_LEN + TAG_LEN) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    unsigned char *base = (unsigned char *)buf.buf + start;
    PyThreadState *ts = enter_crypto(self, (count - 1) * (double)plain_len + last_plain_len);
    int sealed = seal_messages(self->seal_ctx, base, stride, count, (size_t)plain_len,
                               (size_t)last_plain_len, (uint32_t)receiver, counter0);
    leave_crypto(self, ts);
    PyBuffer_Release(&buf);
    if (!sealed)
        return openssl_failed();
    Py_RETURN_NONE;
}

static PyObject *
ChaChaRun_open_run(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames)
{
    static const char *const names[] = {"buf",        "start",           "stride", "count",
                                        "cipher_len", "last_cipher_len", "ok"};
    PyObject *a[7];
    Py_buffer buf, ok;
    Py_ssize_t start, stride, count, cipher_len, last_cipher_len;

    if (bind_args("open_run", names, 7, 7, args, nargs, kwnames, a) < 0
        || get_writable(a[0], &buf) < 0)
        return NULL;
    if (get_writable(a[6], &ok) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    if (require_ints(a + 1, 5) < 0 || as_size(a[1], &start) < 0
        || as_size(a[2], &stride) < 0 || as_count(a[3], &count) < 0
        || as_size(a[4], &cipher_len) < 0 || as_size(a[5], &last_cipher_len) < 0
        || check_run(buf.len, start, stride, count, cipher_len, last_cipher_len, HEADER_LEN) < 0)
        goto fail;
    if (cipher_len < TAG_LEN || last_cipher_len < TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "a ciphertext holds at least its 16-byte tag");
        goto fail;
    }
    if (ok.len < count) {
        PyErr_SetString(PyExc_ValueError, "ok needs count entries");
        goto fail;
    }
    unsigned char *base = (unsigned char *)buf.buf + start;
    PyThreadState *ts = enter_crypto(self, (count - 1) * (double)cipher_len + last_cipher_len);
    Py_ssize_t good = open_messages(self->open_ctx, base, stride, count, (size_t)cipher_len,
                                    (size_t)last_cipher_len, ok.buf);
    leave_crypto(self, ts);
    PyBuffer_Release(&ok);
    PyBuffer_Release(&buf);
    if (good < 0)
        return openssl_failed();
    return PyLong_FromSsize_t(good);
fail:
    PyBuffer_Release(&ok);
    PyBuffer_Release(&buf);
    return NULL;
}

/*
 * One message body at buf[offset:], sealed (seal) or opened (open). With a nonce object
 * (the _seal_with/_open_with test hooks) the nonce and AAD are the caller's; else the nonce is
 * 4 zero bytes || counter (u64 LE) and there is no AAD. Returns Py_None / a bool.
 */
static PyObject *
single_message(ChaChaRunObject *self, int seal, PyObject *nonce_obj, PyObject *aad_obj,
               PyObject *const *rest)
{
    Py_buffer buf, nonce = {0}, aad = {0};
    Py_ssize_t offset, len;
    uint64_t counter = 0;
    unsigned char counter_nonce[NONCE_LEN] = {0};
    const unsigned char *n = counter_nonce;
    PyObject *result = NULL;
    int r;

    if (get_writable(rest[0], &buf) < 0)
        return NULL;
    if (nonce_obj != NULL) {
        if (PyObject_GetBuffer(nonce_obj, &nonce, PyBUF_SIMPLE) < 0)
            goto done;
        if (PyObject_GetBuffer(aad_obj, &aad, PyBUF_SIMPLE) < 0)
            goto done;
        if (nonce.len != NONCE_LEN) {
            PyErr_SetString(PyExc_ValueError, "a ChaCha20-Poly1305 nonce is 12 bytes");
            goto done;
        }
        n = nonce.buf;
    }
    if (require_ints(rest + 1, nonce_obj ? 2 : 3) < 0
        || (nonce_obj == NULL
            && as_uint(rest[3], UINT64_MAX, "counters must fit in 64 bits", &counter) < 0)
        || as_size(rest[1], &offset) < 0 || as_size(rest[2], &len) < 0
        || check_run(buf.len, offset, 0, 1, len, len, seal ? TAG_LEN : 0) < 0)
        goto done;
    if (!seal && len < TAG_LEN) {
        PyErr_SetString(PyExc_ValueError, "a ciphertext holds at least its 16-byte tag");
        goto done;
    }
    put_le64(counter_nonce + 4, counter);
    unsigned char *body = (unsigned char *)buf.buf + offset;
    size_t plain = (size_t)(seal ? len : len - TAG_LEN);
    PyThreadState *ts = enter_crypto(self, (double)len);
    if (seal)
        r = seal_one(self->seal_ctx, n, aad.buf, (size_t)aad.len, body, plain, body + plain)
            ? 1 : -1;
    else
        r = open_one(self->open_ctx, n, aad.buf, (size_t)aad.len, body, plain, body + plain);
    leave_crypto(self, ts);
    if (r < 0)
        openssl_failed();
    else if (seal)
        result = Py_NewRef(Py_None);
    else
        result = PyBool_FromLong(r);
done:
    if (aad.obj != NULL)
        PyBuffer_Release(&aad);
    if (nonce.obj != NULL)
        PyBuffer_Release(&nonce);
    PyBuffer_Release(&buf);
    return result;
}

static PyObject *
ChaChaRun_seal(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset", "plain_len", "counter"};
    PyObject *a[4];
    if (bind_args("seal", names, 4, 4, args, nargs, kwnames, a) < 0)
        return NULL;
    return single_message(self, 1, NULL, NULL, a);
}

static PyObject *
ChaChaRun_open(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"buf", "offset", "cipher_len", "counter"};
    PyObject *a[4];
    if (bind_args("open", names, 4, 4, args, nargs, kwnames, a) < 0)
        return NULL;
    return single_message(self, 0, NULL, NULL, a);
}

static PyObject *
ChaChaRun_seal_with(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"nonce", "aad", "buf", "offset", "plain_len"};
    PyObject *a[5];
    if (bind_args("_seal_with", names, 5, 5, args, nargs, kwnames, a) < 0)
        return NULL;
    return single_message(self, 1, a[0], a[1], a + 2);
}

static PyObject *
ChaChaRun_open_with(ChaChaRunObject *self, PyObject *const *args, Py_ssize_t nargs,
                    PyObject *kwnames)
{
    static const char *const names[] = {"nonce", "aad", "buf", "offset", "cipher_len"};
    PyObject *a[5];
    if (bind_args("_open_with", names, 5, 5, args, nargs, kwnames, a) < 0)
        return NULL;
    return single_message(self, 0, a[0], a[1], a + 2);
}

static PyMethodDef ChaChaRun_methods[] = {
    {"seal_run", FASTCALL_KW(ChaChaRun_seal_run), "Seal a run of transport messages in place."},
    {"open_run", FASTCALL_KW(ChaChaRun_open_run), "Open a run of transport messages in place."},
    {"seal", FASTCALL_KW(ChaChaRun_seal), "Seal one message body in place."},
    {"open", FASTCALL_KW(ChaChaRun_open), "Open one message body in place."},
    {"_seal_with", FASTCALL_KW(ChaChaRun_seal_with), "Test hook: seal with a nonce and AAD."},
    {"_open_with", FASTCALL_KW(ChaChaRun_open_with), "Test hook: open with a nonce and AAD."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ChaChaRunType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tunneld.native._cnative.ChaChaRun",
    .tp_basicsize = sizeof(ChaChaRunObject),
    .tp_dealloc = (destructor)ChaChaRun_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "ChaCha20-Poly1305 (RFC 8439) with one key over runs of WireGuard messages.",
    .tp_methods = ChaChaRun_methods,
    .tp_new = ChaChaRun_new,
};

