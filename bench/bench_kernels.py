#!/usr/bin/env python3
"""The candidate forms of one decode step, timed side by side on this machine (124M shape by default).

    python bench/bench_kernels.py                     # fp32 and bf16, batch 1 and 8
    python bench/bench_kernels.py --dtypes float32 --batch_sizes 1

One decode step is what the sampler computes per new token after the prompt: sample.Steps' own step
(decode.step over model.model: each layer writes the previous token's keys and values into its buffer
and attends to the buffer and the new token; the final norm, the logits and a greedy draw).  The forms
are the sampler's:
  graph       a plain tf.function (TensorFlow's own kernels, oneDNN on x86); the logits on a transposed
              [n_embd, n_vocab] copy of wte
  xla         tf.function(jit_compile=True) on the checkpoint's tensors; the logits as wte @ h^T
  xla+copies  XLA with the blocks' matmuls on transposed [nf, nx] copies as w^T @ x^T behind a barrier
              (speed.layout_matmul), which cost the blocks' size again
A second table times the logits layer alone in each layout.

The floor is the step's matmuls alone (48 block matmuls chained, then the logits), the best of
graph and XLA and of the three layouts: what no form of the step can beat on this machine.
Times are the median of --steps calls, the best of --rounds rounds with every form in each round.
"""
import argparse
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'src'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


DTYPES = ('float32', 'bfloat16')   # the weight precisions weights() and floor() time (bench_sampling asks)


def cpu_model():
    """The CPU's model name (lscpu's 'Model name'), and whether it has AVX512-BF16 / AMX."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model name' and name in (platform.processor(), platform.machine()):
                    name = value.strip()
                elif key.strip() == 'flags':
                    flags = set(value.split())
                    break
    except OSError:
        pass
    extras = [f for f in ('avx512f', 'avx512_bf16', 'amx_bf16', 'avx512_fp16') if f in flags]
    return f'{name} ({", ".join(extras) if extras else "no AVX-512"})'


def weights(hparams, dtype, seed=0):
    """Random weights of the checkpoint's shapes in dtype (LayerNorm parameters float32, as checkpoint.load)."""
    import numpy as np
    import tensorflow as tf
    import checkpoint
    import model
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in checkpoint.param_shapes(hparams).items():
        value = (np.ones(shape, np.float32) if name.endswith('/g') else
                 rng.standard_normal(shape, np.float32) * 0.02)
        out[name] = tf.cast(value, tf.float32 if model.stays_float32(name) else dtype)
    return out


def block_weights(params):
    return sorted(k for k in params if k.startswith('model/h') and k.endswith('/w'))


LAYOUTS = ('stored', 'views', 'copies')


class _View:
    """A 2-D weight [nx, nf] where model.conv1d expects the checkpoint's [1, nx, nf]: w[0] is the matrix."""

    def __init__(self, w):
        self.w = w

    def __getitem__(self, index):
        return self.w


class _OutputMajor:
    """A weight w [nx, nf] held as w_t = w^T [nf, nx], for `x @ w[0]` under XLA: w_t @ x^T behind a barrier
    (speed.layout_matmul's output-major form)."""

    def __init__(self, w_t):
        self.w_t = w_t

    def __getitem__(self, index):
        return self

    def __rmatmul__(self, x):
        import speed
        return speed.layout_matmul(None, output_major={'w': self.w_t})(x, {}, 'w')


class _TransposedB:
    """A weight w [nx, nf] held as a copy w_t = w^T [nf, nx], for model.conv1d's `x @ w[0]` in a plain graph:
    tf.matmul(x, w_t, transpose_b=True)."""

    def __init__(self, w_t):
        self.w_t = w_t

    def __getitem__(self, index):
        return self

    def __rmatmul__(self, x):       # x [rows, nx] -> [rows, nf]
        import tensorflow as tf
        return tf.matmul(x, self.w_t, transpose_b=True)


def blocks_in_layout(params, xla, layout):
    """(params with the blocks' weights in layout, extra bytes): 'stored' as they are, 'views' as 2-D
    [nx, nf] reshapes (no copy), 'copies' as transposed [nf, nx] copies (_OutputMajor under XLA,
    _TransposedB in a graph); each is what model.conv1d's `x @ w[0]` takes."""
    import tensorflow as tf
    import sample
    p, extra = dict(params), 0
    for k in block_weights(params):
        w = params[k]
        if layout == 'views':
            p[k] = _View(tf.reshape(w, w.shape[1:]))
        elif layout == 'copies':
            w_t = tf.transpose(w[0])
            p[k] = _OutputMajor(w_t) if xla else _TransposedB(w_t)
            extra += w.shape.num_elements() * w.dtype.size
    return p, extra


FORMS = {'graph': (False, False), 'xla': (True, False), 'xla+copies': (True, True)}   # sample.Steps' (xla, copies)


def step_function(hparams, params, batch, capacity, form):
    """(step, extra bytes, buffers): step(*args) -> (greedy tokens [batch], pending), the sampler's own
    one-token step (sample.Steps: decode.step over model.model, then the greedy draw) in this form, on
    buffers of `capacity` slots; extra: the bytes of the weight copies the form multiplies with."""
    import tensorflow as tf
    import sample
    dtype = params['model/wte'].dtype
    steps = sample.steps_for(hparams, dtype)
    import decode
    settings = decode.Draw(0.0, 0, 1.0)   # greedy
    weights = steps.prepare(params, form, settings)
    extra = sum(w.shape.num_elements() * w.dtype.size for group in ('plain', 'output_major')
                for k, w in weights[group].items() if w is not params[k])
    buffers = steps.new_buffers()
    heads, hd = hparams['n_head'], hparams['n_embd'] // hparams['n_head']
    for b in tf.nest.flatten(buffers):
        b.assign(tf.zeros([batch, heads, capacity, hd], dtype))
    return steps._bind(weights, buffers, settings, form), extra, buffers


def matmul_chain(hparams, params, rows, xla, layout):
    """The step's matmuls alone: per block c_attn, c_proj, c_fc, mlp c_proj chained, then the logits."""
    import tensorflow as tf
    import speed
    p, _ = blocks_in_layout(params, xla, layout)
    wte_t = None if xla else tf.transpose(params['model/wte'])
    e = hparams['n_embd']

    def mm(x, w):
        y = x @ w[0]   # as model.conv1d
        if xla:   # behind a barrier: an add or slice that XLA fuses into a matmul makes it several times slower
            y = speed._barrier(y)
        return y

    def first_columns(y):
        return y[:, :e]

    def chain(x):                                                                        # x [rows, n_embd]
        for layer in range(hparams['n_layer']):
            s = f'model/h{layer}'
            a = first_columns(mm(x, p[s + '/attn/c_attn/w']))
            x = x + mm(a, p[s + '/attn/c_proj/w'])
            x = x + mm(mm(x, p[s + '/mlp/c_fc/w']), p[s + '/mlp/c_proj/w'])
        if wte_t is None:
            return x @ _OutputMajor(p['model/wte'])
        return tf.matmul(x, wte_t)

    dtype = params['model/wte'].dtype
    return tf.function(chain, autograph=False, jit_compile=xla or None,
                       input_signature=[tf.TensorSpec([rows, e], dtype)])


def logits_function(params, rows, xla, layout):
    """The logits layer alone: 'transpose_b' (wte as stored), 'copy' (a [n_embd, n_vocab] copy) or
    'vocab_major' (wte @ h^T behind a barrier; XLA only)."""
    import tensorflow as tf
    wte = params['model/wte']
    if layout == 'copy':
        wte_t = tf.transpose(wte)
        f = lambda h: tf.matmul(h, wte_t)
    elif layout == 'vocab_major':
        f = lambda h: h @ _OutputMajor(wte)
    else:
        f = lambda h: tf.matmul(h, wte, transpose_b=True)
    return tf.function(f, autograph=False, jit_compile=xla or None,
                       input_signature=[tf.TensorSpec([rows, wte.shape[1]], wte.dtype)])


def timed(fns, steps, rounds):
    """{name: best-of-rounds median seconds per call} for {name: (fn, args)}; every fn in every round."""
    best = {name: float('inf') for name in fns}
    for _ in range(rounds):
        for name, (fn, args) in fns.items():
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                _numpy(fn(*args))
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], statistics.median(times))
    return best


def _numpy(out):
    """Wait for a result (a tensor or a tuple of them, as the steps return) by reading it."""
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else [out]) if t is not None]


def first_call(fn, args):
    t0 = time.perf_counter()
    _numpy(fn(*args))
    return time.perf_counter() - t0


def floor(hparams, params, rows, steps=10, rounds=3):
    """{form: seconds} for the step's matmuls alone in each of graph/XLA x layouts; min() is the floor."""
    import tensorflow as tf
    x = tf.cast(tf.random.stateless_normal([rows, hparams['n_embd']], [1, 2]) * 0.1, params['model/wte'].dtype)
    fns = {f'{"xla" if xla else "graph"}+{layout}': (matmul_chain(hparams, params, rows, xla, layout), (x,))
           for xla in (False, True) for layout in LAYOUTS}
    for fn, args in fns.values():
        fn(*args)
    return timed(fns, steps, rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--batch_sizes', default='1,8')
    ap.add_argument('--dtypes', default=','.join(DTYPES))
    ap.add_argument('--capacity', type=int, default=192, help='cache slots (prompt 32 + 128 new, rounded to 64)')
    ap.add_argument('--pos', type=int, default=96, help='the position decoded (how much cache is attended)')
    ap.add_argument('--steps', type=int, default=15, help='calls per form per round (median kept)')
    ap.add_argument('--rounds', type=int, default=3, help='rounds over all forms (best kept)')
    ap.add_argument('--hparams', default='{}', help='JSON overrides of the 124M hyperparameters')
    ap.add_argument('--threads', type=int, default=0, help='TensorFlow threads (0: its default)')
    args = ap.parse_args()

    import json
    import tensorflow as tf
    import model
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    hparams = model.default_hparams().override_from_dict(json.loads(args.hparams))
    print(f'CPU: {cpu_model()}; TensorFlow {tf.__version__}; {os.cpu_count()} cores')
    print(f'shape {dict(hparams)}, capacity {args.capacity}, position {args.pos}; '
          f'median of {args.steps} calls, best of {args.rounds} rounds')
    for dtype_name in args.dtypes.split(','):
        dtype = tf.as_dtype(dtype_name)
        params = weights(hparams, dtype)
        block_bytes = sum(params[k].shape.num_elements() for k in block_weights(params)) * dtype.size
        for batch in [int(b) for b in args.batch_sizes.split(',')]:
            heads = hparams['n_head']
            pending = tf.zeros([batch, hparams['n_layer'], 2, heads, 1, hparams['n_embd'] // heads], dtype)
            step_args = (pending, tf.zeros([batch], tf.int32), tf.constant(args.pos), tf.zeros([batch], tf.int32),
                         tf.constant([0, 0]), None)
            steps, extra, compile_s, caches = {}, {}, {}, []
            for name, form in FORMS.items():
                fn, extra[name], cache = step_function(hparams, params, batch, args.capacity, form)
                caches.append(cache)
                compile_s[name] = first_call(fn, step_args)
                steps[name] = (fn, step_args)
            h = tf.cast(tf.random.stateless_normal([batch, hparams['n_embd']], [3, 4]), dtype)
            logit_fns = {}
            for xla in (False, True):
                for layout in ('transpose_b', 'copy') + (('vocab_major',) if xla else ()):
                    fn = logits_function(params, batch, xla, layout)
                    fn(h)
                    logit_fns[f'{"xla" if xla else "graph"}:{layout}'] = (fn, (h,))
            step_times = timed(steps, args.steps, args.rounds)
            logit_times = timed(logit_fns, args.steps, args.rounds)
            floors = floor(hparams, params, batch, args.steps, args.rounds)
            best_floor = min(floors.values())
            print(f'\n{dtype_name}, batch {batch}: matmul floor {best_floor * 1e3:.1f} ms '
                  f'({", ".join(f"{k} {v * 1e3:.1f}" for k, v in floors.items())}); blocks\' weights '
                  f'{block_bytes / 2**20:.0f} MiB')
            print(f'  {"form":<14} {"ms/step":>8} {"tok/s":>7} {"of floor":>9} {"first call s":>13} {"extra MiB":>10}')
            for name, t in step_times.items():
                print(f'  {name:<14} {t * 1e3:>8.1f} {batch / t:>7.1f} {best_floor / t:>8.0%} '
                      f'{compile_s[name]:>13.2f} {extra[name] / 2**20:>10.0f}')
            print('  logits alone: ' + ', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in logit_times.items()))
            del steps, logit_fns, caches


if __name__ == '__main__':
    main()
