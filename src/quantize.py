"""8-bit weights (--precision int8): the matrices quantised symmetrically per output channel when a
checkpoint is loaded; model.int8_matmul quantises the activations per row at each matmul and multiplies
int8 x int8 with int32 sums.  The checkpoint on disk is unchanged; the rest (biases, LayerNorm, wpe, the
keys and values) stays float32.

A quantised matrix `name` is held output-major, q int8 [nf, nx] (wte: [n_vocab, n_embd], as stored), with
its scales float32 [nf] under name + model.SCALE: column j of the original is about q[j] * scale[j].
model.plain_matmul and model.embed read that form wherever they meet an int8 weight, so every consumer
of model.model runs it unchanged.  docs/sampling.md gives the accuracy measured, docs/benchmarks.md the speed.
"""
import tensorflow as tf

import model
import speed


def is_matrix(name, shape):
    """Whether the weight `name` of this shape is quantised: the blocks' conv1d weights [1, nx, nf] and wte."""
    return len(shape) == 3 or name.rsplit('/', 1)[-1] == 'wte'


CHUNK = 1 << 20   # quantise this many weights at a time, so the float32 temporaries stay small


def quantize(w):
    """(q int8 [nf, nx], scale float32 [nf]) of a matrix given as [1, nx, nf] (conv1d) or [nf, nx] (wte):
    scale[j] = max_i |w[i, j]| / 127 (1 for an all-zero channel), q = round(w / scale)."""
    w_t = tf.transpose(tf.cast(w[0], tf.float32)) if w.shape.rank == 3 else tf.cast(w, tf.float32)   # [nf, nx]
    rows = max(1, CHUNK // w_t.shape[1])
    parts = [_rows(w_t[i:i + rows]) for i in range(0, w_t.shape[0], rows)]
    return tf.concat([q for q, _ in parts], 0), tf.concat([scale for _, scale in parts], 0)


def _rows(w_t):
    top = tf.reduce_max(tf.abs(w_t), axis=1)
    scale = tf.where(top > 0, top / 127, 1.0)
    return tf.cast(tf.clip_by_value(tf.round(w_t / scale[:, None]), -127, 127), tf.int8), scale


def xla_matmul(x, params, name):
    """model.plain_matmul for a step compiled with XLA on a CPU: int8 weights with their activations
    quantised apart from the matmul (speed.apart)."""
    w = params[name]
    if w.dtype == tf.int8:
        return model.int8_matmul(x, w, params[name + model.SCALE], speed.apart)
    return model.plain_matmul(x, params, name)


_int8_matmul = tf.function(model.int8_matmul, jit_compile=True, autograph=False, reduce_retracing=True)


def compiled_matmul(x, params, name):
    """model.plain_matmul for passes that run eagerly or as a plain graph (prompt passes, eval, scoring):
    an int8 weight's matmul compiled with XLA, whose int8 dot is about 3x TensorFlow's own int8 kernel
    at a few hundred rows (where XLA is available; else TensorFlow's)."""
    w = params[name]
    if w.dtype == tf.int8 and speed.xla_available():
        return _int8_matmul(x, w, params[name + model.SCALE])
    return model.plain_matmul(x, params, name)
