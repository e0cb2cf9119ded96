"""GPT-2 in TensorFlow 2: a functional forward pass over OpenAI's own checkpoint variables.

`params` is a plain dict keyed by the checkpoint's variable names (``model/wte``,
``model/h0/attn/c_attn/w`` [1, nx, 3nx], ...), with the shapes OpenAI published, so a
released checkpoint is read and written name for name, with no conversion step.
"""
import json
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # keep TensorFlow's C++ start-up chatter off users' terminals

import numpy as np
import tensorflow as tf

HPARAM_KEYS = ('n_vocab', 'n_ctx', 'n_embd', 'n_head', 'n_layer')
RELEASED_MODELS = ('124M', '355M', '774M', '1558M')
LEGACY_NAMES = {'117M': '124M', '345M': '355M'}


def fix_hint(model_dir):
    """How to repair model_dir: download a released model again, or re-save one of your own."""
    name = os.path.basename(os.path.normpath(str(model_dir)))
    name = LEGACY_NAMES.get(name, name)
    if name in RELEASED_MODELS:
        return f'run: python download_model.py {name}'
    return 'download it again (python download_model.py 124M) or re-save it (model.save, train.py)'


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
    """The checkpoint's 1x1 convolution, i.e. x @ w[0] + b.  x: [..., nx], w: [1, nx, nf], or a function
    that computes x @ w[0] for x [rows, nx] some other way (the sampler passes a faster form)."""
    *start, nx = shape_list(x)
    x = tf.reshape(x, [-1, nx])
    y = (w(x) if callable(w) else tf.matmul(x, tf.reshape(w, [nx, w.shape[-1]]))) + b        # [rows, nf]
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


def attention_mask(nd, ns, dtype=tf.float32):
    """1 where destination i (of the last nd positions) may see source j (of ns): j <= i + ns - nd."""
    i = tf.range(nd)[:, None]
    j = tf.range(ns)
    return tf.cast(i >= j - ns + nd, dtype)


def multihead_attn(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d)) v under a mask.  q: [batch, heads, nd, hd]; k, v: [batch, heads, ns, hd].

    mask: bool [nd, ns], True where a query may see a key; by default causal, anchored bottom-right."""
    # Scores and softmax in float32 whatever the precision of q, k, v (mixed precision).
    w = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * tf.math.rsqrt(float(k.shape[-1]))
    if mask is None:                                                                   # w: [batch, heads, nd, ns]
        _, _, nd, ns = shape_list(w)
        b = attention_mask(nd, ns)
        w = w * b - 1e10 * (1 - b)
    else:
        w = tf.where(mask, w, -1e10)
    return tf.matmul(tf.cast(tf.nn.softmax(w, axis=-1), v.dtype), v)


def attn(x, params, scope, n_head, past=None, cache=None):
    """Self-attention.  past: [batch, 2, heads, past_seq, hd]; returns (a, present [batch, 2, heads, seq, hd]).

    cache: instead of past, a function (k, v) -> (keys, values, mask) that stores this step's keys and
    values [batch, heads, seq, hd] and returns everything to attend to (the sampler's in-place cache)."""
    c = conv1d(x, params[scope + '/c_attn/w'], params[scope + '/c_attn/b'])
    q, k, v = (split_heads(t, n_head) for t in tf.split(c, 3, axis=2))
    present = tf.stack([k, v], axis=1)
    mask = None
    if past is not None:
        pk, pv = tf.unstack(past, axis=1)
        k = tf.concat([pk, k], axis=-2)
        v = tf.concat([pv, v], axis=-2)
    if cache is not None:
        k, v, mask = cache(k, v)
    a = merge_heads(multihead_attn(q, k, v, mask))
    return conv1d(a, params[scope + '/c_proj/w'], params[scope + '/c_proj/b']), present


def mlp(x, params, scope):
    h = gelu(conv1d(x, params[scope + '/c_fc/w'], params[scope + '/c_fc/b']))
    return conv1d(h, params[scope + '/c_proj/w'], params[scope + '/c_proj/b'])


def block(x, params, scope, n_head, past=None, cache=None):
    """Pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""
    a, present = attn(norm(x, params[scope + '/ln_1/g'], params[scope + '/ln_1/b']),
                      params, scope + '/attn', n_head, past, cache)
    x = x + a
    x = x + mlp(norm(x, params[scope + '/ln_2/g'], params[scope + '/ln_2/b']), params, scope + '/mlp')
    return x, present


def positions_for(tokens, past_length):
    batch, nsteps = shape_list(tokens)[:2]
    return tf.tile(past_length + tf.range(nsteps)[None, :], [batch, 1])


def model(hparams, X, past=None, params=None, scope='model'):
    """GPT-2 forward pass.

    X: int32 [batch, seq]; past: None or [batch, n_layer, 2, n_head, past_seq, head_dim].
    Returns {'logits': float32 [batch, seq, n_vocab], 'present': [batch, n_layer, 2, n_head, seq, head_dim]}.
    """
    if params is None:
        raise ModelError('model(): pass params=..., from model.load(model_dir) or model.init_params(hparams)')
    X = tf.convert_to_tensor(X)
    if not X.dtype.is_integer:
        raise ModelError(f'model(): token ids must be integers, got {X.dtype.name}')
    X = tf.cast(X, tf.int32)
    if X.shape.rank != 2:
        raise ModelError(f'model(): X must be [batch, seq], got shape {X.shape}')
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
    return {'logits': tf.reshape(logits, [batch, seq, hparams['n_vocab']]),
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


# ---------------------------------------------------------------------------------------------
# Weights: names and shapes, fresh initialisation, loading and saving in OpenAI's layout.

def param_shapes(hparams, scope='model'):
    """{checkpoint variable name: shape}, exactly as in OpenAI's released checkpoints."""
    e, v, c = hparams['n_embd'], hparams['n_vocab'], hparams['n_ctx']
    shapes = {f'{scope}/wte': [v, e], f'{scope}/wpe': [c, e]}
    for i in range(hparams['n_layer']):
        p = f'{scope}/h{i}'
        shapes.update({
            f'{p}/ln_1/g': [e], f'{p}/ln_1/b': [e],
            f'{p}/attn/c_attn/w': [1, e, 3 * e], f'{p}/attn/c_attn/b': [3 * e],
            f'{p}/attn/c_proj/w': [1, e, e], f'{p}/attn/c_proj/b': [e],
            f'{p}/ln_2/g': [e], f'{p}/ln_2/b': [e],
            f'{p}/mlp/c_fc/w': [1, e, 4 * e], f'{p}/mlp/c_fc/b': [4 * e],
            f'{p}/mlp/c_proj/w': [1, 4 * e, e], f'{p}/mlp/c_proj/b': [e],
        })
    shapes.update({f'{scope}/ln_f/g': [e], f'{scope}/ln_f/b': [e]})
    return shapes


def init_params(hparams, seed=0, scope='model'):
    """Fresh weights as the original initialisers: normal std 0.02 (0.01 for wpe), zero biases, unit gains."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(hparams, scope).items():
        leaf = name.rsplit('/', 1)[1]
        if leaf == 'g':
            value = np.ones(shape, np.float32)
        elif leaf == 'b':
            value = np.zeros(shape, np.float32)
        else:
            std = 0.01 if leaf == 'wpe' else 0.02
            value = rng.normal(0.0, std, size=shape).astype(np.float32)
        params[name] = tf.convert_to_tensor(value)
    return params


def model_path(model_name, models_dir='models'):
    """The folder of a model inside models_dir, refusing names that would leave it.

    The legacy names 117M and 345M find the folders 124M and 355M that download_model.py writes.
    """
    name = str(model_name)
    models_dir = os.path.expanduser(os.path.expandvars(str(models_dir)))
    if (not name or name in ('.', '..') or '/' in name or '\\' in name or '\0' in name
            or os.path.isabs(name)):
        raise ModelError(f'invalid model name {name!r}: give the name of a folder inside {models_dir}, '
                         f'e.g. {RELEASED_MODELS[0]}')
    path = os.path.join(models_dir, name)
    if not os.path.isdir(path) and name in LEGACY_NAMES:
        path = os.path.join(models_dir, LEGACY_NAMES[name])
    if not os.path.isdir(path):
        wanted = LEGACY_NAMES.get(name, name)
        hint = (f'run: python download_model.py {wanted}' if wanted in RELEASED_MODELS else
                f'models are {", ".join(RELEASED_MODELS)} (python download_model.py NAME) or your own '
                f'checkpoint folders, e.g. from train.py')
        raise ModelError(f'model {name} not found: {path} does not exist; {hint}')
    return path


def load_hparams(model_dir):
    """hparams.json in model_dir, over the 124M defaults, with clear errors."""
    path = os.path.join(model_dir, 'hparams.json')
    if not os.path.isdir(model_dir):
        raise ModelError(f'model folder {model_dir} does not exist; {fix_hint(model_dir)}')
    if not os.path.isfile(path):
        raise ModelError(f'{path} is missing (incomplete download?); {fix_hint(model_dir)}')
    try:
        with open(path, encoding='utf-8') as f:
            values = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f'{path} is not valid JSON ({e}); {fix_hint(model_dir)}') from None
    return default_hparams().override_from_dict(values, source=path)


def checkpoint_path(model_dir):
    """The checkpoint prefix that model_dir's `checkpoint` file names (OpenAI's: model.ckpt), always
    inside model_dir: an absolute path recorded on another machine is looked up by its file name."""
    pointer = os.path.join(model_dir, 'checkpoint')
    name = None
    if os.path.isfile(pointer):
        with open(pointer, encoding='utf-8', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'model_checkpoint_path':
                    name = value.strip().strip('"')
                    break
    if not name:
        name = 'model.ckpt'
    if os.path.isabs(name) or '..' in name.replace('\\', '/').split('/'):
        name = os.path.basename(name.replace('\\', '/'))
    ckpt = os.path.join(model_dir, name)
    for suffix in ('.index', '.data-00000-of-00001'):
        if not os.path.isfile(ckpt + suffix):
            raise ModelError(f'{ckpt + suffix} is missing (incomplete download?); {fix_hint(model_dir)}')
    return ckpt


def load(model_dir, scope='model'):
    """Read hparams.json and the latest checkpoint of model_dir.  Returns (hparams, params)."""
    hparams = load_hparams(model_dir)
    ckpt = checkpoint_path(model_dir)
    try:
        reader = tf.train.load_checkpoint(ckpt)
        available = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
        raise ModelError(f'cannot read checkpoint {ckpt} ({_first_line(e)}); the files may be corrupt, '
                         f'{fix_hint(model_dir)}') from None
    expected = param_shapes(hparams, scope)
    for name, shape in expected.items():
        if name not in available:
            raise ModelError(f'checkpoint {ckpt} lacks variable {name} that {model_dir}/hparams.json implies; '
                             'the checkpoint and hparams.json are from different models')
        if list(available[name]) != shape:
            raise ModelError(f'checkpoint {ckpt}: {name} has shape {list(available[name])} but hparams.json implies '
                             f'{shape}; the checkpoint and hparams.json are from different models')
    extra = sorted(n for n in available if n.startswith(scope + '/') and n not in expected and not _is_slot(n))
    if extra:
        raise ModelError(f'checkpoint {ckpt} has variables that {model_dir}/hparams.json does not describe '
                         f'(e.g. {extra[0]}); the checkpoint and hparams.json are from different models')
    try:
        # One RestoreV2 op reads every tensor straight into TensorFlow's memory, in parallel.
        names, dtypes = list(expected), reader.get_variable_to_dtype_map()
        values = tf.raw_ops.RestoreV2(prefix=ckpt, tensor_names=names, shape_and_slices=[''] * len(names),
                                      dtypes=[dtypes[n] for n in names])
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        raise ModelError(f'cannot read {ckpt} ({_first_line(e)}); the files may be corrupt, '
                         f'{fix_hint(model_dir)}') from None
    params = {n: v if v.dtype == tf.float32 else tf.cast(v, tf.float32) for n, v in zip(names, values)}
    return hparams, params


def _is_slot(name):
    """Optimizer slots that TF1 fine-tuning forks save beside the weights (e.g. .../w/Adam)."""
    return name.rsplit('/', 1)[-1].startswith(('Adam', 'Momentum', 'RMSProp', 'Adagrad'))


def _first_line(e):
    return str(getattr(e, 'message', e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def save(model_dir, hparams, params, name='model.ckpt', scope='model'):
    """Write hparams.json and a checkpoint in OpenAI's layout (checkpoint, NAME.index, NAME.data-00000-of-00001).

    Every file is written under a temporary name first, and the `checkpoint` file always names a
    complete index/data pair, so an interrupted save never leaves a half-written latest checkpoint.
    Returns the checkpoint prefix.
    """
    expected = param_shapes(hparams, scope)
    for key, shape in expected.items():
        if key not in params:
            raise ModelError(f'save(): params lacks {key}')
        if list(params[key].shape) != shape:
            raise ModelError(f'save(): {key} has shape {list(params[key].shape)}, hparams imply {shape}')
    os.makedirs(model_dir, exist_ok=True)
    names = list(expected)
    tensors = [tf.cast(tf.convert_to_tensor(params[k]), tf.float32) for k in names]

    tmp = tempfile.mkdtemp(prefix='.save-', dir=model_dir)
    tmp_prefix = os.path.join(tmp, name)
    tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names, shape_and_slices=[''] * len(names), tensors=tensors)
    write_atomic(os.path.join(model_dir, 'hparams.json'),
                  json.dumps({k: int(hparams[k]) for k in HPARAM_KEYS}, indent=2) + '\n')
    # The `checkpoint` file names the complete temporary pair while the final pair is replaced, and the
    # final pair once it is whole.  If anything fails in between, the temporary pair stays, and loads.
    _write_checkpoint_file(model_dir, tmp_prefix)
    final = os.path.join(model_dir, name)
    _link_or_copy_pair(tmp_prefix, final)
    _write_checkpoint_file(model_dir, final)
    for entry in os.listdir(model_dir):   # this save's temporary pair, and any left by a failed save
        if entry.startswith('.save-'):
            shutil.rmtree(os.path.join(model_dir, entry), ignore_errors=True)
    return os.path.join(model_dir, name)


def _link_or_copy_pair(src_prefix, dst_prefix):
    for suffix in ('.data-00000-of-00001', '.index'):
        staged = dst_prefix + suffix + '.tmp'
        if os.path.exists(staged):
            os.unlink(staged)
        try:
            os.link(src_prefix + suffix, staged)
        except OSError:
            shutil.copyfile(src_prefix + suffix, staged)
        os.replace(staged, dst_prefix + suffix)


def _write_checkpoint_file(model_dir, prefix):
    rel = os.path.relpath(prefix, model_dir)
    write_atomic(os.path.join(model_dir, 'checkpoint'),
                  f'model_checkpoint_path: "{rel}"\nall_model_checkpoint_paths: "{rel}"\n')


def write_atomic(path, text):
    """Write text to a temporary file beside path, sync it, then rename it over path: path never holds
    half a file, and a failed write leaves the old file and no temporary one."""
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
