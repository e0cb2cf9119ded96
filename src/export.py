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
      buffers (decode.py, the sampler's core), compiled with XLA (--noxla: a plain graph, for servers without XLA).  temperature 0 or
      top_k 1: greedy; top_k 0 and top_p 1: no truncation; the same seed gives the same tokens.
  generate_watermarked: generate's inputs and watermark_key int32, watermark_gamma float32, watermark_delta
      float32 -> tokens, the samples watermarked as the sampler's (watermark.py).
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
import decode
import files
import model
import quantize
import speed
import watermark

VOCAB_FILES = ('encoder.json', 'vocab.bpe')
VENDORED_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vocab')


CAPACITY_STEP = 128   # key/value buffers hold a multiple of this many tokens (or n_ctx)


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

    def _decode_loop(self, params, buffers, pending, first, n, length, temperature, top_k, top_p, seed, mark):
        """The new tokens int32 [batch, capacity] (the first `length` of them real) from first [batch], the
        first new token, on: the prompt's n tokens fill slots 0..n-1 of the buffers [batch, 2, heads,
        capacity, head_dim], the last one's keys and values still pending (decode.step).  Under XLA,
        compiled once per batch size and capacity."""
        h = self.hparams
        layouts = {'model/wte': params['model/wte']}   # wte @ x^T: faster for a few rows than x @ wte^T
        if self.xla:
            # The blocks' matmuls on transposed copies, made once per call: for a few rows XLA's CPU matmul is
            # faster with the weight as the left operand (the sampler's copies, speed.layout_matmul).
            layouts.update({k: speed.as_matrix_t(w) for k, w in params.items() if w.shape.rank == 3})
        layouts = {k: w for k, w in layouts.items() if w.dtype != tf.int8}   # int8: output-major as loaded
        matmul = speed.layout_matmul(quantize.xla_matmul if self.xla else model.plain_matmul, output_major=layouts,
                                     barrier=self.xla)
        start = tf.zeros_like(first)

        def step(i, token, new, pending, buffers):
            new = tf.tensor_scatter_nd_update(new, tf.stack([tf.range(tf.shape(token)[0]), tf.fill(tf.shape(token), i)],
                                                            axis=1), token)
            logits, pending, buffers = decode.step(h, params, buffers, pending, token, n + i, start, matmul, self.xla)
            if mark is not None:
                logits = watermark.bias_logits(logits, token, *mark)
            token = decode.draw(logits, tf.stack([seed, i + 1]), temperature, top_k, top_p)[0]     # [batch]
            return i + 1, token, new, pending, buffers

        new = tf.zeros([tf.shape(first)[0], tf.shape(buffers[0][0])[2]], tf.int32)          # [batch, capacity]
        _, last, new, _, _ = tf.while_loop(lambda i, *_: i < length - 1, step,
                                           [tf.constant(0), first, new, pending, buffers])
        return tf.tensor_scatter_nd_update(new, tf.stack([tf.range(tf.shape(last)[0]),
                                                          tf.fill(tf.shape(last), length - 1)], axis=1), last)

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
        out = model.model(self.hparams, tokens, params=self._params(),
                          matmul=quantize.compiled_matmul if self.xla else None)
        return {'logits': tf.cast(out['logits'], tf.float32)}

    SETTINGS = [tf.TensorSpec([None, None], tf.int32, name='tokens'), tf.TensorSpec([], tf.int32, name='length'),
                tf.TensorSpec([], tf.float32, name='temperature'), tf.TensorSpec([], tf.int32, name='top_k'),
                tf.TensorSpec([], tf.float32, name='top_p'), tf.TensorSpec([], tf.int32, name='seed')]

    @tf.function(autograph=False, input_signature=SETTINGS)
    def generate(self, tokens, length, temperature, top_k, top_p, seed):
        """{'tokens': int32 [batch, seq + length]}: the prompt tokens and `length` new ones."""
        return self._generate(tokens, length, temperature, top_k, top_p, seed)

    @tf.function(autograph=False, input_signature=SETTINGS + [
        tf.TensorSpec([], tf.int32, name='watermark_key'), tf.TensorSpec([], tf.float32, name='watermark_gamma'),
        tf.TensorSpec([], tf.float32, name='watermark_delta')])
    def generate_watermarked(self, tokens, length, temperature, top_k, top_p, seed, watermark_key, watermark_gamma,
                             watermark_delta):
        """generate, with delta added to the green tokens' logits before temperature, top-k and top-p
        (watermark.py: the green list after each previous token, docs/research.md)."""
        checks = [
            tf.debugging.assert_non_negative(watermark_key, message='watermark_key must be in [0, 2**31)'),
            tf.debugging.Assert((watermark_gamma > 0) & (watermark_gamma < 1),
                                ['watermark_gamma must be in (0, 1), got', watermark_gamma]),
            tf.debugging.Assert(tf.math.is_finite(watermark_delta) & (watermark_delta >= 0),
                                ['watermark_delta must be >= 0, got', watermark_delta])]
        with tf.control_dependencies(checks):
            mark = tuple(tf.identity(t) for t in (watermark_key, watermark_gamma, watermark_delta))
        return self._generate(tokens, length, temperature, top_k, top_p, seed, mark)

    def _generate(self, tokens, length, temperature, top_k, top_p, seed, mark=None):
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

        def generated():
            # The prompt in one plain pass (its shapes vary per call; XLA would compile each), its keys and
            # values into fixed buffers; the first new token from its logits; then the loop.
            n = tf.shape(tokens)[1]
            bucket = CAPACITY_STEP if self.xla else 1   # XLA compiles once per capacity; plain TensorFlow need not
            capacity = tf.minimum(h['n_ctx'], (n + length + bucket - 1) // bucket * bucket)
            start = tf.zeros([tf.shape(tokens)[0]], tf.int32)
            logits, buffers, pending = decode.prefill(h, params, tokens, start, capacity,
                                                      quantize.compiled_matmul if self.xla else None)
            if mark is not None:
                logits = watermark.bias_logits(logits, tokens[:, -1], *mark)
            first = decode.draw(logits, tf.stack([seed, 0]), temperature, top_k, top_p)[0]
            decode_loop = tf.function(self._decode_loop, autograph=False, jit_compile=self.xla)
            new = decode_loop(params, buffers, pending, first, n, length, temperature, top_k, top_p, seed, mark)
            return tf.concat([tokens, new[:, :length]], axis=1)
        return {'tokens': tf.cond(length > 0, generated, lambda: tokens)}


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
    cli.precision_name(precision, ('float32', 'bfloat16', 'int8'))   # float16 serves only on GPUs: not offered
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
            'serving_default': generate, 'generate': generate, 'logits': module.logits.get_concrete_function(),
            'generate_watermarked': module.generate_watermarked.get_concrete_function()})
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
      precision: float32, bfloat16 or int8 (the weights' type: int8 quantised at load, quantize.py; logits are always float32)
      version: integer version folder; default: one more than the largest there
      xla: compile generate's decoding loop with XLA (default); --noxla for servers without XLA
    """
    t0 = time.time()
    path = export(checkpoint.model_path(model_name, models_dir), out or os.path.join('exported', str(model_name)),
                  precision, version, xla)
    print(f'exported {model_name} ({precision}{", XLA" if xla else ""}) to {path} in {time.time() - t0:.1f} s: '
          f'{folder_size(path) / 2**20:.1f} MiB, signatures generate (= serving_default), generate_watermarked and logits')


if __name__ == '__main__':
    cli.run(main)
