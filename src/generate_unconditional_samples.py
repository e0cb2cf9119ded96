#!/usr/bin/env python3
"""Print unconditional GPT-2 samples: text that starts from <|endoftext|>, with no prompt."""
import cli
cli.import_tensorflow_quietly(compile_cache=True)   # before model, sample, ...: see there
import sample
import sampling


@sampling.documented('Print unconditional samples, starting from <|endoftext|>.',
                     nsamples='number of samples to return; 0 continues to generate samples indefinitely.',
                     length='the whole context')
def sample_model(model_name='124M', seed=None, nsamples=0, batch_size=1, length=None,
                 temperature=1, top_k=0, top_p=1, models_dir='models', *, stop_at_endoftext=False, stop=None,
                 keep=None, precision='float32', xla=None, transposed_copies=None):
    nsamples = cli.integer('nsamples', nsamples, minimum=0)
    batch_size, seed, temperature, top_k, top_p, stop = sampling.check_flags(batch_size, seed, temperature,
                                                                             top_k, top_p, stop)
    form = sampling.step_form(xla, transposed_copies)
    # By default the whole context: the start token takes the first position.
    enc, hparams, params, length, keep = sampling.load_model(model_name, models_dir, length,
                                                             lambda h: h.n_ctx - 1, keep, precision)
    seeds = sample.seed_stream(seed)

    generated = 0
    while nsamples == 0 or generated < nsamples:
        rows = batch_size if nsamples == 0 else min(batch_size, nsamples - generated)
        generated = sampling.print_samples(enc, [[enc.eot_token]] * rows, generated, stop_at_endoftext, stop,
                                           hparams=hparams, params=params, length=length, temperature=temperature,
                                           top_k=top_k, top_p=top_p, keep=keep, seed=next(seeds), **form)


if __name__ == '__main__':
    cli.run(sample_model)
