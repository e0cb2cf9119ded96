#!/usr/bin/env python3
"""Fine-tune GPT-2 on your own text (or train one from fresh weights), saving OpenAI-layout checkpoints.

    python src/encode.py my_texts/ --out data.npy
    python src/train.py --dataset data.npy --model_name 124M --run_name mine --steps 1000
    python src/generate_unconditional_samples.py --models_dir checkpoint --model_name mine

Everything a run writes lives in <checkpoint_dir>/<run_name>/, which is a model folder like the
released ones (hparams.json, encoder.json, vocab.bpe, `checkpoint` -> model-<step>.index/.data),
so every script that takes --models_dir/--model_name can sample from it.  Beside the weights:

    train_state/state-<step>.*   Adam's moments, the step, the data seed (a tf.train.Checkpoint)
    logs/                        TensorBoard summaries (tensorboard --logdir checkpoint)
    samples/step-<step>.txt      text sampled during training

A save writes train_state/state-<step>, then model-<step> (whose `checkpoint` file is replaced
last, atomically), then deletes the older pair, so the latest checkpoint is never half-written and
always has its optimizer state beside it.  Rerunning the same command resumes from it; Ctrl-C (or
SIGTERM) saves before exiting.  The batch for step s depends only on (seed, s), so a resumed run
reproduces an uninterrupted one.  While a run uses its folder it holds the lock .train.lock there
(files.Lock): a second run on the same folder refuses, naming the first.

Data parallelism uses TensorFlow's own engine: MirroredStrategy over all local GPUs when there
are several, MultiWorkerMirroredStrategy across machines when TF_CONFIG is set.  --batch_size is
the global batch, split evenly over the replicas.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import types

import cli
cli.import_tensorflow_quietly()   # before model, sample, ...: TensorFlow without its start-up noise
import numpy as np
import tensorflow as tf

import checkpoint
import encode as encode_lib
import encoder as encoder_lib
import files
import model

STRATEGIES = ('auto', 'default', 'mirrored', 'multiworker')
EOT_AS_TEXT = [27, 91, 437, 1659, 5239, 91, 29]   # '<|endoftext|>' spelled as 7 ordinary tokens
LOCK = '.train.lock'   # in the run folder, held while a run writes it


class TrainError(cli.UsageError):
    """A setting, dataset or folder that training cannot use, with the fix."""


# ---------------------------------------------------------------------------------------------
# Data: a flat stream of token ids; training windows drawn at random, validation windows fixed.

def load_tokens(dataset, allow_special=True, progress=True):
    """The dataset as a 1-D integer array: a .npy/.npz token file from encode.py, or text to encode now."""
    if not dataset:
        raise TrainError('give the training data: --dataset data.npy (from encode.py) or text files/folders')
    if isinstance(dataset, (str, os.PathLike)):
        dataset = files.expand(dataset)
    if isinstance(dataset, str) and dataset.endswith(('.npy', '.npz')):
        if not os.path.isfile(dataset):
            raise TrainError(f'dataset {dataset} does not exist')
        try:
            if dataset.endswith('.npy'):
                tokens = np.load(dataset, mmap_mode='r', allow_pickle=False)
            else:
                with np.load(dataset, allow_pickle=False) as npz:
                    if 'tokens' in npz.files:
                        tokens = npz['tokens']
                    else:   # nshepperd's format: one array per chunk of text; chunks are documents here
                        arrays = [npz[k] for k in npz.files]
                        sep = np.asarray([encoder_lib.get_default_encoder().eot_token], np.uint16)
                        tokens = np.concatenate([p for a in arrays for p in (sep, a)][1:] or [sep[:0]])
        except (OSError, ValueError) as e:
            raise TrainError(f'cannot read token file {dataset} ({e}); write it with encode.py') from None
        tokens = np.asarray(tokens) if not isinstance(tokens, np.memmap) else tokens
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise TrainError(f'{dataset} holds a {tokens.dtype} array of shape {tokens.shape}; expected 1-D '
                             'token ids (write it with encode.py)')
        return tokens
    tokens, _ = encode_lib.encode_to_array(dataset, allow_special=allow_special, progress=progress)
    return tokens


def check_tokens(tokens, n_vocab, name):
    """Ids within the vocabulary; warn about '<|endoftext|>' spelled as text (the TF1 forks' encoding)."""
    if len(tokens):
        low, high = int(tokens.min()), int(tokens.max())   # negative ids would crash later, in tf.gather
        if low < 0 or high >= n_vocab:
            raise TrainError(f'{name} holds token id {low if low < 0 else high}, outside the model\'s vocabulary '
                             f'of {n_vocab} (ids 0..{n_vocab - 1}); encode the text with this model\'s encoder')
    head = np.asarray(tokens[:1 << 24])   # a prefix is enough to notice a systematic problem
    n = len(EOT_AS_TEXT)
    if len(head) >= n:
        hits = np.ones(len(head) - n + 1, bool)
        for i, t in enumerate(EOT_AS_TEXT):
            hits &= head[i:len(head) - n + 1 + i] == t
        if hits.any():
            note(f'warning: {name} spells \'<|endoftext|>\' as 7 ordinary tokens {int(hits.sum())} times in its '
                 'first 16M tokens (the TF1 forks\' encoding); re-encode it with encode.py to make them '
                 'document separators')


class Batches:
    """Training windows drawn uniformly from the train split; fixed, evenly spaced validation windows.

    The tokens of step s depend only on (seed, s): that is the whole data-order state of a run.
    """

    def __init__(self, tokens, seq_len, batch_size, accumulate, val_fraction, val_batches, seed):
        self.tokens, self.seq, self.batch, self.accumulate, self.seed = tokens, seq_len, batch_size, accumulate, seed
        need = seq_len + 1
        n = len(tokens)
        if n == 0:
            raise TrainError('the dataset is empty')
        n_val = 0 if val_fraction <= 0 else max(int(n * val_fraction), need)
        if n - n_val < need:
            if n < need:
                raise TrainError(f'the dataset has {n} tokens, fewer than one training sequence of {need} '
                                 f'(--seq_len {seq_len} + 1); give more text or a smaller --seq_len')
            raise TrainError(f'the dataset has {n} tokens: too few for a validation split of {n_val} and a '
                             f'training sequence of {need}; use --val_fraction 0 or a smaller --seq_len')
        self.n_train = n - n_val
        self.val_starts = None
        if n_val:
            count = val_batches * batch_size
            self.val_starts = np.linspace(self.n_train, n - need, count).round().astype(np.int64)

    def reseed(self, seed):
        """Draw the training windows in the order of this seed (a resumed run keeps its own)."""
        self.seed = seed

    def train(self, step):
        """int32 [accumulate, batch_size, seq_len + 1]."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, self.n_train - self.seq, size=(self.accumulate, self.batch))
        return self._windows(starts)

    def validation(self):
        """The validation batches, each int32 [1, batch_size, seq_len + 1]."""
        if self.val_starts is None:
            return []
        return [self._windows(s[None]) for s in self.val_starts.reshape(-1, self.batch)]

    def _windows(self, starts):
        return np.asarray(self.tokens[starts[..., None] + np.arange(self.seq + 1)], np.int32)


# ---------------------------------------------------------------------------------------------
# Devices: one device, all local GPUs, or many machines.

def make_strategy(kind='auto'):
    """A tf.distribute strategy: 'default' (one device), 'mirrored' (all local GPUs, or all logical
    CPUs when there are no GPUs), 'multiworker' (TF_CONFIG), or 'auto' (multiworker when TF_CONFIG
    names a cluster, mirrored when there are several GPUs, else default).  Call before other TF work.
    """
    if kind not in STRATEGIES:
        raise TrainError(f'--strategy must be one of {", ".join(STRATEGIES)}, got {kind!r}')
    if kind == 'auto' and _tf_config_cluster():
        kind = 'multiworker'
    if kind == 'multiworker':
        if not _tf_config_cluster():
            raise TrainError('--strategy multiworker needs TF_CONFIG naming the cluster and this task; see docs/training.md')
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices('GPU')
    if kind == 'auto':
        kind = 'mirrored' if len(gpus) > 1 else 'default'
    if kind == 'default':
        return tf.distribute.get_strategy()
    devices = [d.name for d in (gpus or tf.config.list_logical_devices('CPU'))]
    return tf.distribute.MirroredStrategy(devices)


def _tf_config_cluster():
    try:
        config = json.loads(os.environ.get('TF_CONFIG') or '{}')
    except ValueError:
        raise TrainError('TF_CONFIG is not valid JSON') from None
    return bool(config.get('cluster'))


# ---------------------------------------------------------------------------------------------
# The forward pass for training: model.model, with optional per-block recomputation and mixed
# precision (LayerNorm and softmax stay in float32).

def forward(hparams, params, X, dtype=tf.float32, recompute=False):
    """Logits float32 [batch, seq, n_vocab] of X int32 [batch, seq] (model.model).

    params: name -> variable or tensor.  dtype: compute precision (weights are cast to it; the
    float32 variables stay the master copy).  recompute: keep only each block's input for the
    backward pass and recompute the rest (tf.recompute_grad), trading ~30% more compute for memory.
    """
    params = {k: tf.convert_to_tensor(v) for k, v in params.items()}
    return model.model(hparams, X, params=params, dtype=dtype,
                       wrap_block=tf.recompute_grad if recompute else None)['logits']


# ---------------------------------------------------------------------------------------------
# The trainer: variables, Adam, one compiled step, saving and resuming.

class Trainer:
    """Weights as float32 variables named as in OpenAI's checkpoint, Adam's moments beside them, and the
    compiled distributed train/eval steps."""

    def __init__(self, strategy, hparams, params, *, learning_rate=1e-4, warmup_steps=0, grad_clip=1.0,
                 beta1=0.9, beta2=0.999, epsilon=1e-8, precision='float32', recompute=False,
                 freeze_embeddings=False, xla=False, seed=0):
        self.strategy, self.hparams = strategy, hparams
        self.saved_step = None   # the step last saved (or resumed from), see mark_saved
        self.dtype = tf.as_dtype(cli.precision_name(precision, cli.FLOAT_PRECISIONS))
        self.recompute, self.xla = recompute, xla
        self.lr, self.warmup, self.clip = float(learning_rate), int(warmup_steps), float(grad_clip)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)
        self.loss_scaling = precision == 'float16'
        frozen = {k for k in params if model.is_embedding(k)} if freeze_embeddings else set()
        with strategy.scope():
            self.weights = {k: tf.Variable(v, name=k, trainable=k not in frozen) for k, v in params.items()}
            self.trainable = [k for k in self.weights if k not in frozen]
            self.m = {k: tf.Variable(tf.zeros_like(params[k]), name=k + '/m', trainable=False) for k in self.trainable}
            self.v = {k: tf.Variable(tf.zeros_like(params[k]), name=k + '/v', trainable=False) for k in self.trainable}
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
            self.seed = tf.Variable(int(seed), dtype=tf.int64, trainable=False, name='seed')
            # float16's dynamic loss scale: halve on overflow, double after 1000 finite steps.
            self.loss_scale = tf.Variable(2.0 ** 15 if self.loss_scaling else 1.0, trainable=False, name='loss_scale')
            self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name='good_steps')
        self.state = tf.train.Checkpoint(step=self.step, seed=self.seed, adam_m=self.m, adam_v=self.v,
                                         loss_scale=self.loss_scale, good_steps=self.good_steps)
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step)
        self._micro = tf.function(self._micro_grads, jit_compile=True) if xla else self._micro_grads

    # -- one step ------------------------------------------------------------------------------

    def _micro_grads(self, batch, scale):
        """Gradients of scale * (sum of token losses) for batch [b, seq+1], and that sum."""
        x, y = batch[:, :-1], batch[:, 1:]
        trainable = [self.weights[k] for k in self.trainable]
        with tf.GradientTape() as tape:
            logits = forward(self.hparams, self.weights, x, self.dtype, self.recompute)
            loss_sum = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
            scaled = loss_sum * scale
        grads = tape.gradient(scaled, trainable)
        return [tf.convert_to_tensor(g) for g in grads], loss_sum

    def _replica_step(self, batch):
        """Per replica: accumulate gradients over the micro-batches, all-reduce, clip, then update."""
        ctx = tf.distribute.get_replica_context()
        accumulate, local_batch, seq1 = batch.shape
        tokens = float(accumulate * local_batch * ctx.num_replicas_in_sync * (seq1 - 1))
        scale = self.loss_scale / tokens     # sum over micro-batches and replicas = the mean gradient
        if accumulate == 1:
            grads, loss_sum = self._micro(batch[0], scale)
        else:
            def body(i, grads, loss_sum):
                g, l = self._micro(batch[i], scale)
                return i + 1, [a + b for a, b in zip(grads, g)], loss_sum + l
            zeros = [tf.zeros(self.weights[k].shape, tf.float32) for k in self.trainable]
            _, grads, loss_sum = tf.while_loop(lambda i, *_: i < accumulate, body, (0, zeros, 0.0),
                                               parallel_iterations=1)   # one micro-batch in memory at a time
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        loss = ctx.all_reduce(tf.distribute.ReduceOp.SUM, loss_sum) / tokens
        if self.loss_scaling:
            grads = [g / self.loss_scale for g in grads]
        norm = tf.linalg.global_norm(grads)
        finite = tf.math.is_finite(norm)
        if self.clip > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip, use_norm=norm)
        step = tf.cast(self.step, tf.float32)
        lr = self.lr * tf.minimum(1.0, (step + 1) / self.warmup) if self.warmup > 0 else tf.constant(self.lr)
        ctx.merge_call(self._apply, args=(grads, lr, step + 1, finite))
        return loss, norm, lr

    def _apply(self, strategy, grads, lr, t, finite):
        """Cross-replica: Adam on every copy of every variable (each device updates its own copy).

        ResourceApplyAdam is the fused kernel of TF1's AdamOptimizer (Kingma & Ba's "epsilon hat"
        form: var -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)).  The step counts
        skipped float16 steps too: the data moves on, the weights do not."""
        b1, b2, eps = self.beta1, self.beta2, self.epsilon

        def adam(var, g, m, v, lr, t, finite):
            def update():
                return tf.raw_ops.ResourceApplyAdam(
                    var=var.handle, m=m.handle, v=v.handle, beta1_power=b1 ** t, beta2_power=b2 ** t,
                    lr=lr, beta1=b1, beta2=b2, epsilon=eps, grad=g)
            if not self.loss_scaling:
                return update()

            def update_if_finite():   # float16: a step whose gradients overflowed changes nothing
                update()
                return tf.constant(True)
            return tf.cond(finite, update_if_finite, lambda: tf.constant(False))

        ext = strategy.extended
        for k, g in zip(self.trainable, grads):
            ext.update(self.weights[k], adam, args=(g, self.m[k], self.v[k], lr, t, finite), group=False)
        ext.update(self.step, lambda s: s.assign_add(1), group=False)
        if self.loss_scaling:
            def rescale(scale, finite, good):
                grow = finite & (good.read_value() + 1 >= 1000)
                good.assign(tf.where(finite & ~grow, good + 1, tf.zeros_like(good)))
                return scale.assign(tf.where(finite, tf.where(grow, scale * 2, scale), tf.maximum(scale / 2, 1.0)))
            ext.update(self.loss_scale, rescale, args=(finite, self.good_steps), group=False)

    def _distributed_train_step(self, batch):
        loss, norm, lr = self.strategy.run(self._replica_step, args=(batch,))
        local = self.strategy.experimental_local_results
        return local(loss)[0], local(norm)[0], local(lr)[0]

    def _distributed_eval_step(self, batch):
        def replica(batch):
            logits = forward(self.hparams, self.weights, batch[0, :, :-1], self.dtype)
            return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch[0, :, 1:], logits=logits))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(replica, args=(batch,)), axis=None)

    def distribute(self, batch):
        """Split a global numpy batch [accumulate, batch_size, seq+1] over the replicas along the batch axis."""
        n = self.strategy.num_replicas_in_sync
        per = batch.shape[1] // n

        def part(ctx):
            r = ctx.replica_id_in_sync_group
            return tf.constant(batch[:, r * per:(r + 1) * per])
        return self.strategy.experimental_distribute_values_from_function(part)

    def train_step(self, batch):
        """One optimizer step on a global batch; returns (loss, gradient norm, learning rate) as floats."""
        loss, norm, lr = self._train_step(self.distribute(batch))
        return float(loss), float(norm), float(lr)

    def eval_loss(self, batches):
        """Mean token loss over validation batches."""
        total = count = 0
        for b in batches:
            total += float(self._eval_step(self.distribute(b)))
            count += b.shape[1] * (b.shape[2] - 1)
        return total / count

    def mark_saved(self, step):
        """Note that the weights of `step` are on disk (saved, or the checkpoint the run started from)."""
        self.saved_step = step

    def values(self):
        """The weights, name -> float32 tensor (as they would be saved)."""
        return {k: tf.convert_to_tensor(v) for k, v in self.weights.items()}


# ---------------------------------------------------------------------------------------------
# Run folders: finding the checkpoint to resume, saving atomically, pruning.

def latest_step(run_dir):
    """The step of run_dir's latest checkpoint (model-<step>), None when it has none.

    A folder with any other checkpoint (a released model's model.ckpt) is refused, never resumed into.
    """
    pointer = os.path.join(run_dir, 'checkpoint')
    name = None
    if os.path.exists(pointer):
        with open(pointer, encoding='utf-8') as f:
            m = re.search(r'^model_checkpoint_path: "(.*)"', f.read(), re.M)
        name = os.path.basename(m.group(1)) if m else 'an unreadable `checkpoint` file'
    elif os.path.exists(os.path.join(run_dir, 'model.ckpt.index')):
        name = 'model.ckpt'
    if name is None:
        return None
    found = re.fullmatch(r'model-(\d+)', name)
    if not found:
        raise TrainError(f'{run_dir} holds a checkpoint that train.py did not write ({name}, a released model?); '
                         f'to fine-tune it, pass --models_dir {os.path.dirname(run_dir) or "."} --model_name '
                         f'{os.path.basename(run_dir)} and choose a new --run_name')
    return int(found.group(1))


def state_prefix(run_dir, step):
    return os.path.join(run_dir, 'train_state', f'state-{step}')


def save(trainer, run_dir, hparams):
    """Write train_state/state-<step>, then model-<step> (the `checkpoint` pointer last), then prune."""
    step = int(trainer.step.numpy())
    bad = [k for k, v in trainer.weights.items() if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    if bad:
        raise TrainError(f'{bad[0]} is not finite at step {step}; not saved (try a lower --learning_rate)')
    with _signals_deferred():
        trainer.state.write(state_prefix(run_dir, step))
        checkpoint.save(run_dir, hparams, trainer.values(), name=f'model-{step}')
        _prune(run_dir, step)
        trainer.mark_saved(step)
    return step


def _prune(run_dir, keep):
    for folder, pattern in ((run_dir, r'model-(\d+)\.(index|data-\d+-of-\d+)'),
                            (os.path.join(run_dir, 'train_state'), r'state-(\d+)\.(index|data-\d+-of-\d+)')):
        for f in os.listdir(folder):
            m = re.fullmatch(pattern, f)
            if m and int(m.group(1)) != keep:
                os.unlink(os.path.join(folder, f))


def copy_vocab(src_dir, run_dir):
    """encoder.json and vocab.bpe of the source model (or the vendored ones) into the run folder."""
    for name in ('encoder.json', 'vocab.bpe'):
        src = os.path.join(src_dir, name) if src_dir and os.path.isfile(os.path.join(src_dir, name)) \
            else os.path.join(encoder_lib.VOCAB_DIR, name)
        dst = os.path.join(run_dir, name)
        if not os.path.exists(dst):
            shutil.copyfile(src, dst + '.tmp')
            os.replace(dst + '.tmp', dst)


@contextlib.contextmanager
def lock_run(run_dir, start_step):
    """Hold run_dir's lock (files.Lock) for one run, refusing when another run holds it or has moved the
    run past start_step (the step this run found) in the meantime."""
    held = files.Lock(os.path.join(run_dir, LOCK))
    try:
        held.acquire()
    except files.BusyError as e:
        raise TrainError(f'{e}; wait for it to finish or choose another --run_name') from None
    try:
        now = latest_step(run_dir)
        if now != start_step:
            raise TrainError(f'another run saved {run_dir} at step {now} while this one started; '
                             'run again to resume it')
        yield held
    finally:
        held.release()


def _check_writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise TrainError(f'cannot write to {folder} ({e.strerror}); choose another --checkpoint_dir') from None


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C and SIGTERM until the block is done (a save is not cut in half)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    old = {s: signal.signal(s, lambda n, f: received.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if received:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (e.g. a cluster's preemption) stops training like Ctrl-C: save, then exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ---------------------------------------------------------------------------------------------
# Logging: TensorBoard summaries without needing the tensorboard package to write them.

def _summary_metadata(plugin):
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))


def log_scalars(writer, step, **values):
    if writer is None:
        return
    with writer.as_default():
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(float(value), tf.float32), step=step, metadata=_summary_metadata('scalars'))


def log_text(writer, step, tag, text):
    if writer is None:
        return
    with writer.as_default():
        tf.summary.write(tag, tf.constant(text), step=step, metadata=_summary_metadata('text'))


def note(message):
    from tqdm import tqdm
    tqdm.write(message, file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The run.

def parse_hparams(hparams, base=None):
    """--hparams (a dict, a JSON string or a JSON file) -> HParams over base (default: the 124M defaults)."""
    if hparams is None:
        return base or model.default_hparams()
    if isinstance(hparams, str):
        try:
            if os.path.isfile(files.expand(hparams)):
                with open(files.expand(hparams), encoding='utf-8') as f:
                    hparams = json.load(f)
            else:
                hparams = json.loads(hparams)
        except ValueError as e:
            raise TrainError(f'--hparams is neither a JSON object nor a JSON file ({e})') from None
    if isinstance(hparams, dict):   # fire reads --hparams '{"rope": true}' as {'rope': 'true'}
        defaults = model.default_hparams()
        hparams = {k: {'true': True, 'false': False}.get(v, v) if isinstance(defaults.get(k), bool) else v
                   for k, v in hparams.items()}
    if base is not None and isinstance(hparams, dict):
        shape = [k for k in model.HPARAM_KEYS if k in hparams]
        if shape:
            raise TrainError(f'--hparams cannot set {shape[0]} of a released model, which brings its own shape; '
                             'use --fresh for a new shape')
    return model.HParams(base or model.default_hparams()).override_from_dict(hparams, source='--hparams')


def train(dataset=None, *, model_name='124M', models_dir='models', fresh=False, hparams=None,
          checkpoint_dir='checkpoint', run_name='run1', resume=True, steps=1000, batch_size=1, seq_len=None,
          accumulate=1, learning_rate=1e-4, warmup_steps=20, grad_clip=1.0, beta1=0.9, beta2=0.999,
          epsilon=1e-8, val_fraction=0.05, val_every=100, val_batches=8, sample_every=200, sample_length=100,
          sample_num=1, sample_top_k=40, save_every=500, precision='float32', recompute=False,
          freeze_embeddings=False, xla=False, strategy='auto', seed=0, allow_special=True, progress=True,
          adapt=False, on_step=None):
    """Fine-tune GPT-2 on a dataset and save OpenAI-layout checkpoints in checkpoint_dir/run_name.

    Returns a summary dict (run_dir, step, start_step, losses, val_loss, replicas, tokens_per_second).
    A KeyboardInterrupt (Ctrl-C, SIGTERM) saves the run and is then raised again.

    Args:
      dataset: a token file from encode.py (.npy or .npz), or text files, folders or a glob to encode now.
      model_name: the released model to start from, in models_dir (124M, 355M, 774M, 1558M).
      models_dir: the folder holding model folders.
      fresh: start from fresh random weights (with --hparams) instead of a released model.
      hparams: JSON object or file: for --fresh, overriding the 124M shape, e.g. '{"n_layer": 6}'; for a
        released model, a fork's own hyperparameters (those model.default_hparams adds to the five).
      checkpoint_dir: where run folders go.
      run_name: this run's folder in checkpoint_dir; sample with --models_dir CHECKPOINT_DIR --model_name RUN_NAME.
      resume: continue from the run folder's latest checkpoint when it has one (False: refuse to touch it).
      steps: train until this many optimizer steps in total (a resumed run continues up to it).
      batch_size: sequences per micro-batch, over all replicas together (a multiple of their number).
      seq_len: tokens per sequence (default: the model's context, 1024 for released models).
      accumulate: micro-batches whose gradients are summed into each optimizer step.
      learning_rate: Adam's peak learning rate.
      warmup_steps: steps of linear warm-up from 0 to learning_rate (then constant).
      grad_clip: clip the gradients' global norm to this (0: no clipping).
      beta1: Adam's first-moment decay.
      beta2: Adam's second-moment decay.
      epsilon: Adam's epsilon.
      val_fraction: fraction of the tokens (at the end) held out for validation (0: none).
      val_every: compute the validation loss every this many steps (0: only at the end).
      val_batches: validation batches (of batch_size sequences) per evaluation.
      sample_every: print and keep unconditional samples every this many steps (0: never).
      sample_length: tokens per sample.
      sample_num: samples each time.
      sample_top_k: top-k truncation for the samples (0: none).
      save_every: save every this many steps (0: only at the end and on Ctrl-C).
      precision: float32, bfloat16 (GPU or CPU) or float16 (GPU, with loss scaling); weights stay float32.
      recompute: recompute each block's activations in the backward pass (less memory, ~30% more compute).
      freeze_embeddings: train only the transformer layers (and final LayerNorm); wte and wpe stay fixed.
      xla: compile the forward and backward pass with XLA.
      strategy: auto (several GPUs: mirrored; TF_CONFIG set: multiworker), default (one device),
        mirrored (all local GPUs) or multiworker (MultiWorkerMirroredStrategy via TF_CONFIG).
      seed: seed of fresh weights, of the data order, and of the samples (an integer >= 0).
      allow_special: for text datasets: a literal '<|endoftext|>' is the document separator token.
      progress: show a progress bar.
      adapt: start from a checkpoint of another schema (a fork's new tensors are initialised, tensors it no
        longer uses are left out; each named in one line); without it, either is an error.
      on_step: (Python callers only) a function on_step(step, loss) called after every step.
    """
    flags = check_flags(**locals())
    run = open_run(flags)
    batches = load_data(flags, run)      # before any write, so bad data never touches a run folder
    strategy = start_devices(flags, run)
    with lock_run(run.dir, run.start_step) if run.chief else contextlib.nullcontext():
        trainer = make_trainer(flags, run, strategy)
        if trainer is None:
            return dict(run_dir=run.dir, step=run.start_step, start_step=run.start_step, losses=[], val_loss=None,
                        replicas=run.replicas)
        return fit(flags, run, batches, trainer)


def check_flags(**flags):
    """train()'s arguments, validated, as a namespace (the checks that need no TensorFlow)."""
    f = types.SimpleNamespace(**flags)
    for name in ('steps', 'batch_size', 'accumulate', 'val_batches', 'sample_num'):
        value = getattr(f, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainError(f'--{name} must be a positive integer, got {value!r}')
    for name in ('val_every', 'sample_every', 'save_every', 'warmup_steps', 'sample_length', 'sample_top_k'):
        value = getattr(f, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TrainError(f'--{name} must be an integer >= 0 (0 turns it off), got {value!r}')
    cli.precision_name(f.precision, cli.FLOAT_PRECISIONS)   # float16 too, also without a GPU: it computes, slowly
    f.val_fraction = cli.number('val_fraction', f.val_fraction, 0, 1, inclusive_max=False)
    f.learning_rate = cli.number('learning_rate', f.learning_rate, 0, inclusive_min=False)
    f.grad_clip = cli.number('grad_clip', f.grad_clip, 0)
    f.beta1 = cli.number('beta1', f.beta1, 0, 1, inclusive_max=False)
    f.beta2 = cli.number('beta2', f.beta2, 0, 1, inclusive_max=False)
    f.epsilon = cli.number('epsilon', f.epsilon, 0, inclusive_min=False)
    if isinstance(f.seed, bool) or not isinstance(f.seed, int) or f.seed < 0:
        raise TrainError(f'--seed must be an integer >= 0, got {f.seed!r}')
    if isinstance(f.dataset, (int, float)) and not isinstance(f.dataset, bool):
        f.dataset = str(f.dataset)   # fire reads a file or folder named e.g. 2024 as a number
    if f.on_step is not None and not callable(f.on_step):
        raise TrainError('on_step is for Python callers: a function on_step(step, loss)')
    f.checkpoint_dir = files.expand(f.checkpoint_dir)
    if not f.run_name or os.sep in str(f.run_name) or str(f.run_name) in ('.', '..'):
        raise TrainError(f'--run_name must be a plain folder name, got {f.run_name!r}')
    return f


def open_run(f):
    """Where the run lives and what it starts from: a namespace with dir, start_step (None for a new
    run), source_dir (the model folder to start from; None for fresh weights), hparams and seq_len."""
    run = types.SimpleNamespace(dir=os.path.join(f.checkpoint_dir, str(f.run_name)), source_dir=None)
    run.start_step = latest_step(run.dir) if os.path.isdir(run.dir) else None
    if run.start_step is not None and not f.resume:
        raise TrainError(f'{run.dir} already holds a checkpoint at step {run.start_step}; resume it (drop '
                         '--resume=False) or choose a new --run_name')
    if run.start_step is not None:
        run.source_dir = run.dir
        run.hparams = checkpoint.load_hparams(run.dir)
    elif f.fresh:
        run.hparams = parse_hparams(f.hparams)
    else:
        run.source_dir = checkpoint.model_path(f.model_name, f.models_dir)
        run.hparams = checkpoint.load_hparams(run.source_dir)
        run.hparams = parse_hparams(f.hparams, base=run.hparams)   # a fork's own settings, if any
    n_ctx = run.hparams['n_ctx']
    run.seq_len = n_ctx if f.seq_len is None else f.seq_len
    if isinstance(run.seq_len, bool) or not isinstance(run.seq_len, int) or not 1 <= run.seq_len <= n_ctx:
        raise TrainError(f'--seq_len must be an integer in [1, {n_ctx}] (the model\'s context), got {f.seq_len!r}')
    return run


def load_data(f, run):
    """The token stream, checked against the model's vocabulary, as training and validation Batches."""
    try:
        tokens = load_tokens(f.dataset, allow_special=f.allow_special, progress=f.progress)
    except encode_lib.EncodeError as e:
        raise TrainError(str(e)) from None
    check_tokens(tokens, run.hparams['n_vocab'], str(f.dataset))
    return Batches(tokens, run.seq_len, f.batch_size, f.accumulate, f.val_fraction, f.val_batches, f.seed)


def start_devices(f, run):
    """The tf.distribute strategy; sets run.replicas and run.chief (the worker that writes the run folder,
    which must be writable)."""
    strategy = make_strategy(f.strategy)
    run.replicas = strategy.num_replicas_in_sync
    if f.batch_size % run.replicas:
        raise TrainError(f'--batch_size {f.batch_size} must be a multiple of the {run.replicas} replicas')
    run.chief = getattr(strategy.extended, 'should_checkpoint', True)
    if run.chief:
        _check_writable(run.dir)
    return strategy


def make_trainer(f, run, strategy):
    """The weights (resumed, fresh or released) and the optimizer state; the run folder is prepared
    (vocabulary copied) for a new run.  None when the run is already at --steps."""
    params = checkpoint.init_params(run.hparams, seed=f.seed) if run.source_dir is None else \
        checkpoint.load(run.source_dir, hparams=run.hparams, adapt=f.adapt, note=note)[1]
    trainer = Trainer(strategy, run.hparams, params, learning_rate=f.learning_rate, warmup_steps=f.warmup_steps,
                      grad_clip=f.grad_clip, beta1=f.beta1, beta2=f.beta2, epsilon=f.epsilon, precision=f.precision,
                      recompute=f.recompute, freeze_embeddings=f.freeze_embeddings, xla=f.xla, seed=f.seed)
    if run.start_step is not None:
        prefix = state_prefix(run.dir, run.start_step)
        if os.path.exists(prefix + '.index'):
            trainer.state.read(prefix).expect_partial()
            if int(trainer.seed.numpy()) != f.seed:
                note(f'resuming with the run\'s data seed {int(trainer.seed.numpy())} (not --seed {f.seed})')
        else:
            note(f'no optimizer state for step {run.start_step} ({prefix}.index); Adam starts from zero moments')
        trainer.step.assign(run.start_step)
        note(f'resuming {run.dir} from step {run.start_step}')
    elif run.chief:
        copy_vocab(run.source_dir, run.dir)
    step = int(trainer.step.numpy())
    if step >= f.steps:
        note(f'{run.dir} is already at step {step} >= --steps {f.steps}; nothing to do')
        run.start_step = step
        return None
    return trainer


def fit(f, run, batches, trainer):
    """The training loop: steps, validation, samples and saves, until --steps; returns the summary."""
    batches.reseed(int(trainer.seed.numpy()))   # a resumed run keeps its own data order
    step = start_step = int(trainer.step.numpy())
    trainer.mark_saved(step)
    hp, run_dir, chief = run.hparams, run.dir, run.chief
    writer = tf.summary.create_file_writer(os.path.join(run_dir, 'logs')) if chief else None
    enc = encoder_lib.get_encoder(os.path.basename(run_dir), f.checkpoint_dir) if chief and f.sample_every else None
    tokens_per_step = f.batch_size * f.accumulate * run.seq_len
    note(f'training {run_dir}: steps {step}..{f.steps}, {run.replicas} replica{"s" * (run.replicas > 1)}, '
         f'{tokens_per_step} tokens per step ({f.batch_size} x {f.accumulate} x {run.seq_len}), {f.precision}'
         f'{", recompute" if f.recompute else ""}{", frozen embeddings" if f.freeze_embeddings else ""}; '
         f'{len(batches.tokens):,} tokens ({batches.n_train:,} for training)')

    from tqdm import tqdm
    bar = tqdm(total=f.steps, initial=step, desc='training', unit='step', file=sys.stderr,
               disable=None if f.progress else True, dynamic_ncols=True)   # None: only on a terminal
    losses, val_loss, speed = [], None, None
    try:
        with _sigterm_as_interrupt():
            while step < f.steps:
                batch = batches.train(step)
                t0 = time.perf_counter()
                try:
                    loss, norm, lr = trainer.train_step(batch)
                except tf.errors.ResourceExhaustedError:
                    raise TrainError(f'out of memory at --batch_size {f.batch_size} --seq_len {run.seq_len}; try '
                                     '--recompute, --precision bfloat16, --freeze_embeddings, or a smaller '
                                     '--batch_size with --accumulate') from None
                dt = time.perf_counter() - t0
                step += 1
                if not np.isfinite(loss) and not trainer.loss_scaling:
                    raise TrainError(f'the loss became {loss} at step {step}; nothing was saved from this point '
                                     '(try a lower --learning_rate)')
                losses.append(loss)
                if step > start_step + 1:   # the first step includes compiling it
                    speed = tokens_per_step / dt if speed is None else 0.9 * speed + 0.1 * tokens_per_step / dt
                bar.update(1)
                bar.set_postfix(loss=f'{loss:.3f}', tok_s=f'{speed:.0f}' if speed else '-')
                log_scalars(writer, step, loss=loss, grad_norm=norm, learning_rate=lr,
                            **({'tokens_per_second': speed} if speed else {}),
                            **({'loss_scale': float(trainer.loss_scale.numpy())} if trainer.loss_scaling else {}))
                if f.val_every and step % f.val_every == 0 and batches.val_starts is not None:
                    val_loss = trainer.eval_loss(batches.validation())
                    bar.write(f'step {step}: validation loss {val_loss:.4f} (training loss {loss:.4f})', file=sys.stderr)
                    log_scalars(writer, step, val_loss=val_loss)
                if enc is not None and step % f.sample_every == 0:
                    _sample(trainer, hp, enc, run_dir, step, f.sample_length, f.sample_num, f.sample_top_k, f.seed,
                            writer, bar)
                if chief and f.save_every and step % f.save_every == 0:
                    save(trainer, run_dir, hp)
                if f.on_step is not None:
                    f.on_step(step, loss)
            if chief and trainer.saved_step != step:
                save(trainer, run_dir, hp)
    except KeyboardInterrupt:
        bar.close()
        step = int(trainer.step.numpy())
        if chief and step != trainer.saved_step:
            save(trainer, run_dir, hp)
            note(f'interrupted at step {step}; saved {run_dir}/model-{step}')
        else:
            note(f'interrupted at step {step}; {run_dir} already holds it')
        raise
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    if batches.val_starts is not None and (val_loss is None or not f.val_every or step % f.val_every):
        val_loss = trainer.eval_loss(batches.validation())
    done = f'saved {run_dir}/model-{step}' if chief else f'finished step {step} (the chief worker saves)'
    note(done + (f'; validation loss {val_loss:.4f}' if val_loss is not None else ''))
    return dict(run_dir=run_dir, step=step, start_step=start_step, losses=losses, val_loss=val_loss,
                replicas=run.replicas, tokens_per_second=speed)


def _sample(trainer, hp, enc, run_dir, step, length, num, top_k, seed, writer, bar):
    """Unconditional samples from the current weights, printed and kept in samples/step-<step>.txt."""
    import sample
    length = min(length, hp['n_ctx'] - 1)
    out = sample.sample_sequence(hparams=hp, params=trainer.weights, length=length, start_token=enc.eot_token,
                                 batch_size=num, top_k=top_k, seed=seed + step)
    texts = [enc.decode(row[1:].tolist()) for row in out.numpy()]
    text = '\n'.join(f'======== SAMPLE {i + 1} ========\n{t}' for i, t in enumerate(texts))
    bar.write(f'step {step} samples:\n{text}', file=sys.stderr)
    os.makedirs(os.path.join(run_dir, 'samples'), exist_ok=True)
    files.write_atomic(os.path.join(run_dir, 'samples', f'step-{step}.txt'), text + '\n')
    log_text(writer, step, 'samples', text)


if __name__ == '__main__':
    cli.run(cli.without(train, 'on_step'))
