"""Speed machinery, kept apart from the maths: the environment's speed switches (read here and nowhere
else), the compiled-call shortcut, weights in other layouts, the timed choice between forms of a step,
and the CPU probes behind it.  Nothing here knows the model: weights are matrices known by name, steps
are functions."""
import contextlib
import inspect
import os
import threading
import time
import weakref

import numpy as np
import tensorflow as tf

import files
import quiet


def overrides():
    """The speed switches set in the environment, each True, False or None (unset): xla (GPT2_XLA), copies
    (GPT2_TRANSPOSED_COPIES), trial (GPT2_KERNEL_TRIAL)."""
    read = lambda name: {'0': False, '1': True}.get(os.environ.get(name, ''))
    return {'xla': read('GPT2_XLA'), 'copies': read('GPT2_TRANSPOSED_COPIES'), 'trial': read('GPT2_KERNEL_TRIAL')}


# --- CPU probes -------------------------------------------------------------------------------------------

def on_gpu():
    return bool(tf.config.list_logical_devices('GPU'))


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX; Linux flags)."""
    return bool({'avx512_bf16', 'amx_bf16'} & files._cpu_flags())


def free_memory():
    """Bytes of memory available now (Linux), or 0 where that cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_xla = []


def xla_available():
    """Whether this TensorFlow compiles with XLA (tried once, on a tiny function)."""
    if not _xla:
        try:
            with tf.init_scope():   # eagerly, also when first asked while a function is traced
                tf.function(lambda x: x + 1, jit_compile=True)(tf.zeros([1])).numpy()
            _xla.append(True)
        except (tf.errors.OpError, ValueError, NotImplementedError):
            _xla.append(False)
    return _xla[0]


def nbytes(w):
    return int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size


# --- weights in other layouts -------------------------------------------------------------------------------

def layout_matmul(fallback, plain=None, output_major=None, barrier=True):
    """A matmul hook f(x, params, name) (model.plain_matmul's signature) that multiplies x [rows, nx] by the
    matrix `name` as laid out here: output_major {name: w_t [nf, nx]} as w_t @ x^T (for a few rows XLA's
    CPU matmul is fastest with the weight as the left operand), plain {name: w [nx, nf]} as x @ w, and the
    rest by fallback.  barrier: keep XLA from folding the result's transpose back into the matmul (which
    would undo the layout); off outside XLA, where the barrier has no kernel."""
    plain, output_major = plain or {}, output_major or {}

    def matmul(x, params, name):
        if name in output_major:
            y = tf.matmul(output_major[name], x, transpose_b=True)                           # [nf, rows]
            return tf.transpose(_barrier(y) if barrier else y)
        if name in plain:
            return x @ plain[name]
        return fallback(x, params, name)
    return matmul


# XLA's own ops, which TensorFlow 2.21 exports only from an internal module (its tf.raw_ops has neither
# XlaOptimizationBarrier nor XlaDynamicUpdateSlice); used in steps compiled with XLA only.
def _xla_ops():
    try:
        from tensorflow.compiler.tf2xla.python import xla as xla_ops
    except ImportError:
        return None
    return xla_ops


def _barrier(x):
    """XLA's optimization barrier: x, which XLA may not fuse with what follows (x itself without the op)."""
    ops = _xla_ops()
    return x if ops is None else ops.optimization_barrier(x)[0]


def apart(x):
    """x, computed before what consumes it: XLA on a CPU fuses cheap element-wise producers into a
    matrix-vector product and recomputes them for each of its outputs (a quantised activation row, once
    per logit); a conditional it cannot fold (both branches x) makes it compute them once."""
    return tf.cond(tf.reduce_any(x[:1] != 0), lambda: x, lambda: x)


def update_slice(buffer, value, index):
    """buffer with value written at index (one int32 scalar per axis), under XLA: a dynamic-update-slice,
    in place where XLA can."""
    return _xla_ops().dynamic_update_slice(buffer, value, tf.stack([tf.cast(i, tf.int32) for i in index]))


def as_matrix_t(w):
    """The transpose of a weight as a matrix: [nf, nx] of a conv1d weight [1, nx, nf]; [nx, nf] of a 2-D [nf, nx]."""
    return tf.transpose(w[0] if w.shape.rank == 3 else w)


_copies = {}   # ids of the source tensors -> their transposed copies; emptied as the sources are freed
_copies_lock = threading.Lock()


def transposed(params, names):
    """{name: as_matrix_t(params[name])} for frozen weights, each copy made once and kept exactly as long as
    its source tensor lives (or until drop_transposed)."""
    copies = {}
    for name in names:
        w = params[name]
        with _copies_lock:
            copy = _copies.get(id(w))
        if copy is None:
            copy = as_matrix_t(w)
            with _copies_lock:
                if id(w) not in _copies:
                    _copies[id(w)] = copy
                    weakref.finalize(w, _copies.pop, id(w), None)
                copy = _copies[id(w)]
        copies[name] = copy
    return copies


def drop_transposed(params, names):
    """Forget the copies of these weights (their memory goes when no step holds them)."""
    with _copies_lock:
        for name in names:
            _copies.pop(id(params[name]), None)


def has_transposed(w):
    with _copies_lock:
        return id(w) in _copies


# --- the compiled-call shortcut -----------------------------------------------------------------------------

class Compiled:
    """fn(weights, state, *rest) as a tf.function traced once for all batch and buffer sizes (per structure
    of weights), called with its arguments flattened in advance: a tf.function call binds each argument
    in Python, tens of microseconds apiece, and the weights are over a hundred arguments.

    specs: the TensorSpecs of `rest`."""

    def __init__(self, fn, jit, specs):
        self.function = tf.function(fn, autograph=False, jit_compile=jit or None)
        self.specs = specs
        self._concrete = {}
        self._lock = threading.Lock()

    def bind(self, weights, state):
        """This step for one call's weights and state: a function of the remaining arguments."""
        structure = tuple((tuple(path), tuple(v.shape), v.dtype, isinstance(v, tf.Variable))
                          for path, v in _flatten_with_paths(weights))
        with self._lock:
            if structure not in self._concrete:
                self._concrete[structure] = self.function.get_concrete_function(weights, state, *self.specs)
            concrete = self._concrete[structure]
        call_flat = getattr(concrete, '_call_flat', None)   # private TensorFlow API (2.16-2.21)
        if call_flat is None or list(inspect.signature(call_flat).parameters) != ['tensor_inputs', 'captured_inputs']:
            return lambda *rest: self.function(weights, state, *rest)   # the public call, a little slower
        head = [a.handle if isinstance(a, tf.Variable) else a for a in tf.nest.flatten((weights, state))]
        captured = concrete.captured_inputs
        return lambda *rest: call_flat(head + list(rest), captured)   # see the class docstring

    def experimental_get_tracing_count(self):
        return self.function.experimental_get_tracing_count()


def _flatten_with_paths(tree, path=()):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _flatten_with_paths(tree[k], path + (k,))
    else:
        yield path, tree


# --- the timed choice ---------------------------------------------------------------------------------------

def fastest(forms, run, rounds=3):
    """The form whose run(form) (a call that returns when its work is done) took least time: each form run
    once untimed (it may compile), then `rounds` times, interleaved, best of each.  Returns (form, {form:
    seconds})."""
    for form in forms:
        run(form)
    best = {form: float('inf') for form in forms}
    for _ in range(rounds):
        for form in forms:
            t = time.perf_counter()
            run(form)
            best[form] = min(best[form], time.perf_counter() - t)
    return min(best, key=best.get), best


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def compiling():
    """Around a call that may compile a step (or load it from the compile cache, files.use_compile_cache):
    the cache's read noise (quiet.COMPILE_CACHE_NOISE) is kept off stderr; every other line passes."""
    if 'tf_xla_persistent_cache_directory' not in os.environ.get('TF_XLA_FLAGS', '') or not quiet.wanted():
        yield
        return
    with _stderr_lock, quiet.stderr_without(quiet.COMPILE_CACHE_NOISE):
        yield
