#!/usr/bin/env python3
"""Print unconditional GPT-2 samples: text that starts from <|endoftext|>, with no prompt."""
import cli
import sample
from interactive_conditional_samples import FLAGS_DOC, check_flags, load_model, print_samples


def sample_model(model_name='124M', seed=None, nsamples=0, batch_size=1, length=None,
                 temperature=1, top_k=0, top_p=1, models_dir='models', *, stop_at_endoftext=False,
                 precision='float32'):
    nsamples = cli.integer('nsamples', nsamples, minimum=0)
    batch_size, seed, temperature, top_k, top_p = check_flags(batch_size, seed, temperature, top_k, top_p)
    # By default the whole context: the start token takes the first position.
    dtype = cli.precision(precision)
    enc, hparams, params, length = load_model(model_name, models_dir, length, lambda h: h.n_ctx - 1, dtype)
    seeds = sample.seed_stream(seed)

    generated = 0
    while nsamples == 0 or generated < nsamples:
        rows = batch_size if nsamples == 0 else min(batch_size, nsamples - generated)
        generated = print_samples(enc, [[enc.eot_token]] * rows, generated, stop_at_endoftext, hparams=hparams,
                                  params=params, length=length, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=next(seeds))


sample_model.__doc__ = """Print unconditional samples, starting from <|endoftext|>.
""" + FLAGS_DOC.format(nsamples='number of samples to return; 0 continues to generate samples indefinitely.',
                       length='the whole context', extra='')


if __name__ == '__main__':
    cli.run(sample_model)
