"""bfloat16 weights: checkpoint.load(dtype=...), the decoder and the --precision flag of the scripts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import checkpoint
import cli
import model
import sample
import speed
from conftest import ZEN

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src')
SCRIPTS = ['generate_unconditional_samples.py', 'interactive_conditional_samples.py', 'eval.py']


def test_load_casts_matrices_and_keeps_norms_float32(random_model, monkeypatch):
    h, p32 = checkpoint.load(random_model)
    monkeypatch.setattr(checkpoint, 'LOAD_GROUP_BYTES', 4096)   # many groups, as for a large model
    _, p16 = checkpoint.load(random_model, dtype=tf.bfloat16)
    assert set(p16) == set(p32) == set(checkpoint.param_shapes(h))
    for name, v in p16.items():
        assert v.dtype == (tf.float32 if '/ln_' in name else tf.bfloat16), name
        np.testing.assert_array_equal(v.numpy(), tf.cast(p32[name], v.dtype).numpy())
    assert checkpoint._groups(checkpoint.param_shapes(h), {n: tf.float32 for n in p32}, whole=False)[1:]
    with pytest.raises(model.ModelError, match='dtype must be float32, bfloat16, float16 or int8'):
        checkpoint.load(random_model, dtype=tf.int32)


def test_bfloat16_logits_within_tolerance_of_float32(random_model):
    """bfloat16 keeps 8 significant bits (relative rounding up to 2^-9, 0.2%).  Through 3 blocks, the
    logits (float32) of this model stay within 8% of the float32 logits' standard deviation everywhere
    and 1.5% on average (measured: 4.9% and 0.8%)."""
    h, p32 = checkpoint.load(random_model)
    _, p16 = checkpoint.load(random_model, dtype=tf.bfloat16)
    tokens = np.random.default_rng(1).integers(0, h.n_vocab, size=(3, 20))
    ref = model.model(h, tokens, params=p32)['logits'].numpy()
    out = model.model(h, tokens, params=p16)['logits']
    assert out.dtype == tf.float32
    err = np.abs(out.numpy() - ref)
    assert err.max() < 0.08 * ref.std() and err.mean() < 0.015 * ref.std(), (err.max(), err.mean(), ref.std())
    assert err.max() > 0   # the weights really were rounded
    # The cached decoder's prompt pass and steps, in each step form, against the same float32 reference.
    from test_sample import logits_after_each_token
    for form in [(False, False), (True, False), (True, True)] if speed.xla_available() else [(False, False)]:
        logits = logits_after_each_token(h, p16, tokens.astype(np.int32), 17, form)   # [batch, 4, n_vocab]
        assert logits.dtype == np.float32
        assert np.abs(logits - ref[:, 16:]).max() < 0.08 * ref.std(), form


def test_greedy_tokens_of_a_trained_model_match_float32(zen):
    models_dir, name = zen
    path = os.path.join(models_dir, name)
    h, p32 = checkpoint.load(path)
    _, p16 = checkpoint.load(path, dtype=tf.bfloat16)
    import encoder
    enc = encoder.get_encoder(name, models_dir)
    ctx = np.array([enc.encode(text) for text in ('Beautiful is', 'Explicit is', 'Flat is')])   # [3, 3]
    n = ctx.shape[1]
    ref = ctx.copy()
    for _ in range(12):   # argmax loop over full float32 forward passes
        ref = np.concatenate([ref, model.model(h, ref, params=p32)['logits'][:, -1].numpy().argmax(-1)[:, None]], 1)
    for params in (p32, p16):
        out = sample.sample_sequence(hparams=h, params=params, length=12, context=ctx, top_k=1).numpy()
        np.testing.assert_array_equal(out, ref)
    assert enc.decode(ref[0, :n + 2].tolist()) in ZEN   # it learned the text: 'Beautiful is better than'


def script(name, *args, stdin=None):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    return subprocess.run([sys.executable, os.path.join(SRC, name), *args], input=stdin, capture_output=True,
                          text=True, timeout=180, env=env)


@pytest.mark.parametrize('name', SCRIPTS[:2])
def test_sampling_scripts_in_bfloat16_continue_the_trained_text(zen, name):
    models_dir, model_name = zen
    args = ['--models_dir', models_dir, '--model_name', model_name, '--top_k', '1', '--length', '10',
            '--nsamples', '1']
    if name.startswith('interactive'):
        args += ['--prompt', 'Beautiful is']
    out = {p: script(name, *args, '--precision', p) for p in ('float32', 'bfloat16')}
    for r in out.values():
        assert r.returncode == 0, r.stderr
    assert out['bfloat16'].stdout == out['float32'].stdout
    sample_text = out['bfloat16'].stdout.split(' SAMPLE 1 ')[1].split('\n', 1)[1].strip()
    assert len(sample_text) > 20 and sample_text.split('\n')[0].strip() in ZEN, sample_text


def eval_perplexities(zen, tmp_path, precisions):
    """{precision: eval.py perplexity of the Zen model on its own text}, each run as a script."""
    models_dir, model_name = zen
    (tmp_path / 'zen.txt').write_text(ZEN)
    ppl = {}
    for p in precisions:
        r = script('eval.py', 'perplexity', '--data', str(tmp_path / 'zen.txt'), '--models_dir', models_dir,
                   '--model_name', model_name, '--precision', p, '--json_out', str(tmp_path / f'{p}.json'),
                   '--noprogress')
        assert r.returncode == 0, r.stderr
        saved = json.loads((tmp_path / f'{p}.json').read_text())
        assert saved['settings']['precision'] == p
        ppl[p] = saved['ppl_token']
    return ppl


def test_eval_perplexity_in_bfloat16_is_within_one_percent(zen, tmp_path):
    ppl = eval_perplexities(zen, tmp_path, ('float32', 'bfloat16'))
    assert ppl['float32'] < 10   # trained on this text (a random model: ~5e4)
    assert ppl['bfloat16'] == pytest.approx(ppl['float32'], rel=0.01)
    assert ppl['bfloat16'] != ppl['float32']


@pytest.mark.parametrize('name', SCRIPTS)
def test_bad_precision_is_one_line(tiny_models_dir, tmp_path, name):
    (tmp_path / 'd.txt').write_text('some text\n')
    args = (['perplexity', '--data', str(tmp_path / 'd.txt')] if name == 'eval.py' else ['--prompt', 'Hi'] *
            name.startswith('interactive'))
    for value, message in (('fp8', "--precision must be one of float32, bfloat16, float16, int8, got 'fp8'"),
                           ('float16', '--precision float16 needs a GPU and none is visible')):
        if value == 'float16' and tf.config.list_physical_devices('GPU'):
            continue   # float16 is valid where a GPU is visible
        r = script(name, *args, '--models_dir', tiny_models_dir, '--model_name', 'tiny', '--length', '3',
                   '--precision', value) if name != 'eval.py' else \
            script(name, *args, '--models_dir', tiny_models_dir, '--model_name', 'tiny', '--precision', value)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and not r.stdout
        assert len(lines) == 1 and lines[0].startswith(f'{name}: error: {message}'), r.stderr


def test_precision_flag_values():
    assert cli.precision('float32') == tf.float32 and cli.precision('bfloat16') == tf.bfloat16
    with pytest.raises(cli.UsageError, match='--precision must be one of'):
        cli.precision(16)
