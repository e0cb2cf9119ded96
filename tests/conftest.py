"""Shared fixtures: tiny random-weight checkpoints written in OpenAI's exact layout."""
import atexit
import codecs
import os
import shutil
import tempfile

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# XLA's compiled steps go to a folder of this run (shared by the scripts the tests start), not ~/.cache.
os.environ['GPT2_COMPILE_CACHE'] = tempfile.mkdtemp(prefix='gpt2-compile-cache-')
atexit.register(shutil.rmtree, os.environ['GPT2_COMPILE_CACHE'], True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, 'src')
VOCAB = os.path.join(SRC, 'vocab')

# The first lines of the Zen of Python, as `import this` prints it (without printing it).
ZEN = '\n'.join(codecs.decode(__import__('this').s, 'rot13').splitlines()[:9]) + '\n'

# Real vocabulary size, so the real encoder works with the tiny model; everything else tiny.
TINY_HPARAMS = dict(n_vocab=50257, n_ctx=64, n_embd=32, n_head=4, n_layer=2)


def write_model(models_dir, name='tiny', hparams=None, seed=0, vocab=True):
    """A random-weight model folder as download_model.py leaves it.  Returns its path."""
    import model
    import checkpoint
    h = model.default_hparams().override_from_dict(dict(hparams or TINY_HPARAMS))
    path = os.path.join(str(models_dir), name)
    checkpoint.save(path, h, checkpoint.init_params(h, seed=seed))
    if vocab:
        for f in ('encoder.json', 'vocab.bpe'):
            shutil.copy(os.path.join(VOCAB, f), path)
    return path


def sharpened_params(hparams, seed=3):
    """Random weights whose matmuls are sharpened (wider spread), so greedy decoding has clear winners."""
    import numpy as np
    import tensorflow as tf
    import checkpoint
    p = checkpoint.init_params(hparams, seed=seed)
    rng = np.random.default_rng(0)
    p = {k: tf.constant(v.numpy() + (rng.normal(0, 0.3, v.shape).astype(np.float32) if k.endswith('/w') else 0))
         for k, v in p.items()}
    p['model/wte'] = tf.constant(rng.normal(0, 0.5, p['model/wte'].shape).astype(np.float32))
    return p


@pytest.fixture(scope='session')
def tiny_models_dir(tmp_path_factory):
    """A models folder holding one tiny model named 'tiny' (read-only for tests)."""
    d = tmp_path_factory.mktemp('models')
    write_model(d, 'tiny')
    return str(d)


@pytest.fixture(scope='session')
def random_model(tmp_path_factory):
    """A small random-weight checkpoint with sharpened weights, and its path."""
    import numpy as np
    import tensorflow as tf
    import checkpoint
    import model
    h = model.default_hparams().override_from_dict(dict(n_vocab=211, n_ctx=48, n_embd=64, n_head=4, n_layer=3))
    rng = np.random.default_rng(0)
    p = {k: tf.constant(v.numpy() + (rng.normal(0, 0.1, v.shape).astype(np.float32) if k.endswith('/w') else 0))
         for k, v in checkpoint.init_params(h, seed=4).items()}
    p['model/wte'] = tf.constant(rng.normal(0, 0.5, p['model/wte'].shape).astype(np.float32))
    d = str(tmp_path_factory.mktemp('random'))
    checkpoint.save(d, h, p)
    return d


@pytest.fixture(scope='session')
def zen(tmp_path_factory):
    """(models_dir, name): a tiny model trained by train.py on the Zen of Python (ZEN)."""
    import train
    tmp = tmp_path_factory.mktemp('zen')
    (tmp / 'zen.txt').write_text(ZEN)
    train.train(str(tmp / 'zen.txt'), fresh=True, hparams=TINY_HPARAMS, checkpoint_dir=str(tmp / 'ck'),
                run_name='zen', steps=80, batch_size=4, seq_len=32, learning_rate=1e-2, warmup_steps=0,
                val_fraction=0, sample_every=0, save_every=0, progress=False)
    return str(tmp / 'ck'), 'zen'
