"""export.py: the SavedModel runs in a process without this project's code and agrees with model.model
and sample.py; a failed export leaves nothing behind."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from conftest import SRC, VOCAB, sharpened_params

import checkpoint
import cli
import decode
import export
import model
import sample

HPARAMS = dict(n_vocab=211, n_ctx=48, n_embd=32, n_head=4, n_layer=2)


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """A small model folder with sharpened random weights (clear argmax winners) and a vocabulary."""
    h = model.default_hparams().override_from_dict(dict(HPARAMS))
    p = sharpened_params(h)
    models = tmp_path_factory.mktemp('models')
    model_dir = models / 'tiny'
    checkpoint.save(str(model_dir), h, p)
    for name in export.VOCAB_FILES:   # a vocabulary of its own, to see that the export takes it
        with open(os.path.join(VOCAB, name), encoding='utf-8') as f:
            (model_dir / name).write_text(f.read() + ' ')
    return str(models), checkpoint.load(str(model_dir))


@pytest.fixture(scope='module')
def exported(tiny, tmp_path_factory):
    """The tiny model exported by the command line, as a user would run it."""
    models, _ = tiny
    out = tmp_path_factory.mktemp('exported') / 'tiny'
    run = subprocess.run([sys.executable, os.path.join(SRC, 'export.py'), '--model_name', 'tiny',
                          '--models_dir', models, '--out', str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count('\n') == 1 and f'{out}/1' in run.stdout, run.stdout
    return str(out / '1')


# Runs in a fresh interpreter, from another folder, with nothing of this project importable.
CLIENT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    path, data = sys.argv[1], np.load(sys.argv[2])
    assert not any(os.path.exists(os.path.join(p, 'model.py')) for p in sys.path if p), sys.path
    m = tf.saved_model.load(path)
    generate, logits = m.signatures['generate'], m.signatures['logits']
    def gen(tokens, length, temperature=1.0, top_k=0, top_p=1.0, seed=0):
        return generate(tokens=tf.constant(tokens, tf.int32), length=tf.constant(length),
                        temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k),
                        top_p=tf.constant(top_p, tf.float32), seed=tf.constant(seed))['tokens'].numpy()
    ctx = data['ctx']
    out = dict(
        logits=logits(tokens=tf.constant(ctx))['logits'].numpy(),
        greedy_t0=gen(ctx, 12, temperature=0.0, top_k=40, top_p=0.5, seed=9),
        greedy_k1=gen(ctx, 12, top_k=1, seed=4),
        greedy_one_token=gen(ctx[:, :1], 5, temperature=0.0),
        sampled_a=gen(ctx, 12, seed=5), sampled_b=gen(ctx, 12, seed=5), sampled_c=gen(ctx, 12, seed=6),
        top_k_a=gen(ctx, 12, top_k=3, seed=7), top_k_b=gen(ctx, 12, top_k=3, seed=7),
        nucleus=gen(ctx, 12, top_p=0.5, seed=8),
        length_0=gen(ctx, 0, seed=1),
        serving_default=m.signatures['serving_default'](
            tokens=tf.constant(ctx), length=tf.constant(3), temperature=tf.constant(0.0), top_k=tf.constant(0),
            top_p=tf.constant(1.0), seed=tf.constant(0))['tokens'].numpy())
    errors = {}
    for name, args in dict(top_p=(ctx, 2, 1.0, 0, 0.0), temperature=(ctx, 2, -1.0), top_k=(ctx, 2, 1.0, -1),
                           length=(ctx, -1), context=(ctx, 48), overflow=(ctx, 2**31 - 1),
                           token=(ctx * 0 + 211, 2)).items():
        try:
            gen(*args)
            errors[name] = 'no error'
        except tf.errors.InvalidArgumentError as e:
            errors[name] = e.message
    np.savez(sys.argv[3], **out)
    print(json.dumps(errors))
''')


@pytest.fixture(scope='module')
def client(exported, tiny, tmp_path_factory):
    """What the client script computed with the export; (arrays, error messages, ctx)."""
    folder = tmp_path_factory.mktemp('client')
    ctx = np.random.default_rng(1).integers(0, HPARAMS['n_vocab'], size=(3, 7)).astype(np.int32)
    np.savez(folder / 'in.npz', ctx=ctx)
    (folder / 'client.py').write_text(CLIENT)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    run = subprocess.run([sys.executable, str(folder / 'client.py'), exported, str(folder / 'in.npz'),
                          str(folder / 'out.npz')], capture_output=True, text=True, cwd=str(folder), env=env)
    assert run.returncode == 0, run.stderr
    return dict(np.load(folder / 'out.npz')), json.loads(run.stdout.strip().splitlines()[-1]), ctx


def test_logits_equal_model(client, tiny):
    out, _, ctx = client
    h, p = tiny[1]
    assert out['logits'].dtype == np.float32 and out['logits'].shape == (3, 7, HPARAMS['n_vocab'])
    np.testing.assert_allclose(out['logits'], model.model(h, ctx, params=p)['logits'].numpy(), rtol=0, atol=1e-5)


def test_greedy_generate_equals_sample_sequence(client, tiny):
    out, _, ctx = client
    h, p = tiny[1]
    expected = sample.sample_sequence(hparams=h, params=p, length=12, context=ctx, temperature=0).numpy()
    assert len(set(map(tuple, expected[:, 7:]))) > 1   # rows differ: each row is its own prompt
    for name in ('greedy_t0', 'greedy_k1'):
        assert out[name].dtype == np.int32
        np.testing.assert_array_equal(out[name], expected, err_msg=name)
    np.testing.assert_array_equal(out['serving_default'], expected[:, :10])
    one = sample.sample_sequence(hparams=h, params=p, length=5, context=ctx[:, :1], temperature=0).numpy()
    np.testing.assert_array_equal(out['greedy_one_token'], one)


def test_seeded_generate_repeats_itself(client):
    out, _, ctx = client
    np.testing.assert_array_equal(out['sampled_a'], out['sampled_b'])
    np.testing.assert_array_equal(out['top_k_a'], out['top_k_b'])
    assert not np.array_equal(out['sampled_a'], out['sampled_c'])
    for name in ('sampled_a', 'sampled_c', 'top_k_a', 'nucleus'):
        assert out[name].shape == (3, 19)
        np.testing.assert_array_equal(out[name][:, :7], ctx)
        assert out[name].min() >= 0 and out[name].max() < HPARAMS['n_vocab']


def np_nucleus(logits, p):
    """Indices of the smallest set of most likely tokens with probability >= p (reference)."""
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    return set(order[:np.searchsorted(np.cumsum(probs[order]), p) + 1])


def test_truncated_samples_stay_in_what_is_kept(client, tiny):
    out, _, ctx = client
    h, p = tiny[1]
    for name, kept in (('top_k_a', lambda lg: set(np.argsort(-lg)[:3])), ('nucleus', lambda lg: np_nucleus(lg, 0.5))):
        logits = model.model(h, out[name][:, :-1], params=p)['logits'].numpy()   # [batch, 18, n_vocab]
        for row in range(3):
            for t in range(7, 19):
                assert out[name][row, t] in kept(logits[row, t - 1]), (name, row, t)
    assert len(np.unique(out['top_k_a'][:, 7:])) > 3   # it samples, not just takes the argmax


def test_length_0_returns_the_input(client):
    out, _, ctx = client
    np.testing.assert_array_equal(out['length_0'], ctx)


def test_bad_settings_are_refused_in_graph(client):
    _, errors, _ = client
    assert 'top_p must be in (0, 1]' in errors['top_p']
    assert 'temperature must be >= 0' in errors['temperature']
    assert 'top_k must be >= 0' in errors['top_k']
    assert 'length must be >= 0' in errors['length']
    assert 'exceed the context of 48' in errors['context']
    assert 'exceed the context of 48' in errors['overflow']
    assert 'token ids must be in [0, 211)' in errors['token']


def test_vocabulary_travels_as_assets(exported, tiny):
    models, _ = tiny
    for name in export.VOCAB_FILES:
        with open(os.path.join(exported, 'assets', name), 'rb') as a, \
                open(os.path.join(models, 'tiny', name), 'rb') as b:
            assert a.read() == b.read()


def test_saved_model_cli_lists_the_signatures(exported):
    from tensorflow.python.tools import saved_model_utils
    meta = saved_model_utils.get_meta_graph_def(exported, 'serve')
    sigs = meta.signature_def
    assert set(sigs) >= {'serving_default', 'generate', 'logits'}
    assert set(sigs['generate'].inputs) == {'tokens', 'length', 'temperature', 'top_k', 'top_p', 'seed'}
    assert list(sigs['generate'].outputs) == ['tokens'] and list(sigs['logits'].outputs) == ['logits']
    assert sigs['serving_default'].inputs['tokens'].dtype == tf.int32.as_datatype_enum


def test_bfloat16_export_computes_what_the_sampler_does(tiny, tmp_path):
    """--precision bfloat16 is checkpoint.load(dtype=tf.bfloat16)'s policy, the sampler's: matmul weights
    bfloat16, LayerNorm's gains and biases float32.  The logits signature is model.model on those weights,
    traced as the export runs it (eager model.model rounds every op's output to bfloat16 where the graph's
    fused kernels keep float32 in between: up to ~0.08 apart at logits of ~12 here), within 2**-8 relative
    and absolute, under a bfloat16 step (2**-7 relative), so one rounding done otherwise shows; greedy
    generate is sample_sequence's greedy on the same weights."""
    models, (h, p) = tiny
    rng = np.random.default_rng(6)   # LayerNorm parameters that bfloat16 cannot hold (1 and 0 it can)
    p = {k: v + rng.normal(0, 0.3, v.shape).astype(np.float32) if '/ln_' in k else v for k, v in p.items()}
    model_dir = str(tmp_path / 'tiny')
    checkpoint.save(model_dir, h, p)
    m = tf.saved_model.load(export.export(model_dir, str(tmp_path / 'bf16'), precision='bfloat16'))
    _, p16 = checkpoint.load(model_dir, dtype=tf.bfloat16)
    assert {k: v.dtype for k, v in m.weights.items()} == {k: v.dtype for k, v in p16.items()}
    assert {v.dtype for k, v in p16.items() if '/ln_' in k} == {tf.float32}
    assert {v.dtype for k, v in p16.items() if '/ln_' not in k} == {tf.bfloat16}

    def traced(params):
        weights = {k: tf.Variable(v) for k, v in params.items()}
        return tf.function(lambda x: model.model(h, x, params={k: w.read_value() for k, w in weights.items()}),
                           autograph=False)(tf.constant(ctx))['logits'].numpy()
    ctx = np.random.default_rng(2).integers(0, h.n_vocab, size=(3, 7)).astype(np.int32)
    logits = m.signatures['logits'](tokens=tf.constant(ctx))['logits'].numpy()
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, traced(p16), rtol=2**-8, atol=2**-8)
    all_bfloat16 = traced({k: tf.cast(v, tf.bfloat16) for k, v in p.items()})   # LayerNorm rounded too
    assert not np.allclose(logits, all_bfloat16, rtol=2**-8, atol=2**-8)   # so the comparison above can fail
    full = model.model(h, ctx, params=p)['logits'].numpy()
    assert 0 < np.abs(logits - full).max() < 0.1 * np.abs(full).max()   # bfloat16 indeed, and close

    out = m.signatures['generate'](tokens=tf.constant(ctx), length=tf.constant(8), temperature=tf.constant(0.0),
                                   top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))['tokens']
    expected = sample.sample_sequence(hparams=h, params=p16, length=8, context=ctx, temperature=0).numpy()
    assert len(set(map(tuple, expected[:, 7:]))) > 1
    np.testing.assert_array_equal(out.numpy(), expected)


def run_cli(capsys, *args):
    status = cli.main(export.main, list(args), name='export.py')
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_versions_count_up_and_are_never_overwritten(tiny, tmp_path, capsys):
    models, _ = tiny
    out = tmp_path / 'exp'
    (out / '7').mkdir(parents=True)
    status, stdout, _ = run_cli(capsys, '--model_name', 'tiny', '--models_dir', models, '--out', str(out))
    assert status == 0 and f'{out}/8 ' in stdout
    status, _, err = run_cli(capsys, '--model_name', 'tiny', '--models_dir', models, '--out', str(out),
                             '--version', '8')
    assert status == 1 and err.count('\n') == 1 and 'already exists' in err
    status, stdout, _ = run_cli(capsys, '--model_name', 'tiny', '--models_dir', models, '--out', str(out),
                                '--version', '3')
    assert status == 0 and f'{out}/3 ' in stdout
    assert sorted(os.listdir(out)) == ['3', '7', '8']
    assert oct(os.stat(out / '3').st_mode & 0o777) == oct(0o777 & ~current_umask())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize('case', ['missing model', 'bad precision', 'out under a file', 'bad version'])
def test_failed_export_is_one_line_and_leaves_nothing(tiny, tmp_path, capsys, case):
    models, _ = tiny
    out = tmp_path / 'new' / 'exp'
    args = dict(model_name='tiny', models_dir=models, out=str(out))
    expected = {'missing model': 'model nope not found', 'bad precision': "--precision must be one of float32, bfloat16, int8, got 'float16'",
                'out under a file': 'Not a directory', 'bad version': '--version must be an integer >= 1'}[case]
    if case == 'missing model':
        args['model_name'] = 'nope'
    elif case == 'bad precision':
        args['precision'] = 'float16'
    elif case == 'out under a file':
        (tmp_path / 'new').write_text('a file')
    else:
        args['version'] = 0
    status, stdout, err = run_cli(capsys, *[f'--{k}={v}' for k, v in args.items()])
    assert status == 1 and stdout == ''
    assert err.startswith('export.py: error: ') and err.count('\n') == 1 and expected in err, err
    assert os.listdir(tmp_path) == ([] if case != 'out under a file' else ['new'])


def test_export_failing_midway_leaves_nothing(tiny, tmp_path, monkeypatch):
    models, _ = tiny
    out = tmp_path / 'a' / 'b'
    (tmp_path / 'a').mkdir()
    real_save = tf.saved_model.save

    def save_then_fail(obj, path, signatures=None):
        real_save(obj, path, signatures=signatures)    # a whole SavedModel, but in the temporary folder
        assert os.path.isfile(os.path.join(path, 'saved_model.pb'))
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(tf.saved_model, 'save', save_then_fail)
    with pytest.raises(OSError):
        export.export(os.path.join(models, 'tiny'), str(out))
    assert os.listdir(tmp_path / 'a') == []   # out did not exist, so it is gone again; a stays


@pytest.mark.parametrize('top_k, top_p', [(3, 1.0), (20, 0.9), (100, 1.0), (0, 0.3), (0, 0.97)])
def test_draw_under_xla_matches_the_truncated_distribution(monkeypatch, top_k, top_p):
    """XLA's static top-k: a few candidates, more, then the whole vocabulary; each draw must follow the
    exact top-k-then-nucleus distribution (numpy reference), whichever stage answers."""
    monkeypatch.setattr(decode, 'CANDIDATES', (8, 32))   # 211 tokens: every stage is reached by some case
    logits = np.random.default_rng(top_k).normal(0, 2, [1, HPARAMS['n_vocab']]).astype(np.float32)
    rows = 20000
    draw = tf.function(lambda lg, seed: decode.draw(lg, seed, tf.constant(0.8), tf.constant(top_k),
                                                    tf.constant(top_p))[0], jit_compile=True, autograph=False)
    drawn = draw(tf.constant(np.repeat(logits, rows, axis=0)), tf.constant([1, 2])).numpy()
    scaled = logits[0] / 0.8
    order = np.argsort(-scaled, kind='stable')[:top_k or None]
    probs = np.exp(scaled[order] - scaled[order].max())
    probs /= probs.sum()
    kept = order[:np.searchsorted(np.cumsum(probs), top_p) + 1]   # the smallest set with mass >= top_p
    expected = np.zeros(HPARAMS['n_vocab'])
    expected[kept] = probs[:len(kept)] / probs[:len(kept)].sum()
    assert set(drawn) <= set(kept)
    frequencies = np.bincount(drawn, minlength=HPARAMS['n_vocab']) / rows
    np.testing.assert_allclose(frequencies, expected, atol=4 * np.sqrt(expected.max() / rows) + 1e-9)


def test_noxla_export_generates_like_sample_sequence(tiny, tmp_path):
    """--noxla: the same decoding as a plain TensorFlow graph, for servers without XLA."""
    models, (h, p) = tiny
    m = tf.saved_model.load(export.export(os.path.join(models, 'tiny'), str(tmp_path / 'plain'), xla=False))
    graph = m.signatures['generate'].graph.as_graph_def()
    assert not any(f.attr['_XlaMustCompile'].b for f in graph.library.function)
    ctx = np.random.default_rng(4).integers(0, h.n_vocab, size=(3, 5)).astype(np.int32)

    def gen(length, **settings):
        settings = dict(dict(temperature=1.0, top_k=0, top_p=1.0, seed=0), **settings)
        return m.signatures['generate'](tokens=tf.constant(ctx), length=tf.constant(length),
                                        **{k: tf.constant(v) for k, v in settings.items()})['tokens'].numpy()
    expected = sample.sample_sequence(hparams=h, params=p, length=10, context=ctx, temperature=0).numpy()
    np.testing.assert_array_equal(gen(10, temperature=0.0), expected)
    np.testing.assert_array_equal(gen(10, top_k=5, seed=3), gen(10, top_k=5, seed=3))
    np.testing.assert_array_equal(gen(0), ctx)


def test_greedy_generate_fills_the_whole_context(exported, tiny):
    """prompt + length = n_ctx: the buffers' last slot is used (capacity capped at n_ctx, not a bucket)."""
    _, (h, p) = tiny
    ctx = np.random.default_rng(5).integers(0, h.n_vocab, size=(2, 7)).astype(np.int32)
    out = tf.saved_model.load(exported).signatures['generate'](
        tokens=tf.constant(ctx), length=tf.constant(h.n_ctx - 7), temperature=tf.constant(0.0),
        top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))['tokens'].numpy()
    expected = sample.sample_sequence(hparams=h, params=p, length=h.n_ctx - 7, context=ctx, temperature=0).numpy()
    np.testing.assert_array_equal(out, expected)


def test_generate_watermarked_draws_what_the_sampler_draws_with_the_same_watermark(exported, tiny):
    """The generate_watermarked signature: greedy tokens equal sample_sequence's with the same key, gamma and
    delta (and differ from unwatermarked ones); a bad gamma is refused."""
    _, (h, p) = tiny
    m = tf.saved_model.load(exported)
    ctx = np.random.default_rng(6).integers(0, h.n_vocab, size=(2, 5)).astype(np.int32)
    settings = dict(tokens=tf.constant(ctx), length=tf.constant(20), temperature=tf.constant(0.0),
                    top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))
    mark = dict(watermark_key=tf.constant(31337), watermark_gamma=tf.constant(0.25), watermark_delta=tf.constant(6.0))
    out = m.signatures['generate_watermarked'](**settings, **mark)['tokens'].numpy()
    expected = sample.sample_sequence(hparams=h, params=p, length=20, context=ctx, temperature=0, watermark=31337,
                                      watermark_gamma=0.25, watermark_delta=6.0).numpy()
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, m.signatures['generate'](**settings)['tokens'].numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match='watermark_gamma must be in'):
        m.signatures['generate_watermarked'](**settings, **dict(mark, watermark_gamma=tf.constant(1.5)))
