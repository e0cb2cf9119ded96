"""GPT-2 in TensorFlow 2: a functional forward pass over OpenAI's own checkpoint variables.

`params` is a plain dict keyed by the checkpoint's variable names (``model/wte``,
``model/h0/attn/c_attn/w`` [1, nx, 3nx], ...), with the shapes OpenAI published, so a
released checkpoint is read and written name for name, with no conversion step.
"""
import numpy as np
import tensorflow as tf

HPARAM_KEYS = ('n_vocab', 'n_ctx', 'n_embd', 'n_head', 'n_layer')


class ModelError(ValueError):
    """A model folder, checkpoint, hparams or input that cannot be used, with the fix."""


class HParams(dict):
    """The five GPT-2 hyperparameters; readable as ``h.n_ctx`` and as ``h['n_ctx']``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def override_from_dict(self, values, source='hparams'):
        """Update from a dict such as hparams.json, refusing unknown keys and non-integers."""
        if not isinstance(values, dict):
            raise ModelError(f'{source}: expected a JSON object with keys {", ".join(HPARAM_KEYS)}')
        for key, value in values.items():
            if key not in HPARAM_KEYS:
                raise ModelError(f'{source}: unknown key {key!r}; valid keys are {", ".join(HPARAM_KEYS)}')
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelError(f'{source}: {key} must be a positive integer, got {value!r}')
            self[key] = value
        if self['n_embd'] % self['n_head']:
            raise ModelError(f'{source}: n_embd ({self["n_embd"]}) must be divisible by n_head ({self["n_head"]})')
        return self


def default_hparams():
    """The 124M model's hyperparameters."""
    return HParams(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)


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


def conv1d(x, w, b):
    """The checkpoint's 1x1 convolution: x [..., nx] @ w[0] + b, for w [1, nx, nf] and b [nf]."""
    *start, nx = shape_list(x)
    y = tf.reshape(x, [-1, nx]) @ w[0] + b                                               # [rows, nf]
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


def attn(x, params, scope, n_head, past=None, mask=None):
    """Masked multi-head self-attention of x [batch, seq, n_embd] over the past's keys and its own.

    past: [batch, 2, heads, past_seq, head_dim], the keys and values of earlier positions.
    mask: bool, broadcastable to [batch, heads, seq, past_seq + seq], True where a position may attend;
    by default causal.  Returns (a [batch, seq, n_embd], present [batch, 2, heads, seq, head_dim])."""
    c = conv1d(x, params[scope + '/c_attn/w'], params[scope + '/c_attn/b'])
    q, k, v = (split_heads(t, n_head) for t in tf.split(c, 3, axis=2))                 # [batch, heads, seq, hd]
    present = tf.stack([k, v], axis=1)
    keys, values = ([k], [v]) if past is None else ([past[:, 0], k], [past[:, 1], v])
    a = merge_heads(multihead_attn(q, keys, values, mask))
    return conv1d(a, params[scope + '/c_proj/w'], params[scope + '/c_proj/b']), present


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


def mlp(x, params, scope):
    h = gelu(conv1d(x, params[scope + '/c_fc/w'], params[scope + '/c_fc/b']))
    return conv1d(h, params[scope + '/c_proj/w'], params[scope + '/c_proj/b'])


def block(x, params, scope, n_head, past=None, mask=None):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).  Returns (x, present)."""
    a, present = attn(norm(x, params[scope + '/ln_1/g'], params[scope + '/ln_1/b']),
                      params, scope + '/attn', n_head, past, mask)
    x = x + a
    x = x + mlp(norm(x, params[scope + '/ln_2/g'], params[scope + '/ln_2/b']), params, scope + '/mlp')
    return x, present


def positions_for(tokens, past_length):
    batch, nsteps = shape_list(tokens)[:2]
    return tf.tile(past_length + tf.range(nsteps)[None, :], [batch, 1])


def model(hparams, X, past=None, params=None, scope='model'):
    """GPT-2 forward pass.

    X: int32 [batch, seq]; past: None or [batch, n_layer, 2, n_head, past_seq, head_dim] (the `present`
    of earlier calls, concatenated on its seq axis); both may be tensors, numpy arrays or nested lists.
    Returns {'logits': [batch, seq, n_vocab], 'present': [batch, n_layer, 2, n_head, seq, head_dim]}.
    """
    if params is None:
        raise ModelError('model(): pass params=..., from checkpoint.load(model_dir) or checkpoint.init_params(hparams)')
    X = tf.convert_to_tensor(X)
    if not X.dtype.is_integer:
        raise ModelError(f'model(): token ids must be integers, got {X.dtype.name}')
    X = tf.cast(X, tf.int32)
    if X.shape.rank != 2:
        raise ModelError(f'model(): X must be [batch, seq], got shape {X.shape}')
    if past is not None:
        past = tf.convert_to_tensor(past, dtype=params[scope + '/wte'].dtype)
        if past.shape.rank != 6:
            raise ModelError(f'model(): past must be [batch, n_layer, 2, n_head, past_seq, head_dim], '
                             f'got shape {past.shape}')
    past_length = 0 if past is None else shape_list(past)[-2]
    _check_inputs(hparams, X, past_length)

    h = tf.gather(params[scope + '/wte'], X) + tf.gather(params[scope + '/wpe'], positions_for(X, past_length))
    pasts = tf.unstack(past, axis=1) if past is not None else [None] * hparams['n_layer']
    presents = []
    for layer, layer_past in enumerate(pasts):
        h, present = block(h, params, f'{scope}/h{layer}', hparams['n_head'], past=layer_past)
        presents.append(present)
    h = norm(h, params[scope + '/ln_f/g'], params[scope + '/ln_f/b'])

    batch, seq = shape_list(X)
    logits = tf.matmul(tf.reshape(h, [-1, hparams['n_embd']]), params[scope + '/wte'], transpose_b=True)
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
