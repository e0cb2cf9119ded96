#!/usr/bin/env python3
"""Sampling speed of sample.py beside Hugging Face transformers (PyTorch, CPU), on the same weights.

    pip install torch==2.13.0 transformers     # the peer; not in requirements.txt
    python bench/bench_sampling.py             # 124M shape, 32-token prompt, 128 new tokens, top_k 40

Random weights of the real 124M shape are written once as an OpenAI checkpoint (what checkpoint.load
reads) and copied, tensor for tensor, into a transformers GPT-2 folder (what from_pretrained reads).
Each measurement runs in a fresh child process, ours and the peer's alternating, with the same
thread count, so that 'time to first token' counts everything from process start: imports, loading
the weights, tracing or compiling, and the prompt pass.  Each side runs in each --precision (ours:
checkpoint.load(dtype=...); the peer: model.to(torch.bfloat16)).  Reported per batch size:
  first token  seconds from process start to the first new token (cold)
  tok/s        new tokens per second of a second, warm generate() call (prompt pass included)
  decode tok/s new tokens per second after the first one, in that warm call
  of floor     decode tok/s as a fraction of the matmul floor's tokens per second: the step's matmuls
               alone (bench_kernels.floor: best of a plain graph and XLA, both weight layouts), timed in
               a child process of its own for each batch size and precision
  cold total s seconds from process start to the last token of the first call: what a one-off run
               costs, compile included (XLA's compiled steps are kept in a compile cache that the
               run's processes share, files.use_compile_cache, so only the first process compiles)
  peak GiB     the child process's peak resident memory (VmHWM)
  form         the step's form that ran: the kernel trial's choice (sample.step_form), or one
               forced with --ours (graph, xla, xla+copies: GPT2_XLA / GPT2_TRANSPOSED_COPIES)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'src'))


def prepare(folder, seed):
    """An OpenAI-layout 124M checkpoint in folder/ours/124M and the same weights in folder/peer."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import numpy as np
    import model
    import checkpoint
    h = model.default_hparams()
    params = checkpoint.init_params(h, seed=seed)
    checkpoint.save(os.path.join(folder, 'ours', '124M'), h, params)
    from safetensors.numpy import save_file
    p = {k: v.numpy() for k, v in params.items()}
    hf = {'transformer.wte.weight': p['model/wte'], 'transformer.wpe.weight': p['model/wpe'],
          'transformer.ln_f.weight': p['model/ln_f/g'], 'transformer.ln_f.bias': p['model/ln_f/b']}
    for i in range(h.n_layer):
        for ours, theirs in [('ln_1/g', 'ln_1.weight'), ('ln_1/b', 'ln_1.bias'), ('ln_2/g', 'ln_2.weight'),
                             ('ln_2/b', 'ln_2.bias'), ('attn/c_attn/w', 'attn.c_attn.weight'),
                             ('attn/c_attn/b', 'attn.c_attn.bias'), ('attn/c_proj/w', 'attn.c_proj.weight'),
                             ('attn/c_proj/b', 'attn.c_proj.bias'), ('mlp/c_fc/w', 'mlp.c_fc.weight'),
                             ('mlp/c_fc/b', 'mlp.c_fc.bias'), ('mlp/c_proj/w', 'mlp.c_proj.weight'),
                             ('mlp/c_proj/b', 'mlp.c_proj.bias')]:
            v = p[f'model/h{i}/{ours}']
            hf[f'transformer.h.{i}.{theirs}'] = np.ascontiguousarray(v[0] if v.ndim == 3 else v)
    peer = os.path.join(folder, 'peer')
    os.makedirs(peer, exist_ok=True)
    save_file(hf, os.path.join(peer, 'model.safetensors'), metadata={'format': 'pt'})
    config = dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=h.n_vocab,
                  n_positions=h.n_ctx, n_embd=h.n_embd, n_layer=h.n_layer, n_head=h.n_head,
                  activation_function='gelu_new', layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                  bos_token_id=50256, eos_token_id=50256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with open(os.path.join(peer, 'config.json'), 'w') as f:
        json.dump(config, f)


def run_ours(folder, batch, prompt, new, top_k, threads, started, precision):
    import files
    files.use_compile_cache()   # as the sampling scripts do: before TensorFlow starts
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import checkpoint
    import sample
    hparams, params = checkpoint.load(os.path.join(folder, 'ours', '124M'), dtype=tf.as_dtype(precision))
    context = np.random.default_rng(1).integers(0, hparams.n_vocab, size=(batch, prompt))
    result = {}
    for call in ('cold', 'warm'):
        t0, stamps = time.time(), []
        for _ in sample.stream_sequence(hparams=hparams, params=params, length=new, context=context,
                                        top_k=top_k, seed=0):
            stamps.append(time.time())
        result[call] = (t0, stamps)
    chosen = sample.step_form(hparams, params['model/wte'].dtype, batch, top_k=top_k)   # None: forced or the rule
    xla, copies = chosen[0] if chosen else (os.environ.get('GPT2_XLA') != '0', os.environ.get('GPT2_TRANSPOSED_COPIES') == '1')
    result['form'] = ('xla+copies' if copies else 'xla') if xla else 'graph'
    return result


def run_peer(folder, batch, prompt, new, top_k, threads, started, precision):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    from transformers import GPT2LMHeadModel
    from transformers.generation.streamers import BaseStreamer
    peer = GPT2LMHeadModel.from_pretrained(os.path.join(folder, 'peer')).eval()
    if precision == 'bfloat16':
        peer = peer.to(torch.bfloat16)

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:       # the first put is the prompt
                self.stamps.append(time.time())

        def end(self):
            pass

    ids = torch.tensor(np.random.default_rng(1).integers(0, 50257, size=(batch, prompt)))
    result = {}
    for call in ('cold', 'warm'):
        torch.manual_seed(0)
        streamer, t0 = Stamps(), time.time()
        with torch.inference_mode():
            peer.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=top_k, top_p=1.0,
                          temperature=1.0, max_new_tokens=new, min_new_tokens=new, use_cache=True,
                          pad_token_id=50256, streamer=streamer)
        result[call] = (t0, streamer.stamps)
    return result


def peak_rss():
    """This process's peak resident memory in bytes (Linux), or NaN."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return float('nan')


def run_floor(folder, batch, prompt, new, top_k, threads, started, precision):
    """The step's matmul floor for this batch size and precision (bench_kernels.floor), in seconds."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import bench_kernels
    import model
    hparams = model.default_hparams()
    return min(bench_kernels.floor(hparams, bench_kernels.weights(hparams, tf.as_dtype(precision)), batch).values())


def child(args):
    """One measurement, printed as JSON on the last line of stdout."""
    if args.child == 'floor':
        seconds = run_floor(args.folder, args.batch, args.prompt, args.new, args.top_k, args.threads, args.started,
                            args.precision)
        print(json.dumps({'floor_s': seconds}))
        return
    fn = run_ours if args.child.startswith('ours') else run_peer
    result = fn(args.folder, args.batch, args.prompt, args.new, args.top_k, args.threads, args.started,
                args.precision)
    (t0c, cold), (t0, warm) = result['cold'], result['warm']
    assert len(cold) == len(warm) == args.new, (len(cold), len(warm))
    print(json.dumps({
        'first_token_s': cold[0] - args.started,
        'tok_s': args.batch * args.new / (warm[-1] - t0),
        'decode_tok_s': args.batch * (args.new - 1) / (warm[-1] - warm[0]),
        'cold_total_s': cold[-1] - args.started,
        'peak_gib': peak_rss() / 2**30,
        'form': result.get('form', ''),
    }))


def add_workload_flags(ap):
    """The sampling workload every sampling benchmark runs: batch sizes, prompt, new tokens, top_k."""
    ap.add_argument('--batch_sizes', default='1,8', help='comma-separated batch sizes')
    ap.add_argument('--prompt', type=int, default=32, help='prompt tokens')
    ap.add_argument('--new', type=int, default=128, help='new tokens per row')
    ap.add_argument('--top_k', type=int, default=40)


FORMS = {'': {}, 'trial': {}, 'graph': {'GPT2_XLA': '0'},
         'xla': {'GPT2_XLA': '1', 'GPT2_TRANSPOSED_COPIES': '0'},
         'xla+copies': {'GPT2_XLA': '1', 'GPT2_TRANSPOSED_COPIES': '1'}}


def measure(who, folder, batch, precision, args):
    cmd = [sys.executable, os.path.abspath(__file__), '--child', who, '--folder', folder, '--batch', str(batch),
           '--precision', precision,
           '--prompt', str(args.prompt), '--new', str(args.new), '--top_k', str(args.top_k),
           '--threads', str(args.threads), '--started', repr(time.time())]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', GPT2_COMPILE_CACHE=os.path.join(folder, 'compile-cache'),
               **FORMS[who.partition(':')[2]])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f'{who} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_flags(ap)
    ap.add_argument('--repeats', type=int, default=5, help='child processes per (side, batch size); median kept')
    ap.add_argument('--threads', type=int, default=os.cpu_count(), help='threads for both sides')
    ap.add_argument('--precision', default='float32,bfloat16',
                    help='comma-separated weight precisions (float32, bfloat16), each for both sides')
    ap.add_argument('--ours', default='trial',
                    help='comma-separated forms of our step: trial (the kernel trial chooses), graph, xla, xla+copies')
    ap.add_argument('--json', help='also write the results here')
    ap.add_argument('--child', help=argparse.SUPPRESS)
    ap.add_argument('--folder', help=argparse.SUPPRESS)
    ap.add_argument('--batch', type=int, help=argparse.SUPPRESS)
    ap.add_argument('--started', type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    forms = args.ours.split(',')
    if not forms or any(f not in FORMS or not f for f in forms):
        sys.exit(f'--ours: a comma-separated list of trial, graph, xla, xla+copies; got {args.ours!r}')
    precisions = args.precision.split(',')
    if not precisions or any(p not in ('float32', 'bfloat16') for p in precisions):
        sys.exit(f'--precision: a comma-separated list of float32 and bfloat16, got {args.precision!r}')
    import bench_kernels

    with tempfile.TemporaryDirectory() as folder:
        prep = subprocess.run([sys.executable, '-c', f'import sys; sys.path.insert(0, {HERE!r}); '
                               f'import bench_sampling as b; b.prepare({folder!r}, 0)'], capture_output=True,
                              text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
        if prep.returncode:
            sys.exit(f'preparing the weights failed:\n{prep.stderr[-3000:]}')
        rows = []
        for batch in [int(b) for b in args.batch_sizes.split(',')]:
            runs = {(who, p): [] for p in precisions for who in [f'ours:{f}' for f in forms] + ['peer']}
            for _ in range(args.repeats):
                for who, p in runs:
                    runs[who, p].append(measure(who, folder, batch, p, args))
            med = {key: {k: statistics.median(r[k] for r in rs) if k != 'form' else '/'.join(sorted({r[k] for r in rs}))
                         for k in rs[0]} for key, rs in runs.items()}
            floors = {p: measure('floor', folder, batch, p, args)['floor_s'] for p in precisions}
            rows.append((batch, med, floors))

    print(f'CPU: {bench_kernels.cpu_model()}')
    print(f'GPT-2 124M shape, {args.threads} threads, prompt {args.prompt}, {args.new} new tokens, '
          f'top_k {args.top_k}, median of {args.repeats} processes each')
    print(f'{"batch":>5} {"":>16} {"precision":>9} {"first token s":>14} {"tok/s":>8} {"decode tok/s":>13} '
          f'{"of floor":>9} {"cold total s":>13} {"peak GiB":>9}  form')
    for batch, med, floors in rows:
        print(f'{batch:>5} {"floor":>16} ' + ', '.join(f'{p} {s * 1e3:.1f} ms/step = {batch / s:.1f} tok/s'
                                                      for p, s in floors.items()))
        for (who, p), m in med.items():
            print(f'{batch:>5} {who:>16} {p:>9} {m["first_token_s"]:>14.2f} {m["tok_s"]:>8.1f} '
                  f'{m["decode_tok_s"]:>13.1f} {m["decode_tok_s"] * floors[p] / batch:>8.0%} '
                  f'{m["cold_total_s"]:>13.1f} {m["peak_gib"]:>9.2f}  {m["form"]}')
        base = med['peer', precisions[0]]
        for f in forms:
            for p in precisions:
                o = med[f'ours:{f}', p]
                print(f'{batch:>5} {"ratio " + f:>16} {p:>9} {o["first_token_s"] / base["first_token_s"]:>13.2f}x '
                      f'{o["tok_s"] / base["tok_s"]:>7.2f}x {o["decode_tok_s"] / base["decode_tok_s"]:>12.2f}x '
                      f'{"":>9} {o["cold_total_s"] / base["cold_total_s"]:>12.2f}x {o["peak_gib"] / base["peak_gib"]:>8.2f}x'
                      f'  (ours in {p} / peer in {precisions[0]})')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([{'batch': b, 'floor_s': fl, **{f'{w}_{p}': m for (w, p), m in med.items()}}
                       for b, med, fl in rows], f, indent=2)


if __name__ == '__main__':
    main()
