"""sample.py: the cached decoder against full forward passes, truncation against numpy, settings."""
import numpy as np
import pytest
import tensorflow as tf

import model

import checkpoint
import sample


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A checkpoint written by checkpoint.save and read back by checkpoint.load, with sharpened weights."""
    h = model.default_hparams().override_from_dict(dict(n_vocab=211, n_ctx=48, n_embd=32, n_head=4, n_layer=2))
    p = checkpoint.init_params(h, seed=3)
    rng = np.random.default_rng(0)
    p = {k: tf.constant(v.numpy() + (rng.normal(0, 0.3, v.shape).astype(np.float32) if k.endswith('/w') else 0))
         for k, v in p.items()}
    p['model/wte'] = tf.constant(rng.normal(0, 0.5, p['model/wte'].shape).astype(np.float32))
    d = tmp_path_factory.mktemp('m')
    checkpoint.save(str(d), h, p)
    return checkpoint.load(str(d))


def full_logits(h, p, tokens):
    """Last-position logits of a full, cache-free forward pass.  tokens [batch, n]."""
    return model.model(h, np.asarray(tokens), params=p)['logits'][:, -1].numpy()


def contexts(h, batch, n, seed=0):
    return np.random.default_rng(seed).integers(0, h.n_vocab, size=(batch, n))


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
    assert a.shape == (2, 7) and np.all(a[:, 0] == 5)
    np.testing.assert_array_equal(a, b)


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
    d = sample.decoder_for(h, p)
    fused = d.stepper(1.0, top_k, 1.0)
    if top_k and d.xla:   # the top-k draw is compiled into the XLA step
        assert fused.experimental_get_tracing_count() == 1
    else:
        assert d.step_one.experimental_get_tracing_count() == 1


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
    (1, 0, 0.8, 3),   # the nucleus is not within the 3 candidates: the whole vocabulary is sorted
])
@pytest.mark.parametrize('jit', [False, True])
def test_sampling_distribution(tiny, monkeypatch, temperature, top_k, top_p, candidates, jit):
    """Frequencies over many rows match softmax(truncate(logits / temperature)), from the graph chooser
    and from the same draw compiled with XLA (as inside the fused step)."""
    h, p = tiny
    monkeypatch.setattr(sample, 'NUCLEUS_CANDIDATES', candidates)
    logits = np.full(h.n_vocab, -5.0, np.float32)
    logits[:5] = [2.0, 1.5, 1.0, 0.5, 0.0]
    if jit:
        if not sample.xla_available():
            pytest.skip('XLA is not available in this TensorFlow build')
        choose = tf.function(lambda x, s: sample.choose(x, s, temperature, top_k, top_p), jit_compile=True)
    else:
        choose = sample.Decoder(h, p).chooser(temperature, top_k, top_p)
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
    (dict(length=45), 'exceed the model\'s context of 48'),
    (dict(context=[[1, 2], [3]]), 'same length'),
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


def test_xla_and_graph_steps_agree(tiny):
    """The XLA one-token step and the graph step write the same cache and give the same logits."""
    h, p = tiny
    if not sample.xla_available():
        pytest.skip('XLA is not available in this TensorFlow build')
    ctx = tf.constant(contexts(h, 3, 6, seed=7).astype(np.int32))
    tokens = contexts(h, 3, 10, seed=8).astype(np.int32)
    logits = {}
    for xla in (False, True):
        d = sample.Decoder(h, p, xla=xla)
        out = [d.prefill(ctx, 64)]
        for i in range(10):
            out.append(d.step_one(tf.constant(tokens[:, i:i + 1]), tf.constant(6 + i)))
        logits[xla] = np.stack([o.numpy() for o in out])
        full = model.model(h, np.concatenate([ctx.numpy(), tokens], 1), params=p)['logits'].numpy()
        np.testing.assert_allclose(logits[xla], full[:, 5:].transpose(1, 0, 2), atol=1e-4)
    np.testing.assert_allclose(logits[True], logits[False], atol=1e-4)


@pytest.mark.parametrize('copies', ['1', '0'])
def test_transposed_weight_copies_change_no_logits(tiny, monkeypatch, copies):
    """Under XLA the blocks' matmuls run on transposed copies of the weights (unless GPT2_TRANSPOSED_COPIES=0);
    the step's logits and the fused greedy draw match full forward passes either way."""
    h, p = tiny
    if not sample.xla_available():
        pytest.skip('XLA is not available in this TensorFlow build')
    monkeypatch.setenv('GPT2_TRANSPOSED_COPIES', copies)
    d = sample.Decoder(h, p)
    assert any(callable(w) for w in d.step_params.values()) == (copies == '1')
    tokens = contexts(h, 3, 12, seed=9).astype(np.int32)
    d.prefill(tf.constant(tokens[:, :5]), 64)
    for i in range(5, 12):
        logits = d.step_one(tf.constant(tokens[:, i - 1:i]), tf.constant(i - 1)).numpy()
        np.testing.assert_allclose(logits, full_logits(h, p, tokens[:, :i]), atol=1e-4)
    greedy = d.stepper(0.0, 0, 1.0)
    d.prefill(tf.constant(tokens[:, :4]), 64)
    seq = tokens[:, :5]
    for pos in range(4, 11):   # feed seq[:, pos] at pos; the draw is the argmax after seq[:, :pos + 1]
        nxt = greedy(tf.constant(seq[:, pos]), tf.constant(pos), tf.constant([0, 0])).numpy()
        np.testing.assert_array_equal(nxt, full_logits(h, p, seq).argmax(-1))
        seq = np.concatenate([seq, nxt[:, None]], 1)
