"""GPT-2 weights on disk: OpenAI's checkpoint layout, read and written name for name.

A model folder holds hparams.json, a `checkpoint` pointer and NAME.index / NAME.data-00000-of-00001
(OpenAI's: model.ckpt).  `params` is a dict {checkpoint variable name: tensor}, e.g.
``model/h0/attn/c_attn/w`` [1, n_embd, 3 n_embd], as model.model takes it.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import tensorflow as tf

import files
import model
import quantize
from model import ModelError  # noqa: F401  (checkpoint errors are model errors)


def model_path(model_name, models_dir='models'):
    """The folder of a model inside models_dir (files.model_dir), as a ModelError when it cannot be used."""
    try:
        return files.model_dir(model_name, models_dir)
    except files.ModelFolderError as e:
        raise model.ModelError(str(e)) from None


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


def init_params(hparams, seed=0, scope='model', names=None):
    """Fresh weights as the original initialisers: normal std 0.02 (0.01 for wpe), zero biases, unit gains.
    names: only these (default: all of param_shapes)."""
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
        if names is None or name in names:
            params[name] = tf.convert_to_tensor(value)
    return params


def load_hparams(model_dir):
    """hparams.json in model_dir, over the 124M defaults, with clear errors."""
    path = os.path.join(model_dir, 'hparams.json')
    if not os.path.isdir(model_dir):
        raise model.ModelError(f'model folder {model_dir} does not exist; {files.fix_hint(model_dir)}')
    if not os.path.isfile(path):
        raise model.ModelError(f'{path} is missing (incomplete download?); {files.fix_hint(model_dir)}')
    try:
        with open(path, encoding='utf-8') as f:
            values = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise model.ModelError(f'{path} is not valid JSON ({e}); {files.fix_hint(model_dir)}') from None
    return model.default_hparams().override_from_dict(values, source=path)


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
            raise model.ModelError(f'{ckpt + suffix} is missing (incomplete download?); {files.fix_hint(model_dir)}')
    return ckpt


def load(model_dir, scope='model', dtype=tf.float32, hparams=None, adapt=False, note=None):
    """Read hparams.json and the latest checkpoint of model_dir.  Returns (hparams, params).

    dtype: the weights' precision (tf.float32, tf.bfloat16 or tf.float16); the weights that
    model.stays_float32 stay float32.  tf.int8: the matrices quantised (quantize.py's form, their
    scales beside them), the rest float32.  Other dtypes than float32 are read and converted a group
    of tensors at a time, so the float32 weights never all sit in memory at once.  hparams: use these instead of hparams.json's
    (a fork's settings for a released model).  adapt: start this model from a checkpoint of another
    schema (a fork's, or a released one in a fork): tensors the checkpoint lacks are initialised
    (init_params), tensors this model does not use are left out, and each kind is named in one line
    passed to note (default: printed to stderr); without adapt, either is an error."""
    dtype = tf.as_dtype(dtype)
    if dtype not in (tf.float32, tf.bfloat16, tf.float16, tf.int8):
        raise model.ModelError(f'load(): dtype must be float32, bfloat16, float16 or int8, got {dtype.name}')
    hparams = load_hparams(model_dir) if hparams is None else hparams
    ckpt = checkpoint_path(model_dir)
    try:
        reader = tf.train.load_checkpoint(ckpt)
        available = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
        raise model.ModelError(f'cannot read checkpoint {ckpt} ({_first_line(e)}); the files may be corrupt, '
                         f'{files.fix_hint(model_dir)}') from None
    expected = param_shapes(hparams, scope)
    missing = [name for name in expected if name not in available]
    if missing and not adapt:
        raise model.ModelError(f'checkpoint {ckpt} lacks variable {missing[0]} that {model_dir}/hparams.json implies; '
                               'the checkpoint and hparams.json are from different models (a fork\'s new tensors: '
                               'load with adapt=True, train.py --adapt)')
    for name, shape in expected.items():
        if name in available and list(available[name]) != shape:
            raise model.ModelError(f'checkpoint {ckpt}: {name} has shape {list(available[name])} but hparams.json implies '
                             f'{shape}; the checkpoint and hparams.json are from different models')
    extra = sorted(n for n in available if n.startswith(scope + '/') and n not in expected and not _is_slot(n))
    if extra and not adapt:
        raise model.ModelError(f'checkpoint {ckpt} has variables that {model_dir}/hparams.json does not describe '
                         f'(e.g. {extra[0]}); the checkpoint and hparams.json are from different models (a fork '
                         'that no longer uses them: load with adapt=True, train.py --adapt)')
    note = note or (lambda line: print(line, file=sys.stderr, flush=True))
    if missing:
        note(f'{ckpt} lacks {len(missing)} tensor{"s" * (len(missing) > 1)} this model has, initialised afresh: '
             + ', '.join(missing))
    if extra:
        note(f'{ckpt} has {len(extra)} tensor{"s" * (len(extra) > 1)} this model does not use, left out: '
             + ', '.join(extra))
    fresh = init_params(hparams, scope=scope, names=set(missing)) if missing else {}
    expected = {k: v for k, v in expected.items() if k not in fresh}
    dtypes = reader.get_variable_to_dtype_map()
    params = {}
    # (int8: smaller groups, as each matrix is also held transposed in float32 while it is quantised)
    limit = LOAD_GROUP_BYTES // 4 if dtype == tf.int8 else LOAD_GROUP_BYTES
    for names in _groups(expected, dtypes, whole=dtype == tf.float32, limit=limit):
        try:
            # One RestoreV2 op reads a group of tensors straight into TensorFlow's memory, in parallel.
            values = tf.raw_ops.RestoreV2(prefix=ckpt, tensor_names=names, shape_and_slices=[''] * len(names),
                                          dtypes=[dtypes[n] for n in names])
        except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
            raise model.ModelError(f'cannot read {ckpt} ({_first_line(e)}); the files may be corrupt, '
                             f'{files.fix_hint(model_dir)}') from None
        for n, v in zip(names, values):
            params.update(_converted(n, v, dtype))
        del values
    for n, v in fresh.items():
        params.update(_converted(n, v, dtype))
    order = [m for n in param_shapes(hparams, scope) for m in (n, n + model.SCALE)]
    return hparams, {n: params[n] for n in order if n in params}


def _converted(name, v, dtype):
    """{name: v in the precision load() gives it} (and, for a quantised matrix, its scales)."""
    if dtype == tf.int8:
        if not quantize.is_matrix(name, v.shape):
            return {name: tf.cast(v, tf.float32)}
        q, scale = quantize.quantize(v)
        return {name: q, name + model.SCALE: scale}
    want = tf.float32 if model.stays_float32(name) else dtype
    return {name: v if v.dtype == want else tf.cast(v, want)}


LOAD_GROUP_BYTES = 256 << 20


def _groups(shapes, dtypes, whole, limit=None):
    """The names in shapes, in groups of at most `limit` bytes as stored (default LOAD_GROUP_BYTES; a
    larger tensor alone), or all in one group when whole."""
    limit = LOAD_GROUP_BYTES if limit is None else limit
    if whole:
        return [list(shapes)]
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * dtypes[name].size
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


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
    unknown = sorted(k for k in params if k not in expected)
    if unknown:
        raise model.ModelError(f'save(): params has tensors that checkpoint.param_shapes does not list ({", ".join(unknown)}); '
                               'add them to the schema, or leave them out of params')
    for key, shape in expected.items():
        if key not in params:
            raise model.ModelError(f'save(): params lacks {key}')
        if list(params[key].shape) != shape:
            raise model.ModelError(f'save(): {key} has shape {list(params[key].shape)}, hparams imply {shape}')
    os.makedirs(model_dir, exist_ok=True)
    names = list(expected)
    tensors = [tf.cast(tf.convert_to_tensor(params[k]), tf.float32) for k in names]

    tmp = tempfile.mkdtemp(prefix='.save-', dir=model_dir)
    tmp_prefix = os.path.join(tmp, name)
    tf.raw_ops.SaveV2(prefix=tmp_prefix, tensor_names=names, shape_and_slices=[''] * len(names), tensors=tensors)
    files.write_atomic(os.path.join(model_dir, 'hparams.json'),
                  json.dumps(model.HParams(hparams).to_json(), indent=2) + '\n')
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
    files.write_atomic(os.path.join(model_dir, 'checkpoint'),
                  f'model_checkpoint_path: "{rel}"\nall_model_checkpoint_paths: "{rel}"\n')

