#!/usr/bin/env python3
"""The candidate forms of one decode step, timed side by side on this machine (124M shape by default).

    python bench/bench_kernels.py                     # fp32 and bf16, batch 1 and 8
    python bench/bench_kernels.py --dtypes float32 --batch_sizes 1

One decode step is what the sampler computes per new token after the prompt: the 12 blocks on one
position per row, each writing its key and value into a [batch, heads, capacity, head_dim] cache and
attending to it, the final norm, the logits and a greedy draw.  The forms differ in
  compiler  xla: tf.function(jit_compile=True);  graph: a plain tf.function (TensorFlow's own
            kernels, oneDNN on x86)
  layout    stored: the blocks' matmuls read the checkpoint's [1, nx, nf] tensors (reshaped to
            [nx, nf] inside the step, as model.conv1d does);  views: 2-D [nx, nf] views of them made
            once, eagerly (a reshape shares the buffer: no memory);  copies: transposed [nf, nx] copies
            (under XLA as w^T @ x^T behind a barrier, sample._output_major; in a graph as
            tf.matmul(x, w^T, transpose_b=True)), which cost the blocks' size again
  dtype     the weights' (and the cache's) precision; norms, softmax and logits stay float32
The logits use, as sample.Decoder does: under XLA wte itself as the output-major left operand; in a
graph a transposed [n_embd, n_vocab] copy of wte (a copy of wte's size).  A second table times the
logits layer alone in each layout.

The floor is the step's matmuls alone (48 block matmuls chained, then the logits), the best of
graph and XLA and of both layouts: what no form of the step can beat on this machine.
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
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in checkpoint.param_shapes(hparams).items():
        value = (np.ones(shape, np.float32) if name.endswith('/g') else
                 rng.standard_normal(shape, np.float32) * 0.02)
        out[name] = tf.cast(value, tf.float32 if '/ln_' in name else dtype)
    return out


def block_weights(params):
    return sorted(k for k in params if k.startswith('model/h') and k.endswith('/w'))


LAYOUTS = ('stored', 'views', 'copies')


def blocks_in_layout(params, xla, layout):
    """(params with the blocks' weights in layout, extra bytes): 'stored' as they are, 'views' as 2-D
    [nx, nf] reshapes (no copy), 'copies' as functions x -> x @ w over a transposed [nf, nx] copy."""
    import tensorflow as tf
    import sample
    p, extra = dict(params), 0
    for k in block_weights(params):
        w = params[k]
        if layout == 'views':
            p[k] = tf.reshape(w, w.shape[1:])
        elif layout == 'copies':
            w_t = tf.transpose(w[0])
            p[k] = sample._output_major(w_t) if xla else (lambda x, w_t=w_t: tf.matmul(x, w_t, transpose_b=True))
            extra += w.shape.num_elements() * w.dtype.size
    return p, extra


def step_function(hparams, params, batch, capacity, xla, layout):
    """(step, extra bytes): step(tokens [batch], pos) -> greedy tokens [batch], one decode step in this form."""
    import tensorflow as tf
    import model
    import sample
    dtype = params['model/wte'].dtype
    p, extra = blocks_in_layout(params, xla, layout)
    wte_t = None if xla else tf.transpose(params['model/wte'])
    if wte_t is not None:
        extra += wte_t.shape.num_elements() * dtype.size
    heads, hd = hparams['n_head'], hparams['n_embd'] // hparams['n_head']
    caches = [[tf.Variable(tf.zeros([batch, heads, capacity, hd], dtype)) for _ in range(2)]
              for _ in range(hparams['n_layer'])]

    def write(var, new, pos):
        if xla:
            from tensorflow.compiler.tf2xla.python import xla as xla_ops
            zero = tf.zeros([], tf.int32)
            updated = xla_ops.dynamic_update_slice(var.read_value(), new, tf.stack([zero, zero, pos, zero]))
            var.assign(updated)
            return updated
        var[:, :, pos:pos + 1].assign(new)
        return var.read_value()

    def step(tokens, pos):
        mask = tf.range(capacity)[None, :] <= pos                                         # [1, capacity]
        x = tf.gather(p['model/wte'], tokens[:, None]) + tf.gather(p['model/wpe'], pos[None])[None]
        for layer in range(hparams['n_layer']):
            k_var, v_var = caches[layer]
            hook = lambda k, v, k_var=k_var, v_var=v_var: (write(k_var, k, pos), write(v_var, v, pos), mask)
            x, _ = model.block(x, p, f'model/h{layer}', heads, cache=hook)
        last = model.norm(x[:, -1], p['model/ln_f/g'], p['model/ln_f/b'])                 # [batch, n_embd]
        if xla:
            logits = sample._output_major(p['model/wte'])(last)
        else:
            logits = tf.matmul(last, wte_t)
        return tf.argmax(tf.cast(logits, tf.float32), axis=-1, output_type=tf.int32)

    fn = tf.function(step, autograph=False, jit_compile=xla or None,
                     input_signature=[tf.TensorSpec([batch], tf.int32), tf.TensorSpec([], tf.int32)])
    return fn, extra


def matmul_chain(hparams, params, rows, xla, layout):
    """The step's matmuls alone: per block c_attn, c_proj, c_fc, mlp c_proj chained, then the logits."""
    import tensorflow as tf
    p, _ = blocks_in_layout(params, xla, layout)
    wte_t = None if xla else tf.transpose(params['model/wte'])
    e = hparams['n_embd']

    def mm(x, w):
        y = w(x) if callable(w) else tf.matmul(x, tf.reshape(w, w.shape[-2:]))
        if xla:   # behind a barrier: an add or slice that XLA fuses into a matmul makes it several times slower
            from tensorflow.compiler.tf2xla.python import xla as xla_ops
            y = xla_ops.optimization_barrier(y)[0]
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
            import sample
            return sample._output_major(p['model/wte'])(x)
        return tf.matmul(x, wte_t)

    dtype = params['model/wte'].dtype
    return tf.function(chain, autograph=False, jit_compile=xla or None,
                       input_signature=[tf.TensorSpec([rows, e], dtype)])


def logits_function(params, rows, xla, layout):
    """The logits layer alone: 'transpose_b' (wte as stored), 'copy' (a [n_embd, n_vocab] copy) or
    'vocab_major' (wte @ h^T behind a barrier; XLA only)."""
    import tensorflow as tf
    import sample
    wte = params['model/wte']
    if layout == 'copy':
        wte_t = tf.transpose(wte)
        f = lambda h: tf.matmul(h, wte_t)
    elif layout == 'vocab_major':
        f = sample._output_major(wte)
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
                out = fn(*args)
                out.numpy()
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], statistics.median(times))
    return best


def first_call(fn, args):
    t0 = time.perf_counter()
    fn(*args).numpy()
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
    ap.add_argument('--dtypes', default='float32,bfloat16')
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
            tokens, pos = tf.zeros([batch], tf.int32), tf.constant(args.pos)
            steps, extra, compile_s = {}, {}, {}
            for xla in (False, True):
                for layout in LAYOUTS:
                    name = f'{"xla" if xla else "graph"}+{layout}'
                    fn, extra[name] = step_function(hparams, params, batch, args.capacity, xla, layout)
                    compile_s[name] = first_call(fn, (tokens, pos))
                    steps[name] = (fn, (tokens, pos))
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
            del steps, logit_fns


if __name__ == '__main__':
    main()
