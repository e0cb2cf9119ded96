"""Hugging Face `generate`'s decoding controls as pure TensorFlow functions for a compiled decode step.

Every function here works eagerly, inside tf.function and under XLA (jit_compile=True) with static shapes:
the settings are Python values fixed at trace time, the history is a fixed buffer.

The history of each row is `tokens` int32 [batch, T] with `start` int32 [batch] (row r's first real column;
earlier columns are left padding) and `length` int32 scalar (columns >= length are not written yet), so
columns start[r]..length-1 are row r's prompt and generated tokens so far.  `new_count` int32 scalar: tokens
generated so far.  Padding is never history: each row is controlled as it would be alone.

The order is Hugging Face's (transformers 5.25 `GenerationMixin._get_logits_processor`):
apply_penalties (logit_bias, repetition_penalty, no_repeat_ngram_size, bad_words_ids, min_new_tokens), then
temperature, top-k and top-p (sample.choose), then truncate (min_p, then typical_p), then the draw.
Bans are -inf, as in Hugging Face; truncations write FILLER (-1e10), as sample.top_k_logits does.

Beam search's pure parts: first_beam_scores, beam_step (top 2*num_beams over beams*V) and BeamHypotheses
(length_penalty and early_stopping as transformers has scored beams since late 2023: see BeamHypotheses).
"""
import dataclasses
import json
import math
import numbers

import numpy as np
import tensorflow as tf

FILLER = -1e10   # what typical_logits and min_p_logits write over removed tokens
BAN = float('-inf')   # what apply_penalties writes over banned tokens


class ControlsError(ValueError):
    """A decoding control that cannot be used, with the fix."""


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class Controls:
    """Decoding controls, checked at construction (ControlsError, one line).  Every default is off.

    repetition_penalty: >= 1; each token id present in a row's history has its logit divided by it where
        positive, multiplied where negative (once per id, not per occurrence).
    no_repeat_ngram_size: n >= 1 bans every token that would complete an n-gram already in the history.
    min_new_tokens: eos_id is banned while new_count < min_new_tokens.
    logit_bias: {token id: bias} added to the logits before everything else (-inf bans the token); kept as
        a tuple of (id, bias) pairs sorted by id, so Controls is hashable (a key for compiled steps).
    bad_words_ids: token-id sequences; a 1-token one is banned always (except [eos_id], as Hugging Face
        drops it), a longer one bans its last token when the row's history ends with the others.
    typical_p: in (0, 1]: typical decoding's mass (1 means off).  min_p: in [0, 1] (0 means off).
    """
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    eos_id: int = 50256
    logit_bias: object = None
    bad_words_ids: tuple = ()
    typical_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        put = lambda name, value: object.__setattr__(self, name, value)
        put('logit_bias', _bias_pairs(self.logit_bias))
        put('bad_words_ids', _sequences(self.bad_words_ids))
        self.check()
        put('repetition_penalty', float(self.repetition_penalty))
        put('typical_p', float(self.typical_p))
        put('min_p', float(self.min_p))
        put('no_repeat_ngram_size', int(self.no_repeat_ngram_size))
        put('min_new_tokens', int(self.min_new_tokens))
        put('eos_id', int(self.eos_id))

    def check(self, n_vocab=None):
        """Raise ControlsError for the first bad value; with n_vocab, also for token ids outside [0, n_vocab)."""
        theta = self.repetition_penalty
        if not _is_number(theta) or not math.isfinite(theta) or theta < 1:
            raise ControlsError(f'repetition_penalty must be a number >= 1 (1 means off), got {theta!r}')
        for name in ('no_repeat_ngram_size', 'min_new_tokens'):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ControlsError(f'{name} must be an integer >= 0 (0 means off), got {value!r}')
        if not _is_int(self.eos_id) or self.eos_id < 0:
            raise ControlsError(f'eos_id must be an integer >= 0 (the end-of-text token, 50256 for GPT-2), '
                                f'got {self.eos_id!r}')
        p = self.typical_p
        if not _is_number(p) or not 0 < p <= 1:
            raise ControlsError(f'typical_p must be a number in (0, 1] (1 means off), got {p!r}')
        p = self.min_p
        if not _is_number(p) or not 0 <= p <= 1:
            raise ControlsError(f'min_p must be a number in [0, 1] (0 means off), got {p!r}')
        if n_vocab is not None:
            ids = [self.eos_id] * bool(self.min_new_tokens) + [i for i, _ in self.logit_bias] + \
                [i for s in self.bad_words_ids for i in s]
            outside = [i for i in ids if i >= n_vocab]
            if outside:
                raise ControlsError(f'token id {outside[0]} (in logit_bias, bad_words_ids or eos_id) is outside '
                                    f'the vocabulary of {n_vocab} tokens [0, {n_vocab})')
        return self

    @property
    def penalizes(self):
        """Whether apply_penalties does anything."""
        return bool(self.repetition_penalty != 1 or self.no_repeat_ngram_size or self.min_new_tokens
                    or self.logit_bias or self.bad_words_ids)

    @property
    def truncates(self):
        """Whether truncate does anything."""
        return self.typical_p < 1 or self.min_p > 0

    @property
    def active(self):
        """Whether any control is on."""
        return self.penalizes or self.truncates

    def _vectors(self, n_vocab):
        """(bias float32 [V] or None, always-banned bool [V] or None, the multi-token bad words), built once
        per vocabulary size."""
        cache = self.__dict__.setdefault('_vector_cache', {})
        if n_vocab not in cache:
            self.check(n_vocab)
            bias = None
            if self.logit_bias:
                bias = np.zeros([n_vocab], np.float32)
                for i, b in self.logit_bias:
                    bias[i] = b
            singles = [s[0] for s in self.bad_words_ids if len(s) == 1 and s[0] != self.eos_id]
            banned = None
            if singles:
                banned = np.zeros([n_vocab], bool)
                banned[singles] = True
            cache[n_vocab] = bias, banned, [s for s in self.bad_words_ids if len(s) > 1]
        return cache[n_vocab]


def _bias_pairs(logit_bias):
    """logit_bias (a dict, or (id, bias) pairs) as a tuple of (int, float) pairs sorted by id."""
    if logit_bias is None:
        return ()
    try:
        pairs = list(logit_bias.items() if isinstance(logit_bias, dict) else logit_bias)
        if not all(len(pair) == 2 for pair in pairs):
            raise TypeError
    except TypeError:
        raise ControlsError(f'logit_bias must be a dict {{token id: bias}}, got {logit_bias!r}') from None
    seen = set()
    for i, b in pairs:
        if not _is_int(i) or i < 0:
            raise ControlsError(f'logit_bias keys must be token ids (integers >= 0), got {i!r}')
        if not _is_number(b) or math.isnan(b) or b == math.inf:
            raise ControlsError(f'logit_bias values must be finite numbers or -inf (a ban), got {b!r} for token {i}')
        if int(i) in seen:
            raise ControlsError(f'logit_bias gives token {i} twice; give each token one bias')
        seen.add(int(i))
    return tuple(sorted((int(i), float(b)) for i, b in pairs))


def _sequences(bad_words_ids):
    """bad_words_ids as a tuple of non-empty int tuples, duplicates dropped, order kept."""
    example = 'e.g. ((262, 3290), (1169,))'
    if isinstance(bad_words_ids, (str, bytes)) or not hasattr(bad_words_ids, '__iter__'):
        raise ControlsError(f'bad_words_ids must be a sequence of token-id sequences, {example}, got {bad_words_ids!r}')
    out = []
    for s in bad_words_ids:
        if isinstance(s, (str, bytes)) or not hasattr(s, '__iter__'):
            raise ControlsError(f'bad_words_ids must be a sequence of token-id sequences, {example}, got the item {s!r}')
        s = tuple(s)
        if not s or not all(_is_int(i) and i >= 0 for i in s):
            raise ControlsError(f'each of bad_words_ids must be a non-empty sequence of token ids (integers >= 0), '
                                f'got {s!r}')
        s = tuple(int(i) for i in s)
        if s not in out:
            out.append(s)
    return tuple(out)


def parse_logit_bias(text):
    """A `--logit_bias` value, a JSON object {"token id": bias} ("-inf" or -Infinity bans), as a dict."""
    example = """e.g. '{"50256": "-inf", "198": 2.5}'"""
    try:
        data = json.loads(text)
    except (TypeError, ValueError):
        raise ControlsError(f'--logit_bias must be a JSON object of token id: bias, {example}, got {text!r}') from None
    if not isinstance(data, dict):
        raise ControlsError(f'--logit_bias must be a JSON object of token id: bias, {example}, got {text!r}')
    out = {}
    for key, bias in data.items():
        if not (key.isascii() and key.strip().isdigit()):
            raise ControlsError(f'--logit_bias keys must be token ids (integers >= 0), got {key!r}')
        out[int(key)] = float('-inf') if bias == '-inf' else bias
    return dict(Controls(logit_bias=out).logit_bias)


def ban_sequences(enc, strings):
    """`--ban` texts as bad_words_ids: each text's tokenisations with and without a leading space
    (enc.encode(s) and enc.encode(' ' + s)), duplicates dropped."""
    if isinstance(strings, str):
        strings = [strings]
    out = []
    for s in strings:
        if not isinstance(s, str) or not s:
            raise ControlsError(f'--ban needs a non-empty text, got {s!r}')
        for ids in (tuple(enc.encode(s)), tuple(enc.encode(' ' + s))):
            if ids not in out:
                out.append(ids)
    return tuple(out)


# --- the penalties, on raw logits (or, in beam search, log-probabilities) ---------------------------------

def apply_penalties(logits, controls, tokens, start, length, new_count):
    """logits float [batch, V] with controls' penalties and bans applied, in Hugging Face's order:
    logit_bias, repetition_penalty, then the bans (no_repeat_ngram_size, bad_words_ids, min_new_tokens) as
    -inf.  With nothing on, returns `logits` itself (no ops).  See the module docstring for the history."""
    if not controls.penalizes:
        return logits
    n_vocab = logits.shape[-1]
    bias, always_banned, multi = controls._vectors(n_vocab)
    tokens = tf.cast(tokens, tf.int32)                                 # [batch, T]
    start = tf.cast(start, tf.int32)                                   # [batch]
    length = tf.cast(length, tf.int32)
    T = tokens.shape[1]
    real = (tf.range(T)[None, :] >= start[:, None]) & (tf.range(T)[None, :] < length)   # [batch, T]
    seen = length - start                                              # [batch] real tokens per row
    if bias is not None:
        logits = logits + tf.constant(bias, logits.dtype)
    theta = controls.repetition_penalty
    if theta != 1:
        present = _token_mask(tokens, real, n_vocab)
        logits = tf.where(present, tf.where(logits < 0, logits * theta, logits / theta), logits)
    ids, keep = [], []
    n = controls.no_repeat_ngram_size
    if n and n <= T:
        ids_n, keep_n = _ngram_bans(tokens, real, length, n)
        ids.append(ids_n)
        keep.append(keep_n)
    for m, group in _by_prefix_length(multi):
        if m > T:
            continue
        prefixes = tf.constant([s[:-1] for s in group], tf.int32)     # [S, m]
        tail = _last_columns(tokens, length, m)                        # [batch, m]
        matches = tf.reduce_all(tail[:, None, :] == prefixes[None], axis=-1) & (seen >= m)[:, None]   # [batch, S]
        ids.append(tf.broadcast_to(tf.constant([s[-1] for s in group], tf.int32), tf.shape(matches)))
        keep.append(matches)
    banned = _token_mask(tf.concat(ids, 1), tf.concat(keep, 1), n_vocab) if ids else None
    if always_banned is not None:
        banned = _or(banned, tf.constant(always_banned)[None, :])
    if controls.min_new_tokens:
        eos = tf.logical_and(tf.range(n_vocab) == controls.eos_id,
                             tf.cast(new_count, tf.int32) < controls.min_new_tokens)
        banned = _or(banned, eos[None, :])
    if banned is not None:
        logits = tf.where(banned, tf.cast(BAN, logits.dtype), logits)
    return logits


def _or(a, b):
    return b if a is None else a | b


def _token_mask(ids, keep, n_vocab):
    """bool [batch, V]: True at each ids[r, j] where keep[r, j]; ids outside [0, V) are ignored."""
    ids = tf.where(keep & (ids >= 0) & (ids < n_vocab), ids, n_vocab)   # the rest go to a spare column V
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    counts = tf.scatter_nd(tf.stack([rows, ids], -1), tf.ones_like(ids), [tf.shape(ids)[0], n_vocab + 1])
    return counts[:, :n_vocab] > 0


def _last_columns(tokens, length, m):
    """int32 [batch, m]: columns length-m..length-1 (meaningless in rows with fewer than m real tokens)."""
    return tf.slice(tokens, [0, tf.maximum(length - m, 0)], [tf.shape(tokens)[0], m])


def _ngram_bans(tokens, real, length, n):
    """(ids, keep) [batch, T-n+1]: the last token of every real n-gram window whose first n-1 tokens are
    the row's last n-1 tokens (Hugging Face's NoRepeatNGramLogitsProcessor, per row)."""
    T = tokens.shape[1]
    windows = T - n + 1
    keep = real[:, :windows] & real[:, n - 1:]                          # [batch, windows] whole window is real
    if n > 1:
        prefix = _last_columns(tokens, length, n - 1)                   # [batch, n-1]
        for k in range(n - 1):
            keep &= tokens[:, k:k + windows] == prefix[:, k:k + 1]
    return tokens[:, n - 1:], keep


def _by_prefix_length(sequences):
    groups = {}
    for s in sequences:
        groups.setdefault(len(s) - 1, []).append(s)
    return sorted(groups.items())


# --- truncations, on temperature-scaled logits -------------------------------------------------------------

def truncate(logits, controls):
    """min_p then typical_p (Hugging Face's order, after temperature, top-k and top-p); with both off,
    returns `logits` itself."""
    return typical_logits(min_p_logits(logits, controls.min_p), controls.typical_p)


def typical_logits(logits, p):
    """Typical decoding (Meister et al. 2022, Hugging Face's TypicalLogitsWarper) of each row [batch, V]: order
    the tokens by |-log prob - entropy| and keep the shortest prefix of that order whose probability adds up
    to at least p (ties with its last token kept); the rest become FILLER.  p >= 1 returns `logits`.

    The prefix ends at the smallest distance d with mass(distance <= d) >= p, found without sorting: by
    bisection on the distances' float32 bit patterns (which order as the non-negative values do)."""
    if p >= 1:
        return logits
    logp = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    probs = tf.exp(logp)
    entropy = -tf.reduce_sum(tf.math.multiply_no_nan(logp, probs), axis=-1, keepdims=True)   # -inf * 0 is 0
    bits = tf.bitcast(tf.abs(-logp - entropy), tf.int32)              # [batch, V], >= 0
    batch = tf.shape(bits)[0]
    lo = tf.fill([batch, 1], -1)                                       # mass(<= lo) < p
    hi = tf.fill([batch, 1], 0x7f800000)                               # +inf: everything
    for _ in range(31):   # hi - lo starts below 2**31: 31 halvings leave hi the exact bound (30 can overshoot)
        mid = lo + (hi - lo) // 2
        enough = tf.reduce_sum(tf.where(bits <= mid, probs, 0.0), axis=-1, keepdims=True) >= p
        lo, hi = tf.where(enough, lo, mid), tf.where(enough, mid, hi)
    return tf.where(bits > hi, tf.cast(FILLER, logits.dtype), logits)


def min_p_logits(logits, min_p):
    """Min-p truncation (Hugging Face's MinPLogitsWarper) of each row [batch, V]: keep the tokens whose
    probability is at least min_p times the largest; the rest become FILLER.  min_p <= 0 returns `logits`."""
    if min_p <= 0:
        return logits
    probs = tf.nn.softmax(logits, axis=-1)
    floor = min_p * tf.reduce_max(probs, axis=-1, keepdims=True)
    return tf.where(probs < floor, tf.cast(FILLER, logits.dtype), logits)


# --- beam search's pure parts -----------------------------------------------------------------------------

def first_beam_scores(batch_size, num_beams):
    """float32 [batch*beams] to start from: 0 for each row's first beam, -1e9 for its others, so the first
    step picks from one copy of the prompt (as Hugging Face)."""
    scores = np.full([batch_size, num_beams], -1e9, np.float32)
    scores[:, 0] = 0
    return tf.constant(scores.reshape(-1))


def beam_step(log_probs, beam_scores, num_beams):
    """One step of Hugging Face's beam search: the top 2*num_beams continuations of each row over all its
    beams and tokens.  log_probs float [batch*beams, V] (log-softmax of the step's logits, penalties applied),
    beam_scores float [batch*beams] (each beam's sum of log-probs).  Returns next_scores float [batch, 2*beams]
    (sorted, best first), next_tokens int32 [batch, 2*beams] and next_beam_indices int32 [batch, 2*beams]
    (the beam within its row, 0..num_beams-1; row b's beam i is flat row b*num_beams + i)."""
    n_vocab = log_probs.shape[-1]
    scores = log_probs + beam_scores[:, None]                          # [batch*beams, V]
    scores = tf.reshape(scores, [-1, num_beams * n_vocab])             # [batch, beams*V]
    next_scores, flat = tf.math.top_k(scores, k=2 * num_beams)
    return next_scores, flat % n_vocab, flat // n_vocab


class BeamHypotheses:
    """The best num_beams finished hypotheses of one row, scored as Hugging Face's beam search does since
    transformers PRs #27351 and #27808 (late 2023; its BeamHypotheses class, and the same rule in 5.x's
    vectorised `_update_finished_beams`, checked against 5.25):

    score = sum_logprobs / generated_len ** length_penalty, generated_len = the hypothesis' new tokens, its
    final one (the EOS, or the last at max_length) included: len(tokens) - prompt_len.  The prompt is not
    counted.  (Before those PRs it was: len(prompt + new tokens without the EOS).)

    max_length and is_done's cur_len count the prompt, as Hugging Face's do; cur_len is the sequences' length
    after this step (HF 4.x: input_ids.shape[-1] + 1).
    early_stopping: True stops once num_beams hypotheses are finished; False stops when the best running
    sum, divided by (cur_len - prompt_len) ** length_penalty, cannot beat the worst kept score; "never" does
    the same with (max_length - prompt_len) where length_penalty > 0 (the exact bound).
    """

    def __init__(self, num_beams, length_penalty=1.0, early_stopping=False, max_length=None, prompt_len=0):
        if not _is_int(num_beams) or num_beams < 1:
            raise ControlsError(f'num_beams must be an integer >= 1 (1 means no beam search), got {num_beams!r}')
        if not _is_number(length_penalty) or not math.isfinite(length_penalty):
            raise ControlsError(f'length_penalty must be a finite number (> 0 favours longer beams, < 0 shorter; '
                                f'default 1), got {length_penalty!r}')
        if not (isinstance(early_stopping, (bool, np.bool_)) or early_stopping == 'never'):
            raise ControlsError(f'early_stopping must be True, False or "never", got {early_stopping!r}')
        if early_stopping == 'never' and (not _is_int(max_length) or max_length <= prompt_len):
            raise ControlsError(f'early_stopping="never" needs max_length (prompt included) > prompt_len '
                                f'{prompt_len}, got {max_length!r}')
        self.num_beams = int(num_beams)
        self.length_penalty = float(length_penalty)
        self.early_stopping = early_stopping if early_stopping == 'never' else bool(early_stopping)
        self.max_length = max_length
        self.prompt_len = int(prompt_len)
        self.beams = []          # (score, tokens)
        self.worst_score = 1e9

    def __len__(self):
        return len(self.beams)

    def add(self, tokens, sum_logprobs, generated_len=None):
        """Offer a finished hypothesis: kept if there is room or it beats the worst kept one."""
        generated_len = len(tokens) - self.prompt_len if generated_len is None else generated_len
        score = sum_logprobs / generated_len ** self.length_penalty
        if len(self) < self.num_beams or score > self.worst_score:
            self.beams.append((score, tokens))
            if len(self) > self.num_beams:
                ranked = sorted(range(len(self.beams)), key=lambda i: self.beams[i][0])   # ties: the earlier first
                self.worst_score = self.beams[ranked[1]][0]
                del self.beams[ranked[0]]
            else:
                self.worst_score = min(score, self.worst_score)

    def is_done(self, best_sum_logprobs, cur_len):
        """Whether no running beam can still enter: best_sum_logprobs is the best running sum of log-probs
        (HF 4.x passes the best of the step's 2*num_beams candidates, 5.x the best beam kept running),
        cur_len as in the class docstring."""
        if len(self) < self.num_beams:
            return False
        if self.early_stopping is True:
            return True
        if self.early_stopping == 'never' and self.length_penalty > 0:
            best_len = self.max_length - self.prompt_len
        else:
            best_len = cur_len - self.prompt_len
        return self.worst_score >= best_sum_logprobs / best_len ** self.length_penalty

    def best(self):
        """The kept hypotheses as (score, tokens), best first."""
        return sorted(self.beams, key=lambda b: -b[0])
