/*
 * Shared by the two files of tunneld.native._cnative: argument helpers (_cnative.c) that give
 * the fallback's exception types, and the ChaChaRun type (_chacharun.c).
 */
#ifndef TUNNELD_CNATIVE_H
#define TUNNELD_CNATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#define FASTCALL_KW(fn) (PyCFunction)(void (*)(void))(fn), METH_FASTCALL | METH_KEYWORDS

/* Binds vectorcall arguments to out[0..nmax) by position or keyword; TypeError like Python's. */
int bind_args(const char *fname, const char *const *names, Py_ssize_t nrequired, Py_ssize_t nmax,
              PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **out);
/* TypeError unless every object is an integer (the fallback's operator.index stage). */
int require_ints(PyObject *const *objs, Py_ssize_t n);
/* An offset, stride or length, clipped to the Py_ssize_t range (see _cnative.c). */
int as_size(PyObject *obj, Py_ssize_t *out);
/* A count; past Py_ssize_t it is refused with ValueError. */
int as_count(PyObject *obj, Py_ssize_t *out);
/* An integer in 0..max, else ValueError(message). */
int as_uint(PyObject *obj, uint64_t max, const char *message, uint64_t *out);
/* Pins a writable C-contiguous buffer, viewed as flat bytes; TypeError for anything else. */
int get_writable(PyObject *obj, Py_buffer *view);

extern PyTypeObject ChaChaRunType;

#endif
