"""Sampling from GPT-2: a cached decoder that streams tokens, with top-k and nucleus truncation.

Every call owns its key/value cache: one buffer per layer, written in place, one slot per new token.
What is expensive is shared by all calls on the same model shape: the compiled one-token step (in the
form, XLA or a plain graph, that a short timed trial found fastest on this machine; the greedy or top-k
draw included), and, for each set of frozen weights, the transposed copies of them that the XLA step
multiplies with; those copies go when the weights go.

Prompts of different lengths are left-padded to the longest: the padding is masked out of attention, and
each row's position ids start at 0 at its first real token.  Past the context window, the rule is: each
new token is predicted from at most n_ctx tokens; when the tokens since the last cut would exceed n_ctx,
the sequence is cut to its last `keep` tokens, which are fed again from position 0.

Reading order: the public functions, then the Decoder (prefill, one-token step, draw), then helpers.
"""
import contextlib
import inspect
import os
import secrets
import threading
import time
import weakref

import numpy as np
import tensorflow as tf

import model
import quiet


class SampleError(ValueError):
    """Sampling settings or a context that cannot be used, with the fix."""


def sample_sequence(*, hparams, params, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=None, keep=None):
    """Sample `length` tokens after each prompt; returns each prompt followed by its new tokens.

    Give exactly one of `start_token` (with `batch_size`) or `context`: one prompt per row (a list of
    token lists, which may differ in length; a numpy array or tensor [batch, n]); a single row is
    repeated batch_size times.  The result is int32 [batch, n + length] when the prompts have equal
    lengths, else a tf.RaggedTensor [batch, (n_i + length)].
    temperature=0 or top_k=1 is greedy decoding; top_k=0 and top_p=1 turn those truncations off.
    `length` may exceed the context: see the module docstring for the cut rule and `keep` (default
    n_ctx // 2).  The same seed gives the same tokens.
    """
    rows = _context_rows(hparams, start_token, batch_size, context)
    columns = list(stream_sequence(hparams=hparams, params=params, length=length, context=rows,
                                   temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, keep=keep))
    new = np.stack(columns, axis=1) if columns else np.zeros([len(rows), 0], np.int32)
    if len({len(r) for r in rows}) == 1:
        return tf.constant(np.concatenate([np.stack(rows), new], axis=1), tf.int32)
    full = [np.concatenate([r, n]) for r, n in zip(rows, new)]
    return tf.RaggedTensor.from_row_lengths(np.concatenate(full), [len(f) for f in full])


def stream_sequence(*, hparams, params, length, start_token=None, batch_size=None, context=None,
                    temperature=1, top_k=0, top_p=1, seed=None, keep=None):
    """Like sample_sequence, but yields each new column of tokens (int32 numpy [batch]) as it is drawn.
    The arguments are checked at the call, before the first token."""
    settings = check_settings(temperature, top_k, top_p)
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
    seed = secrets.randbits(31) if seed is None else int(seed)
    return _stream(hparams, params, rows, int(length), int(keep), settings, seed)


def _stream(hparams, params, rows, length, keep, settings, seed):
    """The generator behind stream_sequence: its own cache, the decoders' shared compiled steps."""
    n_ctx = hparams['n_ctx']
    dtype = tf.as_dtype(getattr(params['model/wte'], 'dtype', tf.float32))
    decoder = decoder_for(hparams, dtype)
    # The prompt pass runs eagerly on the weights as they are.  The step's form (a timed trial at the first
    # use of a batch size), its tracing and its weight copies all come after the first token.
    weights = decoder.weights(params, logits_copy=False, block_copies=False)
    cache = decoder.new_cache(dtype)
    first_draw, step = decoder.chooser(*settings), None
    seeds = lambda i: tf.constant([seed % 2**31, i], tf.int32)
    # Every row's tokens, right-aligned: column `longest` holds each row's first new token.
    longest = max(len(r) for r in rows)
    tokens = np.zeros([len(rows), longest + length], np.int32)
    for tokens_row, row in zip(tokens, rows):
        tokens_row[longest - len(row):longest] = row
    window = np.array([longest - len(r) for r in rows])   # the column where each row's window starts
    base = start = None
    for i, t in enumerate(range(longest, longest + length)):   # draw column t
        cut = t - window > n_ctx
        window[cut] = t - keep
        if i == 0 or cut.any():
            # Feed every row's window afresh, left-padded to the longest: cache slot s holds column base + s.
            base = window.min()
            start = tf.constant(window - base, tf.int32)   # each row's first real slot
            capacity = min(n_ctx, _round_up(t - base + length - i, 64))
            logits, pending = decoder.prefill(weights, cache, tf.constant(tokens[:, base:t]), start, capacity)
            token, fresh = first_draw(logits, seeds(i)), True
        else:
            if step is None:
                fast = fastest_decoder(hparams, params, len(rows), *settings)
                step = fast.stepper(*settings)(fast.weights(params, not fast.draws_in_step(*settings)), cache)
            args = (pending, tf.constant(tokens[:, t - 1]), tf.constant(t - 1 - base, tf.int32), start, seeds(i))
            with _compiling() if fresh else contextlib.nullcontext():   # a new cache shape: XLA compiles or loads
                token, pending = step(*args)
            fresh = False
        tokens[:, t] = token = token.numpy()
        yield token


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


# --- decoders, one per model shape, precision and step form ---------------------------------------------

_decoders = {}
_decoders_lock = threading.Lock()


def decoder_for(hparams, dtype=tf.float32, xla=None, transposed=None):
    """The Decoder shared by every call on this model shape, weights' precision and step form (None: the
    rule, see Decoder)."""
    key = (tuple(sorted(hparams.items())), tf.as_dtype(dtype), xla, transposed, _setting('GPT2_XLA'),
           _setting('GPT2_TRANSPOSED_COPIES'))
    with _decoders_lock:
        if key not in _decoders:
            _decoders[key] = Decoder(hparams, xla, transposed, dtype)
        return _decoders[key]


# --- the kernel trial: which form of the step is fastest on this machine ---------------------------------

TRIAL_MIN_BYTES = 32 * 2**20   # blocks' weights below this take the rule: there the forms differ by microseconds
TRIAL_BYTES = 256 * 2**20      # the trial runs a block on this much of the weights: more than a CPU's cache holds

_trials = {}   # (shape, precision, rows, draw in step, frozen, overrides) -> (form, estimates), once per process
_trials_lock = threading.Lock()


def fastest_decoder(hparams, params, batch_size, temperature=1, top_k=0, top_p=1):
    """The Decoder for the one-token step over these weights at this batch size: its form (XLA or a plain
    graph; under XLA, the blocks' transposed copies or not) is the fastest in a short timed trial of each
    candidate, run at the first use of a shape, precision and batch size (rounded up to a power of 2) in
    this process and remembered.  GPT2_XLA and GPT2_TRANSPOSED_COPIES (0 or 1) force a form; the trial
    is skipped (the rule, see Decoder) for small models unless GPT2_KERNEL_TRIAL=1, and always with
    GPT2_KERNEL_TRIAL=0."""
    dtype = tf.as_dtype(getattr(params['model/wte'], 'dtype', tf.float32))
    form = step_form(hparams, params, batch_size, temperature, top_k, top_p)['form']
    return decoder_for(hparams, dtype, *form) if form else decoder_for(hparams, dtype)


def step_form(hparams, params, batch_size, temperature=1, top_k=0, top_p=1):
    """{'form': (xla, transposed) chosen by the trial, or None for the rule; 'estimates': seconds per step
    of each candidate form timed}, see fastest_decoder."""
    dtype = tf.as_dtype(getattr(params['model/wte'], 'dtype', tf.float32))
    block_bytes = sum(_bytes(v) for k, v in params.items() if _is_block_weight(k))
    trial = os.environ.get('GPT2_KERNEL_TRIAL', '')
    if trial == '0' or (trial != '1' and block_bytes < TRIAL_MIN_BYTES):
        return {'form': None, 'estimates': {}}
    rows = 1 << (int(batch_size) - 1).bit_length()
    in_step = temperature == 0 or top_k > 0
    frozen = not any(isinstance(v, tf.Variable) for v in params.values())
    # Free memory is looked at once, by the first trial: after it, the copies themselves take it up.
    key = (tuple(sorted(hparams.items())), dtype, rows, in_step, frozen, _setting('GPT2_XLA'),
           _setting('GPT2_TRANSPOSED_COPIES'))
    with _trials_lock:   # one trial at a time: two at once would time each other
        if key not in _trials:
            candidates = _candidate_forms(block_bytes, frozen)
            with _compiling():
                estimates = {form: decoder_for(hparams, dtype, *form).time_step(params, rows, in_step)
                             for form in candidates} if len(candidates) > 1 else {}
            _trials[key] = (min(estimates, key=estimates.get) if estimates else None, estimates)
        form, estimates = _trials[key]
    return {'form': form, 'estimates': dict(estimates)}


def _candidate_forms(block_bytes, frozen):
    """The (xla, transposed) forms of the step worth timing here, as GPT2_XLA and GPT2_TRANSPOSED_COPIES
    allow: the plain graph, and XLA with the blocks' transposed copies where they can be made (frozen
    weights, twice their size free), else without.  Under XLA the copies were faster wherever measured
    (on both CPU families, at batch 1 and 8, by 6-35%), by less than a short trial can tell apart from
    noise at batch 1, so they are not timed against XLA without them."""
    if tf.config.list_logical_devices('GPU'):
        return []   # measured on CPUs only; GPUs take the rule
    xla, copies = _setting('GPT2_XLA'), _setting('GPT2_TRANSPOSED_COPIES')
    fit = frozen and copies is not False and 2 * block_bytes < _free_memory()
    forms = []
    if xla is not False and xla_available() and copies in (None, fit):
        forms.append((True, fit))
    if xla is not True and not copies:
        forms.append((False, False))
    return forms


def _is_block_weight(name):
    return name.startswith('model/h') and name.endswith('/w')


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _compiling():
    """Around a call that may compile a step (or load it from the compile cache): the cache's read noise
    (quiet.COMPILE_CACHE_NOISE) is kept off stderr; every other line passes (quiet.stderr_without)."""
    if 'tf_xla_persistent_cache_directory' not in os.environ.get('TF_XLA_FLAGS', '') or not quiet.wanted():
        yield
        return
    with _stderr_lock, quiet.stderr_without(quiet.COMPILE_CACHE_NOISE):
        yield


def _tensors(params):
    """The weights as tensors (variables stay variables, to be read at every step)."""
    return {k: v if isinstance(v, (tf.Tensor, tf.Variable)) else tf.convert_to_tensor(v) for k, v in params.items()}


def _bytes(w):
    return int(np.prod(w.shape)) * tf.as_dtype(w.dtype).size


def _setting(name):
    """An environment switch: '0' False, '1' True, else (unset) None."""
    return {'0': False, '1': True}.get(os.environ.get(name, ''))


# --- the decoder ----------------------------------------------------------------------------------------

class Decoder:
    """The compiled forward passes of one model shape, in one form.  They hold no weights and no sequence
    state: the weights (see weights()) and a cache (see new_cache()) are arguments, so any number of calls,
    one after the other or at the same time, share one compiled step.

    Step forms: `xla` compiles the one-token step with XLA; `transposed` runs the blocks' matmuls on
    transposed weight copies (under XLA on CPU, for frozen weights, when the copies fit in memory).
    fastest_decoder picks them by timing; the rule, where it does not (None here): XLA where available,
    except bfloat16 weights on a CPU with bfloat16 instructions, which run as a plain graph (oneDNN);
    copies under XLA on CPU.  GPT2_XLA and GPT2_TRANSPOSED_COPIES (0 or 1) override the rule.
    """

    def __init__(self, hparams, xla=None, transposed=None, dtype=tf.float32):
        self.hparams = hparams
        cpu = not tf.config.list_logical_devices('GPU')
        if xla is None:
            graph = cpu and tf.as_dtype(dtype) == tf.bfloat16 and cpu_has_bfloat16()
            forced = _setting('GPT2_XLA')
            xla = xla_available() and (not graph if forced is None else forced)
        self.xla = xla
        # The output-major forms (_OutputMajor) were measured faster under XLA on CPU only; GPUs keep the plain form.
        self.output_major = self.xla and cpu
        if transposed is None:
            transposed = self.output_major and _setting('GPT2_TRANSPOSED_COPIES') is not False
        self.transposed = transposed
        self._compiled = {}
        self._lock = threading.Lock()

    def weights(self, params, logits_copy=True, block_copies=True):
        """The weights as the steps take them: {'params': the checkpoint's tensors (or variables, read at
        every step), 'copies': their transposed copies, if any}.  The copies are made once per frozen tensor
        and dropped when it is (see _transposed_copies).  logits_copy=False leaves out wte's [n_embd, n_vocab]
        copy, which only steps that hand their logits on use (see draws_in_step); block_copies=False the
        blocks' copies, which only the compiled step uses."""
        params = _tensors(params)
        if any(isinstance(w, tf.Variable) for w in params.values()):
            return {'params': params, 'copies': {}}
        names = ['model/wte'] if logits_copy else []
        if self.transposed and block_copies:
            blocks = [k for k in params if _is_block_weight(k)]
            if 2 * sum(_bytes(params[k]) for k in blocks) < _free_memory():
                names += blocks
        return {'params': params, 'copies': _transposed_copies(params, names)}

    def new_cache(self, dtype=tf.float32):
        """A fresh key/value cache for one sequence: per layer, keys and values [batch, heads, slots,
        head_dim] in the weights' precision (dtype), (re)allocated by prefill()."""
        return self._cache(self.hparams['n_layer'], 0, 0, dtype)

    def _cache(self, layers, batch, slots, dtype):
        heads = self.hparams['n_head']
        shape = tf.TensorShape([None, heads, None, self.hparams['n_embd'] // heads])
        zeros = lambda: tf.zeros([batch, heads, slots, shape[3]], dtype)
        return [(tf.Variable(zeros(), shape=shape, trainable=False), tf.Variable(zeros(), shape=shape, trainable=False))
                for _ in range(layers)]

    def prefill(self, weights, cache, tokens, start, capacity):
        """Feed tokens [batch, n], row r from slot start[r] on (earlier slots are padding), into fresh
        caches of `capacity` slots; returns the last position's logits [batch, n_vocab] and its keys and
        values (the `pending` of the first step, see _step).

        The prompt pass runs eagerly: its matmuls are large, and tracing and optimising a graph for it
        would cost more than it saves before the first token."""
        n = tokens.shape[1]
        slots = tf.range(n)
        positions = tf.maximum(slots[None] - start[:, None], 0)                          # [batch, n]
        # Query slot i sees key slots j with start <= j <= i.
        mask = (slots[None, None] <= slots[None, :, None]) & (slots[None, None] >= start[:, None, None])
        x, presents = self._forward(weights, tokens, positions, mask[:, None])
        for (k, v), present in zip(cache, presents):   # present [batch, 2, heads, n, hd]
            padded = tf.pad(present, [[0, 0], [0, 0], [0, 0], [0, capacity - n], [0, 0]])
            k.assign(padded[:, 0])
            v.assign(padded[:, 1])
        return self._logits(weights, x[:, -1]), tf.stack([present[..., -1:, :] for present in presents])

    def _step(self, weights, cache, pending, tokens, pos, start, vocab_major=False):
        """Write `pending`, the previous token's keys and values [n_layer, batch, 2, heads, 1, hd], at slot
        pos - 1, then feed tokens [batch] at slot pos; returns the logits [batch, n_vocab] and this token's
        keys and values (the next step's pending)."""
        x, presents = self._step_blocks(weights, cache, pending, tokens, pos, start)
        return self._logits(weights, x[:, -1], vocab_major), tf.stack(presents)

    def _step_blocks(self, weights, cache, pending, tokens, pos, start):
        """The blocks of _step, one per layer of `cache`: returns x [batch, 1, n_embd] and the presents.

        Writing a token's keys and values one step late lets the buffers be written in place before they
        are read: under XLA, writing a buffer after reading it in the same step copies it."""
        pasts = []
        for (k, v), kv in zip(cache, tf.unstack(pending)):
            pasts.append(tf.stack([_write(k, kv[:, 0], pos - 1, self.xla), _write(v, kv[:, 1], pos - 1, self.xla)],
                                  axis=1))                                       # [batch, 2, heads, capacity, hd]
        slots = tf.range(tf.shape(cache[0][0])[2])
        # Cached slots start..pos-1 and the new token itself; later slots hold zeros or stale keys.
        seen = (slots[None] >= start[:, None]) & (slots[None] < pos)                      # [batch, capacity]
        mask = tf.concat([seen, tf.ones_like(seen[:, :1])], axis=1)[:, None, None]       # [batch, 1, 1, cap + 1]
        return self._forward(weights, tokens[:, None], (pos - start)[:, None], mask, pasts)

    def _forward(self, weights, tokens, positions, mask, pasts=None):
        """model.block over tokens [batch, n] at positions [batch, n], one block per past (all of them
        without): returns (x [batch, n, n_embd], each layer's present)."""
        p, copies = weights['params'], weights['copies']
        if self.output_major and tf.inside_function():
            p = dict(p, **{k: _OutputMajor(w_t) for k, w_t in copies.items() if k != 'model/wte'})
        x = tf.gather(p['model/wte'], tokens) + tf.gather(p['model/wpe'], positions)
        presents = []
        for layer, past in enumerate(pasts or [None] * self.hparams['n_layer']):
            x, present = model.block(x, p, f'model/h{layer}', self.hparams['n_head'], past, mask)
            presents.append(present)
        return x, presents

    def _logits(self, weights, x, vocab_major=False):
        """The float32 logits [batch, n_vocab] of x [batch, n_embd], the blocks' output.

        vocab_major (under XLA only): the logits are computed as wte @ last^T (_OutputMajor), the operand
        order in which XLA's CPU matmul is fastest for a few rows.  It pays when the draw follows in the
        same computation; returning logits made this way is slower."""
        p, copies = weights['params'], weights['copies']
        last = model.norm(x, p['model/ln_f/g'], p['model/ln_f/b'])                        # [batch, n_embd]
        if vocab_major:
            logits = last @ _OutputMajor(p['model/wte'])   # wte [n_vocab, n_embd] is already output-major
        elif 'model/wte' in copies:
            logits = tf.matmul(last, copies['model/wte'])
        else:
            logits = tf.matmul(last, p['model/wte'], transpose_b=True)
        return tf.cast(logits, tf.float32)

    def time_step(self, params, rows, draws_in_step, slots=128, rounds=3):
        """Estimated seconds of this form's one-token step for `rows` rows with a cache of `slots`: n_layer
        times one block's step (cache writes and attention included) plus the final norm, logits and a
        greedy draw.  The block is compiled once and run on several layers' weights in turn, TRIAL_BYTES
        of them or all, so that they stream from memory as in the real step rather than sit in the CPU's
        cache; best of `rounds`.  The copies made for the trial (those layers', wte's) are dropped after it."""
        p = _tensors(params)
        dtype, h = p['model/wte'].dtype, self.hparams
        slots = min(slots, h['n_ctx'])
        layer_bytes = sum(_bytes(v) for k, v in p.items() if k.startswith('model/h0/'))
        layers = min(h['n_layer'], max(2, -(-TRIAL_BYTES // layer_bytes)))
        in_step = draws_in_step and self.xla
        transpose = lambda w: tf.transpose(w[0] if w.shape.rank == 3 else w)
        head_weights = {'params': p, 'copies': {} if in_step else {'model/wte': transpose(p['model/wte'])}}

        def layer(i):   # layer i's weights under layer 0's names, which the compiled block reads
            own = {'model/h0/' + k[len(f'model/h{i}/'):]: v for k, v in p.items() if k.startswith(f'model/h{i}/')}
            copies = {k: transpose(v) for k, v in own.items() if k.endswith('/w')} if self.transposed else {}
            return {'params': dict(own, **{k: p[k] for k in ('model/wte', 'model/wpe')}), 'copies': copies}
        weights = [layer(i) for i in range(layers)]
        cache = self._cache(1, rows, slots, dtype)
        heads, hd = h['n_head'], h['n_embd'] // h['n_head']
        pending = tf.zeros([1, rows, 2, heads, 1, hd], dtype)
        tokens, pos, start = tf.zeros([rows], tf.int32), tf.constant(slots // 2), tf.zeros([rows], tf.int32)
        jit = self.xla or None
        block = tf.function(lambda w: self._step_blocks(w, cache, pending, tokens, pos, start)[0],
                            autograph=False, jit_compile=jit)
        x = block(weights[0])[:, -1]   # traced and compiled
        head = tf.function(lambda: choose(self._logits(head_weights, x, in_step and self.output_major), None, 0, 0, 1),
                           autograph=False, jit_compile=jit)
        head().numpy()
        blocks_s, head_s = float('inf'), float('inf')
        for _ in range(rounds):
            t = time.perf_counter()
            for w in weights:
                y = block(w)
            y.numpy()
            blocks_s = min(blocks_s, (time.perf_counter() - t) / layers)
            t = time.perf_counter()
            head().numpy()
            head_s = min(head_s, time.perf_counter() - t)
        return h['n_layer'] * blocks_s + head_s

    def logits_step(self):
        """The compiled step without the draw: (weights, cache, pending, tokens [batch], pos, start [batch])
        -> (logits, pending)."""
        return self._compile('logits', self._step, jit=self.xla)

    def draws_in_step(self, temperature, top_k, top_p):
        """Whether the compiled step draws the next token itself (greedy and top-k, under XLA)."""
        return self.xla and (temperature == 0 or top_k > 0)

    def stepper(self, temperature, top_k, top_p):
        """A function (weights, cache) -> step, for one call's weights and cache, where step is a function
        (pending, tokens int32 [batch], pos, start, seed [2]) -> (next tokens int32 [batch], pending) that
        feeds `tokens` at slot pos and draws what follows (see _step).  Greedy and top-k draws are compiled into the XLA
        step (one call per token, and XLA's top-k is faster than TensorFlow's); a draw from the whole
        vocabulary sorts or samples 50k logits, which XLA on CPU does slower, so that runs after the step."""
        if self.draws_in_step(temperature, top_k, top_p):
            def step_and_draw(weights, cache, pending, tokens, pos, start, seed):
                logits, pending = self._step(weights, cache, pending, tokens, pos, start, self.output_major)
                return choose(logits, seed, temperature, top_k, top_p), pending
            return self._compile(('step', temperature, top_k, top_p), step_and_draw, jit=True).bind
        logits_step, pick = self.logits_step(), self.chooser(temperature, top_k, top_p)

        def bind(weights, cache):
            step = logits_step.bind(weights, cache)

            def step_then_draw(pending, tokens, pos, start, seed):
                logits, pending = step(pending, tokens, pos, start)
                return pick(logits, seed), pending
            return step_then_draw
        return bind

    def chooser(self, temperature, top_k, top_p):
        """A compiled function (logits [batch, n_vocab], seed [2]) -> next tokens int32 [batch]."""
        key = ('choose', temperature, top_k, top_p)
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = tf.function(
                    lambda logits, seed: choose(logits, seed, temperature, top_k, top_p), autograph=False,
                    input_signature=[tf.TensorSpec([None, self.hparams['n_vocab']], tf.float32),
                                     tf.TensorSpec([2], tf.int32)])
            return self._compiled[key]

    def _compile(self, key, fn, jit):
        """fn(weights, cache, pending, tokens, pos, start, *rest) as a _Compiled step, made once per key."""
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = _Compiled(fn, jit)
            return self._compiled[key]


class _Compiled:
    """A step traced once for all batch sizes and cache sizes (per structure of weights), and called with
    its arguments flattened in advance: a tf.function call binds each argument in Python, tens of
    microseconds apiece, and the weights are over a hundred arguments."""

    def __init__(self, fn, jit):
        self.function = tf.function(fn, autograph=False, jit_compile=jit or None)
        # the arguments after weights and cache: those without a default
        self._arity = sum(p.default is p.empty for p in inspect.signature(fn).parameters.values()) - 2
        self._concrete = {}
        self._lock = threading.Lock()

    def bind(self, weights, cache):
        """This step for one call's weights and cache: a function of the remaining arguments (pending,
        tokens, pos, start and, for steps that draw, the seed)."""
        structure = tuple((k, tuple(v.shape), v.dtype, isinstance(v, tf.Variable))
                          for group in ('params', 'copies') for k, v in sorted(weights[group].items()))
        with self._lock:
            if structure not in self._concrete:
                heads, hd = cache[0][0].shape[1], cache[0][0].shape[3]
                specs = [tf.TensorSpec([len(cache), None, 2, heads, 1, hd], cache[0][0].dtype),   # pending
                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32),           # tokens, pos
                         tf.TensorSpec([None], tf.int32), tf.TensorSpec([2], tf.int32)]          # start, seed
                self._concrete[structure] = self.function.get_concrete_function(weights, cache, *specs[:self._arity])
            concrete = self._concrete[structure]
        call_flat = getattr(concrete, '_call_flat', None)   # private TensorFlow API (2.16-2.21)
        if call_flat is None or list(inspect.signature(call_flat).parameters) != ['tensor_inputs', 'captured_inputs']:
            return lambda *rest: self.function(weights, cache, *rest)   # the public call, a little slower
        head = [a.handle if isinstance(a, tf.Variable) else a for a in tf.nest.flatten((weights, cache))]
        captured = concrete.captured_inputs
        return lambda *rest: call_flat(head + list(rest), captured)   # see the class docstring

    def __call__(self, weights, cache, *rest):
        return self.bind(weights, cache)(*rest)

    def experimental_get_tracing_count(self):
        return self.function.experimental_get_tracing_count()


def choose(logits, seed, temperature, top_k, top_p):
    """Draw the next tokens int32 [batch] from logits [batch, n_vocab] with checked settings and a
    stateless seed [2]: greedy when temperature is 0 or top_k is 1."""
    if temperature == 0 or top_k == 1:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    # Shifted so the largest logit is 0 and floored at -1e10: a tiny temperature (even one that
    # float32 flushes to zero) then leaves the most likely token at 0, never inf or NaN.
    shifted = logits - tf.reduce_max(logits, axis=-1, keepdims=True)
    logits = tf.where(shifted < 0, tf.maximum(shifted / temperature, -1e10), 0.0)
    if top_k:
        values, indices = tf.math.top_k(logits, k=min(top_k, logits.shape[-1]))
        values = top_p_logits(values, top_p)
        pick = tf.random.stateless_categorical(values, 1, seed, dtype=tf.int32)
        return tf.gather(indices, pick, batch_dims=1)[:, 0]
    if top_p < 1:
        return _nucleus_draw(logits, top_p, seed)
    return tf.random.stateless_categorical(logits, 1, seed, dtype=tf.int32)[:, 0]


NUCLEUS_CANDIDATES = 1024


def _nucleus_draw(logits, p, seed):
    """A draw from top_p_logits(logits, p) [batch, n_vocab] without sorting the whole vocabulary when,
    as usual, the nucleus of every row lies within its NUCLEUS_CANDIDATES most likely tokens."""
    values, indices = tf.math.top_k(logits, k=min(NUCLEUS_CANDIDATES, logits.shape[-1]))   # [batch, k]
    probs = tf.exp(values - tf.reduce_logsumexp(logits, axis=-1, keepdims=True))
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)

    def within_candidates():
        kept = tf.where(mass_before < p, values, tf.cast(-1e10, values.dtype))
        pick = tf.random.stateless_categorical(kept, 1, seed, dtype=tf.int32)
        return tf.gather(indices, pick, batch_dims=1)[:, 0]

    def whole_vocabulary():
        return tf.random.stateless_categorical(top_p_logits(logits, p), 1, seed, dtype=tf.int32)[:, 0]

    covered = tf.reduce_all(mass_before[:, -1] + probs[:, -1] >= p)
    return tf.cond(covered, within_candidates, whole_vocabulary)


class _OutputMajor:
    """A matrix w [nx, nf] held as w_t = w^T [nf, nx], for model.conv1d's `x @ w[0]`: x @ w is computed as
    w_t @ x^T, since for a few rows XLA's CPU matmul is faster with the weight as the left operand.  The
    barrier (XLA only) keeps XLA from folding the transpose of the result back into the matmul, which
    would undo that."""

    def __init__(self, w_t):
        self.w_t = w_t

    def __getitem__(self, index):   # conv1d's w[0] of the [1, nx, nf] checkpoint weight
        return self

    def __rmatmul__(self, x):       # x [rows, nx] -> [rows, nf]
        from tensorflow.compiler.tf2xla.python import xla as xla_ops
        return tf.transpose(xla_ops.optimization_barrier(tf.matmul(self.w_t, x, transpose_b=True))[0])


_copies = {}   # ids of the source tensors -> their transposed copies; emptied as the sources are freed
_copies_lock = threading.Lock()


def _transposed_copies(params, names):
    """{name: transpose of params[name] as a matrix} for frozen weights, each made once and kept exactly as
    long as its source tensor lives (a weakref.finalize on the source drops the copy)."""
    copies = {}
    for name in names:
        key = id(params[name])
        with _copies_lock:
            copy = _copies.get(key)
        if copy is None:
            w = params[name]
            copy = tf.transpose(w[0] if w.shape.rank == 3 else w)
            with _copies_lock:
                if key not in _copies:
                    _copies[key] = copy
                    weakref.finalize(w, _copies.pop, key, None)
                copy = _copies[key]
        copies[name] = copy
    return copies


def _free_memory():
    """Bytes of memory available now (Linux), or 0 where that cannot be read."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_has_bfloat16():
    """Whether this CPU has bfloat16 matmul instructions (AVX512-BF16 or AMX; Linux flags)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return bool({'avx512_bf16', 'amx_bf16'} & set(line.split(':', 1)[1].split()))
    except OSError:
        pass
    return False


def xla_available():
    """XLA for the one-token step, unless GPT2_XLA=0 or this TensorFlow lacks it."""
    if os.environ.get('GPT2_XLA', '1') == '0':
        return False
    try:
        from tensorflow.compiler.tf2xla.python import xla  # noqa: F401
    except ImportError:
        return False
    return True


def _write(cache, new, pos, xla):
    """Write new [batch, heads, n, hd] into the cache variable at slot pos, in place; return the cache."""
    if xla:
        from tensorflow.compiler.tf2xla.python import xla as xla_ops
        zero = tf.zeros([], tf.int32)
        updated = xla_ops.dynamic_update_slice(cache.read_value(), new, tf.stack([zero, zero, pos, zero]))
        cache.assign(updated)
        return updated
    cache[:, :, pos:pos + tf.shape(new)[2]].assign(new)
    return cache.read_value()
