/* One call of a HostPlan (runtime/host_plan.py) from Python without ctypes: the inputs'
 * checks, the copies in, the kernels (JaxliteDirectRun of a kernel library, by address)
 * and the copies out in one C function. For a batch-1 MLP the kernels take ~2 us and the
 * Python around them (zip, copies, a lock, the ctypes call) ~3 us; here ~1 us.
 *
 *   plan = prepare(run_address, steps_address, count, inputs, outputs, array_types, lock)
 *       inputs: ((address, nbytes, format, shape), ...) of the plan's input buffers;
 *       outputs: the plan's output arrays (copied on every call); lock: the plan's
 *       threading.Lock (held during a call, as the Python path holds it).
 *   call(plan, args) -> list of output copies, or None where args are not exactly arrays of
 *       array_types (numpy's, jax's on the CPU: both export their buffer) of the inputs'
 *       shapes and dtypes, C-contiguous, or the lock is taken: the
 *       caller then takes the Python path, which handles (or rejects) everything else.
 *
 * Built without ISA flags: it only copies and calls. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef const char* (*RunFn)(const void* steps, int64_t count);

typedef struct {
  void* address;
  Py_ssize_t nbytes;
  char format[8];
  int ndim;
  Py_ssize_t shape[8];
} Input;

typedef struct {
  RunFn run;
  const void* steps;
  int64_t count;
  Py_ssize_t n_inputs;
  Input* inputs;
  PyObject* outputs;  /* tuple of arrays */
  PyObject* types;    /* the array types taken: numpy.ndarray, jax's CPU array */
  PyObject* lock;
} Plan;

/* A struct format without its native byte-order prefix: numpy writes "f", jax "=f". */
static const char* bare_format(const char* format) {
  while (*format == '@' || *format == '=' || *format == '<') ++format;
  return format;
}

static void plan_free(PyObject* capsule) {
  Plan* p = (Plan*)PyCapsule_GetPointer(capsule, "jaxlite.direct_plan");
  if (p == NULL) return;
  Py_XDECREF(p->outputs);
  Py_XDECREF(p->types);
  Py_XDECREF(p->lock);
  PyMem_Free(p->inputs);
  PyMem_Free(p);
}

static PyObject* prepare(PyObject* self, PyObject* args) {
  unsigned long long run, steps;
  long long count;
  PyObject *inputs, *outputs, *types, *lock;
  if (!PyArg_ParseTuple(args, "KKLO!O!O!O", &run, &steps, &count, &PyTuple_Type, &inputs, &PyTuple_Type, &outputs,
                        &PyTuple_Type, &types, &lock))
    return NULL;
  Plan* p = (Plan*)PyMem_Calloc(1, sizeof(Plan));
  if (p == NULL) return PyErr_NoMemory();
  p->n_inputs = PyTuple_GET_SIZE(inputs);
  p->inputs = (Input*)PyMem_Calloc(p->n_inputs > 0 ? p->n_inputs : 1, sizeof(Input));
  if (p->inputs == NULL) {
    PyMem_Free(p);
    return PyErr_NoMemory();
  }
  for (Py_ssize_t i = 0; i < p->n_inputs; ++i) {
    Input* in = &p->inputs[i];
    unsigned long long address;
    const char* format;
    PyObject* shape;
    if (!PyArg_ParseTuple(PyTuple_GET_ITEM(inputs, i), "KnsO!", &address, &in->nbytes, &format, &PyTuple_Type,
                          &shape) ||
        strlen(format) >= sizeof in->format || PyTuple_GET_SIZE(shape) > 8) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "direct_call.prepare: an unsupported input");
      PyMem_Free(p->inputs);
      PyMem_Free(p);
      return NULL;
    }
    in->address = (void*)(uintptr_t)address;
    strcpy(in->format, bare_format(format));
    in->ndim = (int)PyTuple_GET_SIZE(shape);
    for (int d = 0; d < in->ndim; ++d) in->shape[d] = PyLong_AsSsize_t(PyTuple_GET_ITEM(shape, d));
  }
  p->run = (RunFn)(uintptr_t)run;
  p->steps = (const void*)(uintptr_t)steps;
  p->count = count;
  Py_INCREF(outputs);
  p->outputs = outputs;
  Py_INCREF(types);
  p->types = types;
  Py_INCREF(lock);
  p->lock = lock;
  PyObject* capsule = PyCapsule_New(p, "jaxlite.direct_plan", plan_free);
  if (capsule == NULL) {
    Py_DECREF(outputs);
    Py_DECREF(types);
    Py_DECREF(lock);
    PyMem_Free(p->inputs);
    PyMem_Free(p);
  }
  return capsule;
}

/* Whether view is a C-contiguous array of the input's format and shape. */
static int fits(const Py_buffer* view, const Input* in) {
  if (view->len != in->nbytes || view->ndim != in->ndim || view->format == NULL ||
      strcmp(bare_format(view->format), in->format))
    return 0;
  for (int d = 0; d < in->ndim; ++d)
    if (view->shape[d] != in->shape[d]) return 0;
  return PyBuffer_IsContiguous(view, 'C');
}

static PyObject* call(PyObject* self, PyObject* args) {
  PyObject *capsule, *arrays;
  if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyTuple_Type, &arrays)) return NULL;
  Plan* p = (Plan*)PyCapsule_GetPointer(capsule, "jaxlite.direct_plan");
  if (p == NULL) return NULL;
  if (PyTuple_GET_SIZE(arrays) != p->n_inputs || p->n_inputs > 16) Py_RETURN_NONE;
  Py_buffer views[16];
  Py_ssize_t got = 0;
  int ok = 1;
  for (; got < p->n_inputs; ++got) {
    PyObject* x = PyTuple_GET_ITEM(arrays, got);
    int taken = 0;
    for (Py_ssize_t t = 0; t < PyTuple_GET_SIZE(p->types); ++t) taken |= (PyObject*)Py_TYPE(x) == PyTuple_GET_ITEM(p->types, t);
    if (!taken || PyObject_GetBuffer(x, &views[got], PyBUF_RECORDS_RO) != 0) {
      PyErr_Clear();
      ok = 0;
      break;
    }
    if (!fits(&views[got], &p->inputs[got])) {
      ++got;
      ok = 0;
      break;
    }
  }
  PyObject* acquired = ok ? PyObject_CallMethod(p->lock, "acquire", "i", 0) : NULL;
  if (ok && acquired == NULL) {
    for (Py_ssize_t i = 0; i < got; ++i) PyBuffer_Release(&views[i]);
    return NULL;
  }
  ok = ok && acquired == Py_True;
  Py_XDECREF(acquired);
  if (ok)
    for (Py_ssize_t i = 0; i < got; ++i) memcpy(p->inputs[i].address, views[i].buf, (size_t)p->inputs[i].nbytes);
  for (Py_ssize_t i = 0; i < got; ++i) PyBuffer_Release(&views[i]);
  if (!ok) Py_RETURN_NONE;
  /* The GIL is held throughout: the kernels run on this thread for a few microseconds. */
  const char* error = p->run(p->steps, p->count);
  PyObject* result = NULL;
  if (error == NULL) {  /* copies of the outputs, still under the lock */
    Py_ssize_t n = PyTuple_GET_SIZE(p->outputs);
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; ++i) {
      PyObject* copy = PyObject_CallMethod(PyTuple_GET_ITEM(p->outputs, i), "copy", NULL);
      if (copy == NULL) Py_CLEAR(result);
      else PyList_SET_ITEM(result, i, copy);
    }
  }
  PyObject *type, *value, *traceback;  /* a copy's exception, kept across the release */
  PyErr_Fetch(&type, &value, &traceback);
  PyObject* released = PyObject_CallMethod(p->lock, "release", NULL);
  if (released == NULL) {
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
    Py_XDECREF(result);
    return NULL;
  }
  Py_DECREF(released);
  PyErr_Restore(type, value, traceback);
  if (error != NULL) {
    Py_XDECREF(result);
    PyErr_Format(PyExc_RuntimeError, "jaxlite native kernel: %s", error);
    return NULL;
  }
  return result;
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS, "prepare(run, steps, count, inputs, outputs, array_types, lock) -> plan"},
    {"call", call, METH_VARARGS, "call(plan, arrays) -> list of outputs, or None: take the Python path"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_direct_call", NULL, -1, methods};

PyMODINIT_FUNC PyInit__direct_call(void) { return PyModule_Create(&module); }
