"""sample.py: the cached decoder against full forward passes, truncation against numpy, settings."""
import gc
import os
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import tensorflow as tf

import model

import checkpoint
import decode
import sample
import speed
from conftest import sharpened_params


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A checkpoint written by checkpoint.save and read back by checkpoint.load, with sharpened weights."""
    h = model.default_hparams().override_from_dict(dict(n_vocab=211, n_ctx=48, n_embd=32, n_head=4, n_layer=2))
    p = sharpened_params(h)
    d = tmp_path_factory.mktemp('m')
    checkpoint.save(str(d), h, p)
    return checkpoint.load(str(d))


def full_logits(h, p, tokens):
    """Last-position logits of a full, cache-free forward pass.  tokens [batch, n]."""
    return model.model(h, np.asarray(tokens), params=p)['logits'][:, -1].numpy()


def contexts(h, batch, n, seed=0):
    return np.random.default_rng(seed).integers(0, h.n_vocab, size=(batch, n))


def argmax_row(h, p, row, length, keep=None):
    """A greedy continuation of one row by full forward passes, under the cut rule: each token is predicted
    from at most n_ctx tokens; when the tokens since the last cut would exceed n_ctx, the last `keep` stay."""
    keep = h.n_ctx // 2 if keep is None else keep
    seq, first = [int(t) for t in row], 0
    for _ in range(length):
        if len(seq) - first > h.n_ctx:
            first = len(seq) - keep
        seq.append(int(full_logits(h, p, [seq[first:]]).argmax()))
    return seq


def argmax_loop(h, p, ctx, length, keep=None):
    return np.array([argmax_row(h, p, row, length, keep) for row in ctx])


def test_greedy_equals_argmax_loop_over_full_forward_passes(tiny):
    h, p = tiny
    ctx = contexts(h, 3, 7)
    out = sample.sample_sequence(hparams=h, params=p, length=25, context=ctx, top_k=1).numpy()
    ref = ctx.copy()
    for _ in range(25):
        ref = np.concatenate([ref, full_logits(h, p, ref).argmax(-1)[:, None]], axis=1)
    assert out.dtype == np.int32 and out.shape == (3, 32)
    np.testing.assert_array_equal(out, ref)
    assert len(set(map(tuple, out[:, 7:]))) > 1   # rows are their own prompts


@pytest.mark.parametrize('settings', [dict(temperature=0), dict(temperature=0, top_k=40, top_p=0.5),
                                      dict(temperature=1e-6, top_k=0), dict(temperature=1e-45, top_p=0.9)])
def test_temperature_towards_zero_is_greedy(tiny, settings):
    h, p = tiny
    ctx = contexts(h, 2, 4, seed=1)
    greedy = sample.sample_sequence(hparams=h, params=p, length=15, context=ctx, top_k=1).numpy()
    out = sample.sample_sequence(hparams=h, params=p, length=15, context=ctx, seed=5, **settings).numpy()
    np.testing.assert_array_equal(out, greedy)


def test_start_token_and_single_row_context(tiny):
    h, p = tiny
    a = sample.sample_sequence(hparams=h, params=p, length=6, start_token=5, batch_size=2, top_k=1).numpy()
    b = sample.sample_sequence(hparams=h, params=p, length=6, context=[5], batch_size=2, top_k=1).numpy()
    c = sample.sample_sequence(hparams=h, params=p, length=6, context=[[5]], batch_size=2, top_k=1).numpy()
    assert a.shape == (2, 7) and np.all(a[:, 0] == 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


# --- independent streams -------------------------------------------------------------------------------

def two_calls(h, p):
    """Two sampling calls that differ in prompt, prompt length and settings, with the same batch size."""
    return (dict(hparams=h, params=p, length=14, context=contexts(h, 2, 5, seed=10), seed=1, top_k=20),
            dict(hparams=h, params=p, length=14, context=contexts(h, 2, 9, seed=11), seed=2, temperature=0.8))


def test_interleaved_streams_equal_each_alone(tiny):
    h, p = tiny
    calls = two_calls(h, p) + (dict(two_calls(h, p)[0], context=contexts(h, 3, 4, seed=12)),)
    alone = [np.stack(list(sample.stream_sequence(**kw)), 1) for kw in calls]
    together = [[], [], []]
    for columns in zip(*[sample.stream_sequence(**kw) for kw in calls]):
        for out, column in zip(together, columns):
            out.append(column)
    for a, t in zip(alone, together):
        np.testing.assert_array_equal(np.stack(t, 1), a)


def test_two_threads_equal_each_alone(tiny):
    h, p = tiny
    calls = two_calls(h, p)
    alone = [sample.sample_sequence(**kw).numpy() for kw in calls]
    results, barrier = [None, None], threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = [sample.sample_sequence(**calls[i]).numpy() for _ in range(3)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, runs in zip(alone, results):
        for r in runs:
            np.testing.assert_array_equal(r, a)


def test_no_weights_outlive_their_owner(tiny):
    """Neither the steps nor the transposed copies keep a caller's weights alive once they are dropped."""
    h, p = tiny
    own = {k: tf.constant(v.numpy()) for k, v in p.items()}
    sample.sample_sequence(hparams=h, params=own, length=5, context=[[1, 2]], top_k=3, seed=1,
                           xla=False, transposed_copies=False)
    refs = [weakref.ref(v) for v in own.values()]
    assert speed.has_transposed(own['model/wte'])   # the graph step's logits multiply with wte's copy
    copies = len(speed._copies)
    del own
    gc.collect()
    assert all(r() is None for r in refs)
    assert len(speed._copies) == copies - 1


# --- prompts of different lengths, text longer than the context --------------------------------------------

def test_ragged_rows_equal_each_row_alone(tiny):
    h, p = tiny
    rows = [contexts(h, 1, n, seed=n)[0].tolist() for n in (3, 7, 12)]
    out = sample.sample_sequence(hparams=h, params=p, length=20, context=rows, top_k=1)
    assert isinstance(out, tf.RaggedTensor) and out.dtype == tf.int32
    assert out.row_lengths().numpy().tolist() == [23, 27, 32]
    for row, got in zip(rows, out.to_list()):
        assert got == argmax_row(h, p, row, 20)
    columns = list(sample.stream_sequence(hparams=h, params=p, length=20, context=rows, top_k=1))
    assert [c.shape for c in columns] == [(3,)] * 20 and columns[0].dtype == np.int32
    assert [list(r) for r in np.stack(columns, 1)] == [got[len(row):] for row, got in zip(rows, out.to_list())]


@pytest.mark.parametrize('keep', [None, 5, 47])
@pytest.mark.parametrize('lengths', [(7, 7), (3, 30)])
def test_past_the_context(tiny, keep, lengths):
    """110 tokens past a context of 48 under the cut rule, for equal and for ragged rows; the stream is the
    same sequence."""
    h, p = tiny
    rows = [contexts(h, 1, n, seed=n + 1)[0].tolist() for n in lengths]
    kw = dict(hparams=h, params=p, length=110, context=rows, top_k=1, keep=keep)
    out = sample.sample_sequence(**kw)
    out = out.to_list() if isinstance(out, tf.RaggedTensor) else out.numpy().tolist()
    for row, got in zip(rows, out):
        assert got == argmax_row(h, p, row, 110, keep)
    streamed = np.stack(list(sample.stream_sequence(**kw)), 1)
    assert [list(r) for r in streamed] == [got[len(row):] for row, got in zip(rows, out)]


def test_a_prompt_of_the_whole_context_continues(tiny):
    h, p = tiny
    row = contexts(h, 1, h.n_ctx, seed=13)
    out = sample.sample_sequence(hparams=h, params=p, length=30, context=row, top_k=1, keep=10).numpy()
    assert out[0].tolist() == argmax_row(h, p, row[0], 30, keep=10)


def test_numpy_settings():
    assert sample.check_settings(np.float32(0.5), np.int64(3), np.float64(0.9)) == (0.5, 3, 0.9)
    assert sample.check_settings(np.int32(1), 0, np.float32(1)) == (1.0, 0, 1.0)
    with pytest.raises(sample.SampleError):
        sample.check_settings(np.bool_(True))


def test_top_k_samples_stay_in_the_k_most_likely(tiny):
    h, p = tiny
    k = 3
    ctx = contexts(h, 4, 5, seed=2)
    out = sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, top_k=k, seed=11).numpy()
    for t in range(5, out.shape[1]):
        logits = full_logits(h, p, out[:, :t])
        kth = np.sort(logits, axis=-1)[:, -k]
        assert np.all(logits[np.arange(4), out[:, t]] >= kth - 1e-5)
    assert len(np.unique(out[:, 5:])) > 4  # and it does sample, not just take the argmax


def np_nucleus(logits, p):
    """Indices of the smallest set of most likely tokens with probability >= p (reference)."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before < p].tolist())


@pytest.mark.parametrize('top_k', [0, 50])
def test_top_p_samples_stay_in_the_nucleus(tiny, top_k):
    h, p = tiny
    ctx = contexts(h, 4, 5, seed=3)
    out = sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, top_p=0.6, top_k=top_k,
                                 temperature=1.5, seed=2).numpy()
    for t in range(5, out.shape[1]):
        logits = full_logits(h, p, out[:, :t]) / 1.5
        for row in range(4):
            nucleus = np_nucleus(logits[row], 0.6)
            if top_k:
                nucleus &= set(np.argsort(-logits[row])[:top_k].tolist())
            assert out[row, t] in nucleus


def test_same_seed_same_tokens_different_seed_different(tiny):
    h, p = tiny
    ctx = contexts(h, 2, 3, seed=4)
    run = lambda seed, **kw: sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, seed=seed,
                                                    **kw).numpy()
    np.testing.assert_array_equal(run(7), run(7))
    np.testing.assert_array_equal(run(7, top_k=10, top_p=0.9), run(7, top_k=10, top_p=0.9))
    assert not np.array_equal(run(7), run(8))
    assert not np.array_equal(run(None), run(None))


def test_stream_yields_the_same_tokens(tiny):
    h, p = tiny
    ctx = contexts(h, 2, 3, seed=5)
    kw = dict(hparams=h, params=p, length=10, context=ctx, seed=3, top_k=20)
    columns = list(sample.stream_sequence(**kw))
    assert len(columns) == 10 and columns[0].shape == (2,)
    np.testing.assert_array_equal(np.stack(columns, 1), sample.sample_sequence(**kw).numpy()[:, 3:])


@pytest.mark.parametrize('top_k', [0, 5])
def test_compiled_step_is_traced_once_for_all_shapes(tiny, top_k):
    h, p = tiny
    for batch, n, length in [(1, 3, 5), (2, 9, 30), (5, 1, 2), (1, 40, 8)]:
        sample.sample_sequence(hparams=h, params=p, length=length, context=contexts(h, batch, n), seed=1,
                               top_k=top_k)
    steps = sample.steps_for(h)
    traced = {key: c.experimental_get_tracing_count() for key, c in steps._compiled.items()
              if isinstance(c, speed.Compiled)}
    assert traced and set(traced.values()) == {1}, traced


def test_variables_are_read_at_every_call(tiny):
    h, p = tiny
    variables = {k: tf.Variable(v) for k, v in p.items()}
    ctx = contexts(h, 1, 4, seed=6)
    before = sample.sample_sequence(hparams=h, params=variables, length=8, context=ctx, top_k=1).numpy()
    np.testing.assert_array_equal(before, sample.sample_sequence(hparams=h, params=p, length=8, context=ctx,
                                                                  top_k=1).numpy())
    variables['model/wte'].assign(-variables['model/wte'])
    after = sample.sample_sequence(hparams=h, params=variables, length=8, context=ctx, top_k=1).numpy()
    p2 = dict(p, **{'model/wte': -p['model/wte']})
    ref = ctx.copy()
    for _ in range(8):
        ref = np.concatenate([ref, full_logits(h, p2, ref).argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(after, ref)


# --- the pure truncation functions, batch > 1 ----------------------------------------------------------

def test_top_k_logits_batch():
    logits = np.random.default_rng(0).normal(size=(5, 30)).astype(np.float32)
    out = sample.top_k_logits(tf.constant(logits), 4).numpy()
    for row, o in zip(logits, out):
        keep = np.argsort(-row)[:4]
        assert set(np.flatnonzero(o > -1e9)) == set(keep)
        np.testing.assert_array_equal(o[keep], row[keep])
    np.testing.assert_array_equal(sample.top_k_logits(tf.constant(logits), 0).numpy(), logits)


@pytest.mark.parametrize('p', [0.05, 0.3, 0.75, 0.999])
def test_top_p_logits_batch(p):
    logits = (3 * np.random.default_rng(1).normal(size=(6, 40))).astype(np.float32)
    out = sample.top_p_logits(tf.constant(logits), p).numpy()
    for row, o in zip(logits, out):
        assert set(np.flatnonzero(o > -1e9)) == np_nucleus(row.astype(np.float64), p)
    np.testing.assert_array_equal(sample.top_p_logits(tf.constant(logits), 1.0).numpy(), logits)


@pytest.mark.parametrize('temperature,top_k,top_p,candidates', [
    (1, 0, 1, 1024), (2.0, 0, 1, 1024), (0.7, 3, 1, 1024), (1, 0, 0.8, 1024), (1, 3, 0.5, 1024),
    (1, 0, 0.65, 5),  # the nucleus lies within 5 candidates, measured against the whole vocabulary
    (1, 0, 0.8, 3),   # the nucleus is not within the 3 candidates: the next size, then the whole vocabulary
])
@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('as_tensors', [False, True])
def test_sampling_distribution(tiny, monkeypatch, temperature, top_k, top_p, candidates, jit, as_tensors):
    """Frequencies over many rows match softmax(truncate(logits / temperature)), from decode.draw with the
    settings as Python numbers (the sampler) and as tensors (export's generate), in a graph and under XLA."""
    h, p = tiny
    monkeypatch.setattr(decode, 'CANDIDATES', (candidates, 2 * candidates))
    logits = np.full(h.n_vocab, -5.0, np.float32)
    logits[:5] = [2.0, 1.5, 1.0, 0.5, 0.0]
    settings = (temperature, top_k, top_p)
    if as_tensors:
        settings = (tf.constant(float(temperature)), tf.constant(top_k), tf.constant(float(top_p)))
    choose = tf.function(lambda x, s: decode.draw(x, s, *settings)[0], jit_compile=jit or None, autograph=False)
    n = 20000
    tokens = choose(tf.constant(np.tile(logits, [n, 1])), tf.constant([1, 2], tf.int32)).numpy()
    ref = sample.top_p_logits(sample.top_k_logits(tf.constant(logits[None] / temperature), top_k), top_p)
    expected = tf.nn.softmax(ref)[0].numpy()
    freq = np.bincount(tokens, minlength=h.n_vocab) / n
    assert np.all(freq[expected == 0] == 0)
    assert np.max(np.abs(freq - expected)) < 0.015


# --- bad settings and contexts ------------------------------------------------------------------------

@pytest.mark.parametrize('kw,fragment', [
    (dict(temperature=-0.5), 'temperature must be >= 0'),
    (dict(temperature='hot'), 'temperature must be a number'),
    (dict(top_k=-1), 'top_k must be an integer >= 0'),
    (dict(top_k=2.5), 'top_k must be an integer'),
    (dict(top_p=0), 'top_p must be in (0, 1]'),
    (dict(top_p=1.5), 'top_p must be in (0, 1]'),
    (dict(length=-1), 'length must be an integer >= 0'),
    (dict(context=[list(range(49))]), 'exceeds the model\'s context of 48 tokens; truncate it to its last 48'),
    (dict(keep=0), 'keep must be an integer in [1, 47]'),
    (dict(keep=48), 'keep must be an integer in [1, 47]'),
    (dict(keep=2.5), 'keep must be an integer'),
    (dict(context=[[1, 2], [[3]]]), 'context must be [batch, tokens]'),
    (dict(context=[[]]), 'context is empty'),
    (dict(context=[[1, 211]]), 'outside [0, 211)'),
    (dict(context=[[1, 2]], start_token=1), 'exactly one of'),
    (dict(context=None), 'exactly one of'),
    (dict(context=None, start_token=3), 'needs batch_size'),
    (dict(context=[[1, 2], [3, 4]], batch_size=3), '2 rows but batch_size is 3'),
])
def test_bad_settings(tiny, kw, fragment):
    h, p = tiny
    args = dict(hparams=h, params=p, length=5, context=[[1, 2, 3, 4]])
    args.update(kw)
    with pytest.raises(sample.SampleError) as e:
        sample.sample_sequence(**args)
    assert fragment in str(e.value) and '\n' not in str(e.value)


def test_length_zero_returns_the_context(tiny):
    h, p = tiny
    out = sample.sample_sequence(hparams=h, params=p, length=0, context=[[1, 2, 3]])
    np.testing.assert_array_equal(out.numpy(), [[1, 2, 3]])


def logits_after_each_token(h, p, tokens, n, form):
    """Logits after tokens[:, :n] (a prefill), then after each further token fed by the compiled step."""
    steps = sample.steps_for(h, p['model/wte'].dtype)
    start = tf.zeros([tokens.shape[0]], tf.int32)
    logits, buffers, pending = decode.prefill(h, p, tf.constant(tokens[:, :n]), start, 64)
    buffers = tf.nest.map_structure(lambda b: tf.Variable(b, shape=tf.TensorShape([None] * 4)), buffers)
    out = [logits.numpy()]
    weights = steps.prepare(p, form, decode.Draw(1.0, 0, 1.0))
    step = steps._compile(form, None).bind(weights, buffers)
    for i in range(n, tokens.shape[1]):
        logits, pending = step(pending, tf.constant(tokens[:, i]), tf.constant(i), start)
        out.append(logits.numpy())
    return np.stack(out, axis=1)   # [batch, steps, n_vocab]


@pytest.mark.parametrize('xla,copies', [(False, False), (True, False), (True, True)])
def test_step_forms_give_the_logits_of_full_passes(tiny, xla, copies):
    """Each step form (XLA or a plain graph; under XLA, transposed weight copies or not) gives the logits of
    full forward passes."""
    h, p = tiny
    if xla and not speed.xla_available():
        pytest.skip('XLA is not available in this TensorFlow build')
    weights = sample.steps_for(h).prepare(p, (xla, copies), decode.Draw(1.0, 0, 1.0))
    assert (len(weights['output_major']) > 1) == copies   # the blocks' copies
    tokens = contexts(h, 3, 16, seed=7).astype(np.int32)
    full = model.model(h, tokens, params=p)['logits'].numpy()
    np.testing.assert_allclose(logits_after_each_token(h, p, tokens, 6, (xla, copies)), full[:, 5:], atol=1e-4)


FORMS = {'graph': (False, False), 'xla': (True, False), 'xla+copies': (True, True)}


@pytest.mark.parametrize('setting', ['GPT2_XLA', 'GPT2_TRANSPOSED_COPIES'])
def test_environment_turns_step_forms_off(tiny, monkeypatch, setting):
    h, p = tiny
    monkeypatch.setenv(setting, '0')
    allowed = sample.steps_for(h)._candidates(p, None, None)
    assert all(not copies for _, copies in allowed) and (setting != 'GPT2_XLA' or allowed == [(False, False)])
    ctx = contexts(h, 2, 5, seed=9)
    out = sample.sample_sequence(hparams=h, params=p, length=10, context=ctx, top_k=1).numpy()
    np.testing.assert_array_equal(out, argmax_loop(h, p, ctx, 10))


@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16])
def test_every_step_form_gives_the_same_greedy_tokens(tiny, monkeypatch, dtype):
    """Whichever form the kernel trial picks, the tokens are the same: each form named in turn, by the
    arguments and by the environment."""
    h, p = tiny
    p = {k: v if model.stays_float32(k) else tf.cast(v, dtype) for k, v in p.items()}
    ctx = contexts(h, 3, 6, seed=4)
    outs = {}
    for name, (xla, copies) in FORMS.items():
        outs[name] = sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, top_k=1,
                                            xla=xla, transposed_copies=copies).numpy()
        with monkeypatch.context() as m:
            m.setenv('GPT2_XLA', str(int(xla)))
            m.setenv('GPT2_TRANSPOSED_COPIES', str(int(copies)))
            assert sample.steps_for(h, dtype)._candidates(p, None, None) == [(xla, copies)]
            np.testing.assert_array_equal(
                sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, top_k=1).numpy(), outs[name])
    if dtype == tf.float32:
        for name in FORMS:
            np.testing.assert_array_equal(outs[name], outs['graph'], err_msg=name)
        np.testing.assert_array_equal(outs['graph'], argmax_loop(h, p, ctx, 20))
        return
    # bfloat16 rounds differently in each kernel (XLA fuses in float32, oneDNN rounds after each op), so two
    # forms may part at a near-tie: equal up to there, and there the two tokens' logits (a full pass in
    # float32 over the common prefix) lie within 3% of the logits' spread.
    p32 = {k: tf.cast(v, tf.float32) for k, v in p.items()}
    parted = 0
    for name in FORMS:
        for a, b in zip(outs[name], outs['graph']):
            differ = np.flatnonzero(a != b)
            if differ.size:
                parted += 1
                logits = full_logits(h, p32, [a[:differ[0]]])[0]
                assert abs(logits[a[differ[0]]] - logits[b[differ[0]]]) < 0.03 * logits.std(), name
    assert parted <= 2


@pytest.mark.parametrize('copies,winner', [(None, (True, True)), (None, (False, False)), ('0', (True, False))])
def test_kernel_trial_decides_the_form_and_the_copies(tiny, monkeypatch, copies, winner):
    """The sampler runs the form the trial timed fastest on the real step; the blocks' copies outlive the
    trial only if that form uses them."""
    h, p = tiny
    own = {k: tf.constant(v.numpy()) for k, v in p.items()}
    monkeypatch.setenv('GPT2_KERNEL_TRIAL', '1')
    if copies is not None:
        monkeypatch.setenv('GPT2_TRANSPOSED_COPIES', copies)
    steps = sample.steps_for(h)
    monkeypatch.setattr(steps, 'trials', {})
    timed = []

    def fastest(forms, run):
        for form in forms:
            timed.append(form)
            run(form)
        return winner, {form: 1.0 if form == winner else 2.0 for form in forms}
    monkeypatch.setattr(speed, 'fastest', fastest)
    ran = []
    bind = steps._bind
    monkeypatch.setattr(steps, '_bind', lambda w, b, s, form, h=None: (ran.append(form), bind(w, b, s, form, h))[1])
    ctx = contexts(h, 3, 5, seed=2)
    out = sample.sample_sequence(hparams=h, params=own, length=8, context=ctx, top_k=1).numpy()
    np.testing.assert_array_equal(out, argmax_loop(h, own, ctx, 8))
    # XLA with copies where they can be made, else without; and the graph.  3 rows are timed as 4.
    assert sorted(timed) == [(False, False), (True, copies is None)]
    assert ran[-1] == winner
    assert sample.step_form(h, tf.float32, 3, top_k=1)[0] == winner
    sample.sample_sequence(hparams=h, params=own, length=3, context=ctx, top_k=1)
    assert len(timed) == 2   # remembered for this batch size
    blocks = [v for v in own.values() if v.shape.rank == 3]
    assert all(speed.has_transposed(w) == winner[1] for w in blocks)


def test_kernel_trial_times_the_real_step(tiny, monkeypatch):
    """The trial (speed.fastest) runs each candidate form of the caller's first step, and keeps the fastest."""
    h, p = tiny
    monkeypatch.setenv('GPT2_KERNEL_TRIAL', '1')
    steps = sample.steps_for(h)
    monkeypatch.setattr(steps, 'trials', {})
    ctx = contexts(h, 2, 5, seed=3)
    out = sample.sample_sequence(hparams=h, params=p, length=6, context=ctx, top_k=1).numpy()
    np.testing.assert_array_equal(out, argmax_loop(h, p, ctx, 6))
    form, seconds = sample.step_form(h, tf.float32, 2, top_k=1)
    assert set(seconds) == {(True, True), (False, False)} and all(0 < t < 1 for t in seconds.values())
    assert form == min(seconds, key=seconds.get)
    # Small models take the rule without a trial; GPT2_KERNEL_TRIAL=0 always.
    monkeypatch.setattr(steps, 'trials', {})
    monkeypatch.delenv('GPT2_KERNEL_TRIAL')
    sample.sample_sequence(hparams=h, params=p, length=3, context=ctx, top_k=1)
    assert sample.step_form(h, tf.float32, 2, top_k=1) is None


def test_fastest_times_each_form_interleaved():
    calls = []
    form, seconds = speed.fastest(['a', 'b'], lambda f: (calls.append(f), time.sleep(0.01 if f == 'a' else 0.03)),
                                  rounds=2)
    assert form == 'a' and calls == ['a', 'b'] * 3 and seconds['a'] < seconds['b']


def test_recorded_aot_lines_are_hidden_around_a_compiling_call(tmp_path):
    """speed.compiling(), which the sampler puts around each call that may load a cached step, hides the
    lines XLA's AOT loader printed on an Intel Xeon loading a healthy entry (tests/data), and nothing else."""
    recorded = [line for line in open(os.path.join(os.path.dirname(__file__), 'data',
                                                   'xla-aot-loader-warning-intel.txt')).read().splitlines() if line]
    code = ('import os, sys, speed\n'
            'with speed.compiling():\n'
            '    for line in sys.argv[1:]: os.write(2, line.encode() + b"\\n")\n')
    env = dict(os.environ, TF_XLA_FLAGS=f'--tf_xla_persistent_cache_directory={tmp_path}', TF_CPP_MIN_LOG_LEVEL='2')
    run = subprocess.run([sys.executable, '-c', code, *recorded, 'E0000 other.cc:1] a real error'],
                         capture_output=True, text=True, timeout=120, env=env, cwd=os.path.dirname(speed.__file__))
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[-1:] == ['E0000 other.cc:1] a real error']
    assert not any('cpu_aot_loader' in line for line in run.stderr.splitlines())
