#!/usr/bin/env python3
"""A worked detection experiment, end to end on a CPU in a few minutes, with nothing to download.

    python bench/detection_experiment.py                        # the run in docs/research.md
    python bench/detection_experiment.py --json_out det.json    # also every number as JSON

1. Text: the help texts of CPython's `pydoc_data.topics` module (the interactive help()'s pages on
   the language reference, part of every CPython install, under the PSF licence), cut into
   paragraphs.  A fixed, seeded choice of --n_human prose paragraphs of --min_tokens..--max_tokens
   tokens is held out as the "human" texts; every other paragraph (not equal to a held-out one)
   is the training set, one document each.
2. Model: a small GPT-2 trained from fresh weights by train.train (the real GPT-2 BPE vocabulary that
   the project vendors; --n_layer 4, --n_embd 128, --n_head 4, n_ctx 128; --steps optimizer steps).
   Its run folder goes under --out (default: a temporary folder, removed at the end).
3. "Machine" texts: per held-out passage, its first --prompt_tokens tokens as the prompt, and a
   continuation as long as the passage's rest, from sample.sample_sequence in four settings:
   top_k 40 and pure sampling (top_k 0, temperature 1), each without and with the watermark
   (--key, --gamma, --delta).  <|endoftext|> is banned (logit_bias -inf), so that every
   continuation has exactly its human twin's length instead of ending early.
4. Scores: every text, human and machine, prompt included (the same prompt for a passage and its
   four machine twins), by detect.score_texts under the trained model; detect.stats with the key;
   detect.evaluate's AUROC of each statistic, human against each machine set.

Printed: the AUROC table, per-set means (watermark z included, with its range and the fraction of
texts over 4), the CPU, TensorFlow's version and the wall time of each phase.  The same flags on the
same machine give the same numbers (fixed seeds; op determinism on).
"""
import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'src'))

SETTINGS = (   # name, top_k, temperature, watermarked
    ('top-k 40', 40, 1.0, False),
    ('top-k 40 + watermark', 40, 1.0, True),
    ('pure (t = 1)', 0, 1.0, False),
    ('pure + watermark', 0, 1.0, True),
)
EOT = 50256


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', default=None, help='folder for the corpus and the run folder (default: a '
                   'temporary folder, removed at the end); must not hold a run already')
    p.add_argument('--json_out', default=None, help='write every number here as one JSON object')
    p.add_argument('--seed', type=int, default=0, help='seed of the held-out choice, weights, data order, samples')
    p.add_argument('--n_human', type=int, default=60, help='held-out human passages (= texts per machine set)')
    p.add_argument('--min_tokens', type=int, default=60, help='shortest held-out passage, in tokens')
    p.add_argument('--max_tokens', type=int, default=100, help='longest held-out passage, in tokens')
    p.add_argument('--prompt_tokens', type=int, default=8, help='tokens of each passage given as the prompt')
    p.add_argument('--n_layer', type=int, default=4)
    p.add_argument('--n_embd', type=int, default=128)
    p.add_argument('--n_head', type=int, default=4)
    p.add_argument('--n_ctx', type=int, default=128)
    p.add_argument('--steps', type=int, default=600, help='optimizer steps')
    p.add_argument('--batch_size', type=int, default=8)
    p.add_argument('--seq_len', type=int, default=128)
    p.add_argument('--learning_rate', type=float, default=3e-3)
    p.add_argument('--key', type=int, default=1234, help='the watermark key')
    p.add_argument('--gamma', type=float, default=0.25, help='the watermark green fraction')
    p.add_argument('--delta', type=float, default=2.0, help='the watermark bias on green logits')
    p.add_argument('--top_k', type=int, default=40, help='top-k of the truncated settings')
    p.add_argument('--score_batch', type=int, default=8, help='texts per scoring pass')
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# 1. The text.

def paragraphs():
    """(topic, paragraph) for every paragraph of pydoc_data.topics, in sorted topic order.  A paragraph
    of unindented lines (prose) has its hard line wraps joined with spaces; anything indented (code,
    grammar) and headings (a line of *, = or -) are kept verbatim."""
    from pydoc_data.topics import topics
    out = []
    for name in sorted(topics):
        for para in re.split(r'\n[ \t]*\n', topics[name]):
            para = para.strip('\n')
            if not para.strip():
                continue
            lines = para.split('\n')
            if not any(l[:1].isspace() for l in lines) and not any(re.fullmatch(r'[*=-]+', l) for l in lines):
                para = ' '.join(l.strip() for l in lines)
            out.append((name, para))
    return out


def is_prose(para):
    return para[:1].isalpha() and '\n' not in para


def split_corpus(enc, args):
    """(human passages [(text, ids)], training paragraphs [str]): a seeded choice of prose paragraphs of
    min_tokens..max_tokens tokens, and every paragraph not equal to one of them."""
    import numpy as np
    paras = [p for _, p in paragraphs()]
    candidates = sorted({p for p in paras if is_prose(p) and args.min_tokens <= len(enc.encode(p)) <= args.max_tokens})
    if len(candidates) < args.n_human:
        sys.exit(f'only {len(candidates)} prose paragraphs of {args.min_tokens}..{args.max_tokens} tokens; '
                 f'lower --n_human or widen the range')
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(candidates), args.n_human, replace=False))
    human = [candidates[i] for i in chosen]
    held = set(human)
    train = [p for p in paras if p not in held]
    return [(t, enc.encode(t)) for t in human], train


# ---------------------------------------------------------------------------------------------
# 2-4. Train, sample, score.

def train_model(train_texts, out, args):
    import train
    path = os.path.join(out, 'train.jsonl')
    with open(path, 'w', encoding='utf-8') as f:
        f.writelines(json.dumps(t) + '\n' for t in train_texts)
    hparams = {'n_ctx': args.n_ctx, 'n_embd': args.n_embd, 'n_head': args.n_head, 'n_layer': args.n_layer}
    summary = train.train(path, fresh=True, hparams=hparams, checkpoint_dir=out, run_name='pydoc', resume=False,
                          steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len,
                          learning_rate=args.learning_rate, val_fraction=0, sample_every=0, save_every=0,
                          seed=args.seed, progress=False)
    return summary


def machine_texts(hparams, params, enc, human, setting, seed, args):
    """One continuation per human passage in this setting: the prompt + as many new tokens as the
    passage's rest (texts, token lists)."""
    import sample
    _, top_k, temperature, marked = setting
    prompts = [ids[:args.prompt_tokens] for _, ids in human]
    rest = [len(ids) - args.prompt_tokens for _, ids in human]
    out = sample.sample_sequence(hparams=hparams, params=params, context=prompts, length=max(rest),
                                 top_k=top_k, temperature=temperature, seed=seed, logit_bias={EOT: float('-inf')},
                                 **(dict(watermark=args.key, watermark_gamma=args.gamma,
                                         watermark_delta=args.delta) if marked else {})).numpy()
    rows = [row[:args.prompt_tokens + n].tolist() for row, n in zip(out, rest)]
    return [enc.decode(r) for r in rows], rows


def summary_of(values):
    import numpy as np
    v = np.array([x for x in values if x is not None], np.float64)
    return {'mean': float(v.mean()), 'min': float(v.min()), 'max': float(v.max())}


def cpu_name():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    import cli
    cli.import_tensorflow_quietly()
    import numpy as np
    import tensorflow as tf
    tf.config.experimental.enable_op_determinism()   # the same flags give the same numbers
    import checkpoint
    import detect
    import encoder
    import watermark

    out = args.out or tempfile.mkdtemp(prefix='detection_experiment.')
    if os.path.exists(os.path.join(out, 'pydoc')):
        sys.exit(f'{out}/pydoc already holds a run; give a new --out (or remove that folder)')
    os.makedirs(out, exist_ok=True)
    times = {}
    try:
        enc = encoder.get_default_encoder()
        human, train_texts = split_corpus(enc, args)
        n_train_tokens = sum(len(enc.encode(t)) + 1 for t in train_texts)
        print(f'corpus: {len(train_texts)} training paragraphs ({n_train_tokens:,} tokens), '
              f'{len(human)} held-out human passages ({sum(len(i) for _, i in human):,} tokens)', file=sys.stderr)

        t = time.perf_counter()
        summary = train_model(train_texts, out, args)
        times['train_s'] = time.perf_counter() - t
        losses = summary['losses']
        print(f'trained {summary["step"]} steps in {times["train_s"]:.0f} s; last 20 steps\' mean loss '
              f'{np.mean(losses[-20:]):.3f}', file=sys.stderr)

        hparams, params = checkpoint.load(summary['run_dir'])
        t = time.perf_counter()
        sets = {'human': {'texts': [text for text, _ in human], 'tokens': [ids for _, ids in human]}}
        for i, setting in enumerate(SETTINGS):
            texts, rows = machine_texts(hparams, params, enc, human, setting, args.seed + 1 + i, args)
            sets[setting[0]] = {'texts': texts, 'tokens': rows}
        times['sample_s'] = time.perf_counter() - t

        t = time.perf_counter()
        scorer = detect.Scorer(hparams, params, top=0)
        for name, s in sets.items():
            scored = detect.score_texts(hparams, params, enc, s['texts'], top=0, batch_size=args.score_batch,
                                        scorer=scorer)
            s['stats'] = [detect.stats(x, watermark_key=args.key, gamma=args.gamma) for x in scored]
            # the sampled tokens' own z (before re-encoding the decoded text), as a check of the scorer's
            s['sampled_z'] = [watermark.z_score(r, args.key, args.gamma) for r in s['tokens']]
        times['score_s'] = time.perf_counter() - t
        times['total_s'] = time.perf_counter() - t_start

        machine = [name for name, *_ in SETTINGS]
        auroc = {name: detect.evaluate(sets['human']['stats'], sets[name]['stats']) for name in machine}
        means = {}
        for name, s in sets.items():
            st = s['stats']
            z = [x['watermark_z'] for x in st]
            means[name] = {stat: float(np.mean([v for v in map(get, st) if v is not None]))
                           for stat, get, _ in detect.STATISTICS}
            means[name].update(n_texts=len(st), mean_tokens=float(np.mean([x['n_tokens'] for x in st])),
                               watermark_z_summary=summary_of(z),
                               frac_z_over_4=float(np.mean([v is not None and v > 4 for v in z])),
                               sampled_z_mean=summary_of(s['sampled_z'])['mean'])
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)

    env = {'cpu': cpu_name(), 'cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
           'tensorflow': tf.__version__, 'python': platform.python_version()}
    model_desc = (f'{args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, n_ctx {args.n_ctx}, '
                  f'{sum(int(np.prod(v.shape)) for v in params.values()):,} parameters; {summary["step"]} steps of '
                  f'{args.batch_size} x {args.seq_len} tokens, learning rate {args.learning_rate}')

    print(f'\nAUROC, {args.n_human} human texts against {args.n_human} machine texts per setting '
          f'(1 = perfect, 0.5 = chance, < 0.5: the other direction separates):\n')
    print('| statistic | machine if | ' + ' | '.join(machine) + ' |')
    print('|---|---|' + '---:|' * len(machine))
    for stat, _, direction in detect.STATISTICS:
        print(f'| `{stat}` | {direction} | ' + ' | '.join(f'{auroc[m][stat]["auroc"]:.3f}' for m in machine) + ' |')
    print('\nPer set, the mean of each statistic; watermark z as mean (min .. max) and the fraction over 4:\n')
    names = list(sets)
    print('| | ' + ' | '.join(names) + ' |')
    print('|---|' + '---:|' * len(names))
    print('| tokens per text | ' + ' | '.join(f'{means[n]["mean_tokens"]:.1f}' for n in names) + ' |')
    for stat, _, _ in detect.STATISTICS[:-1]:
        print(f'| `{stat}` | ' + ' | '.join(f'{means[n][stat]:.3f}' for n in names) + ' |')
    zs = lambda n: means[n]['watermark_z_summary']
    print('| `watermark_z` | ' + ' | '.join(f'{zs(n)["mean"]:.2f} ({zs(n)["min"]:.1f} .. {zs(n)["max"]:.1f})'
                                          for n in names) + ' |')
    print('| z > 4 | ' + ' | '.join(f'{means[n]["frac_z_over_4"]:.2f}' for n in names) + ' |')
    print(f'\nmodel: {model_desc}; mean training loss over the last 20 steps {np.mean(losses[-20:]):.3f}')
    print(f'watermark: key {args.key}, gamma {args.gamma}, delta {args.delta}; <|endoftext|> banned while sampling')
    print(f'CPU: {env["cpu"]} ({env["cores"]} cores available); TensorFlow {env["tensorflow"]}, Python {env["python"]}')
    print(f'wall time: {times["total_s"]:.0f} s (training {times["train_s"]:.0f} s, sampling {times["sample_s"]:.0f} s, '
          f'scoring {times["score_s"]:.0f} s)')

    if args.json_out:
        result = {'args': vars(args), 'environment': env, 'model': model_desc, 'times': times,
                  'final_loss': float(np.mean(losses[-20:])), 'auroc': auroc, 'means': means,
                  'texts': {n: [{'text': t, 'stats': st} for t, st in zip(s['texts'], s['stats'])]
                            for n, s in sets.items()}}
        with open(args.json_out, 'w', encoding='utf-8') as f:
            json.dump(result, f, indent=1)
            f.write('\n')


if __name__ == '__main__':
    main()
