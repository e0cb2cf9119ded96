"""A soft red/green-list watermark (Kirchenbauer et al., ICML 2023) with a context width of one token.

The green list, this project's published specification (all arithmetic on unsigned 32-bit integers,
mod 2**32): for the previous token p, token v is green when

    fmix32((KEY * 0x9E3779B1 + p) * 0x85EBCA6B + v) < floor(gamma * 2**32)

where fmix32 is MurmurHash3's finaliser: h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13;
h *= 0xC2B2AE35; h ^= h >> 16.  About a fraction gamma of the vocabulary is green after each token.

green_numpy is the reference.  green_mask and bias_logits are TensorFlow: pure functions of tensors
that run eagerly, inside tf.function and under XLA, on int64 with every product split so that it never
leaves the int64 range (uint32 ops lack kernels on some devices).  z_score is the detector.
"""
import math
import numbers

import numpy as np

GOLDEN = 0x9E3779B1
C1 = 0x85EBCA6B
C2 = 0xC2B2AE35
MASK32 = 0xFFFFFFFF


class WatermarkError(ValueError):
    """A key, gamma or delta that the watermark cannot use; one line, with the range."""


def check_key(key):
    """key as an int in [0, 2**31), or a WatermarkError."""
    if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) or not 0 <= key < 2 ** 31:
        raise WatermarkError(f'the watermark key must be an integer in [0, 2**31), got {key!r}')
    return int(key)


def check_gamma(gamma):
    """gamma, the green fraction, as a float in (0, 1), or a WatermarkError."""
    if (isinstance(gamma, (bool, np.bool_)) or not isinstance(gamma, numbers.Real)
            or not 0 < gamma < 1):
        raise WatermarkError(f'the watermark gamma (green fraction) must be a number in (0, 1), got {gamma!r}')
    return float(gamma)


def check_delta(delta):
    """delta, the bias added to green logits, as a finite float >= 0, or a WatermarkError."""
    if (isinstance(delta, (bool, np.bool_)) or not isinstance(delta, numbers.Real)
            or not math.isfinite(delta) or delta < 0):
        raise WatermarkError(f'the watermark delta must be a finite number >= 0, got {delta!r}')
    return float(delta)


def threshold(gamma):
    """floor(gamma * 2**32): hashes below it are green."""
    return math.floor(check_gamma(gamma) * 2 ** 32)


# ---------------------------------------------------------------------------------------------
# numpy: the reference.

def _fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(C1)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(C2)
    return h ^ (h >> np.uint32(16))


def hash_numpy(key, prev, tokens):
    """uint32 hash of each (prev, token) pair, broadcast over prev and tokens."""
    key = np.asarray(check_key(key), np.uint32)
    prev = np.asarray(prev).astype(np.uint32)
    tokens = np.asarray(tokens).astype(np.uint32)
    with np.errstate(over='ignore'):   # wrapping mod 2**32 is the point (numpy warns for scalars only)
        seed = key * np.uint32(GOLDEN) + prev
        return _fmix32(seed * np.uint32(C1) + tokens)


def is_green(key, prev, tokens, gamma):
    """bool: token follows prev on the green list, elementwise (broadcast)."""
    return hash_numpy(key, prev, tokens) < np.uint64(threshold(gamma))


def green_numpy(key, prev, n_vocab, gamma):
    """The green list after prev: bool [n_vocab], or [*prev.shape, n_vocab] for an array of prev tokens."""
    prev = np.asarray(prev)
    return is_green(key, prev[..., None], np.arange(n_vocab), gamma)


# ---------------------------------------------------------------------------------------------
# TensorFlow: for the sampler's compiled step.

def _mulmod(a, c):
    """a * c mod 2**32 for int64 a in [0, 2**32) and a constant c < 2**32, without int64 overflow."""
    import tensorflow as tf
    lo = tf.bitwise.bitwise_and(a, 0xFFFF)
    hi = tf.bitwise.right_shift(a, 16)
    # a * c = lo * c + hi * c * 2**16; only hi * c mod 2**16 survives the shift mod 2**32.
    high = tf.bitwise.left_shift(tf.bitwise.bitwise_and(hi * c, 0xFFFF), 16)
    return tf.bitwise.bitwise_and(lo * c + high, MASK32)


def _fmix32_tf(h):
    import tensorflow as tf
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    h = _mulmod(h, C1)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
    h = _mulmod(h, C2)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def green_mask(key, prev_tokens, n_vocab, gamma):
    """bool [batch, n_vocab]: the green list after each of prev_tokens (int [batch]).

    key: a Python int in [0, 2**31) (checked) or an integer scalar tensor (assumed in range);
    n_vocab: int or scalar tensor; gamma: a Python number in (0, 1) (checked) or a float scalar tensor.
    """
    import tensorflow as tf
    if not tf.is_tensor(key):
        key = check_key(key)
    if tf.is_tensor(gamma):   # as a SavedModel's input: floor(gamma * 2**32) in float64, exact for float32 gamma
        limit = tf.cast(tf.floor(tf.cast(gamma, tf.float64) * 2.0 ** 32), tf.int64)
    else:
        limit = threshold(gamma)
    key = tf.cast(key, tf.int64)
    prev = tf.cast(prev_tokens, tf.int64)                                            # [batch]
    seed = tf.bitwise.bitwise_and(_mulmod(key, GOLDEN) + prev, MASK32)
    base = _mulmod(seed, C1)[:, None]                                                # [batch, 1]
    v = tf.range(tf.cast(n_vocab, tf.int64), dtype=tf.int64)[None, :]                # [1, n_vocab]
    h = _fmix32_tf(tf.bitwise.bitwise_and(base + v, MASK32))                         # [batch, n_vocab]
    return h < limit


def bias_logits(logits, prev_tokens, key, gamma, delta):
    """logits [batch, n_vocab] + delta on the green list after each of prev_tokens (int [batch]).

    key: Python int or integer scalar tensor; gamma: Python number in (0, 1); delta: Python number
    >= 0 (checked) or a float scalar tensor.  The result has the logits' dtype.
    """
    import tensorflow as tf
    if not tf.is_tensor(delta):
        delta = check_delta(delta)
    logits = tf.convert_to_tensor(logits)
    n_vocab = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
    green = green_mask(key, prev_tokens, n_vocab, gamma)
    return logits + tf.cast(green, logits.dtype) * tf.cast(delta, logits.dtype)


# ---------------------------------------------------------------------------------------------
# Detection.

def z_score(tokens, key, gamma, unique_pairs=False):
    """The detector's z over the tokens that have a previous token: (g - gamma T) / sqrt(T gamma (1 - gamma)).

    tokens: a text's token ids (the first one has no previous token and is not counted); T pairs
    (previous, token), g of them green; unique_pairs=True counts each distinct pair once.
    None when T = 0.
    """
    check_key(key)
    gamma = check_gamma(gamma)
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    pairs = np.stack([tokens[:-1], tokens[1:]], axis=1) if len(tokens) > 1 else np.zeros([0, 2], np.int64)
    if unique_pairs:
        pairs = np.unique(pairs, axis=0)
    t = len(pairs)
    if t == 0:
        return None
    g = int(np.count_nonzero(is_green(key, pairs[:, 0], pairs[:, 1], gamma)))
    return (g - gamma * t) / math.sqrt(t * gamma * (1 - gamma))
