"""A research fork: docs/forking.md's worked example (RoPE) applied to a copy of src/, plus a new tensor,
then every consumer run on the fork.  Each must compute the fork's model.model, not the released network."""
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, SRC, TINY_HPARAMS, write_model

FORKING = os.path.join(ROOT, 'docs', 'forking.md')

# A second edit on top of RoPE: a new tensor, a learned gain on the token embedding.
GAIN = [('checkpoint.py', "    shapes.update({f'{scope}/ln_f/g': [e], f'{scope}/ln_f/b': [e]})\n",
         "    shapes.update({f'{scope}/ln_f/g': [e], f'{scope}/ln_f/b': [e]})\n    shapes[f'{scope}/emb/g'] = [e]\n"),
        ('model.py', "    h = embed(params, scope + '/wte', X)\n",
         "    h = embed(params, scope + '/wte', X) * params[scope + '/emb/g']\n")]


def documented_diff():
    text = open(FORKING, encoding='utf-8').read()
    return re.search(r'```diff\n(.*?)```', text, re.S).group(1)


@pytest.fixture(scope='module')
def fork(tmp_path_factory):
    """src/ with the documented RoPE diff and the embedding gain applied: its folder."""
    root = tmp_path_factory.mktemp('fork')
    shutil.copytree(SRC, root / 'src', ignore=shutil.ignore_patterns('__pycache__'))
    applied = subprocess.run(['patch', '-p1', '--no-backup-if-mismatch'], input=documented_diff(), cwd=root,
                             capture_output=True, text=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for name, old, new in GAIN:
        path = root / 'src' / name
        text = path.read_text()
        assert text.count(old) == 1, (name, old)
        path.write_text(text.replace(old, new))
    return str(root / 'src')


def test_the_documented_diff_touches_only_the_model_and_its_schema():
    touched = re.findall(r'^\+\+\+ b/(\S+)', documented_diff(), re.M)
    assert touched == ['src/model.py', 'src/checkpoint.py']
    changed = [line for line in documented_diff().splitlines() if line[:1] in '+-' and line[:3] not in ('+++', '---')]
    assert f'{len(changed)} changed lines' in open(FORKING, encoding='utf-8').read()


CONSUMERS = r'''
import json, os, sys
import numpy as np
import tensorflow as tf
import checkpoint, export, model, sample

h = model.default_hparams().override_from_dict(dict(json.loads(sys.argv[1]), rope=True, n_ctx=24))
assert 'model/wpe' not in checkpoint.param_shapes(h) and 'model/emb/g' in checkpoint.param_shapes(h)
rng = np.random.default_rng(0)
p = {k: tf.constant(v.numpy() + (rng.normal(0, 0.3, v.shape).astype(np.float32) if k.endswith('/w') else 0))
     for k, v in checkpoint.init_params(h, seed=3).items()}
p['model/wte'] = tf.constant(rng.normal(0, 0.5, p['model/wte'].shape).astype(np.float32))
p['model/emb/g'] = tf.constant(rng.uniform(0.5, 2, p['model/emb/g'].shape).astype(np.float32))
rows = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]]

def window(n, prompt, keep=h.n_ctx // 2):
    """Where the window that predicts token n of a row starts, under the sampler's cut rule."""
    first = 0
    for i in range(prompt, n + 1):
        if i - first > h.n_ctx:
            first = i - keep
    return first


def argmax_row(params, row, length):
    seq = list(row)
    for _ in range(length):
        seq.append(int(model.model(h, [seq[window(len(seq), len(row)):]], params=params)['logits'][0, -1].numpy().argmax()))
    return seq

reference = [argmax_row(p, row, 40) for row in rows]
for dtype in (tf.float32, tf.bfloat16):
    params = {k: v if model.stays_float32(k) else tf.cast(v, dtype) for k, v in p.items()}
    expected = reference if dtype == tf.float32 else [argmax_row(params, row, 40) for row in rows]
    for xla, copies in ((False, False), (True, False), (True, True)):
        out = sample.sample_sequence(hparams=h, params=params, length=40, context=rows, top_k=1, xla=xla,
                                     transposed_copies=copies).to_list()
        for row, got, want in zip(rows, out, expected):
            if dtype == tf.float32:
                assert got == want, (xla, copies, got, want)
            else:   # kernels round bfloat16 differently: equal up to a near-tie of the float32 logits
                differ = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
                if differ:
                    i = differ[0]
                    logits = model.model(h, [got[window(i, len(row)):i]], params=p)['logits'][0, -1].numpy()
                    assert abs(logits[got[i]] - logits[want[i]]) < 0.03 * logits.std(), (xla, copies, got, want)
print('sampling ok')

folder = os.path.join(sys.argv[2], 'fork-model')
checkpoint.save(folder, h, p)
assert json.load(open(os.path.join(folder, 'hparams.json')))['rope'] is True
h2, p2 = checkpoint.load(folder)
assert h2 == h and sorted(p2) == sorted(p)
m = tf.saved_model.load(export.export(folder, os.path.join(sys.argv[2], 'exported')))
tokens = np.array([r[-3:] for r in rows], np.int32)
np.testing.assert_allclose(m.signatures['logits'](tokens=tf.constant(tokens))['logits'].numpy(),
                           model.model(h, tokens, params=p)['logits'].numpy(), atol=1e-4)
generated = m.signatures['generate'](tokens=tf.constant(tokens), length=tf.constant(15), temperature=tf.constant(0.0),
                                     top_k=tf.constant(0), top_p=tf.constant(1.0), seed=tf.constant(0))['tokens']
assert generated.numpy().tolist() == [argmax_row(p, r, 15) for r in tokens.tolist()]
print('export ok')
'''


def run_in(fork, *args, **kw):
    env = dict(os.environ, PYTHONPATH=fork, GPT2_KERNEL_TRIAL='0')
    return subprocess.run([sys.executable, *args], cwd=fork, env=env, capture_output=True, text=True,
                          timeout=600, **kw)


def test_sampling_and_export_run_the_fork(fork, tmp_path):
    hparams = dict(TINY_HPARAMS, n_vocab=211)
    result = run_in(fork, '-c', CONSUMERS, json.dumps(hparams), str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.split() == ['sampling', 'ok', 'export', 'ok']


TEXT = 'The quick brown fox jumps over the lazy dog. ' * 40


def test_train_starts_the_fork_from_a_released_checkpoint_and_eval_scores_it(fork, tmp_path):
    write_model(tmp_path / 'models', 'released')   # the released layout: wpe, no emb/g
    (tmp_path / 'fox.txt').write_text(TEXT)
    args = ['train.py', '--dataset', str(tmp_path / 'fox.txt'), '--models_dir', str(tmp_path / 'models'),
            '--model_name', 'released', '--checkpoint_dir', str(tmp_path / 'ck'), '--run_name', 'rope',
            '--hparams', '{"rope": true}', '--steps', '60', '--seq_len', '32', '--batch_size', '4',
            '--learning_rate', '3e-3', '--warmup_steps', '5', '--sample_every', '0', '--val_fraction', '0.2',
            '--val_every', '20', '--save_every', '0', '--noprogress']
    refused = run_in(fork, *args)
    assert refused.returncode == 1 and refused.stderr.count('\n') == 1, refused.stderr
    assert 'lacks variable model/emb/g' in refused.stderr and '--adapt' in refused.stderr
    trained = run_in(fork, *args, '--adapt')
    assert trained.returncode == 0, trained.stderr[-3000:]
    notes = trained.stdout + trained.stderr
    assert 'initialised afresh: model/emb/g' in notes and 'left out: model/wpe' in notes, notes
    losses = [float(x) for x in re.findall(r'validation loss ([0-9.]+)', notes)]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 1, losses   # the fork learns
    run_dir = tmp_path / 'ck' / 'rope'
    saved = json.loads((run_dir / 'hparams.json').read_text())
    assert saved['rope'] is True and set(saved) == set(TINY_HPARAMS) | {'rope'}

    # eval.py's perplexity of the trained fork equals one computed here from the fork's model.model.
    (tmp_path / 'test.txt').write_text(TEXT[:180])   # within the context: one window
    scored = run_in(fork, 'eval.py', 'perplexity', '--data', str(tmp_path / 'test.txt'), '--models_dir',
                    str(tmp_path / 'ck'), '--model_name', 'rope', '--json_out', str(tmp_path / 'ppl.json'),
                    '--noprogress')
    assert scored.returncode == 0, scored.stderr[-3000:]
    direct = run_in(fork, '-c', textwrap.dedent(f'''
        import numpy as np, tensorflow as tf, checkpoint, encoder, model
        h, p = checkpoint.load({str(run_dir)!r})
        assert h['rope'] and 'model/wpe' not in p
        enc = encoder.get_encoder('rope', {str(tmp_path / 'ck')!r})
        tokens = [enc.encoder['<|endoftext|>']] + enc.encode(open({str(tmp_path / 'test.txt')!r}).read())
        assert len(tokens) <= h.n_ctx
        logits = model.model(h, [tokens[:-1]], params=p)['logits'][0].numpy().astype(np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
        print(float(np.exp(nll.mean())), float(nll[:20].mean()), float(nll[-20:].mean()))
        '''))
    assert direct.returncode == 0, direct.stderr[-3000:]
    ppl, start, end = map(float, direct.stdout.split())
    assert json.loads((tmp_path / 'ppl.json').read_text())['ppl_token'] == pytest.approx(ppl, rel=1e-4)
    assert ppl < 0.01 * TINY_HPARAMS['n_vocab'], ppl   # far from the random start's
