"""GPT-2 in TensorFlow 2: the one forward pass, over OpenAI's own checkpoint variables.

`params` is a plain dict keyed by the checkpoint's variable names (``model/wte``,
``model/h0/attn/c_attn/w`` [1, nx, 3nx], ...), with the shapes OpenAI published, so a
released checkpoint is read and written name for name, with no conversion step.

Sampling, training, export and evaluation all call `model()`.  What they vary comes in through its
named arguments, never by re-deriving the network: `past` (the original's concatenated keys and values,
or `Slots`, fixed buffers written in place), `positions`, `matmul` (weight layouts), `wrap_block`
(e.g. tf.recompute_grad), `dtype` (compute precision) and `last` (only the last position's logits).
docs/forking.md maps where a change goes.
"""
import numpy as np
import tensorflow as tf

HPARAM_KEYS = ('n_vocab', 'n_ctx', 'n_embd', 'n_head', 'n_layer')


class ModelError(ValueError):
    """A model folder, checkpoint, hparams or input that cannot be used, with the fix."""


class HParams(dict):
    """GPT-2's hyperparameters, readable as ``h.n_ctx`` and as ``h['n_ctx']``: the five released ones
    (positive integers) and any a fork adds to default_hparams() (typed by their defaults: int, float,
    bool or str)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def override_from_dict(self, values, source='hparams'):
        """Update from a dict such as hparams.json, refusing unknown keys and values of the wrong type."""
        defaults = default_hparams()
        if not isinstance(values, dict):
            raise ModelError(f'{source}: expected a JSON object with keys {", ".join(defaults)}')
        for key, value in values.items():
            if key not in defaults:
                raise ModelError(f'{source}: unknown key {key!r}; valid keys are {", ".join(defaults)}')
            kind = type(defaults[key])
            if key in HPARAM_KEYS:
                if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                    raise ModelError(f'{source}: {key} must be a positive integer, got {value!r}')
            elif kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif type(value) is not kind:
                raise ModelError(f'{source}: {key} must be {kind.__name__}, got {value!r}')
            self[key] = value
        if self['n_embd'] % self['n_head']:
            raise ModelError(f'{source}: n_embd ({self["n_embd"]}) must be divisible by n_head ({self["n_head"]})')
        return self

    def to_json(self):
        """What hparams.json holds: the five released keys, and a fork's others where not at their default
        (so a released model saved by a fork keeps exactly its five)."""
        defaults = default_hparams()
        return {k: v for k, v in self.items() if k in HPARAM_KEYS or v != defaults.get(k)}


def default_hparams():
    """The 124M model's hyperparameters (a fork adds its own here, with their defaults)."""
    return HParams(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)


def stays_float32(name):
    """Whether the weight `name` is kept and used in float32 at every precision: LayerNorm's gains and
    biases, as norm() computes in float32."""
    return '/ln_' in name


def is_embedding(name):
    """Whether the weight `name` is an embedding table (the tokens' wte, the positions' wpe), which
    train.py --freeze_embeddings keeps fixed."""
    return name.rsplit('/', 1)[-1] in ('wte', 'wpe')


def shape_list(x):
    """Static dimensions where known, dynamic ones elsewhere."""
    static = x.shape.as_list()
    dynamic = tf.shape(x)
    return [dynamic[i] if s is None else s for i, s in enumerate(static)]


def gelu(x):
    return 0.5 * x * (1 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x * x * x)))


def norm(x, g, b, epsilon=1e-5):
    """LayerNorm over the last axis, computed in float32 whatever the precision of x (mixed precision)."""
    dtype = x.dtype
    x, g, b = (tf.cast(t, tf.float32) for t in (x, g, b))
    u = tf.reduce_mean(x, axis=-1, keepdims=True)
    s = tf.reduce_mean(tf.square(x - u), axis=-1, keepdims=True)
    return tf.cast((x - u) * tf.math.rsqrt(s + epsilon) * g + b, dtype)


def plain_matmul(x, params, name):
    """x [rows, nx] times the matrix stored as `name`: w[0] of a conv1d weight w [1, nx, nf], or wte^T
    [n_embd, n_vocab] for the logits; an int8 weight in quantize.py's form.  model()'s `matmul`
    argument replaces this (same signature) to multiply with the weights in another layout."""
    w = params[name]
    if w.dtype == tf.int8:
        return int8_matmul(x, w, params[name + SCALE])
    if name.endswith('/wte'):
        return tf.matmul(x, w, transpose_b=True)
    return x @ w[0]


SCALE = '/scale'   # an int8 matrix `name` [nf, nx] (quantize.py) has its float32 scales [nf] at name + SCALE


def int8_matmul(x, q, scale, apart=None):
    """x float32 [rows, nx] times an int8 matrix q [nf, nx] whose row j is column j of the original over
    scale[j]: x quantised per row the same way (scale max |x_row| / 127), int32 sums, both scales.
    apart: f(x_q) -> x_q, where the quantised rows must be computed before the matmul (speed.apart)."""
    top = tf.reduce_max(tf.abs(x), axis=1, keepdims=True)                               # [rows, 1]
    x_scale = tf.where(top > 0, top / 127, 1.0)
    x_q = tf.cast(tf.clip_by_value(tf.round(x / x_scale), -127, 127), tf.int8)
    if apart is not None:
        x_q = apart(x_q)
    y = tf.linalg.matmul(x_q, q, transpose_b=True, output_type=tf.int32)                # [rows, nf]
    return tf.cast(y, tf.float32) * x_scale * scale


def embed(params, name, ids):
    """The rows `ids` of the embedding table `name` (an int8 table: its rows times their scales)."""
    w = params[name]
    if w.dtype == tf.int8:
        return tf.cast(tf.gather(w, ids), tf.float32) * tf.gather(params[name + SCALE], ids)[..., None]
    return tf.gather(w, ids)


def compute_dtype(params, scope='model'):
    """The precision the network computes in: the weights', float32 for int8 weights."""
    dtype = params[scope + '/wte'].dtype
    return tf.float32 if dtype == tf.int8 else dtype


def conv1d(x, params, scope, matmul=plain_matmul):
    """The checkpoint's 1x1 convolution: x [..., nx] @ w[0] + b, for scope/w [1, nx, nf] and scope/b [nf]."""
    *start, nx = shape_list(x)
    y = matmul(tf.reshape(x, [-1, nx]), params, scope + '/w') + params[scope + '/b']        # [rows, nf]
    return tf.reshape(y, start + [y.shape[-1]])


def split_heads(x, n_head):
    """[batch, seq, n_embd] -> [batch, heads, seq, head_dim]"""
    *start, n = shape_list(x)
    return tf.transpose(tf.reshape(x, start + [n_head, n // n_head]), [0, 2, 1, 3])


def merge_heads(x):
    """[batch, heads, seq, head_dim] -> [batch, seq, n_embd]"""
    x = tf.transpose(x, [0, 2, 1, 3])
    *start, a, b = shape_list(x)
    return tf.reshape(x, start + [a * b])


def attention_mask(nd, ns):
    """True where destination i (of the last nd positions) may see source j (of ns): j <= i + ns - nd."""
    i = tf.range(nd)[:, None]
    j = tf.range(ns)
    return i >= j - ns + nd


def attn(x, params, scope, n_head, past=None, mask=None, matmul=plain_matmul):
    """Masked multi-head self-attention of x [batch, seq, n_embd] over the past's keys and its own.

    past: [batch, 2, heads, past_seq, head_dim], the keys and values of earlier positions (or the pair of
    them, each [batch, heads, past_seq, head_dim]).
    mask: bool, broadcastable to [batch, heads, seq, past_seq + seq], True where a position may attend;
    by default causal.  Returns (a [batch, seq, n_embd], present [batch, 2, heads, seq, head_dim])."""
    c = conv1d(x, params, scope + '/c_attn', matmul)
    q, k, v = (split_heads(t, n_head) for t in tf.split(c, 3, axis=2))                 # [batch, heads, seq, hd]
    present = tf.stack([k, v], axis=1)
    if past is None:
        keys, values = [k], [v]
    else:
        past_k, past_v = past if isinstance(past, tuple) else (past[:, 0], past[:, 1])
        keys, values = [past_k, k], [past_v, v]
    a = merge_heads(multihead_attn(q, keys, values, mask))
    return conv1d(a, params, scope + '/c_proj', matmul), present


def multihead_attn(q, keys, values, mask=None):
    """softmax(q K^T / sqrt(d)) V, where K and V are the blocks of keys and values laid end to end
    (attending to each block in turn spares copying a long past).  q: [batch, heads, nd, hd]; each block
    [batch, heads, n_i, hd]."""
    # Scores and softmax in float32 whatever the precision of q, k, v (mixed precision).
    scale = tf.math.rsqrt(float(q.shape[-1]))
    w = tf.concat([tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) for k in keys], -1) * scale
    if mask is None:                                                                  # w: [batch, heads, nd, ns]
        _, _, nd, ns = shape_list(w)
        mask = attention_mask(nd, ns)
    w = tf.nn.softmax(tf.where(mask, w, -1e10), axis=-1)
    if len(keys) == 1:
        return tf.matmul(tf.cast(w, values[0].dtype), values[0])
    parts = tf.split(w, [shape_list(k)[2] for k in keys], axis=-1)
    return tf.add_n([tf.matmul(tf.cast(p, v.dtype), v) for p, v in zip(parts, values)])


def mlp(x, params, scope, matmul=plain_matmul):
    h = gelu(conv1d(x, params, scope + '/c_fc', matmul))
    return conv1d(h, params, scope + '/c_proj', matmul)


def block(x, params, scope, n_head, past=None, mask=None, matmul=plain_matmul):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).  Returns (x, present)."""
    a, present = attn(norm(x, params[scope + '/ln_1/g'], params[scope + '/ln_1/b']),
                      params, scope + '/attn', n_head, past, mask, matmul)
    x = x + a
    x = x + mlp(norm(x, params[scope + '/ln_2/g'], params[scope + '/ln_2/b']), params, scope + '/mlp', matmul)
    return x, present


def positions_for(tokens, past_length):
    batch, nsteps = shape_list(tokens)[:2]
    return tf.tile(past_length + tf.range(nsteps)[None, :], [batch, 1])


class Slots:
    """A key/value cache of fixed buffers, for decoding in place (the alternative to the original's
    concatenated `past`).

    layers: per layer, the pair (keys, values), each [batch, heads, capacity, head_dim], or None before
    anything is cached.  start int32 [batch]: row r's first real slot (earlier slots are left padding).  filled: the
    slots written so far; the new tokens are slots filled, filled + 1, ...  Row r attends to its slots
    from start[r] on, up to the token itself, and its positions count from 0 at start[r].  The caller
    writes each call's `present` into the buffers."""

    def __init__(self, start, filled=0, layers=None):
        self.start, self.filled, self.layers = tf.convert_to_tensor(start, tf.int32), filled, layers

    def past(self, layer):
        return None if self.layers is None else self.layers[layer]

    def positions(self, nd):
        """int32 [batch, nd]: each row's position ids of the new tokens."""
        return tf.maximum(self.filled + tf.range(nd)[None] - self.start[:, None], 0)

    def mask(self, nd):
        """bool [batch, 1, nd, capacity + nd]: the buffers' slots start..filled-1, then the new tokens
        causally, each from its row's start."""
        new = self.filled + tf.range(nd)                                                 # [nd]
        own = (new[None, :] <= new[:, None])[None] & (new[None, None, :] >= self.start[:, None, None])
        if self.layers is None:
            return own[:, None]
        slots = tf.range(tf.shape(self.layers[0][0])[2])                                 # [capacity]
        cached = (slots[None] >= self.start[:, None]) & (slots[None] < self.filled)      # [batch, capacity]
        cached = tf.broadcast_to(cached[:, None], [tf.shape(cached)[0], nd, tf.shape(cached)[1]])
        return tf.concat([cached, tf.broadcast_to(own, [tf.shape(cached)[0], nd, nd])], axis=-1)[:, None]


def model(hparams, X, past=None, params=None, scope='model', *, positions=None, matmul=None, wrap_block=None,
          dtype=None, last=False):
    """GPT-2 forward pass.

    X: int32 [batch, seq].  past: None; [batch, n_layer, 2, n_head, past_seq, head_dim], the `present` of
    earlier calls concatenated on its seq axis (tensors, numpy arrays or nested lists); or a Slots.
    positions: int32 [batch, seq], by default following the past.  matmul: f(x, params, name) in place
    of plain_matmul, for weights in other layouts.  wrap_block: f(block_fn) -> block_fn, applied to each
    layer's block_fn(x, *weights) -> (x, present), e.g. tf.recompute_grad.  dtype: the compute precision,
    the weights cast to it but those that stay_float32.  last: the last position's logits only.
    Returns {'logits': float32 [batch, seq (1 with last), n_vocab],
             'present': [batch, n_layer, 2, n_head, seq, head_dim]}.
    """
    if params is None:
        raise ModelError('model(): pass params=..., from checkpoint.load(model_dir) or checkpoint.init_params(hparams)')
    X = tf.convert_to_tensor(X)
    if not X.dtype.is_integer:
        raise ModelError(f'model(): token ids must be integers, got {X.dtype.name}')
    X = tf.cast(X, tf.int32)
    if X.shape.rank != 2:
        raise ModelError(f'model(): X must be [batch, seq], got shape {X.shape}')
    if dtype is not None and compute_dtype(params, scope) != params[scope + '/wte'].dtype:
        raise ModelError('model(): dtype= casts float weights; int8 weights compute in float32 (leave dtype out)')
    if dtype is not None:
        params = {k: tf.cast(v, tf.float32 if stays_float32(k) else dtype) for k, v in params.items()}
    if past is not None and not isinstance(past, Slots):
        past = tf.convert_to_tensor(past, dtype=compute_dtype(params, scope))
        if past.shape.rank != 6:
            raise ModelError(f'model(): past must be [batch, n_layer, 2, n_head, past_seq, head_dim], '
                             f'got shape {past.shape}')
        _check_inputs(hparams, X, shape_list(past)[-2])
    elif past is None:
        _check_inputs(hparams, X, 0)
    matmul = matmul or plain_matmul

    nd = shape_list(X)[1]
    if positions is None:
        positions = past.positions(nd) if isinstance(past, Slots) else positions_for(
            X, 0 if past is None else shape_list(past)[-2])
    mask = past.mask(nd) if isinstance(past, Slots) else None
    h = embed(params, scope + '/wte', X) + embed(params, scope + '/wpe', positions)
    presents = []
    for layer in range(hparams['n_layer']):
        layer_scope = f'{scope}/h{layer}'
        layer_past = past.past(layer) if isinstance(past, Slots) else None if past is None else past[:, layer]
        names = sorted(k for k in params if k.startswith(layer_scope + '/'))

        def block_fn(x, *weights, layer_scope=layer_scope, names=names, layer_past=layer_past):
            return block(x, dict(params, **dict(zip(names, weights))), layer_scope, hparams['n_head'],
                         layer_past, mask, matmul)
        if wrap_block is not None:
            block_fn = wrap_block(block_fn)
        h, present = block_fn(h, *[params[k] for k in names])
        presents.append(present)
    if last:
        h = h[:, -1:]
    h = norm(h, params[scope + '/ln_f/g'], params[scope + '/ln_f/b'])

    batch, seq = shape_list(h)[:2]
    logits = matmul(tf.reshape(h, [-1, hparams['n_embd']]), params, scope + '/wte')
    return {'logits': tf.reshape(tf.cast(logits, tf.float32), [batch, seq, hparams['n_vocab']]),
            'present': tf.stack(presents, axis=1)}


def _check_inputs(hparams, X, past_length):
    """Context overflow and out-of-vocabulary ids, wherever they are knowable before running."""
    seq = X.shape[1]
    if isinstance(past_length, int) and seq is not None and past_length + seq > hparams['n_ctx']:
        raise ModelError(f'model(): past length {past_length} + {seq} new tokens exceeds the context '
                         f'n_ctx={hparams["n_ctx"]}; shorten the prompt or the number of tokens to generate')
    if tf.executing_eagerly() and tf.size(X) > 0:
        lo, hi = int(tf.reduce_min(X)), int(tf.reduce_max(X))
        if lo < 0 or hi >= hparams['n_vocab']:
            bad = lo if lo < 0 else hi
            raise ModelError(f'model(): token id {bad} is outside [0, {hparams["n_vocab"]}); '
                             'encode text with this model\'s encoder')
