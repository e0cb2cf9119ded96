"""model.py against a plain-numpy GPT-2 written here from the paper's equations."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import checkpoint
import model

HPARAM_SETS = [
    dict(n_vocab=97, n_ctx=16, n_embd=24, n_head=3, n_layer=2),
    dict(n_vocab=61, n_ctx=12, n_embd=50, n_head=25, n_layer=1),   # 25 heads of 2 dims, as 1558M's 25 heads
    dict(n_vocab=50, n_ctx=10, n_embd=16, n_head=1, n_layer=3),
]


def random_params(hparams, seed):
    """Every tensor random, biases and gains included, attention sharp enough that a mask error shows."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in checkpoint.param_shapes(hparams).items():
        leaf = name.rsplit('/', 1)[1]
        if leaf == 'g':
            v = 1 + 0.2 * rng.standard_normal(shape)
        elif leaf == 'b':
            v = 0.1 * rng.standard_normal(shape)
        else:
            v = 0.3 * rng.standard_normal(shape)
        params[name] = v.astype(np.float32)
    return params


def np_layernorm(x, g, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def np_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_gpt2(h, p, tokens, matmul=None):
    """Reference logits [batch, seq, n_vocab] in float64, one loop per equation.  matmul: f(x, name) in
    place of x @ the matrix `name` (w[0], or wte^T for the logits)."""
    p = {k: np.asarray(v, np.float64) for k, v in p.items()}
    mm = matmul or (lambda x, name: x @ (p[name].T if name.endswith('wte') else p[name][0]))
    batch, seq = tokens.shape
    E, H = h['n_embd'], h['n_head']
    d = E // H
    x = p['model/wte'][tokens] + p['model/wpe'][np.arange(seq)][None]
    causal = np.tril(np.ones((seq, seq), bool))
    for layer in range(h['n_layer']):
        P = lambda n: p[f'model/h{layer}/{n}']
        a_in = np_layernorm(x, P('ln_1/g'), P('ln_1/b'))
        qkv = mm(a_in, f'model/h{layer}/attn/c_attn/w') + P('attn/c_attn/b')
        q, k, v = qkv[..., :E], qkv[..., E:2 * E], qkv[..., 2 * E:]
        heads = []
        for i in range(H):
            qi, ki, vi = (t[..., i * d:(i + 1) * d] for t in (q, k, v))
            scores = qi @ ki.transpose(0, 2, 1) / np.sqrt(d)
            scores = np.where(causal, scores, -np.inf)
            heads.append(np_softmax(scores) @ vi)
        a = mm(np.concatenate(heads, -1), f'model/h{layer}/attn/c_proj/w') + P('attn/c_proj/b')
        x = x + a
        m_in = np_layernorm(x, P('ln_2/g'), P('ln_2/b'))
        m = mm(np_gelu(mm(m_in, f'model/h{layer}/mlp/c_fc/w') + P('mlp/c_fc/b')), f'model/h{layer}/mlp/c_proj/w') + P('mlp/c_proj/b')
        x = x + m
    x = np_layernorm(x, p['model/ln_f/g'], p['model/ln_f/b'])
    return mm(x, 'model/wte')


def hp(d):
    return model.default_hparams().override_from_dict(d)


@pytest.mark.parametrize('hd', HPARAM_SETS)
def test_forward_matches_numpy_reference(hd):
    h = hp(hd)
    p = random_params(h, seed=1)
    tokens = np.random.default_rng(2).integers(0, h.n_vocab, size=(3, h.n_ctx))
    out = model.model(h, tokens, params={k: tf.constant(v) for k, v in p.items()})
    ref = np_gpt2(h, p, tokens)
    assert out['logits'].dtype == tf.float32
    assert out['logits'].shape == (3, h.n_ctx, h.n_vocab)
    assert np.max(np.abs(out['logits'].numpy() - ref)) < 1e-4
    assert out['present'].shape == (3, h.n_layer, 2, h.n_head, h.n_ctx, h.n_embd // h.n_head)


def test_forward_inside_tf_function_with_unknown_shapes():
    h = hp(HPARAM_SETS[0])
    p = {k: tf.constant(v) for k, v in random_params(h, seed=3).items()}
    f = tf.function(lambda x: model.model(h, x, params=p)['logits'],
                    input_signature=[tf.TensorSpec([None, None], tf.int32)])
    tokens = np.random.default_rng(4).integers(0, h.n_vocab, size=(2, 9)).astype(np.int32)
    np.testing.assert_allclose(f(tokens).numpy(), np_gpt2(h, random_params(h, 3), tokens), atol=1e-4)


@pytest.mark.parametrize('chunks', [[1] * 12, [3, 1, 4, 2, 2], [5, 7]])
def test_incremental_decoding_with_past_equals_full_pass(chunks):
    h = hp(HPARAM_SETS[0])
    p = {k: tf.constant(v) for k, v in random_params(h, seed=5).items()}
    tokens = np.random.default_rng(6).integers(0, h.n_vocab, size=(2, sum(chunks)))
    full = model.model(h, tokens, params=p)
    past, logits, start = None, [], 0
    for n in chunks:
        out = model.model(h, tokens[:, start:start + n], past=past, params=p)
        assert out['present'].shape[-2] == n
        logits.append(out['logits'])
        past = out['present'] if past is None else tf.concat([past, out['present']], axis=-2)
        start += n
    np.testing.assert_allclose(tf.concat(logits, 1).numpy(), full['logits'].numpy(), atol=1e-4)
    np.testing.assert_allclose(past.numpy(), full['present'].numpy(), atol=1e-5)


def test_conv1d_is_the_checkpoint_matmul():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 3, 5)).astype(np.float32))
    w = tf.constant(rng.normal(size=(1, 5, 7)).astype(np.float32))
    b = tf.constant(rng.normal(size=7).astype(np.float32))
    expected = np.einsum('bsi,io->bso', x.numpy(), w.numpy()[0]) + b.numpy()
    np.testing.assert_allclose(model.conv1d(x, {'c/w': w, 'c/b': b}, 'c').numpy(), expected, atol=1e-5)


def test_past_may_be_numpy():
    h = hp(HPARAM_SETS[0])
    p = {k: tf.constant(v) for k, v in random_params(h, seed=7).items()}
    tokens = np.random.default_rng(8).integers(0, h.n_vocab, size=(2, 9))
    full = model.model(h, tokens, params=p)['logits'].numpy()
    past = model.model(h, tokens[:, :5], params=p)['present'].numpy()
    for given in (past, past.tolist()):
        out = model.model(h, tokens[:, 5:], past=given, params=p)['logits'].numpy()
        np.testing.assert_allclose(out, full[:, 5:], atol=1e-4)


def test_default_hparams_are_124M():
    assert model.default_hparams() == dict(n_vocab=50257, n_ctx=1024, n_embd=768, n_head=12, n_layer=12)
    assert model.default_hparams().n_ctx == 1024


def test_124M_variable_names_and_shapes_equal_the_published_list():
    published = {'model/wte': [50257, 768], 'model/wpe': [1024, 768],
                 'model/ln_f/g': [768], 'model/ln_f/b': [768]}
    for i in range(12):
        for name, shape in [('ln_1/g', [768]), ('ln_1/b', [768]), ('ln_2/g', [768]), ('ln_2/b', [768]),
                            ('attn/c_attn/w', [1, 768, 2304]), ('attn/c_attn/b', [2304]),
                            ('attn/c_proj/w', [1, 768, 768]), ('attn/c_proj/b', [768]),
                            ('mlp/c_fc/w', [1, 768, 3072]), ('mlp/c_fc/b', [3072]),
                            ('mlp/c_proj/w', [1, 3072, 768]), ('mlp/c_proj/b', [768])]:
            published[f'model/h{i}/{name}'] = shape
    assert len(published) == 12 * 12 + 4
    assert checkpoint.param_shapes(model.default_hparams()) == published


def test_init_params_statistics():
    h = hp(dict(n_vocab=500, n_ctx=400, n_embd=64, n_head=4, n_layer=1))
    p = checkpoint.init_params(h, seed=0)
    assert abs(np.std(p['model/wte']) - 0.02) < 0.002
    assert abs(np.std(p['model/wpe']) - 0.01) < 0.001
    assert np.all(p['model/h0/ln_1/g'].numpy() == 1) and np.all(p['model/h0/attn/c_attn/b'].numpy() == 0)
    assert not np.array_equal(p['model/wte'], checkpoint.init_params(h, seed=1)['model/wte'])
    assert np.array_equal(p['model/wte'], checkpoint.init_params(h, seed=0)['model/wte'])


def test_save_load_round_trip(tmp_path):
    h = hp(HPARAM_SETS[1])
    p = checkpoint.init_params(h, seed=7)
    checkpoint.save(str(tmp_path / 'm'), h, p)
    assert sorted(os.listdir(tmp_path / 'm')) == ['checkpoint', 'hparams.json', 'model.ckpt.data-00000-of-00001',
                                                  'model.ckpt.index']
    assert json.loads((tmp_path / 'm' / 'hparams.json').read_text()) == dict(h)
    h2, p2 = checkpoint.load(str(tmp_path / 'm'))
    assert h2 == h and sorted(p2) == sorted(p)
    for k in p:
        assert p2[k].dtype == tf.float32 and np.array_equal(p2[k].numpy(), p[k].numpy()), k


def test_save_over_an_existing_checkpoint_replaces_it(tmp_path):
    h = hp(HPARAM_SETS[2])
    d = str(tmp_path / 'm')
    checkpoint.save(d, h, checkpoint.init_params(h, seed=1))
    p = checkpoint.init_params(h, seed=2)
    checkpoint.save(d, h, p)
    _, p2 = checkpoint.load(d)
    assert all(np.array_equal(p2[k], p[k]) for k in p)
    assert not [f for f in os.listdir(d) if 'tmp' in f or f.startswith('.')]


def _tf1_graph_vars(h, values=None):
    shapes = checkpoint.param_shapes(h)
    vs = {}
    for name, shape in shapes.items():
        init = tf.compat.v1.zeros_initializer() if values is None else tf.compat.v1.constant_initializer(values[name])
        vs[name] = tf.compat.v1.get_variable(name, shape=shape, dtype=tf.float32, initializer=init)
    return vs


def test_checkpoint_written_by_tf1_saver_loads(tmp_path):
    h = hp(HPARAM_SETS[0])
    values = random_params(h, seed=8)
    d = tmp_path / 'tf1'
    d.mkdir()
    with tf.Graph().as_default():
        _tf1_graph_vars(h, values)
        extra = tf.compat.v1.get_variable('model/h0/attn/c_attn/w/Adam', shape=[1, 24, 72])  # a fork's slot
        del extra
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(d / 'model.ckpt'))
    (d / 'hparams.json').write_text(json.dumps(dict(h)))
    h2, p = checkpoint.load(str(d))
    assert h2 == h
    for k, v in values.items():
        assert np.array_equal(p[k].numpy(), v), k


def test_save_output_restores_in_tf1_saver(tmp_path):
    h = hp(HPARAM_SETS[0])
    params = checkpoint.init_params(h, seed=9)
    checkpoint.save(str(tmp_path / 'm'), h, params)
    with tf.Graph().as_default():
        vs = _tf1_graph_vars(h)
        saver = tf.compat.v1.train.Saver(var_list=vs)
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path / 'm')))
            restored = sess.run(vs)
    for k in params:
        assert np.array_equal(restored[k], params[k].numpy()), k


# --- errors: one line, naming the file and the fix -------------------------------------------------

def _one_line_error(exc_info, *fragments):
    msg = str(exc_info.value)
    assert '\n' not in msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.fixture
def saved(tmp_path):
    h = hp(HPARAM_SETS[2])
    d = tmp_path / 'm'
    checkpoint.save(str(d), h, checkpoint.init_params(h))
    return d


def test_missing_folder(tmp_path):
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(tmp_path / 'nope'))
    _one_line_error(e, 'nope', 'download_model.py')


@pytest.mark.parametrize('missing', ['hparams.json', 'model.ckpt.index', 'model.ckpt.data-00000-of-00001'])
def test_missing_file(saved, missing):
    (saved / missing).unlink()
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(saved))
    _one_line_error(e, missing, 'download_model.py')


def test_missing_checkpoint_pointer_falls_back_to_model_ckpt(saved):
    (saved / 'checkpoint').unlink()
    h, p = checkpoint.load(str(saved))
    assert h.n_layer == 3


def test_truncated_data_file(saved):
    data = saved / 'model.ckpt.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(saved))
    _one_line_error(e, 'model.ckpt', 'download')


@pytest.mark.parametrize('change,fragment', [
    (dict(n_layer=4), 'lacks variable model/h3'),
    (dict(n_layer=2), 'model/h2'),
    (dict(n_embd=32), 'shape'),
    (dict(n_vocab=51), 'model/wte'),
])
def test_checkpoint_not_matching_hparams(saved, change, fragment):
    hp_file = saved / 'hparams.json'
    values = json.loads(hp_file.read_text())
    values.update(change)
    hp_file.write_text(json.dumps(values))
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(saved))
    _one_line_error(e, fragment, 'hparams.json')


@pytest.mark.parametrize('text,fragment', [
    ('{"n_vocab": 50, "n_ctx": 10, "n_embd": 16, "n_head": 1, "n_layer": 3, "n_lyaer": 3}', "unknown key 'n_lyaer'"),
    ('{"n_layer": "3"}', 'n_layer must be a positive integer'),
    ('{"n_layer": 3.0}', 'n_layer must be a positive integer'),
    ('{"n_head": 5}', 'divisible'),
    ('[1, 2]', 'JSON object'),
    ('{"n_layer": 3', 'not valid JSON'),
])
def test_bad_hparams_json(saved, text, fragment):
    (saved / 'hparams.json').write_text(text)
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(saved))
    _one_line_error(e, fragment, 'hparams.json')


@pytest.mark.parametrize('bad', [-1, 50, 1000])
def test_token_ids_out_of_range(bad):
    h = hp(HPARAM_SETS[2])
    with pytest.raises(model.ModelError) as e:
        model.model(h, [[1, 2, bad]], params=checkpoint.init_params(h))
    _one_line_error(e, str(bad), '[0, 50)')


def test_context_overflow():
    h = hp(HPARAM_SETS[2])
    p = checkpoint.init_params(h)
    with pytest.raises(model.ModelError) as e:
        model.model(h, np.zeros([1, 11], np.int32), params=p)
    _one_line_error(e, 'n_ctx=10')
    past = model.model(h, np.zeros([1, 6], np.int32), params=p)['present']
    with pytest.raises(model.ModelError) as e:
        model.model(h, np.zeros([1, 5], np.int32), past=past, params=p)
    _one_line_error(e, 'past length 6', 'n_ctx=10')
    assert model.model(h, np.zeros([1, 4], np.int32), past=past, params=p)['logits'].shape == (1, 4, 50)


def test_params_required():
    with pytest.raises(model.ModelError):
        model.model(model.default_hparams(), [[1]])


def test_failed_save_leaves_a_loadable_model(saved, monkeypatch):
    """A save that dies while replacing the final pair leaves `checkpoint` naming a complete pair."""
    h, before = checkpoint.load(str(saved))
    new = checkpoint.init_params(h, seed=5)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith('model.ckpt.index'):
            raise OSError(28, 'No space left on device')
        return real_replace(src, dst)

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError):
        checkpoint.save(str(saved), h, new)
    monkeypatch.setattr(os, 'replace', real_replace)
    _, after = checkpoint.load(str(saved))
    assert all(np.array_equal(after[k], new[k]) for k in new)
    checkpoint.save(str(saved), h, new)   # the next save cleans up
    assert not [f for f in os.listdir(saved) if f.startswith('.save-')]
    assert 'model.ckpt' in (saved / 'checkpoint').read_text()


@pytest.mark.parametrize('recorded', ['/content/drive/run1/model.ckpt', '../elsewhere/model.ckpt'])
def test_checkpoint_pointer_stays_inside_the_folder(saved, recorded):
    """Colab/fork runs record absolute paths; a pointer can never lead outside the model folder."""
    (saved / 'checkpoint').write_text(f'model_checkpoint_path: "{recorded}"\n')
    h, p = checkpoint.load(str(saved))
    assert h.n_layer == 3


def test_missing_index_is_named(saved, capfd):
    (saved / 'model.ckpt.index').unlink()
    with pytest.raises(model.ModelError) as e:
        checkpoint.load(str(saved))
    _one_line_error(e, 'model.ckpt.index is missing')
    assert 'ERROR' not in capfd.readouterr().err


@pytest.mark.parametrize('dtype,tol', [(tf.bfloat16, 0.1), (tf.float16, 0.02)])
def test_low_precision_forward_stays_finite_and_close(dtype, tol):
    """Mixed precision: weights and activations in 16 bits, LayerNorm and softmax in float32."""
    h = hp(HPARAM_SETS[0])
    p = random_params(h, seed=11)
    tokens = np.random.default_rng(12).integers(0, h.n_vocab, size=(2, h.n_ctx))
    out = model.model(h, tokens, params={k: tf.cast(v, dtype) for k, v in p.items()})['logits']
    assert out.dtype == tf.float32   # logits are float32 whatever the weights' precision
    out = tf.cast(out, tf.float32).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np_gpt2(h, p, tokens), atol=tol * np.abs(out).max())


def test_a_fork_adds_typed_hyperparameters_that_round_trip(tmp_path, monkeypatch):
    """A fork's keys in default_hparams are typed by their defaults and saved only where not at them, so a
    released model keeps exactly its five keys."""
    base = model.default_hparams
    monkeypatch.setattr(model, 'default_hparams', lambda: model.HParams(base(), rope=False, rope_base=1e4, norm='ln'))
    h = model.default_hparams().override_from_dict(dict(HPARAM_SETS[0], rope=True, rope_base=500))
    assert h.rope is True and h.rope_base == 500.0 and isinstance(h.rope_base, float) and h.norm == 'ln'
    for bad, fragment in [({'rope': 1}, 'rope must be bool'), ({'norm': 3}, 'norm must be str'),
                          ({'rope_base': 'x'}, 'rope_base must be float'), ({'ropes': True}, "unknown key 'ropes'")]:
        with pytest.raises(model.ModelError, match=fragment):
            model.default_hparams().override_from_dict(bad)
    checkpoint.save(str(tmp_path / 'fork'), h, checkpoint.init_params(h))
    assert json.load(open(tmp_path / 'fork' / 'hparams.json')) == dict(HPARAM_SETS[0], rope=True, rope_base=500.0)
    assert checkpoint.load(str(tmp_path / 'fork'))[0] == h
    released = hp(HPARAM_SETS[0])
    checkpoint.save(str(tmp_path / 'released'), released, checkpoint.init_params(released))
    assert json.load(open(tmp_path / 'released' / 'hparams.json')) == HPARAM_SETS[0]


def test_load_adapts_a_checkpoint_to_a_changed_schema_only_when_asked(tmp_path, monkeypatch):
    h = hp(HPARAM_SETS[0])
    saved = checkpoint.init_params(h, seed=4)
    checkpoint.save(str(tmp_path / 'm'), h, saved)
    shapes = checkpoint.param_shapes

    def forked(hparams, scope='model'):   # a fork without wpe and with a new gain
        s = {k: v for k, v in shapes(hparams, scope).items() if k != f'{scope}/wpe'}
        return dict(s, **{f'{scope}/emb/g': [hparams['n_embd']]})
    monkeypatch.setattr(checkpoint, 'param_shapes', forked)
    with pytest.raises(model.ModelError, match='lacks variable model/emb/g .*adapt=True'):
        checkpoint.load(str(tmp_path / 'm'))
    notes = []
    h2, p = checkpoint.load(str(tmp_path / 'm'), adapt=True, note=notes.append, dtype=tf.bfloat16)
    assert notes == [f'{tmp_path}/m/model.ckpt lacks 1 tensor this model has, initialised afresh: model/emb/g',
                     f'{tmp_path}/m/model.ckpt has 1 tensor this model does not use, left out: model/wpe']
    assert list(p) == list(forked(h)) and np.all(p['model/emb/g'].numpy() == 1)
    assert p['model/emb/g'].dtype == tf.bfloat16 and p['model/h0/ln_1/g'].dtype == tf.float32
    np.testing.assert_array_equal(tf.cast(p['model/wte'], tf.float32).numpy(),
                                  tf.cast(tf.cast(saved['model/wte'], tf.bfloat16), tf.float32).numpy())


def test_save_never_drops_a_tensor_silently(tmp_path):
    h = hp(HPARAM_SETS[0])
    p = dict(checkpoint.init_params(h), **{'model/extra/w': tf.zeros([2])})
    with pytest.raises(model.ModelError, match=r'does not list \(model/extra/w\)'):
        checkpoint.save(str(tmp_path / 'm'), h, p)
    assert not os.path.exists(tmp_path / 'm' / 'checkpoint')
