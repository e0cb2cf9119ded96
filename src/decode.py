"""The decode core that sample.py and export.py share: the prompt pass into fixed key/value buffers, the
one-token step, the buffer write and the draw.  All the network is model.model's.

Buffers: per layer a pair, keys and values, each [batch, heads, capacity, head_dim] (tensors, or
variables written in place; kept apart so that attention reads each without slicing a copy out).  Slot s of a row holds its token at column base + s; row r's real tokens start at
slot start[r] (left padding before).  The step protocol: each step first writes `pending`, the previous
token's keys and values, at slot pos - 1, then feeds the new token at slot pos, which attends to the
buffers and to itself; its own keys and values are the next step's pending.  Written before they are
read, the buffers are updated in place (under XLA, a buffer written after a read in the same step is
copied).
"""
import collections

import numpy as np
import tensorflow as tf

import controls
import model
import speed
import watermark


def prefill(hparams, params, tokens, start, capacity, matmul=None):
    """Feed tokens int32 [batch, n], row r from slot start[r] on, into fresh buffers of `capacity` slots.
    Returns (the last position's logits float32 [batch, n_vocab], the buffers, pending: the last token's
    keys and values [batch, n_layer, 2, heads, 1, head_dim])."""
    n = model.shape_list(tokens)[1]
    out = model.model(hparams, tokens, past=model.Slots(start), params=params, matmul=matmul, last=True)
    present = out['present']                                                  # [batch, n_layer, 2, heads, n, hd]
    padded = tf.pad(present, [[0, 0], [0, 0], [0, 0], [0, 0], [0, capacity - n], [0, 0]])
    return out['logits'][:, -1], [(kv[:, 0], kv[:, 1]) for kv in tf.unstack(padded, axis=1)], present[..., -1:, :]


def step(hparams, params, buffers, pending, tokens, pos, start, matmul=None, xla=False):
    """Write pending at slot pos - 1 of each buffer, then feed tokens int32 [batch] at slot pos.
    Returns (logits float32 [batch, n_vocab], the next pending, the buffers as written)."""
    buffers = [(write(k, kv[:, 0], pos - 1, xla), write(v, kv[:, 1], pos - 1, xla))
               for (k, v), kv in zip(buffers, tf.unstack(pending, axis=1))]               # kv [batch, 2, heads, 1, hd]
    out = model.model(hparams, tokens[:, None], past=model.Slots(start, pos, buffers), params=params,
                      matmul=matmul)
    return out['logits'][:, -1], out['present'], buffers


def write(buffer, value, slot, xla=False):
    """buffer [batch, heads, capacity, hd] with value [batch, heads, 1, hd] at `slot`; a variable is
    written in place.  Returns the buffer's new value (a tensor).  xla: the step is compiled with XLA,
    where a tensor's update needs XLA's own op (speed.update_slice)."""
    if xla:
        new = speed.update_slice(buffer.read_value() if isinstance(buffer, tf.Variable) else buffer, value,
                                 [0, 0, slot, 0])
        if isinstance(buffer, tf.Variable):
            buffer.assign(new)
        return new
    if isinstance(buffer, tf.Variable):
        buffer[:, :, slot:slot + 1].assign(value)
        return buffer.read_value()
    begin = tf.stack([0, 0, slot, 0])
    return tf.raw_ops.TensorStridedSliceUpdate(input=buffer, begin=begin, end=begin + [0, 0, 1, 0],
                                               strides=tf.ones([4], tf.int32), value=value,
                                               begin_mask=0b1011, end_mask=0b1011)


# --- the draw ------------------------------------------------------------------------------------------

CANDIDATES = (64, 1024)   # a truncated draw looks at this many most likely tokens first, then this many


class Draw(collections.namedtuple('Draw', 'temperature top_k top_p controls watermark scores',
                                  defaults=(None, None, False))):
    """How the next token is chosen, fixed for a whole sample (and a key of the compiled steps):
    temperature, top_k, top_p; controls: a controls.Controls or None; watermark: (key, gamma, delta) or
    None; scores: whether to return the drawn tokens' log-probabilities."""

    @property
    def needs_history(self):
        return self.controls is not None and self.controls.penalizes


def choose(logits, seed, d, prev=None, history=None):
    """Next tokens int32 [batch] after logits float32 [batch, n_vocab], in Hugging Face's order: the
    controls' penalties and bans (history: (tokens [batch, T], start [batch], length, new_count), see
    controls.apply_penalties), the watermark's bias on the green tokens after prev int32 [batch], then
    temperature, top-k, top-p, min-p, typical and the draw (seed [2]).  Returns (tokens, scores): None, or
    with d.scores (the model's log-probability of each token, before any of that; its log-probability
    under the distribution it was drawn from, 0 when greedy), each float32 [batch]."""
    processed = logits
    if d.needs_history:
        processed = controls.apply_penalties(processed, d.controls, *history)
    if d.watermark is not None:
        processed = watermark.bias_logits(processed, prev, *d.watermark)
    truncate = None
    if d.controls is not None and d.controls.truncates:
        truncate = lambda values: controls.truncate(values, d.controls)
    tokens, drawn = draw(processed, seed, d.temperature, d.top_k, d.top_p, truncate)
    if not d.scores:
        return tokens, None
    model = tf.gather(logits, tokens, batch_dims=1) - tf.reduce_logsumexp(logits, axis=-1)
    return tokens, (model, drawn)


def draw(logits, seed, temperature, top_k, top_p, truncate=None):
    """(next tokens int32 [batch], their log-probabilities under the distribution drawn from, float32
    [batch]) from logits float32 [batch, n_vocab] and a stateless seed [2]: greedy when temperature is 0
    or top_k is 1 (log-probability 0); else temperature, then top-k (0: off), then nucleus top-p over what
    is left (1: off), then truncate (a function of the kept logits, e.g. min-p and typical), then a draw.

    The settings may be Python numbers (the branches are then chosen as the draw is built, and top-k
    takes exactly k candidates) or tensors (chosen as it runs, as in a SavedModel).  A truncated draw
    with a tensor top_k, or top-p alone, takes the most likely CANDIDATES[0] tokens, which is exact when
    the kept tokens lie within them; else the next number of CANDIDATES, and at last the whole vocabulary."""
    n_vocab = logits.shape[-1]

    def greedy():
        return tf.argmax(logits, axis=-1, output_type=tf.int32), tf.zeros(tf.shape(logits)[:1])

    def sampled():
        # Shifted so the largest logit is 0 and floored at -1e10: a tiny temperature (even one that float32
        # flushes to zero) leaves the most likely token at 0, never inf or NaN.
        shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
        scaled = tf.where(shifted < 0, tf.maximum(shifted / temperature, -1e10), 0.0)
        if _static(top_k):
            if 0 < top_k < n_vocab:
                return _truncated(scaled, seed, top_k, top_k, top_p, truncate)[::2]
            k = n_vocab
        else:
            k = tf.where((top_k > 0) & (top_k < n_vocab), top_k, n_vocab)         # the tokens top-k keeps

        def first_exact(sizes):
            token, covered, logp = _truncated(scaled, seed, sizes[0], k, top_p, truncate)
            if len(sizes) == 1:
                return token, logp
            exact = (k <= sizes[0]) | ((k == n_vocab) & covered)
            return tf.cond(exact, lambda: (token, logp), lambda: first_exact(sizes[1:]))

        def whole():
            values = scaled if truncate is None else truncate(scaled)
            token = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)[:, 0]
            return token, _log_prob(values, token)
        sizes = sorted({min(c, n_vocab) for c in CANDIDATES} | {n_vocab})
        return _cond((k < n_vocab) | (top_p < 1), lambda: first_exact(sizes), whole)
    return _cond((temperature == 0) | (top_k == 1), greedy, sampled)


def _truncated(scaled, seed, candidates, k, top_p, truncate=None):
    """A draw among the `candidates` most likely tokens of scaled [batch, n_vocab], of which the first k
    are kept, then the nucleus top_p of those, then truncate.  Returns (tokens [batch], whether every
    row's nucleus lay within the candidates, the tokens' log-probabilities as drawn)."""
    n_vocab = scaled.shape[-1]
    values, indices = tf.math.top_k(scaled, k=candidates)                          # [batch, candidates], sorted
    if not (_static(k) and k >= candidates):
        values = tf.where(tf.range(candidates) < k, values, -1e10)
    covered = True
    if not (_static(top_p) and top_p >= 1):
        # Probabilities within what top-k keeps: the first k candidates, or the whole vocabulary.
        total = _cond(k < n_vocab, lambda: tf.reduce_logsumexp(values, axis=-1, keepdims=True),
                      lambda: tf.reduce_logsumexp(scaled, axis=-1, keepdims=True))           # [batch, 1]
        probs = tf.exp(values - total)
        mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
        covered = tf.reduce_all(mass_before[:, -1] + probs[:, -1] >= top_p)                 # the nucleus is in
        values = tf.where((mass_before < top_p) | (top_p >= 1), values, -1e10)
    if truncate is not None:
        values = truncate(values)
    pick = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)                 # [batch, 1]
    return tf.gather(indices, pick, batch_dims=1)[:, 0], covered, _log_prob(values, pick[:, 0])


def _log_prob(values, index):
    """log softmax(values)[row, index[row]]: values [batch, n], index int32 [batch]."""
    return tf.gather(values, index, batch_dims=1) - tf.reduce_logsumexp(values, axis=-1)


def _static(value):
    return isinstance(value, (bool, int, float, np.number, np.bool_))


def _cond(pred, true_fn, false_fn):
    """tf.cond, or the branch itself where pred is known while building."""
    if _static(pred):
        return true_fn() if pred else false_fn()
    return tf.cond(pred, true_fn, false_fn)
