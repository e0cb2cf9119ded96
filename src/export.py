#!/usr/bin/env python3
"""Export a GPT-2 checkpoint as a SavedModel that TensorFlow Serving, `saved_model_cli` and plain
`tf.saved_model.load` run without this code.

    python src/export.py --model_name 124M --out exported/124M [--precision bfloat16] [--version 3]

writes exported/124M/<version>/ (the layout TF Serving expects; the next free integer by default),
atomically: the SavedModel is written into a hidden folder beside it and renamed when complete.

Signatures:
  generate (also serving_default): tokens int32 [batch, seq], length int32, temperature float32,
      top_k int32, top_p float32, seed int32 -> tokens int32 [batch, seq + length].  Cached decoding:
      the prompt in one pass, then one token per step of a tf.while_loop over the keys and values of
      the tokens so far.  temperature 0 or top_k 1: greedy; top_k 0 and top_p 1: no truncation; the
      same seed gives the same tokens.
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

PRECISIONS = {'float32': tf.float32, 'bfloat16': tf.bfloat16}
VOCAB_FILES = ('encoder.json', 'vocab.bpe')
VENDORED_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')


def draw(logits, seed, temperature, top_k, top_p):
    """Next tokens int32 [batch] from logits float32 [batch, n_vocab], with the settings as tensors:
    greedy when temperature is 0 or top_k is 1; else temperature, then top-k (0: off), then nucleus
    top-p over what is left (1: off), then a draw with the stateless seed [2]."""
    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32)

    def sampled():
        # Shifted so the largest logit is 0 and floored at -1e10: a tiny temperature gives no inf or NaN.
        shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
        scaled = tf.where(shifted < 0, tf.maximum(shifted / temperature, -1e10), 0.0)

        def truncated():
            k = tf.where(top_k > 0, tf.minimum(top_k, logits.shape[-1]), logits.shape[-1])
            values, indices = tf.math.top_k(scaled, k=k)                                  # [batch, k], sorted
            mass_before = tf.cumsum(tf.nn.softmax(values, axis=-1), axis=-1, exclusive=True)
            values = tf.where((mass_before < top_p) | (top_p >= 1), values, -1e10)
            pick = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)        # [batch, 1]
            return tf.gather(indices, pick, batch_dims=1)[:, 0]

        def whole():
            return tf.random.stateless_categorical(scaled, 1, seed, dtype=tf.int32)[:, 0]
        return tf.cond((top_k > 0) | (top_p < 1), truncated, whole)
    return tf.cond((temperature == 0) | (top_k == 1), greedy, sampled)


class GPT2(tf.Module):
    """The weights as variables and the two serving functions."""

    def __init__(self, hparams, params, vocab_dir, dtype=tf.float32):
        super().__init__(name='gpt2')
        self.hparams = dict(hparams)
        # Variables, not constants: a graph holding the weights would exceed protobuf's 2 GB for 774M and up.
        self.weights = {name: tf.Variable(tf.cast(value, dtype), trainable=False, name=name.replace('/', '.'))
                        for name, value in params.items()}
        self.vocabulary = {f: tf.saved_model.Asset(os.path.join(vocab_dir, f)) for f in VOCAB_FILES}

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
            # The prompt but its last token fills the caches; each step feeds the latest token and draws the
            # next.  One cache per layer (not model.model's stacked past) saves a copy of all of them per step.
            n = tf.shape(tokens)[1] - 1
            pasts = tf.unstack(model.model(h, tokens[:, :-1], params=params)['present'], axis=1)
            # pasts: n_layer x [batch, 2, n_head, n, head_dim]

            def step(i, last, new, *pasts):
                x = tf.gather(params['model/wte'], last[:, None]) + tf.gather(params['model/wpe'], n + i)
                presents = []
                for layer, past in enumerate(pasts):                                 # x: [batch, 1, n_embd]
                    x, present = model.block(x, params, f'model/h{layer}', h['n_head'], past=past)
                    presents.append(tf.concat([past, present], axis=-2))
                x = model.norm(x[:, 0], params['model/ln_f/g'], params['model/ln_f/b'])
                # wte @ x^T, not x @ wte^T: TensorFlow's CPU matmul takes 2-3x longer the other way round for 8 rows.
                logits = tf.cast(tf.transpose(tf.matmul(params['model/wte'], x, transpose_b=True)), tf.float32)
                token = draw(logits, tf.stack([seed, i]), temperature, top_k, top_p)                # [batch]
                return (i + 1, token, new.write(i, token), *presents)

            past_shape = tf.TensorShape([None, 2, h['n_head'], None, h['n_embd'] // h['n_head']])
            _, _, new, *_ = tf.while_loop(
                lambda i, *_: i < length, step,
                [tf.constant(0), tokens[:, -1], tf.TensorArray(tf.int32, size=length), *pasts],
                shape_invariants=[tf.TensorShape([]), tf.TensorShape([None]), tf.TensorShape(None)]
                + [past_shape] * h['n_layer'])
            return tf.concat([tokens, tf.transpose(new.stack())], axis=1)    # new.stack(): [length, batch]
        return {'tokens': tf.cond(length > 0, decode, lambda: tokens)}


def next_version(out):
    """1 + the largest integer-named version folder in out, or 1."""
    versions = [int(e) for e in os.listdir(out) if e.isdigit()] if os.path.isdir(out) else []
    return max(versions, default=0) + 1


def export(model_dir, out, precision='float32', version=None):
    """Write the model in model_dir as a SavedModel at out/<version>/; returns that path.

    version: an integer, or None for the next free one.  The vocabulary is model_dir's encoder.json
    and vocab.bpe, or the vendored GPT-2 vocabulary when model_dir has none.  Nothing is left behind
    when the export fails."""
    if precision not in PRECISIONS:
        raise cli.UsageError(f'--precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    version = cli.integer('version', version, minimum=1, allow_none=True)
    hparams, params = checkpoint.load(model_dir)
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
        module = GPT2(hparams, params, vocab_dir, PRECISIONS[precision])
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


def main(model_name='124M', models_dir='models', out=None, precision='float32', version=None):
    """Export a model as a versioned SavedModel with `generate` (serving_default) and `logits` signatures.

    Args:
      model_name: folder inside models_dir (124M, 355M, ... or your own, e.g. from train.py)
      models_dir: folder holding the models
      out: where the versions go (default exported/MODEL_NAME); writes OUT/VERSION/
      precision: float32 or bfloat16 (the weights' type; logits are always float32)
      version: integer version folder; default: one more than the largest there
    """
    t0 = time.time()
    path = export(checkpoint.model_path(model_name, models_dir), out or os.path.join('exported', str(model_name)),
                  precision, version)
    print(f'exported {model_name} ({precision}) to {path} in {time.time() - t0:.1f} s: '
          f'{folder_size(path) / 2**20:.1f} MiB, signatures generate (= serving_default) and logits')


if __name__ == '__main__':
    cli.run(main)
