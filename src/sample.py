"""Sampling from GPT-2: a cached decoder that streams tokens, with top-k and nucleus truncation.

Every call owns its key/value buffers, written in place, one slot per new token (decode.py: the prompt
pass, the one-token step and the draw, over model.model).  What is expensive is shared by all calls on the
same model shape and precision: the compiled one-token step, in the form (XLA or a plain graph; under XLA,
on the blocks' transposed weight copies or not) that a short timed trial of the real step found fastest
on this machine, or that the caller names (`xla=`, `transposed_copies=`); speed.py holds that machinery.

Prompts of different lengths are left-padded to the longest: the padding is masked out of attention, and
each row's position ids start at 0 at its first real token.  Past the context window, the rule is: each
new token is predicted from at most n_ctx tokens; when the tokens since the last cut would exceed n_ctx,
the sequence is cut to its last `keep` tokens, which are fed again from position 0.
"""
import contextlib
import secrets
import threading

import numpy as np
import tensorflow as tf

import controls
import decode
import model
import quantize
import speed
import watermark as watermark_lib


class SampleError(ValueError):
    """Sampling settings or a context that cannot be used, with the fix."""


def sample_sequence(*, return_scores=False, **settings):
    """Sample `length` tokens after each prompt; returns each prompt followed by its new tokens.  Takes
    stream_sequence's arguments (see there).

    The result is int32 [batch, n + length] when the prompts have equal lengths, else a tf.RaggedTensor
    [batch, (n_i + length)].  With return_scores, (that, {'logprobs': the model's log-probability of each
    new token, float32 numpy [batch, length], before temperature, truncation, controls or watermark;
    'sampled_logprobs': its log-probability under the distribution it was drawn from (0 when greedy)}).
    """
    rows = _context_rows(settings['hparams'], settings.pop('start_token', None), settings.pop('batch_size', None),
                         settings.pop('context', None))
    columns = list(stream_sequence(context=rows, return_scores=return_scores, **settings))
    if return_scores:
        columns, logprobs, sampled = zip(*columns) if columns else ([], [], [])
    new = np.stack(columns, axis=1) if columns else np.zeros([len(rows), 0], np.int32)
    if len({len(r) for r in rows}) == 1:
        out = tf.constant(np.concatenate([np.stack(rows), new], axis=1), tf.int32)
    else:
        full = [np.concatenate([r, n]) for r, n in zip(rows, new)]
        out = tf.RaggedTensor.from_row_lengths(np.concatenate(full), [len(f) for f in full])
    if not return_scores:
        return out
    stack = lambda cols: np.stack(cols, axis=1) if cols else np.zeros([len(rows), 0], np.float32)
    return out, {'logprobs': stack(logprobs), 'sampled_logprobs': stack(sampled)}


def stream_sequence(*, hparams, params, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=None, keep=None, repetition_penalty=1.0,
                    no_repeat_ngram_size=0, min_new_tokens=0, typical_p=1.0, min_p=0.0, logit_bias=None,
                    bad_words_ids=(), watermark=None, watermark_gamma=0.25, watermark_delta=2.0,
                    return_scores=False, xla=None, transposed_copies=None):
    """Yield each new column of tokens (int32 numpy [batch]) after the prompts as it is drawn; with
    return_scores, (tokens, logprobs, sampled_logprobs) columns (see sample_sequence).  The arguments are
    checked at the call, before the first token.

    Give exactly one of `start_token` (with `batch_size`) or `context`: one prompt per row (a list of
    token lists, which may differ in length; a numpy array or tensor [batch, n]); a single row is
    repeated batch_size times.
    temperature=0 or top_k=1 is greedy decoding; top_k=0 and top_p=1 turn those truncations off.
    `length` may exceed the context: see the module docstring for the cut rule and `keep` (default
    n_ctx // 2).  The same seed gives the same tokens.
    repetition_penalty, no_repeat_ngram_size, min_new_tokens, typical_p, min_p, logit_bias ({token id:
    bias}, -inf bans) and bad_words_ids (token sequences never completed) are Hugging Face generate's
    controls (controls.py; docs/sampling.md), off by default; the history they look at is each row's
    whole text so far, prompt included; min_new_tokens holds back <|endoftext|>, the vocabulary's last id.
    watermark: a key in [0, 2**31) to watermark the samples (watermark.py, docs/research.md), with
    watermark_gamma (the green fraction) and watermark_delta (the bias on green tokens' logits).
    xla, transposed_copies: the one-token step's form (True or False each); None (default): the
    fastest in a timed trial (see step_form); GPT2_XLA and GPT2_TRANSPOSED_COPIES override None.
    """
    temperature, top_k, top_p = check_settings(temperature, top_k, top_p)
    rows = _context_rows(hparams, start_token, batch_size, context)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise SampleError(f'length must be an integer >= 0, got {length!r}')
    n_ctx = hparams['n_ctx']
    keep = n_ctx // 2 if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep < n_ctx:
        raise SampleError(f'keep must be an integer in [1, {n_ctx - 1}] (tokens kept when the text outgrows '
                          f'the context of {n_ctx}), got {keep!r}')
    longest = max(len(r) for r in rows)
    if longest > n_ctx:
        raise SampleError(f'a prompt of {longest} tokens exceeds the model\'s context of {n_ctx} tokens; '
                          f'truncate it to its last {n_ctx} tokens or fewer')
    for name, value in (('xla', xla), ('transposed_copies', transposed_copies)):
        if value not in (None, True, False):
            raise SampleError(f'{name} must be True, False or None (the timed trial decides), got {value!r}')
    try:
        chosen = controls.Controls(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                   min_new_tokens=min_new_tokens, eos_id=hparams['n_vocab'] - 1,
                                   logit_bias=logit_bias, bad_words_ids=bad_words_ids, typical_p=typical_p,
                                   min_p=min_p)
        chosen.check(hparams['n_vocab'])
        marked = None if watermark is None else (watermark_lib.check_key(watermark),
                                                 watermark_lib.check_gamma(watermark_gamma),
                                                 watermark_lib.check_delta(watermark_delta))
    except (controls.ControlsError, watermark_lib.WatermarkError) as e:
        raise SampleError(str(e)) from None
    if return_scores not in (True, False):
        raise SampleError(f'return_scores must be True or False, got {return_scores!r}')
    d = decode.Draw(temperature, top_k, top_p, chosen if chosen.active else None, marked, return_scores)
    seed = secrets.randbits(31) if seed is None else int(seed)
    return _stream(hparams, params, rows, int(length), int(keep), d, seed, (xla, transposed_copies))


def _stream(hparams, params, rows, length, keep, d, seed, forced):
    """The generator behind stream_sequence: its own buffers, the shared compiled steps."""
    n_ctx = hparams['n_ctx']
    params = _tensors(params)
    steps = steps_for(hparams, params['model/wte'].dtype)
    int8 = steps.dtype == tf.int8
    buffers = steps.new_buffers()
    seeds = lambda i: tf.constant([seed % 2**31, i], tf.int32)
    # Every row's tokens, right-aligned: column `longest` holds each row's first new token.
    longest = max(len(r) for r in rows)
    # (columns to a multiple of 64: the controls' history is passed whole, and each width is compiled anew)
    tokens = np.zeros([len(rows), _round_up(longest + length, 64)], np.int32)
    for tokens_row, row in zip(tokens, rows):
        tokens_row[longest - len(row):longest] = row
    first = tf.constant([longest - len(r) for r in rows], tf.int32)   # each row's first column: its history
    history = lambda t, i: (tf.constant(tokens), first, tf.constant(t), tf.constant(i)) if d.needs_history else None
    window = np.array([longest - len(r) for r in rows])   # the column where each row's window starts
    base = start = step = None
    for i, t in enumerate(range(longest, longest + length)):   # draw column t
        cut = t - window > n_ctx
        window[cut] = t - keep
        prev = tf.constant(tokens[:, t - 1])
        if i == 0 or cut.any():
            # Feed every row's window afresh, left-padded to the longest: slot s holds column base + s.  The
            # prompt pass runs eagerly (its matmuls are large; tracing it would cost more than it saves).
            base = window.min()
            start = tf.constant(window - base, tf.int32)   # each row's first real slot
            capacity = min(n_ctx, _round_up(t - base + length - i, 64))
            with speed.compiling() if int8 else contextlib.nullcontext():   # int8: XLA compiles its matmuls
                logits, values, pending = decode.prefill(hparams, params, tf.constant(tokens[:, base:t]), start,
                                                         capacity, quantize.compiled_matmul)
            for buffer, value in zip(tf.nest.flatten(buffers), tf.nest.flatten(values)):
                buffer.assign(value)
            token, scores = steps.draw(d, tokens.shape[1])(logits, seeds(i), prev, history(t, i))
            fresh = True
        else:
            args = (pending, prev, tf.constant(t - 1 - base, tf.int32), start, seeds(i), history(t, i))
            with speed.compiling() if fresh else contextlib.nullcontext():   # a new shape: XLA compiles or loads
                if step is None:   # the step's form, its tracing and its weight copies come after the first token
                    step = steps.stepper(params, buffers, d, args, *forced)
                token, pending, scores = step(*args)
            fresh = False
        tokens[:, t] = token = token.numpy()
        yield token if scores is None else (token, scores[0].numpy(), scores[1].numpy())


def check_settings(temperature=1, top_k=0, top_p=1):
    """Validate sampling settings, returning them as (float, int, float)."""
    def number(name, value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise SampleError(f'{name} must be a number, got {value!r}')
        return float(value)
    temperature = number('temperature', temperature)
    if not np.isfinite(temperature) or temperature < 0:
        raise SampleError(f'temperature must be >= 0 (0 means greedy), got {temperature}')
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise SampleError(f'top_k must be an integer >= 0 (0 means no top-k truncation), got {top_k!r}')
    top_p = number('top_p', top_p)
    if not 0 < top_p <= 1:
        raise SampleError(f'top_p must be in (0, 1] (1 means no nucleus truncation), got {top_p}')
    return temperature, int(top_k), top_p


def seed_stream(seed=None):
    """Seeds for successive sample_sequence calls: a fixed seed reproduces a whole session."""
    rng = np.random.default_rng(None if seed is None else abs(int(seed)))
    while True:
        yield int(rng.integers(2**31))


def top_k_logits(logits, k):
    """Keep the k largest logits of each row (ties with the k-th included); k=0 keeps all."""
    if k == 0:
        return logits
    k = min(int(k), logits.shape[-1])
    kth = tf.math.top_k(logits, k=k, sorted=True).values[..., -1:]
    return tf.where(logits < kth, tf.cast(-1e10, logits.dtype), logits)


def top_p_logits(logits, p):
    """Nucleus truncation (Holtzman et al. 2019) of each row: keep the smallest set of most likely
    tokens whose probability adds up to at least p; p=1 keeps all.  Works for any batch size."""
    if p >= 1:
        return logits
    sorted_logits = tf.sort(logits, axis=-1, direction='DESCENDING')
    mass_before = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1, exclusive=True)
    n_keep = tf.reduce_sum(tf.cast(mass_before < p, tf.int32), axis=-1, keepdims=True)   # >= 1
    lowest_kept = tf.gather(sorted_logits, tf.maximum(n_keep, 1) - 1, batch_dims=logits.shape.rank - 1)
    return tf.where(logits < lowest_kept, tf.cast(-1e10, logits.dtype), logits)


def _context_rows(hparams, start_token, batch_size, context):
    """The prompts as a list of int32 numpy rows (lengths may differ), validated."""
    if (start_token is None) == (context is None):
        raise SampleError('specify exactly one of start_token or context')
    if start_token is not None:
        if batch_size is None:
            raise SampleError('start_token needs batch_size')
        context = [[start_token]] * int(batch_size)
    if isinstance(context, tf.Tensor):
        context = context.numpy()
    if isinstance(context, np.ndarray) and context.ndim != 1 or (
            not isinstance(context, np.ndarray) and len(context) and not np.isscalar(context[0])):
        rows = [np.asarray(r) for r in context]
    else:
        rows = [np.asarray(context)]   # one prompt
    for r in rows:
        if r.ndim != 1:
            raise SampleError(f'context must be [batch, tokens] (a list of token lists), got a row of shape {r.shape}')
        if r.size and not np.issubdtype(r.dtype, np.integer):
            raise SampleError(f'context must hold integer token ids, got {r.dtype}')
    if len(rows) == 1 and batch_size is not None:
        rows = rows * int(batch_size)
    if batch_size is not None and len(rows) != batch_size:
        raise SampleError(f'context has {len(rows)} rows but batch_size is {batch_size}')
    if not rows or min(r.size for r in rows) == 0:
        raise SampleError('context is empty; give at least one token (e.g. <|endoftext|>, id 50256)')
    if min(r.min() for r in rows) < 0 or max(r.max() for r in rows) >= hparams['n_vocab']:
        raise SampleError(f'context holds token ids outside [0, {hparams["n_vocab"]})')
    return [r.astype(np.int32) for r in rows]


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _tensors(params):
    """The weights as tensors (variables stay variables, to be read at every step)."""
    return {k: v if isinstance(v, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(v) for k, v in params.items()}


# --- the compiled steps, one set per model shape and precision -----------------------------------------------

TRIAL_MIN_BYTES = 32 * 2**20   # blocks' weights below this take the rule: there the forms differ by microseconds

_steps = {}
_steps_lock = threading.Lock()


def steps_for(hparams, dtype=tf.float32):
    """The Steps shared by every call on this model shape and weights' precision."""
    key = (tuple(sorted(hparams.items())), tf.as_dtype(dtype))
    with _steps_lock:
        if key not in _steps:
            _steps[key] = Steps(hparams, dtype)
        return _steps[key]


def step_form(hparams, dtype, batch_size, temperature=1, top_k=0, top_p=1):
    """(form, {form: seconds per step}) that the trial chose for this batch size and draw, form being
    (xla, transposed_copies); None where no trial ran (yet)."""
    temperature, top_k, _ = check_settings(temperature, top_k, top_p)
    return steps_for(hparams, dtype).trials.get(_trial_key(batch_size, temperature, top_k))


def _trial_key(rows, temperature, top_k):
    return 1 << (int(rows) - 1).bit_length(), temperature == 0 or top_k > 0


class Steps:
    """The compiled one-token steps of one model shape and precision, in each form and for each setting of
    the draw.  They hold no weights and no sequence state (both are arguments), so any number of calls, one
    after the other or at the same time, share them.

    Forms: `xla` compiles the step with XLA; `copies` runs the blocks' matmuls on transposed copies of their
    weights (speed.layout_matmul's output-major form; under XLA on CPU, for frozen weights).  Where the
    caller names neither, the candidates allowed (GPT2_XLA, GPT2_TRANSPOSED_COPIES, the memory free for the
    copies) are timed on the caller's real first step (speed.fastest), once per batch size (rounded up to
    a power of 2) and kind of draw, and the fastest is kept.  Without a trial (small models, below
    TRIAL_MIN_BYTES of block weights, unless GPT2_KERNEL_TRIAL=1; always with GPT2_KERNEL_TRIAL=0; on GPUs)
    the rule: XLA where available, except bfloat16 weights on a CPU with bfloat16 instructions, which run
    as a plain graph (oneDNN); the copies under XLA on a CPU.  int8 weights (quantize.py) take the rule:
    XLA's int8 dot is the fast one, and they need no copies."""

    def __init__(self, hparams, dtype):
        self.hparams, self.dtype = hparams, tf.as_dtype(dtype)
        self.compute = tf.float32 if self.dtype == tf.int8 else self.dtype   # the buffers' and activations'
        self.trials = {}   # _trial_key -> (form, {form: seconds})
        self._compiled = {}
        self._lock, self._trial_lock = threading.Lock(), threading.Lock()

    def new_buffers(self):
        """One call's key/value buffers: per layer a pair of variables [batch, heads, capacity, head_dim]."""
        h = self.hparams
        hd = h['n_embd'] // h['n_head']
        shape = tf.TensorShape([None, h['n_head'], None, hd])
        variable = lambda: tf.Variable(tf.zeros([0, h['n_head'], 0, hd], self.compute), shape=shape, trainable=False)
        return [(variable(), variable()) for _ in range(h['n_layer'])]

    @staticmethod
    def _history_specs(d, width):
        """The specs of the controls' history (decode.choose), `width` columns of tokens, where d needs it."""
        return [tf.TensorSpec([None, width], tf.int32), tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32)] if d.needs_history else []

    def draw(self, d, width=None):
        """A compiled function (logits [batch, n_vocab], seed [2], prev tokens [batch], history or None) ->
        (next tokens int32 [batch], scores or None), decode.choose with the Draw d (a history `width`
        columns wide)."""
        key = ('draw', d, width)
        with self._lock:
            if key not in self._compiled:
                choose = tf.function(
                    lambda logits, seed, prev, *history: decode.choose(logits, seed, d, prev, history), autograph=False,
                    input_signature=[tf.TensorSpec([None, self.hparams['n_vocab']], tf.float32),
                                     tf.TensorSpec([2], tf.int32), tf.TensorSpec([None], tf.int32)]
                    + self._history_specs(d, width))
                self._compiled[key] = lambda logits, seed, prev, history: choose(logits, seed, prev, *(history or ()))
            return self._compiled[key]

    @staticmethod
    def draws_in_step(xla, d):
        """Whether the step draws the next token itself: greedy and top-k under XLA (one call per token, and
        XLA's top-k is faster than TensorFlow's).  A draw from the whole vocabulary sorts or samples 50k
        logits, which XLA on CPU does slower, so that runs after the step; so do the controls that read the
        history (their scatter into [batch, n_vocab] masks is a loop under XLA on CPU: 6 tok/s at 124M with
        repetition_penalty alone, and no_repeat_ngram_size exhausted LLVM's memory)."""
        return xla and (d.temperature == 0 or d.top_k > 0) and not d.needs_history

    def prepare(self, params, form, settings):
        """The weights as the step in `form` multiplies with: {'params': the checkpoint's tensors (variables
        stay variables, read at every step), 'plain': {name: [nx, nf] copy}, 'output_major': {name: [nf, nx]}}.
        Copies are made here, once per frozen tensor (speed.transposed): the blocks' matrices under `copies`,
        wte's [n_embd, n_vocab] where the logits leave the step."""
        xla, copies = form
        if any(isinstance(v, tf.Variable) for v in params.values()) or self.dtype == tf.int8:
            return {'params': params, 'plain': {}, 'output_major': {}}
        output_major = {}
        if copies:
            output_major = speed.transposed(params, [k for k, v in params.items() if v.shape.rank == 3])
        if self.draws_in_step(xla, settings) and not speed.on_gpu():
            output_major['model/wte'] = params['model/wte']   # [n_vocab, n_embd] is output-major already
            return {'params': params, 'plain': {}, 'output_major': output_major}
        return {'params': params, 'plain': speed.transposed(params, ['model/wte']), 'output_major': output_major}

    def stepper(self, params, buffers, settings, args, xla=None, copies=None):
        """The step for one call's weights and buffers: a function (pending, tokens, pos, start, seed) ->
        (next tokens int32 [batch], pending).  Its form: as named, else chosen (see the class); the trial
        runs it on `args`, the call's first step (run again, a step writes the same slot each time)."""
        candidates = self._candidates(params, xla, copies)
        env = speed.overrides()
        block_bytes = sum(speed.nbytes(v) for v in params.values() if v.shape.rank == 3)
        if len(candidates) == 1 or env['trial'] is False or speed.on_gpu() or (
                env['trial'] is None and block_bytes < TRIAL_MIN_BYTES):
            form = self._rule(candidates)
        else:
            key = _trial_key(len(args[1]), settings.temperature, settings.top_k)
            with self._trial_lock:   # one trial at a time: two at once would time each other
                if key not in self.trials:
                    made = {form: self.prepare(params, form, settings) for form in candidates}
                    steps = {form: self._bind(made[form], buffers, settings, form, args[-1]) for form in candidates}
                    self.trials[key] = speed.fastest(candidates, lambda form: steps[form](*args)[0].numpy())
                    copied = lambda w: set(w['plain']) | {k for k, v in w['output_major'].items() if v is not params[k]}
                    losers = set().union(*(copied(w) for w in made.values())) - copied(made[self.trials[key][0]])
                    speed.drop_transposed(params, sorted(losers))   # a copy only a losing form used
                form = self.trials[key][0]
                if form not in candidates:
                    form = self._rule(candidates)
        return self._bind(self.prepare(params, form, settings), buffers, settings, form, args[-1])

    def _candidates(self, params, xla, copies):
        """The (xla, copies) forms allowed: by the arguments, else by GPT2_XLA and GPT2_TRANSPOSED_COPIES."""
        env = speed.overrides()
        xla = env['xla'] if xla is None else xla
        copies = env['copies'] if copies is None else copies
        if xla and not speed.xla_available():
            raise SampleError('XLA was asked for (xla=True or GPT2_XLA=1) but this TensorFlow cannot compile '
                              'with it; leave it to the trial or turn it off')
        # (int8 weights are quantize.py's output-major form already: no copies)
        frozen = not any(isinstance(v, tf.Variable) for v in params.values()) and self.dtype != tf.int8
        blocks = [v for v in params.values() if v.shape.rank == 3]
        fit = frozen and not speed.on_gpu() and (
            all(speed.has_transposed(w) for w in blocks) or 2 * sum(map(speed.nbytes, blocks)) < speed.free_memory())
        forms = []
        if xla is not False and speed.xla_available():
            forms.append((True, fit if copies is None else bool(copies) and frozen and not speed.on_gpu()))
        if xla is not True and not copies:
            forms.append((False, False))
        return forms or [(False, False)]

    def _rule(self, candidates):
        graph = self.dtype == tf.bfloat16 and not speed.on_gpu() and speed.cpu_has_bfloat16()
        return next((f for f in candidates if f[0] != graph), candidates[0])

    def _bind(self, weights, buffers, d, form, history=None):
        """The step in `form` for these weights and buffers: (pending, tokens, pos, start, seed, history) ->
        (next tokens, pending, scores or None); `history` an example of the history it is given, or None."""
        in_step = self.draws_in_step(form[0], d)
        width = None if history is None else history[0].shape[1]
        step = self._compile(form, d if in_step else None, width).bind(weights, buffers)
        if in_step:
            return lambda pending, tokens, pos, start, seed, history: step(pending, tokens, pos, start, seed,
                                                                           *(history or ()))
        pick = self.draw(d, width)

        def step_then_draw(pending, tokens, pos, start, seed, history):
            logits, pending = step(pending, tokens, pos, start)
            token, scores = pick(logits, seed, tokens, history)
            return token, pending, scores
        return step_then_draw

    def _compile(self, form, d, width=None):
        """The step in `form` as a speed.Compiled: (weights, buffers, pending, tokens, pos, start[, seed,
        history]) -> (logits, pending), or with a Draw d, (the drawn tokens, pending, scores); see decode.step."""
        xla = form[0]
        key = (form, d, width if d is not None and d.needs_history else None)
        with self._lock:
            if key not in self._compiled:
                def step(weights, buffers, pending, tokens, pos, start, seed=None, *history):
                    fallback = quantize.xla_matmul if xla and not speed.on_gpu() else model.plain_matmul
                    matmul = speed.layout_matmul(fallback, weights['plain'], weights['output_major'])
                    logits, pending, _ = decode.step(self.hparams, weights['params'], buffers, pending, tokens, pos,
                                                     start, matmul, xla)
                    if d is None:
                        return logits, pending
                    token, scores = decode.choose(logits, seed, d, tokens, history)
                    return token, pending, scores
                h = self.hparams
                specs = [tf.TensorSpec([None, h['n_layer'], 2, h['n_head'], 1, h['n_embd'] // h['n_head']], self.compute),
                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.int32)]
                if d is not None:
                    specs += [tf.TensorSpec([2], tf.int32)] + self._history_specs(d, width)
                self._compiled[key] = speed.Compiled(step, xla, specs)
            return self._compiled[key]


# --- beam search ---------------------------------------------------------------------------------------------

def beam_search(*, hparams, params, context, length, num_beams, length_penalty=1.0, early_stopping=False,
                num_return_sequences=1, stop_at_endoftext=True):
    """Beam search with Hugging Face generate's semantics (controls.beam_step, controls.BeamHypotheses):
    each step keeps the num_beams best continuations of each prompt by summed log-probability; a beam that
    draws <|endoftext|> (the vocabulary's last id; with stop_at_endoftext) is finished, scored as its sum
    / (its new tokens, <|endoftext|> included) ** length_penalty; early_stopping True, False or "never" as
    Hugging Face's.  context: prompts (token lists, may differ in length).  Returns, per prompt, the
    num_return_sequences best as (new tokens, score), best first.  The prompt and length must fit the
    context: beam search does not cut past it."""
    int8 = any(v.dtype == tf.int8 for v in params.values()) if isinstance(params, dict) else False
    with speed.compiling() if int8 else contextlib.nullcontext():   # int8: XLA compiles (or loads) its matmuls
        return _beam_search(hparams, params, context, length, num_beams, length_penalty, early_stopping,
                            num_return_sequences, stop_at_endoftext)


def _beam_search(hparams, params, context, length, num_beams, length_penalty, early_stopping, num_return_sequences,
                 stop_at_endoftext):
    rows = _context_rows(hparams, None, None, context)
    for name, value, low in (('length', length, 1), ('num_beams', num_beams, 1), ('num_return_sequences',
                                                                                   num_return_sequences, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise SampleError(f'{name} must be an integer >= {low}, got {value!r}')
    if num_return_sequences > num_beams:
        raise SampleError(f'num_return_sequences ({num_return_sequences}) must be <= num_beams ({num_beams})')
    longest, n_ctx = max(len(r) for r in rows), hparams['n_ctx']
    if longest + length > n_ctx:
        raise SampleError(f'beam search does not go past the context: prompt {longest} + length {length} > '
                          f'n_ctx {n_ctx}; lower --length to {n_ctx - longest} or shorten the prompt')
    try:
        hyps = [controls.BeamHypotheses(num_beams, length_penalty, early_stopping, len(r) + length, len(r))
                for r in rows]
    except controls.ControlsError as e:
        raise SampleError(str(e)) from None
    k, eos, params = num_beams, hparams['n_vocab'] - 1, _tensors(params)
    beam_rows = [r for r in rows for _ in range(k)]                                       # [batch * k]
    tokens = np.zeros([len(beam_rows), longest + length], np.int32)
    for tokens_row, row in zip(tokens, beam_rows):
        tokens_row[longest - len(row):longest] = row
    start = tf.constant([longest - len(r) for r in beam_rows], tf.int32)
    capacity = min(n_ctx, _round_up(longest + length, 64))
    matmul = quantize.compiled_matmul
    logits, buffers, pending = decode.prefill(hparams, params, tf.constant(tokens[:, :longest]), start, capacity, matmul)
    scores = controls.first_beam_scores(len(rows), k).numpy()
    done = [False] * len(rows)
    for i, t in enumerate(range(longest, longest + length)):
        top_scores, top_tokens, top_beams = (x.numpy() for x in controls.beam_step(
            tf.nn.log_softmax(logits), tf.constant(scores), k))                          # [batch, 2k] each
        order, new_tokens, new_scores = [], [], []
        for b in range(len(rows)):
            kept = []
            for j in range(2 * k):
                if done[b] or len(kept) == k:
                    break
                row, token, score = b * k + top_beams[b, j], top_tokens[b, j], top_scores[b, j]
                if stop_at_endoftext and token == eos:
                    if j < k:   # Hugging Face: only a candidate among the k best may finish
                        hyps[b].add(list(rows[b]) + tokens[row, longest:t].tolist() + [eos], float(score))
                else:
                    kept.append((row, token, score))
            kept = kept or [(b * k + beam, 0, 0.0) for beam in range(k)]   # a finished prompt: padding
            order += [r for r, _, _ in kept]
            new_tokens += [tok for _, tok, _ in kept]
            new_scores += [s for _, _, s in kept]
            done[b] = done[b] or hyps[b].is_done(float(top_scores[b].max()), len(rows[b]) + i + 1)
        if all(done) or i == length - 1:
            break
        tokens = tokens[order]
        tokens[:, t] = new_tokens
        scores = np.array(new_scores, np.float32)
        gather = tf.constant(order, tf.int32)
        buffers = tf.nest.map_structure(lambda b: tf.gather(b, gather), buffers)   # the caches follow (copied)
        logits, pending, buffers = decode.step(hparams, params, buffers, tf.gather(pending, gather),
                                               tf.constant(new_tokens, tf.int32), tf.constant(t), start, matmul)
    if not all(done):
        tokens = tokens[order]
        tokens[:, t] = new_tokens
        for b in range(len(rows)):
            if not done[b]:
                for beam in range(k):
                    row = b * k + beam
                    hyps[b].add(list(rows[b]) + tokens[row, longest:t + 1].tolist(), float(new_scores[row]))
    return [[(tokens_[len(r):], score) for score, tokens_ in h.best()[:num_return_sequences]]
            for r, h in zip(rows, hyps)]
