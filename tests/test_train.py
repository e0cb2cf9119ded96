"""train.py: learning, checkpoints in OpenAI's layout, resuming, data parallelism, memory options, errors."""
import inspect
import io
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cli
import tensorflow as tf

import model

import checkpoint
import train
from conftest import TINY_HPARAMS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, 'src')
TEXT = 'The quick brown fox jumps over the lazy dog. ' * 40      # 401 tokens, period 10
# A user's environment: without TF_CPP_MIN_LOG_LEVEL, which the scripts set themselves.
USER_ENV = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
TINY = dict(fresh=True, hparams=TINY_HPARAMS, batch_size=4, seq_len=32, learning_rate=1e-2, warmup_steps=0,
            val_fraction=0, sample_every=0, save_every=0, progress=False)


def run(tmp_path, run_name, **kwargs):
    """train.train on the fox text with tiny settings, overridable."""
    path = tmp_path / 'fox.txt'
    if not path.exists():
        path.write_text(TEXT)
    args = dict(TINY, checkpoint_dir=str(tmp_path / 'ck'), run_name=run_name)
    args.update(kwargs)
    return train.train(args.pop('dataset', str(path)), **args)


def snapshot(folder):
    """Every file under folder -> its bytes."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(root, f), 'rb') as fh:
                out[os.path.relpath(os.path.join(root, f), folder)] = fh.read()
    return out


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)


@pytest.fixture(scope='module')
def fox(tmp_path_factory):
    """A tiny model trained from fresh weights on a short repeated text (with validation and samples)."""
    tmp = tmp_path_factory.mktemp('fox')
    result = run(tmp, 'fox', steps=60, val_fraction=0.2, val_every=30, sample_every=60, sample_length=10)
    return tmp, result


def test_forward_is_model_model():
    h = model.default_hparams().override_from_dict(TINY_HPARAMS)
    params = checkpoint.init_params(h, seed=3)
    X = np.random.default_rng(0).integers(0, h.n_vocab, size=(2, 12)).astype(np.int32)
    ref = model.model(h, X, params=params)['logits'].numpy()
    np.testing.assert_array_equal(train.forward(h, params, X).numpy(), ref)
    np.testing.assert_allclose(train.forward(h, params, X, recompute=True).numpy(), ref, atol=1e-6)
    for dtype, tol in ((tf.bfloat16, 0.05), (tf.float16, 0.01)):
        np.testing.assert_allclose(train.forward(h, params, X, dtype).numpy(), ref, atol=tol)


def test_learns_repeated_text_and_greedy_samples_it(fox):
    import encoder
    import sample
    tmp, result = fox
    assert result['losses'][0] > 10 and result['losses'][-1] < 0.05, result['losses'][::10]
    assert result['val_loss'] < 0.05
    hparams, params = checkpoint.load(result['run_dir'])
    enc = encoder.get_encoder('fox', str(tmp / 'ck'))
    out = sample.sample_sequence(hparams=hparams, params=params, length=18, context=[enc.encode('The quick')], top_k=1)
    text = enc.decode(out[0].numpy().tolist())
    assert TEXT.startswith(text) and len(text) >= 89, text
    assert open(os.path.join(result['run_dir'], 'samples', 'step-60.txt')).read().startswith('======== SAMPLE 1')


def test_checkpoint_is_openai_layout(fox):
    tmp, result = fox
    run_dir = result['run_dir']
    hparams, params = checkpoint.load(run_dir)
    assert hparams == model.default_hparams().override_from_dict(TINY_HPARAMS)
    ckpt = tf.train.latest_checkpoint(run_dir)
    assert os.path.basename(ckpt) == 'model-60'
    assert dict(tf.train.list_variables(ckpt)) == checkpoint.param_shapes(hparams)
    assert all(tf.train.load_checkpoint(ckpt).get_variable_to_dtype_map()[k] == tf.float32 for k in params)
    for name in ('encoder.json', 'vocab.bpe'):
        assert open(os.path.join(run_dir, name), 'rb').read() == open(os.path.join(SRC, 'vocab', name), 'rb').read()
    assert sorted(f for f in os.listdir(run_dir) if f.startswith('model')) == \
        ['model-60.data-00000-of-00001', 'model-60.index']
    assert sorted(os.listdir(os.path.join(run_dir, 'train_state'))) == \
        ['state-60.data-00000-of-00001', 'state-60.index']
    assert os.listdir(os.path.join(run_dir, 'logs'))


@pytest.mark.parametrize('script', ['generate_unconditional_samples.py', 'interactive_conditional_samples.py'])
def test_checkpoint_samples_with_the_scripts(fox, script):
    tmp, result = fox
    path = os.path.join(SRC, script)
    if not os.path.exists(path):
        pytest.skip(f'{script} is not written yet')
    args = [sys.executable, path, '--models_dir', str(tmp / 'ck'), '--model_name', 'fox', '--top_k', '1',
            '--length', '12', '--nsamples', '1', '--seed', '0']
    stdin = None
    if script.startswith('interactive'):
        stdin = 'The quick\n'
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, cwd=str(tmp))
    assert proc.returncode == 0, proc.stderr
    assert 'brown fox jumps over the lazy dog' in proc.stdout


def test_ctrl_c_saves_and_resume_matches_an_uninterrupted_run(tmp_path):
    settings = dict(steps=6, warmup_steps=3, accumulate=2, batch_size=2, seed=5)
    whole = run(tmp_path, 'whole', **settings)

    def stop_at_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, 'split', on_step=stop_at_3, **settings)
    split_dir = str(tmp_path / 'ck' / 'split')
    assert train.latest_step(split_dir) == 3
    assert os.path.exists(train.state_prefix(split_dir, 3) + '.index')
    resumed = run(tmp_path, 'split', **settings)
    assert resumed['start_step'] == 3 and resumed['step'] == 6
    assert resumed['losses'] == pytest.approx(whole['losses'][3:], abs=1e-5)
    _, a = checkpoint.load(whole['run_dir'])
    _, b = checkpoint.load(split_dir)
    assert max_diff(a, b) < 1e-6
    init = checkpoint.init_params(model.default_hparams().override_from_dict(TINY_HPARAMS), seed=5)
    assert max_diff(a, init) > 1e-3


def test_resume_without_optimizer_state_differs(tmp_path):
    settings = dict(steps=4, seed=1)
    whole = run(tmp_path, 'whole', **settings)
    run(tmp_path, 'split', **dict(settings, steps=2))
    shutil.rmtree(str(tmp_path / 'ck' / 'split' / 'train_state'))
    run(tmp_path, 'split', **settings)
    _, a = checkpoint.load(whole['run_dir'])
    _, b = checkpoint.load(str(tmp_path / 'ck' / 'split'))
    assert max_diff(a, b) > 1e-4


DISTRIBUTED = r'''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import model, train
text, ck = sys.argv[1], sys.argv[2]
hp = json.loads(sys.argv[3])
out = {}
for name, strategy, batch, accumulate in [('one', 'default', 4, 1), ('two', 'mirrored', 4, 1),
                                          ('one_acc', 'default', 2, 2), ('two_acc', 'mirrored', 4, 2),
                                          ('one_acc4', 'default', 4, 2)]:
    r = train.train(text, fresh=True, hparams=hp, checkpoint_dir=ck, run_name=name, strategy=strategy, steps=2,
                    batch_size=batch, accumulate=accumulate, seq_len=16, learning_rate=1.0, warmup_steps=0,
                    epsilon=1.0, val_fraction=0, sample_every=0, save_every=0, progress=False)
    out[name] = dict(replicas=r['replicas'], losses=r['losses'])
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def one_and_two_replicas(tmp_path_factory):
    """The runs of DISTRIBUTED, in a process whose CPU is split into 2 logical devices."""
    tmp = tmp_path_factory.mktemp('dist')
    (tmp / 'fox.txt').write_text(TEXT)
    env = dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL='2')
    proc = subprocess.run([sys.executable, '-c', DISTRIBUTED, str(tmp / 'fox.txt'), str(tmp / 'ck'),
                           json.dumps(TINY_HPARAMS)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, json.loads(proc.stdout.strip().splitlines()[-1])


def test_two_replicas_update_the_weights_as_one(one_and_two_replicas):
    """The global batch split over 2 logical CPUs gives the weights of one replica taking it whole.

    epsilon=1 makes Adam's step proportional to the gradient (not just its sign), so a gradient that
    is not averaged correctly over replicas or micro-batches shows in the weights."""
    tmp_path, out = one_and_two_replicas
    assert out['two']['replicas'] == 2 and out['one']['replicas'] == 1
    w = {name: checkpoint.load(str(tmp_path / 'ck' / name))[1] for name in out}
    init = checkpoint.init_params(model.default_hparams().override_from_dict(TINY_HPARAMS), seed=0)
    assert max_diff(w['one'], init) > 1e-4
    assert max_diff(w['two'], w['one']) < 1e-6
    assert out['two']['losses'] == pytest.approx(out['one']['losses'], abs=1e-5)
    # Accumulating 2 micro-batches of 2 equals one batch of 4 (the same windows), and across replicas.
    assert max_diff(w['one_acc'], w['one']) < 1e-6
    assert max_diff(w['two_acc'], w['one_acc4']) < 1e-6
    assert max_diff(w['one_acc4'], w['one']) > 1e-5


def free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def test_two_workers_via_tf_config_update_the_weights_as_one(one_and_two_replicas):
    """MultiWorkerMirroredStrategy: two processes on this machine, as two machines would run it."""
    tmp_path, _ = one_and_two_replicas
    workers = [f'localhost:{free_port()}', f'localhost:{free_port()}']
    args = [sys.executable, os.path.join(SRC, 'train.py'), '--dataset', str(tmp_path / 'fox.txt'), '--fresh',
            '--hparams', json.dumps(TINY_HPARAMS), '--checkpoint_dir', str(tmp_path / 'ck'), '--run_name', 'workers',
            '--steps', '2', '--batch_size', '4', '--seq_len', '16', '--learning_rate', '1.0', '--epsilon', '1.0',
            '--warmup_steps', '0', '--val_fraction', '0', '--sample_every', '0', '--progress', 'False']
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(
        USER_ENV, TF_CONFIG=json.dumps({'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': i}})))
        for i in range(2)]
    try:
        logs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], logs
    assert all('2 replicas' in log for log in logs) and 'the chief worker saves' in logs[1]
    _, one = checkpoint.load(str(tmp_path / 'ck' / 'one'))
    _, two = checkpoint.load(str(tmp_path / 'ck' / 'workers'))
    assert max_diff(two, one) < 1e-6


def test_mixed_precision_recompute_and_frozen_embeddings_train(tmp_path):
    result = run(tmp_path, 'bf16', steps=12, precision='bfloat16', recompute=True, freeze_embeddings=True)
    assert result['losses'][-1] < result['losses'][0] - 0.3
    hparams, after = checkpoint.load(result['run_dir'])
    init = checkpoint.init_params(hparams, seed=0)
    for name in ('model/wte', 'model/wpe'):
        np.testing.assert_array_equal(after[name], init[name])
    assert np.max(np.abs(after['model/h0/mlp/c_fc/w'] - init['model/h0/mlp/c_fc/w'])) > 1e-3
    assert all(v.dtype == tf.float32 for v in after.values())


def test_float16_overflow_skips_the_step_and_halves_the_loss_scale():
    h = model.default_hparams().override_from_dict(TINY_HPARAMS)
    params = checkpoint.init_params(h, seed=0)
    trainer = train.Trainer(tf.distribute.get_strategy(), h, params, learning_rate=1e-2, precision='float16')
    batch = np.random.default_rng(0).integers(0, 1000, size=(1, 2, 9)).astype(np.int32)
    trainer.loss_scale.assign(2.0 ** 60)        # scaled gradients overflow float16
    trainer.train_step(batch)
    assert float(trainer.loss_scale.numpy()) == 2.0 ** 59
    assert max_diff(trainer.values(), params) == 0 and int(trainer.step.numpy()) == 1
    trainer.train_step(batch)                   # 2**59 still overflows; keep halving
    trainer.loss_scale.assign(2.0 ** 10)
    loss, _, _ = trainer.train_step(batch)
    assert np.isfinite(loss) and max_diff(trainer.values(), params) > 1e-3
    assert float(trainer.loss_scale.numpy()) == 2.0 ** 10


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    b = train.Batches(tokens, seq_len=8, batch_size=3, accumulate=2, val_fraction=0.1, val_batches=2, seed=7)
    x = b.train(5)
    assert x.shape == (2, 3, 9) and x.dtype == np.int32
    np.testing.assert_array_equal(x, b.train(5))
    assert not np.array_equal(x, b.train(6))
    assert x.max() < b.n_train == 900
    assert np.all(np.diff(x, axis=-1) == 1)                 # contiguous windows
    val = b.validation()
    assert len(val) == 2 and all(v.shape == (1, 3, 9) for v in val)
    assert min(v.min() for v in val) >= 900 and max(v.max() for v in val) == 999


def test_token_files_npy_npz_and_legacy_npz(tmp_path, capsys):
    ids = np.arange(100, 120, dtype=np.uint16)
    np.save(tmp_path / 'a.npy', ids)
    np.savez(tmp_path / 'b.npz', tokens=ids)
    np.savez(tmp_path / 'legacy.npz', ids[:5], ids[5:])          # nshepperd's encode.py: arr_0, arr_1, ...
    np.save(tmp_path / 'bad.npy', ids.reshape(4, 5))
    assert isinstance(train.load_tokens(str(tmp_path / 'a.npy')), np.memmap)
    assert train.load_tokens(str(tmp_path / 'a.npy')).tolist() == ids.tolist()
    assert train.load_tokens(str(tmp_path / 'b.npz')).tolist() == ids.tolist()
    assert train.load_tokens(str(tmp_path / 'legacy.npz')).tolist() == ids[:5].tolist() + [50256] + ids[5:].tolist()
    with pytest.raises(train.TrainError, match='expected 1-D token ids'):
        train.load_tokens(str(tmp_path / 'bad.npy'))
    with pytest.raises(train.TrainError, match='token id 119, outside the model.s vocabulary of 110'):
        train.check_tokens(ids, 110, 'a.npy')
    import encoder
    assert encoder.get_default_encoder().encode('<|endoftext|>') == train.EOT_AS_TEXT
    train.check_tokens(np.array([1] + train.EOT_AS_TEXT * 2 + [2]), 50257, 'old.npy')
    assert "spells '<|endoftext|>' as 7 ordinary tokens 2 times" in capsys.readouterr().err


def test_token_ids_below_zero_are_refused(tmp_path):
    with pytest.raises(train.TrainError, match='token id -3, outside the model.s vocabulary of 110'):
        train.check_tokens(np.array([5, -3, 7], np.int32), 110, 'neg.npy')
    np.save(tmp_path / 'neg.npy', np.array([1, 2, -1] * 20, np.int16))
    with pytest.raises(train.TrainError, match='token id -1'):
        run(tmp_path, 'r', dataset=str(tmp_path / 'neg.npy'), seq_len=4)


def test_token_files_are_loaded_without_pickle(tmp_path, monkeypatch):
    np.save(tmp_path / 'obj.npy', np.array([1, 'a'], dtype=object), allow_pickle=True)
    with pytest.raises(train.TrainError, match='cannot read token file'):
        train.load_tokens(str(tmp_path / 'obj.npy'))
    calls = []
    real = np.load
    monkeypatch.setattr(np, 'load', lambda *a, **k: calls.append(k) or real(*a, **k))
    np.save(tmp_path / 'a.npy', np.arange(5, dtype=np.uint16))
    np.savez(tmp_path / 'b.npz', tokens=np.arange(5, dtype=np.uint16))
    train.load_tokens(str(tmp_path / 'a.npy'))
    train.load_tokens(str(tmp_path / 'b.npz'))
    assert len(calls) == 2 and all(k.get('allow_pickle') is False for k in calls)


def test_sample_files_are_written_atomically(tmp_path, monkeypatch):
    import types
    import encoder
    h = model.default_hparams().override_from_dict(TINY_HPARAMS)
    trainer = types.SimpleNamespace(weights=checkpoint.init_params(h, seed=0))
    bar = types.SimpleNamespace(write=lambda *a, **k: None)
    replaced = []
    real = os.replace
    monkeypatch.setattr(os, 'replace', lambda src, dst: replaced.append((str(src), str(dst))) or real(src, dst))
    train._sample(trainer, h, encoder.get_default_encoder(), str(tmp_path), 7, 3, 1, 0, 0, None, bar)
    path = str(tmp_path / 'samples' / 'step-7.txt')
    assert [dst for _, dst in replaced] == [path]
    assert os.path.dirname(replaced[0][0]) == os.path.dirname(path)
    assert open(path, encoding='utf-8').read().startswith('======== SAMPLE 1 ========')
    assert os.listdir(tmp_path / 'samples') == ['step-7.txt']


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error, and an existing run left exactly as it was.

@pytest.mark.parametrize('flag, value, message', [
    ('learning_rate', 'abc', r"--learning_rate must be a number > 0, got 'abc'"),
    ('learning_rate', -1e-4, r'--learning_rate must be a number > 0'),
    ('learning_rate', 0, r'--learning_rate must be a number > 0'),
    ('val_fraction', 'abc', r'--val_fraction must be a number in \[0, 1\)'),
    ('val_fraction', 1, r'--val_fraction must be a number in \[0, 1\)'),
    ('val_fraction', -0.1, r'--val_fraction must be a number in \[0, 1\)'),
    ('grad_clip', 'abc', r'--grad_clip must be a number >= 0'),
    ('grad_clip', -1, r'--grad_clip must be a number >= 0'),
    ('epsilon', 'abc', r'--epsilon must be a number > 0'),
    ('epsilon', 0, r'--epsilon must be a number > 0'),
    ('epsilon', -1e-8, r'--epsilon must be a number > 0'),
    ('beta1', 2, r'--beta1 must be a number in \[0, 1\)'),
    ('beta1', -0.5, r'--beta1 must be a number in \[0, 1\)'),
    ('beta2', 1, r'--beta2 must be a number in \[0, 1\)'),
    ('beta2', 1.5, r'--beta2 must be a number in \[0, 1\)'),
    ('beta2', float('nan'), r'--beta2 must be a number in \[0, 1\)'),
    ('seed', 'abc', r"--seed must be an integer >= 0, got 'abc'"),
    ('seed', -1, r'--seed must be an integer >= 0, got -1'),
    ('seed', 1.5, r'--seed must be an integer >= 0, got 1.5'),
    ('precision', 'fp8', r"--precision must be one of float32, bfloat16, float16, got 'fp8'"),
    ('precision', 16, r'--precision must be one of float32, bfloat16, float16, got 16'),
])
def test_bad_flag_values_are_clear_errors(tmp_path, flag, value, message):
    with pytest.raises(cli.UsageError, match=message):
        run(tmp_path, 'r', **{flag: value})
    assert not (tmp_path / 'ck').exists()


def test_names_fire_reads_as_numbers_and_legacy_model_names(tmp_path, monkeypatch):
    # fire turns `--dataset 2024` into the int 2024: it is still the folder 2024.
    (tmp_path / '2024').mkdir()
    (tmp_path / '2024' / 'empty.txt').write_text('')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(train.TrainError, match='the dataset is empty'):
        run(tmp_path, 'r', dataset=2024)
    # 117M is the old name of 124M, which download_model.py writes.
    from conftest import write_model
    write_model(tmp_path / 'models', '124M')
    result = run(tmp_path, 'legacy', fresh=False, hparams=None, models_dir=str(tmp_path / 'models'),
                 model_name='117M', steps=1, seq_len=8)
    assert result['step'] == 1 and train.latest_step(result['run_dir']) == 1


def test_bad_inputs_are_clear_errors(tmp_path, tiny_models_dir):
    (tmp_path / 'empty.txt').write_text('')
    np.save(tmp_path / 'empty.npy', np.zeros([0], np.uint16))
    (tmp_path / 'short.txt').write_text('Too short for a sequence.')
    (tmp_path / 'a_file').write_text('not a folder')
    with pytest.raises(train.TrainError, match='the dataset is empty'):
        run(tmp_path, 'r', dataset=str(tmp_path / 'empty.txt'))
    with pytest.raises(train.TrainError, match='the dataset is empty'):
        run(tmp_path, 'r', dataset=str(tmp_path / 'empty.npy'))
    with pytest.raises(train.TrainError, match=r'has 6 tokens, fewer than one training sequence of 33'):
        run(tmp_path, 'r', dataset=str(tmp_path / 'short.txt'))
    with pytest.raises(train.TrainError, match='--val_fraction 0'):
        run(tmp_path, 'r', dataset=str(tmp_path / 'short.txt'), seq_len=4, val_fraction=0.5)
    with pytest.raises(model.ModelError, match=r'model nope not found: .* does not exist'):
        run(tmp_path, 'r', fresh=False, hparams=None, models_dir=tiny_models_dir, model_name='nope')
    for name in ('../tiny', os.path.abspath(tiny_models_dir)):    # names that leave models_dir are refused
        with pytest.raises(model.ModelError, match='invalid model name'):
            run(tmp_path, 'r', fresh=False, hparams=None, models_dir=os.path.join(tiny_models_dir, 'x'),
                model_name=name)
    with pytest.raises(train.TrainError, match='cannot write to'):
        run(tmp_path, 'r', checkpoint_dir=str(tmp_path / 'a_file'))
    with pytest.raises(train.TrainError, match='--strategy must be one of'):
        run(tmp_path, 'r', strategy='nonsense')
    with pytest.raises(train.TrainError, match='--seq_len must be'):
        run(tmp_path, 'r', seq_len=65)
    with pytest.raises(train.TrainError, match=r'holds a checkpoint that train.py did not write \(model.ckpt'):
        run(tmp_path, 'tiny', fresh=False, hparams=None, models_dir=tiny_models_dir, model_name='tiny',
            checkpoint_dir=tiny_models_dir)
    assert not (tmp_path / 'ck').exists()       # nothing was written by any of these


def test_errors_leave_an_existing_run_untouched(tmp_path, tiny_models_dir):
    # Fine-tune the released-layout tiny model for 2 steps, then misuse the run in every way.
    first = run(tmp_path, 'mine', fresh=False, hparams=None, models_dir=tiny_models_dir, model_name='tiny', steps=2)
    before = snapshot(first['run_dir'])
    (tmp_path / 'empty.txt').write_text('')
    (tmp_path / 'short.txt').write_text('Too short.')
    for kwargs, error in [(dict(dataset=str(tmp_path / 'empty.txt'), steps=4), 'the dataset is empty'),
                          (dict(dataset=str(tmp_path / 'short.txt'), steps=4), 'fewer than one training sequence'),
                          (dict(resume=False, steps=4), 'already holds a checkpoint at step 2'),
                          (dict(learning_rate=1e30, grad_clip=0, steps=4), 'the loss became nan')]:
        with pytest.raises(train.TrainError, match=error):
            run(tmp_path, 'mine', fresh=False, hparams=None, models_dir=tiny_models_dir, model_name='tiny', **kwargs)
        after = snapshot(first['run_dir'])
        assert {k for k in after if not k.startswith('logs')} == {k for k in before if not k.startswith('logs')}
        assert all(after[k] == v for k, v in before.items() if not k.startswith('logs')), kwargs
    # A released model folder is never taken for a run to resume.
    with pytest.raises(train.TrainError, match='a released model'):
        run(tmp_path, 'tiny', checkpoint_dir=tiny_models_dir)


def test_cli_error_is_one_line(tmp_path, tiny_models_dir):
    (tmp_path / 'fox.txt').write_text(TEXT)
    train_py = os.path.join(SRC, 'train.py')
    fox = str(tmp_path / 'fox.txt')
    for args, message in [([fox, '--models_dir', tiny_models_dir, '--model_name', 'nope'], 'error: model nope not found'),
                          ([fox, '--fresh', '--learning_rate', 'abc'], "error: --learning_rate must be a number > 0, got 'abc'"),
                          ([fox, '--fresh', '--seed', '-1'], 'error: --seed must be an integer >= 0, got -1'),
                          ([str(tmp_path / 'none.txt'), '--fresh'], f'error: {tmp_path / "none.txt"} does not exist'),
                          ([fox, '--batch_sise', '2'], 'error: unknown flag --batch_sise'),
                          ([fox, '--fresh', '--on_step', 'print'], 'error: unknown flag --on_step')]:
        args = [sys.executable, train_py, '--checkpoint_dir', str(tmp_path / 'ck'), '--dataset'] + args
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=USER_ENV)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines()[-1:] == [proc.stderr.strip()] and message in proc.stderr, proc.stderr
    assert not (tmp_path / 'ck').exists()


def test_help_lists_the_flags_but_not_the_python_only_hook():
    proc = subprocess.run([sys.executable, os.path.join(SRC, 'train.py'), '--help'], capture_output=True, text=True,
                          timeout=120, env=USER_ENV)
    out = proc.stdout + proc.stderr   # fire writes help to stdout or stderr
    flags = [name for name in inspect.signature(train.train).parameters if name != 'on_step']
    assert len(flags) > 30 and all(f'--{name}=' in out for name in flags), out
    assert 'on_step' not in out and 'Python callers' not in out, out


def test_cli_ctrl_c_saves_the_step_reached(tmp_path):
    (tmp_path / 'fox.txt').write_text(TEXT)
    args = [sys.executable, os.path.join(SRC, 'train.py'), '--dataset', str(tmp_path / 'fox.txt'), '--fresh',
            '--hparams', json.dumps(TINY_HPARAMS), '--checkpoint_dir', str(tmp_path / 'ck'), '--run_name', 'r',
            '--steps', '100000', '--batch_size', '2', '--seq_len', '16', '--val_fraction', '0',
            '--sample_every', '0', '--save_every', '0']
    master, terminal = pty.openpty()   # on a terminal, so that the progress bar is drawn
    proc = subprocess.Popen(args, stderr=terminal, env=USER_ENV)
    os.close(terminal)
    seen = []

    def read():
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:   # the other end closed
                return
            if not data:
                return
            seen.append(data.decode('utf-8', 'replace'))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.time() + 120
    while time.time() < deadline and not re.search(r'\b([3-9]|\d\d+)/100000', ''.join(seen)):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    reader.join(timeout=5)
    os.close(master)
    err = ''.join(seen)
    m = re.search(r'interrupted at step (\d+); saved', err)
    assert m, err[-2000:]
    step = int(m.group(1))
    run_dir = str(tmp_path / 'ck' / 'r')
    assert step >= 3 and train.latest_step(run_dir) == step and 'Traceback' not in err and 'I0000' not in err
    checkpoint.load(run_dir)


def test_a_second_run_on_the_same_folder_refuses_in_one_line(tmp_path):
    (tmp_path / 'fox.txt').write_text(TEXT)
    args = [sys.executable, os.path.join(SRC, 'train.py'), '--dataset', str(tmp_path / 'fox.txt'), '--fresh',
            '--hparams', json.dumps(TINY_HPARAMS), '--checkpoint_dir', str(tmp_path / 'ck'), '--run_name', 'r',
            '--steps', '100000', '--batch_size', '2', '--seq_len', '16', '--val_fraction', '0',
            '--sample_every', '0', '--save_every', '1']
    run_dir = str(tmp_path / 'ck' / 'r')
    first = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=USER_ENV)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (train.latest_step(run_dir) or 0) >= 1:
            time.sleep(0.2)
        second = subprocess.run(args, capture_output=True, text=True, timeout=120, env=USER_ENV)
        assert first.poll() is None   # still training while the second one was refused
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=60)
    assert second.returncode == 1
    assert second.stderr.count('\n') == 1, second.stderr
    assert second.stderr.startswith(f'train.py: error: {run_dir} is in use by process {first.pid} (train.py) on ')
    assert 'choose another --run_name' in second.stderr
    assert first.returncode == 130 and 'Traceback' not in first_err, first_err
    step = train.latest_step(run_dir)
    checkpoint.load(run_dir)
    assert not os.path.exists(os.path.join(run_dir, train.LOCK))   # released
    # Nor may a run that found an older step continue once another one has moved the folder on.
    with pytest.raises(train.TrainError, match=f'another run saved {re.escape(run_dir)} at step {step}'):
        with train.lock_run(run_dir, step - 1):
            pass
    assert not os.path.exists(os.path.join(run_dir, train.LOCK))
    with train.lock_run(run_dir, step):
        assert os.path.exists(os.path.join(run_dir, train.LOCK))


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, 'stderr', stream)
        run(tmp_path, f'bar{drawn}', steps=2, progress=True)
        assert ('training: 100%' in stream.getvalue()) == drawn, stream.getvalue()
        assert 'saved ' in stream.getvalue()   # the closing line, either way


def test_path_flags_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('GPT2_TEST_DIR', str(tmp_path))
    (tmp_path / 'fox.txt').write_text(TEXT)
    (tmp_path / 'hp.json').write_text(json.dumps(TINY_HPARAMS))
    result = run(tmp_path, 'r', dataset='$GPT2_TEST_DIR/fox.txt', checkpoint_dir='~/ck', hparams='$GPT2_TEST_DIR/hp.json',
                 steps=1)
    assert result['run_dir'] == str(tmp_path / 'home' / 'ck' / 'r')
    assert train.latest_step(result['run_dir']) == 1
    assert checkpoint.load_hparams(result['run_dir'])['n_embd'] == TINY_HPARAMS['n_embd']
