#!/usr/bin/env python3
"""Training throughput and peak memory of train.py's step for the 124M shape, per memory option.

    python bench/bench_train.py                          # batch 1 x 1024 tokens, every option
    python bench/bench_train.py --batch_size 4 --seq_len 256 --options fp32 recompute

Each option runs in a fresh child process: random 124M weights, random tokens, one untimed step
(tracing and compiling), then --steps timed optimizer steps of train.Trainer (forward, backward,
Adam).  Reported per option:
  tokens/s     training tokens per second over the timed steps
  s/step       seconds per optimizer step
  peak         the most memory TensorFlow's allocator held (weights, Adam moments, gradients,
               activations, temporaries), from tf.config.experimental.get_memory_info; on CPU the
               child sets TF_CPU_ALLOCATOR_USE_BFC=true so that the CPU allocator keeps these counts
  resident     weights and Adam moments alone: what the allocator held before the first step
  peak RSS     the process's peak resident set (adds the runtime, code and allocator caching)
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, '..', 'src')

OPTIONS = {
    'fp32': dict(),
    'recompute': dict(recompute=True),
    'bf16': dict(precision='bfloat16'),
    'freeze': dict(freeze_embeddings=True),
    'bf16+recompute+freeze': dict(precision='bfloat16', recompute=True, freeze_embeddings=True),
    'xla': dict(xla=True),
    'xla+bf16': dict(xla=True, precision='bfloat16'),
    'xla+bf16+recompute': dict(xla=True, precision='bfloat16', recompute=True),
}


def peak_rss_gib():
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(option, batch_size, seq_len, steps):
    sys.path.insert(0, SRC)
    import numpy as np
    import tensorflow as tf
    import model
    import checkpoint
    import train
    hparams = model.default_hparams()
    params = checkpoint.init_params(hparams, seed=0)
    trainer = train.Trainer(tf.distribute.get_strategy(), hparams, params, **OPTIONS[option])
    del params
    rng = np.random.default_rng(0)
    batch = rng.integers(0, hparams.n_vocab, size=(1, batch_size, seq_len + 1)).astype(np.int32)
    device = 'GPU:0' if tf.config.list_logical_devices('GPU') else 'CPU:0'
    resident = tf.config.experimental.get_memory_info(device)['current'] / 2**30
    trainer.train_step(batch)              # traces and compiles
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train_step(batch)
        times.append(time.perf_counter() - t)
    s_step = sum(times) / len(times)
    out = dict(option=option, tokens_per_s=batch_size * seq_len / s_step, s_per_step=s_step, device=device,
               peak_gib=tf.config.experimental.get_memory_info(device)['peak'] / 2**30,
               resident_gib=resident, peak_rss_gib=peak_rss_gib())
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--options', nargs='+', default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument('--batch_size', type=int, default=1)
    ap.add_argument('--seq_len', type=int, default=1024)
    ap.add_argument('--steps', type=int, default=3, help='timed steps per option')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.batch_size, args.seq_len, args.steps)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CPU_ALLOCATOR_USE_BFC='true')
    print(f'124M shape, batch {args.batch_size} x {args.seq_len} tokens, {args.steps} timed steps, '
          f'{os.cpu_count()} CPU cores\n')
    print('| option | tokens/s | s/step | peak (GiB) | resident (GiB) | peak RSS (GiB) |')
    print('|---|---:|---:|---:|---:|---:|')
    for option in args.options:
        proc = subprocess.run([sys.executable, __file__, '--child', option, '--batch_size', str(args.batch_size),
                               '--seq_len', str(args.seq_len), '--steps', str(args.steps)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            print(f'| {option} | failed: {proc.stderr.strip().splitlines()[-1:]} | | | | |')
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f'| {option} | {r["tokens_per_s"]:.0f} | {r["s_per_step"]:.2f} | {r["peak_gib"]:.2f} | '
              f'{r["resident_gib"]:.2f} | {r["peak_rss_gib"]:.2f} |', flush=True)


if __name__ == '__main__':
    main()
