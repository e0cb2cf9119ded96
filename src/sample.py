"""Sampling from GPT-2: truncation of the logits (top-k, nucleus) and a fast cached decoder.

The decoder keeps a key/value cache of each layer in a preallocated buffer that is written in place
(one slot per new token), runs the prompt through the model in a single eager pass, and compiles the
one-token step (with XLA where available, the greedy or top-k draw included) once per batch size and
buffer size, reused across calls.
"""
import os
import secrets

import numpy as np
import tensorflow as tf

import model


class SampleError(ValueError):
    """Sampling settings or a context that cannot be used, with the fix."""


def top_k_logits(logits, k):
    """Keep the k largest logits of each row (ties with the k-th included); k=0 keeps all."""
    if k == 0:
        return logits
    k = min(int(k), logits.shape[-1])
    kth = tf.math.top_k(logits, k=k, sorted=True).values[..., -1:]
    return tf.where(logits < kth, tf.cast(-1e10, logits.dtype), logits)


def top_p_logits(logits, p):
    """Nucleus truncation (Holtzman et al. 2019) of each row: keep the smallest set of most likely
    tokens whose probability adds up to at least p; p=1 keeps all.  Works for any batch size."""
    if p >= 1:
        return logits
    sorted_logits = tf.sort(logits, axis=-1, direction='DESCENDING')
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1, exclusive=True)
    n_keep = tf.reduce_sum(tf.cast(mass_before < p, tf.int32), axis=-1, keepdims=True)   # >= 1
    lowest_kept = tf.gather(sorted_logits, tf.maximum(n_keep, 1) - 1, batch_dims=logits.shape.rank - 1)
    return tf.where(logits < lowest_kept, tf.cast(-1e10, logits.dtype), logits)


def check_settings(temperature=1, top_k=0, top_p=1):
    """Validate sampling settings, returning them as (float, int, float)."""
    def number(name, value, kind):
        if isinstance(value, bool) or not isinstance(value, kind):
            raise SampleError(f'{name} must be a number, got {value!r}')
        return value
    temperature = float(number('temperature', temperature, (int, float)))
    if not np.isfinite(temperature) or temperature < 0:
        raise SampleError(f'temperature must be >= 0 (0 means greedy), got {temperature}')
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise SampleError(f'top_k must be an integer >= 0 (0 means no top-k truncation), got {top_k!r}')
    top_p = float(number('top_p', top_p, (int, float)))
    if not 0 < top_p <= 1:
        raise SampleError(f'top_p must be in (0, 1] (1 means no nucleus truncation), got {top_p}')
    return temperature, int(top_k), top_p


class Decoder:
    """A compiled, cached GPT-2 decoder for one set of weights.

    `params` may hold tensors or tf.Variables; variables are read at every step, so a decoder built
    during training samples from the current weights.
    """

    def __init__(self, hparams, params, xla=None):
        self.hparams, self.params = hparams, params
        wte = params['model/wte']
        frozen = not any(isinstance(w, tf.Variable) for w in params.values())
        # Frozen weights: a [n_embd, n_vocab] copy makes the logits matmul (the largest one) ~1.3-1.9x faster.
        self.wte_t = tf.transpose(wte) if frozen else None
        n, heads = hparams['n_layer'], hparams['n_head']
        # Per layer: keys and values [batch, heads, capacity, head_dim], reallocated by prefill(), in the
        # weights' precision (what the blocks compute keys and values in).
        shape = tf.TensorShape([None, heads, None, hparams['n_embd'] // heads])
        empty = tf.zeros([0] + shape[1:2].as_list() + [0] + shape[3:].as_list(), wte.dtype)
        self.k_cache = [tf.Variable(empty, shape=shape, trainable=False) for _ in range(n)]
        self.v_cache = [tf.Variable(empty, shape=shape, trainable=False) for _ in range(n)]
        # The prompt pass runs eagerly: its matmuls are large, and tracing and optimising a graph for it
        # would cost more than a second before the first token.  The one-token step that follows is
        # compiled, with XLA where available (once per batch size and cache capacity; 1.3-1.6x faster on
        # CPU than a plain graph), else as a graph traced once for all shapes.
        # bfloat16 weights on a CPU with bfloat16 instructions run the step as a plain graph (oneDNN), which
        # is several times faster there than XLA; without them, oneDNN's bfloat16 path is far slower and
        # XLA with the transposed copies is the fastest form measured (docs/benchmarks.md).
        cpu = not tf.config.list_logical_devices('GPU')
        graph = cpu and wte.dtype == tf.bfloat16 and cpu_has_bfloat16()
        self.xla = (xla_available() and not graph) if xla is None else xla
        self._frozen, self._step_params = frozen, None
        # The output-major matmuls (_output_major) were measured faster with XLA on CPU only; GPUs keep the
        # plain form.
        self.output_major = self.xla and cpu
        self.step_one = tf.function(lambda tokens, pos: self._step(tokens, pos, xla=self.xla), autograph=False,
                                    jit_compile=self.xla or None, input_signature=[
                                        tf.TensorSpec([None, 1], tf.int32), tf.TensorSpec([], tf.int32)])
        self._compiled = {}

    @property
    def step_params(self):
        """The weights as the compiled step uses them.  Under XLA, the blocks' matmuls run on transposed
        [nf, nx] copies (see _output_major) when the copies, as large as the blocks' weights, fit in memory
        with room to spare (GPT2_TRANSPOSED_COPIES=0: never).  Made on first use, i.e. when the step is
        first traced, after the first token."""
        if self._step_params is None:
            self._step_params = self.params
            blocks = [k for k in self.params if k.endswith('/w') and k.startswith('model/h')]
            size = sum(self.params[k].shape.num_elements() * self.params[k].dtype.size for k in blocks)
            if (self.output_major and self._frozen and os.environ.get('GPT2_TRANSPOSED_COPIES', '1') != '0'
                    and 2 * size < _free_memory()):
                with tf.init_scope():   # made eagerly, once, even when first asked for while tracing
                    copies = {k: _output_major(tf.transpose(self.params[k][0])) for k in blocks}
                self._step_params = dict(self.params, **copies)
        return self._step_params

    def prefill(self, tokens, capacity):
        """Start a sequence: feed the prompt tokens [batch, n] at positions 0..n-1 into fresh caches of
        `capacity` slots; returns the last position's logits [batch, n_vocab]."""
        n = tokens.shape[1]

        def cache(layer):
            def fill(k, v):   # k, v [batch, heads, n, hd] become the first n slots; the prompt attends to itself
                for buffer, new in ((self.k_cache[layer], k), (self.v_cache[layer], v)):
                    buffer.assign(tf.pad(new, [[0, 0], [0, 0], [0, capacity - n], [0, 0]]))
                return k, v, None   # no mask given: causal over the n prompt positions
            return fill
        return self._forward(tokens, 0, cache)

    def _step(self, tokens, pos, xla, vocab_major=False):
        """Feed tokens [batch, n] at positions pos..pos+n-1 after the cached ones; returns the last
        position's logits [batch, n_vocab] (see _forward for vocab_major)."""
        n = tf.shape(tokens)[1]
        capacity = tf.shape(self.k_cache[0])[2]
        # Query i (at pos + i) sees cache slots j <= pos + i; later slots hold zeros or stale keys.
        mask = tf.range(capacity)[None, :] <= pos + tf.range(n)[:, None]                      # [n, capacity]

        def cache(layer):   # k, v: [batch, heads, n, hd] -> the whole buffers [.., capacity, hd]
            return lambda k, v: (_write(self.k_cache[layer], k, pos, xla),
                                 _write(self.v_cache[layer], v, pos, xla), mask)
        return self._forward(tokens, pos, cache, self.step_params if xla else self.params, vocab_major)

    def _forward(self, tokens, pos, cache, params=None, vocab_major=False):
        """The model on tokens [batch, n] at positions pos.., with cache(layer) as each block's cache hook;
        returns the last position's logits float32 [batch, n_vocab], whatever the weights' precision.

        vocab_major (under XLA only): the logits are computed as wte @ last^T (_output_major), the operand
        order in which XLA's CPU matmul is fastest for a few rows (~8 ms instead of ~12 at batch 8).  It
        pays when the draw follows in the same computation; returning logits made this way is slower."""
        h, p = self.hparams, params or self.params
        x = tf.gather(p['model/wte'], tokens) + tf.gather(p['model/wpe'], pos + tf.range(tf.shape(tokens)[1]))[None]
        for layer in range(h['n_layer']):
            x, _ = model.block(x, p, f'model/h{layer}', h['n_head'], cache=cache(layer))
        last = model.norm(x[:, -1], p['model/ln_f/g'], p['model/ln_f/b'])                    # [batch, n_embd]
        if vocab_major:
            logits = _output_major(p['model/wte'])(last)     # wte [n_vocab, n_embd] is already output-major
        elif self.wte_t is not None:
            logits = tf.matmul(last, self.wte_t)
        else:
            logits = tf.matmul(last, p['model/wte'], transpose_b=True)
        return tf.cast(logits, tf.float32)

    def chooser(self, temperature, top_k, top_p):
        """A compiled function (logits [batch, n_vocab], seed [2]) -> next tokens int32 [batch]."""
        key = (temperature, top_k, top_p)
        if key not in self._compiled:
            self._compiled[key] = tf.function(
                lambda logits, seed: choose(logits, seed, temperature, top_k, top_p), autograph=False,
                input_signature=[tf.TensorSpec([None, self.hparams['n_vocab']], tf.float32),
                                 tf.TensorSpec([2], tf.int32)])
        return self._compiled[key]

    def stepper(self, temperature, top_k, top_p):
        """A function (tokens int32 [batch], pos, seed [2]) -> next tokens int32 [batch]: feeds `tokens` at
        position pos and draws what follows.  Greedy and top-k draws are compiled into the XLA step (one
        call per token, and XLA's top-k is faster than TensorFlow's); a draw from the whole vocabulary
        sorts or samples 50k logits, which XLA on CPU does slower, so that runs after the step."""
        key = ('step', temperature, top_k, top_p)
        if key not in self._compiled:
            if self.xla and (temperature == 0 or top_k > 0):
                def step_and_draw(tokens, pos, seed):
                    logits = self._step(tokens[:, None], pos, xla=True, vocab_major=self.output_major)
                    return choose(logits, seed, temperature, top_k, top_p)
                self._compiled[key] = tf.function(step_and_draw, autograph=False, jit_compile=True, input_signature=[
                    tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32)])
            else:
                pick = self.chooser(temperature, top_k, top_p)
                self._compiled[key] = lambda tokens, pos, seed: pick(self.step_one(tokens[:, None], pos), seed)
        return self._compiled[key]


def choose(logits, seed, temperature, top_k, top_p):
    """Draw the next tokens int32 [batch] from logits [batch, n_vocab] with checked settings and a
    stateless seed [2]: greedy when temperature is 0 or top_k is 1."""
    if temperature == 0 or top_k == 1:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    # Shifted so the largest logit is 0 and floored at -1e10: a tiny temperature (even one that
    # float32 flushes to zero) then leaves the most likely token at 0, never inf or NaN.
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    logits = tf.where(shifted < 0, tf.maximum(shifted / temperature, -1e10), 0.0)
    if top_k:
        values, indices = tf.math.top_k(logits, k=min(top_k, logits.shape[-1]))
        values = top_p_logits(values, top_p)
        pick = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)
        return tf.gather(indices, pick, batch_dims=1)[:, 0]
    if top_p < 1:
        return _nucleus_draw(logits, top_p, seed)
    return tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]


def seed_stream(seed=None):
    """Seeds for successive sample_sequence calls: a fixed seed reproduces a whole session."""
    rng = np.random.default_rng(None if seed is None else abs(int(seed)))
    while True:
        yield int(rng.integers(2**31))


NUCLEUS_CANDIDATES = 1024


def _nucleus_draw(logits, p, seed):
    """A draw from top_p_logits(logits, p) [batch, n_vocab] without sorting the whole vocabulary when,
    as usual, the nucleus of every row lies within its NUCLEUS_CANDIDATES most likely tokens."""
    values, indices = tf.math.top_k(logits, k=min(NUCLEUS_CANDIDATES, logits.shape[-1]))   # [batch, k]
    probs = tf.exp(values - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)

    def within_candidates():
        kept = tf.where(mass_before < p, values, tf.cast(-1e10, values.dtype))
        pick = tf.random.stateless_categorical(kept, 1, seed, dtype=tf.int32)
        return tf.gather(indices, pick, batch_dims=1)[:, 0]

    def whole_vocabulary():
        return tf.random.stateless_categorical(top_p_logits(logits, p), 1, seed, dtype=tf.int32)[:, 0]

    covered = tf.reduce_all(mass_before[:, -1] + probs[:, -1] >= p)
    return tf.cond(covered, within_candidates, whole_vocabulary)


def _output_major(w_t):
    """x [rows, nx] -> x @ w for w_t = w^T [nf, nx], computed as w_t @ x^T: for a few rows, XLA's CPU matmul
    is 15-20% faster with the weight as the left operand.  The barrier (XLA only) keeps XLA from folding
    the transpose of the result back into the matmul, which would undo that."""
    from tensorflow.compiler.tf2xla.python import xla as xla_ops

    def matmul(x):
        return tf.transpose(xla_ops.optimization_barrier(tf.matmul(w_t, x, transpose_b=True))[0])
    return matmul


def _free_memory():
    """Bytes of memory available now (Linux), or 0 where that cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX; Linux flags)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return bool({'avx512_bf16', 'amx_bf16'} & set(line.split(':', 1)[1].split()))
    except OSError:
        pass
    return False


def xla_available():
    """XLA for the one-token step, unless GPT2_XLA=0 or this TensorFlow lacks it."""
    if os.environ.get('GPT2_XLA', '1') == '0':
        return False
    try:
        from tensorflow.compiler.tf2xla.python import xla  # noqa: F401
    except ImportError:
        return False
    return True


def _write(cache, new, pos, xla):
    """Write new [batch, heads, n, hd] into the cache variable at slot pos, in place; return the cache."""
    if xla:
        from tensorflow.compiler.tf2xla.python import xla as xla_ops
        zero = tf.zeros([], tf.int32)
        updated = xla_ops.dynamic_update_slice(cache.read_value(), new, tf.stack([zero, zero, pos, zero]))
        cache.assign(updated)
        return updated
    cache[:, :, pos:pos + tf.shape(new)[2]].assign(new)
    return cache.read_value()


_decoders = []   # the most recent (params, Decoder) pairs, so repeated calls reuse the compiled step


def decoder_for(hparams, params):
    """The cached Decoder for these params (the same dict object), or a new one."""
    for p, d in _decoders:
        if p is params and d.hparams == hparams:
            return d
    d = Decoder(hparams, params)
    _decoders.insert(0, (params, d))
    del _decoders[2:]
    return d


def _context_array(hparams, start_token, batch_size, context):
    """The prompt as int32 [batch, n], validated."""
    if (start_token is None) == (context is None):
        raise SampleError('specify exactly one of start_token or context')
    if start_token is not None:
        if batch_size is None:
            raise SampleError('start_token needs batch_size')
        context = [[start_token]] * int(batch_size)
    if isinstance(context, tf.Tensor):
        context = context.numpy()
    try:
        ctx = np.asarray(context)
    except ValueError:
        raise SampleError('context rows must all have the same length') from None
    if ctx.dtype == object:
        raise SampleError('context rows must all have the same length (pad or group prompts by length)')
    if ctx.ndim == 1:
        ctx = np.tile(ctx[None], [int(batch_size or 1), 1])
    if ctx.ndim != 2:
        raise SampleError(f'context must be [batch, tokens], got shape {ctx.shape}')
    if ctx.size and not np.issubdtype(ctx.dtype, np.integer):
        raise SampleError(f'context must hold integer token ids, got {ctx.dtype}')
    if batch_size is not None and ctx.shape[0] != batch_size:
        raise SampleError(f'context has {ctx.shape[0]} rows but batch_size is {batch_size}')
    if ctx.shape[0] == 0 or ctx.shape[1] == 0:
        raise SampleError('context is empty; give at least one token (e.g. <|endoftext|>, id 50256)')
    if ctx.min() < 0 or ctx.max() >= hparams['n_vocab']:
        raise SampleError(f'context holds token ids outside [0, {hparams["n_vocab"]})')
    return ctx.astype(np.int32)


def stream_sequence(*, hparams, params, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=None):
    """Like sample_sequence, but yields each new column of tokens (int32 numpy [batch]) as it is drawn."""
    temperature, top_k, top_p = check_settings(temperature, top_k, top_p)
    ctx = _context_array(hparams, start_token, batch_size, context)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise SampleError(f'length must be an integer >= 0, got {length!r}')
    batch, n = ctx.shape
    if n + length > hparams['n_ctx']:
        raise SampleError(f'{n} context tokens + {length} new ones exceed the model\'s context of '
                          f'{hparams["n_ctx"]} tokens; shorten the prompt or lower length')
    if length == 0:
        return
    seed = secrets.randbits(31) if seed is None else int(seed)
    decoder = decoder_for(hparams, params)
    first, step = decoder.chooser(temperature, top_k, top_p), decoder.stepper(temperature, top_k, top_p)
    seeds = lambda i: tf.constant([seed % 2**31, i], tf.int32)
    # Capacity rounded up to a multiple of 64 bounds the attention work without a fresh buffer per length.
    capacity = min(hparams['n_ctx'], -(-(n + length) // 64) * 64)
    token = first(decoder.prefill(tf.constant(ctx), capacity), seeds(0))
    yield token.numpy()
    for i in range(1, length):
        token = step(token, tf.constant(n + i - 1), seeds(i))
        yield token.numpy()


def sample_sequence(*, hparams, params, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=None):
    """Sample `length` tokens after a context; returns int32 [batch, context_len + length].

    Give exactly one of `start_token` (with `batch_size`) or `context` ([batch, n] ids as a list of
    lists, numpy array or tensor; each row is its own prompt; a single row is repeated batch_size times).
    temperature=0 or top_k=1 is greedy decoding; top_k=0 and top_p=1 turn those truncations off.
    The same seed gives the same tokens.
    """
    columns = list(stream_sequence(hparams=hparams, params=params, length=length, start_token=start_token,
                                   batch_size=batch_size, context=context, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=seed))
    ctx = _context_array(hparams, start_token, batch_size, context)
    new = np.stack(columns, axis=1) if columns else np.zeros([ctx.shape[0], 0], np.int32)
    return tf.constant(np.concatenate([ctx, new], axis=1), tf.int32)
