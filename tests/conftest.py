"""Shared fixtures: tiny random-weight checkpoints written in OpenAI's exact layout."""
import atexit
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
