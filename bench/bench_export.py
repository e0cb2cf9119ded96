#!/usr/bin/env python3
"""Speed of the exported SavedModel's `generate` beside sample.sample_sequence, on the same weights.

    python bench/bench_export.py       # 124M shape, prompt 32, 128 new tokens, top_k 40, batch 1 and 8

Random weights of the real 124M shape are written with checkpoint.save and exported with
export.export; one process then loads both (checkpoint.load for sample.py, tf.saved_model.load for
the exports) and times warm calls, alternating them and repeating, so that load from other work
on the machine falls on all alike.  Reported per batch size: new tokens per second of a whole
call (prompt pass included), median over the repeats, and the ratio export / sample.py, for an
--xla and an --noxla export (--exports).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'src'))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def main():
    import bench_sampling
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_sampling.add_workload_flags(ap)
    ap.add_argument('--repeats', type=int, default=3, help='timed calls of each side per batch size')
    ap.add_argument('--precision', default='float32', help='precision of the export')
    ap.add_argument('--exports', default='xla,noxla', help='comma-separated export forms to time: xla, noxla')
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf
    import checkpoint
    import export
    import model
    import sample

    h = model.default_hparams()
    with tempfile.TemporaryDirectory() as folder:
        model_dir = os.path.join(folder, '124M')
        checkpoint.save(model_dir, h, checkpoint.init_params(h, seed=0))
        forms = args.exports.split(',')
        generates, export_s = {}, {}
        for form in forms:
            t0 = time.time()
            path = export.export(model_dir, os.path.join(folder, form), precision=args.precision, xla=form == 'xla')
            export_s[form] = time.time() - t0
            generates[f'export {form}'] = tf.saved_model.load(path).signatures['generate']
        hparams, params = checkpoint.load(model_dir)

        def ours(context, seed):
            return sample.sample_sequence(hparams=hparams, params=params, length=args.new, context=context,
                                          top_k=args.top_k, seed=seed).numpy()

        def exported(generate):
            return lambda context, seed: generate(
                tokens=tf.constant(context), length=tf.constant(args.new), temperature=tf.constant(1.0),
                top_k=tf.constant(args.top_k), top_p=tf.constant(1.0), seed=tf.constant(seed))['tokens'].numpy()

        sides = [('sample.py', ours)] + [(name, exported(g)) for name, g in generates.items()]
        rows = []
        for batch in [int(b) for b in args.batch_sizes.split(',')]:
            context = np.random.default_rng(1).integers(0, h.n_vocab, size=(batch, args.prompt)).astype(np.int32)
            times = {name: [] for name, _ in sides}
            for run in range(args.repeats + 1):            # the first round warms up (traces, compiles)
                for name, fn in sides:
                    t0 = time.time()
                    out = fn(context, run)
                    if run:
                        times[name].append(time.time() - t0)
                    assert out.shape == (batch, args.prompt + args.new), out.shape
            rows.append((batch, {k: batch * args.new / statistics.median(v) for k, v in times.items()}))

    written = ', '.join(f'{form} in {s:.1f} s' for form, s in export_s.items())
    print(f'GPT-2 124M shape, random weights, CPU, export {args.precision} (written: {written}), '
          f'prompt {args.prompt}, {args.new} new tokens, top_k {args.top_k}, median of {args.repeats} '
          f'alternating warm calls; tokens/s and ratio to sample.py')
    names = list(rows[0][1])
    print(f'{"batch":>5} ' + ' '.join(f'{n:>14}' for n in names) + ' '
          + ' '.join(f'{n + "/sample":>18}' for n in names[1:]))
    for batch, r in rows:
        print(f'{batch:>5} ' + ' '.join(f'{r[n]:>14.1f}' for n in names) + ' '
              + ' '.join(f'{r[n] / r["sample.py"]:>17.2f}x' for n in names[1:]))


if __name__ == '__main__':
    main()
