#!/usr/bin/env python3
"""Export a GPT-2 checkpoint as a SavedModel that TensorFlow Serving, `saved_model_cli` and plain
`tf.saved_model.load` run without this code.

    python src/export.py --model_name 124M --out exported/124M [--precision bfloat16] [--version 3] [--noxla]

writes exported/124M/<version>/ (the layout TF Serving expects; the next free integer by default),
atomically: the SavedModel is written into a hidden folder beside it and renamed when complete.

Signatures:
  generate (also serving_default): tokens int32 [batch, seq], length int32, temperature float32,
      top_k int32, top_p float32, seed int32 -> tokens int32 [batch, seq + length].  Cached decoding:
      the prompt in one pass, then one token per step of a tf.while_loop over fixed-size key/value
      buffers, compiled with XLA (--noxla: a plain graph, for servers without XLA).  temperature 0 or
      top_k 1: greedy; top_k 0 and top_p 1: no truncation; the same seed gives the same tokens.
  logits: tokens int32 [batch, seq] -> logits float32 [batch, seq, n_vocab].
encoder.json and vocab.bpe travel as assets (assets/encoder.json, assets/vocab.bpe).
"""
import os
import secrets
import shutil
import time

import cli
cli.import_tensorflow_quietly()   # before model, checkpoint, ...: TensorFlow without its start-up noise
import tensorflow as tf

import checkpoint
import files
import model
import sample

VOCAB_FILES = ('encoder.json', 'vocab.bpe')
VENDORED_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')


CAPACITY_STEP = 128   # key/value buffers hold a multiple of this many tokens (or n_ctx)
CANDIDATES = (64, 1024)   # the top-k and nucleus draws look at this many most likely tokens first, then this many


def draw(logits, seed, temperature, top_k, top_p):
    """Next tokens int32 [batch] from logits float32 [batch, n_vocab], with the settings as tensors:
    greedy when temperature is 0 or top_k is 1; else temperature, then top-k (0: off), then nucleus
    top-p over what is left (1: off), then a draw with the stateless seed [2].

    XLA needs a static k, so a truncated draw takes the most likely CANDIDATES[0] tokens and masks the
    rest, which is exact when top_k <= CANDIDATES[0], or top_k is 0 and the nucleus lies within them;
    else it tries the next number of CANDIDATES, and at last (rare, and slower) the whole vocabulary."""
    n_vocab = logits.shape[-1]

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled():
        # Shifted so the largest logit is 0 and floored at -1e10: a tiny temperature gives no inf or NaN.
        shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
        scaled = tf.where(shifted < 0, tf.maximum(shifted / temperature, -1e10), 0.0)
        k = tf.where((top_k > 0) & (top_k < n_vocab), top_k, n_vocab)          # the tokens top-k keeps

        def truncated(candidates):
            values, indices = tf.math.top_k(scaled, k=candidates)                  # [batch, candidates], sorted
            values = tf.where(tf.range(candidates) < k, values, -1e10)
            # Probabilities within what top-k keeps: the first k candidates, or the whole vocabulary.
            total = tf.where(k < n_vocab, tf.reduce_logsumexp(values, axis=-1, keepdims=True),
                             tf.reduce_logsumexp(scaled, axis=-1, keepdims=True))         # [batch, 1]
            probs = tf.exp(values - total)
            mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
            covered = tf.reduce_all(mass_before[:, -1] + probs[:, -1] >= top_p)   # the nucleus is in there
            values = tf.where((mass_before < top_p) | (top_p >= 1), values, -1e10)
            pick = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)        # [batch, 1]
            return tf.gather(indices, pick, batch_dims=1)[:, 0], covered

        def whole():
            return tf.random.stateless_categorical(scaled, 1, seed, dtype=tf.int32)[:, 0]

        def first_exact(sizes):
            token, covered = truncated(sizes[0])
            if len(sizes) == 1:
                return token
            exact = (k <= sizes[0]) | ((k == n_vocab) & covered)
            return tf.cond(exact, lambda: token, lambda: first_exact(sizes[1:]))
        sizes = sorted({min(c, n_vocab) for c in CANDIDATES} | {n_vocab})
        return tf.cond((k < n_vocab) | (top_p < 1), lambda: first_exact(sizes), whole)
    return tf.cond((temperature == 0) | (top_k == 1), greedy, sampled)


def put(buffer, value, index, axis, xla):
    """buffer with value written at `index` of `axis` (value's size there: 1), in place where possible."""
    if xla:
        from tensorflow.compiler.tf2xla.python import xla as xla_ops
        start = [tf.constant(0)] * buffer.shape.rank
        start[axis] = index
        return xla_ops.dynamic_update_slice(buffer, value, tf.stack(start))
    begin, end = [0] * buffer.shape.rank, [0] * buffer.shape.rank
    begin[axis], end[axis] = index, index + 1
    others = sum(1 << a for a in range(buffer.shape.rank) if a != axis)
    return tf.raw_ops.TensorStridedSliceUpdate(input=buffer, begin=tf.stack(begin), end=tf.stack(end),
                                               strides=tf.ones([buffer.shape.rank], tf.int32), value=value,
                                               begin_mask=others, end_mask=others)


class GPT2(tf.Module):
    """The weights as variables and the two serving functions."""

    def __init__(self, hparams, params, vocab_dir, xla=True):
        super().__init__(name='gpt2')
        self.hparams = dict(hparams)
        # Variables, not constants: a graph holding the weights would exceed protobuf's 2 GB for 774M and up.
        # Each keeps the dtype checkpoint.load gave it (LayerNorm's float32 beside bfloat16 matmul weights).
        self.weights = {name: tf.Variable(value, trainable=False, name=name.replace('/', '.'))
                        for name, value in params.items()}
        self.vocabulary = {f: tf.saved_model.Asset(os.path.join(vocab_dir, f)) for f in VOCAB_FILES}
        self.xla = xla

    def _decode_loop(self, params, buffers, last, n, length, temperature, top_k, top_p, seed):
        """The new tokens int32 [batch, capacity] (the first `length` of them real) after the prompt's last
        token last [batch], whose n earlier tokens' keys and values fill slots 0..n-1 of each layer's buffer
        [batch, 2, heads, capacity, head_dim].  Under XLA, compiled once per batch size and capacity.

        Each step writes the previous token's keys and values (`pending`) into the buffers, then attends to
        them: written before read, a buffer is updated in place (under XLA, written after a read, copied)."""
        h = self.hparams
        slots = tf.range(tf.shape(buffers[0])[3])
        if self.xla:
            # The blocks' matmuls on transposed copies, made once per call: for a few rows XLA's CPU matmul is
            # faster with the weight as the left operand (sample.py's decoder does the same).
            params = dict(params, **{k: sample._OutputMajor(tf.transpose(w[0])) for k, w in params.items()
                                     if k.startswith('model/h') and k.endswith('/w')})

        def step(i, last, new, pendings, buffers):
            pos = n + i
            buffers = [put(b, kv, tf.maximum(pos - 1, 0), 3, self.xla) for b, kv in zip(buffers, pendings)]
            # Slots before pos, then the token itself: [1, 1, 1, capacity + 1].
            mask = tf.concat([slots < pos, [True]], axis=0)[None, None, None]
            x = tf.gather(params['model/wte'], last[:, None]) + params['model/wpe'][pos]   # [batch, 1, n_embd]
            pendings = []
            for layer, past in enumerate(buffers):
                x, present = model.block(x, params, f'model/h{layer}', h['n_head'], past=past, mask=mask)
                pendings.append(present)
            x = model.norm(x[:, 0], params['model/ln_f/g'], params['model/ln_f/b'])
            # wte @ x^T, not x @ wte^T: faster for a few rows (TensorFlow's and XLA's CPU matmuls alike).
            logits = tf.cast(tf.transpose(tf.matmul(params['model/wte'], x, transpose_b=True)), tf.float32)
            token = draw(logits, tf.stack([seed, i]), temperature, top_k, top_p)                    # [batch]
            new = put(new, token[:, None], i, 1, self.xla)
            return i + 1, token, new, pendings, buffers

        # pending for slot n - 1 (there already: rewritten as is), or for none yet when the prompt is one token
        pendings = [b[:, :, :, tf.maximum(n - 1, 0)][:, :, :, None] for b in buffers]
        new = tf.zeros([tf.shape(last)[0], tf.shape(buffers[0])[3]], tf.int32)             # [batch, capacity]
        return tf.while_loop(lambda i, *_: i < length, step, [tf.constant(0), last, new, pendings, buffers])[2]

    def _params(self):
        """The weights as tensors, read once per call.  model.model gathers from wte; a gather from a
        variable puts it in copy-on-read mode, and every later read of wte would then copy it."""
        return {name: w.read_value() for name, w in self.weights.items()}

    def _check_tokens(self, tokens, extra=0):
        h = self.hparams
        seq = tf.shape(tokens)[1]
        return [
            tf.debugging.assert_greater(seq, 0, message='tokens must hold at least one token per row'),
            tf.debugging.assert_less_equal(extra, h['n_ctx'] - seq, message=(   # no int32 overflow
                f'tokens + length exceed the context of {h["n_ctx"]}; shorten the prompt or lower length')),
            tf.debugging.assert_non_negative(tokens, message=f'token ids must be in [0, {h["n_vocab"]})'),
            tf.debugging.assert_less(tokens, h['n_vocab'], message=f'token ids must be in [0, {h["n_vocab"]})'),
        ]

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.int32, name='tokens')])
    def logits(self, tokens):
        """tokens int32 [batch, seq] -> {'logits': float32 [batch, seq, n_vocab]}."""
        with tf.control_dependencies(self._check_tokens(tokens)):
            tokens = tf.identity(tokens)
        out = model.model(self.hparams, tokens, params=self._params())
        return {'logits': tf.cast(out['logits'], tf.float32)}

    @tf.function(autograph=False, input_signature=[
        tf.TensorSpec([None, None], tf.int32, name='tokens'), tf.TensorSpec([], tf.int32, name='length'),
        tf.TensorSpec([], tf.float32, name='temperature'), tf.TensorSpec([], tf.int32, name='top_k'),
        tf.TensorSpec([], tf.float32, name='top_p'), tf.TensorSpec([], tf.int32, name='seed')])
    def generate(self, tokens, length, temperature, top_k, top_p, seed):
        """{'tokens': int32 [batch, seq + length]}: the prompt tokens and `length` new ones."""
        h = self.hparams
        checks = self._check_tokens(tokens, extra=length) + [
            tf.debugging.assert_non_negative(length, message='length must be >= 0'),
            tf.debugging.Assert(tf.math.is_finite(temperature) & (temperature >= 0),
                                ['temperature must be >= 0 (0 means greedy), got', temperature]),
            tf.debugging.assert_non_negative(top_k, message='top_k must be >= 0 (0 means no top-k truncation)'),
            tf.debugging.Assert((top_p > 0) & (top_p <= 1),
                                ['top_p must be in (0, 1] (1 means no nucleus truncation), got', top_p]),
        ]
        with tf.control_dependencies(checks):   # nothing runs on unchecked inputs (e.g. a huge length)
            tokens, length, temperature, top_k, top_p = (
                tf.identity(t) for t in (tokens, length, temperature, top_k, top_p))

        params = self._params()

        def decode():
            # The prompt but its last token in one plain pass (its shapes vary per call; XLA would compile
            # each), its keys and values padded into fixed buffers; then the loop.
            n = tf.shape(tokens)[1] - 1
            bucket = CAPACITY_STEP if self.xla else 1   # XLA compiles once per capacity; plain TensorFlow need not
            capacity = tf.minimum(h['n_ctx'], (n + length + bucket - 1) // bucket * bucket)
            x = tf.gather(params['model/wte'], tokens[:, :-1]) + params['model/wpe'][:n]
            buffers = []
            for layer in range(h['n_layer']):
                x, present = model.block(x, params, f'model/h{layer}', h['n_head'])
                buffers.append(tf.pad(present, [[0, 0], [0, 0], [0, 0], [0, capacity - n], [0, 0]]))
            decode_loop = tf.function(self._decode_loop, autograph=False, jit_compile=self.xla)
            new = decode_loop(params, buffers, tokens[:, -1], n, length, temperature, top_k, top_p, seed)
            return tf.concat([tokens, new[:, :length]], axis=1)
        return {'tokens': tf.cond(length > 0, decode, lambda: tokens)}


def next_version(out):
    """1 + the largest integer-named version folder in out, or 1."""
    versions = [int(e) for e in os.listdir(out) if e.isdigit()] if os.path.isdir(out) else []
    return max(versions, default=0) + 1


def export(model_dir, out, precision='float32', version=None, xla=True):
    """Write the model in model_dir as a SavedModel at out/<version>/; returns that path.

    version: an integer, or None for the next free one.  xla: compile generate's decoding loop with XLA
    (docs/export.md says what a server then needs); False: a plain TensorFlow graph.  The vocabulary is
    model_dir's encoder.json and vocab.bpe, or the vendored GPT-2 vocabulary when model_dir has none.
    Nothing is left behind when the export fails."""
    cli.precision_name(precision, ('float32', 'bfloat16'))   # float16 serves only on GPUs: not offered
    version = cli.integer('version', version, minimum=1, allow_none=True)
    if not isinstance(xla, bool):
        raise cli.UsageError(f'--xla takes no value (--xla or --noxla), got {xla!r}')
    # The sampler's precision policy: matmul weights in `precision`, cast group by group as they are read
    # (a lower peak than casting a float32 copy), LayerNorm's gains and biases float32.
    hparams, params = checkpoint.load(model_dir, dtype=tf.as_dtype(precision))
    vocab_dir = model_dir if all(os.path.isfile(os.path.join(model_dir, f)) for f in VOCAB_FILES) else VENDORED_VOCAB
    out = files.expand(out)
    version = version or next_version(out)
    final = os.path.join(out, str(version))
    if os.path.exists(final):
        raise cli.UsageError(f'{final} already exists; give another --version or leave it out for the next free one')
    made = []   # the folders of out that this export creates, removed again if it fails
    parent = os.path.abspath(out)
    while not os.path.isdir(parent):
        made.append(parent)
        parent = os.path.dirname(parent)
    tmp = None
    try:
        os.makedirs(out, exist_ok=True)
        tmp = os.path.join(out, f'.export-{version}-{os.getpid()}-{secrets.token_hex(4)}')
        os.mkdir(tmp)   # unlike tempfile.mkdtemp's 0700, readable by a server running as another user
        module = GPT2(hparams, params, vocab_dir, xla)
        del params   # the variables hold the weights now; a second copy need not stay in memory
        generate = module.generate.get_concrete_function()
        tf.saved_model.save(module, tmp, signatures={
            'serving_default': generate, 'generate': generate, 'logits': module.logits.get_concrete_function()})
        os.rename(tmp, final)
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise
    return final


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(model_name='124M', models_dir='models', out=None, precision='float32', version=None, xla=True):
    """Export a model as a versioned SavedModel with `generate` (serving_default) and `logits` signatures.

    Args:
      model_name: folder inside models_dir (124M, 355M, ... or your own, e.g. from train.py)
      models_dir: folder holding the models
      out: where the versions go (default exported/MODEL_NAME); writes OUT/VERSION/
      precision: float32 or bfloat16 (the weights' type; logits are always float32)
      version: integer version folder; default: one more than the largest there
      xla: compile generate's decoding loop with XLA (default); --noxla for servers without XLA
    """
    t0 = time.time()
    path = export(checkpoint.model_path(model_name, models_dir), out or os.path.join('exported', str(model_name)),
                  precision, version, xla)
    print(f'exported {model_name} ({precision}{", XLA" if xla else ""}) to {path} in {time.time() - t0:.1f} s: '
          f'{folder_size(path) / 2**20:.1f} MiB, signatures generate (= serving_default) and logits')


if __name__ == '__main__':
    cli.run(main)
