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
                 keep=None, precision='float32', xla=None, transposed_copies=None, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                 typical_p=1.0, min_p=0.0, ban=None, logit_bias=None, watermark=None, watermark_gamma=0.25,
                 watermark_delta=2.0, json_out=None, num_beams=1, length_penalty=1.0,
                 early_stopping=False, num_return_sequences=1):
    nsamples = cli.integer('nsamples', nsamples, minimum=0)
    batch_size, seed, temperature, top_k, top_p, stop = sampling.check_flags(batch_size, seed, temperature,
                                                                             top_k, top_p, stop)
    form = sampling.step_form(xla, transposed_copies)
    beams = sampling.check_beams(num_beams, length_penalty, early_stopping, num_return_sequences)
    # By default the whole context: the start token takes the first position.
    enc, hparams, params, length, keep = sampling.load_model(model_name, models_dir, length,
                                                             lambda h: h.n_ctx - 1, keep, precision)
    form.update(sampling.decoding(enc, hparams, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                 min_new_tokens=min_new_tokens, typical_p=typical_p, min_p=min_p, ban=ban,
                                 logit_bias=logit_bias, watermark=watermark, watermark_gamma=watermark_gamma,
                                 watermark_delta=watermark_delta))
    settings = dict(hparams=hparams, params=params, length=length, temperature=temperature, top_k=top_k,
                    top_p=top_p, keep=keep, **form)
    record = None if json_out is None else sampling.Record(json_out, sampling.provenance(
        model_name, models_dir, precision, **settings))
    seeds = sample.seed_stream(seed)

    generated = 0
    if beams:   # deterministic: one search, its best beams
        sampling.print_beams(enc, [enc.eot_token], 0, beams, hparams, params, min(length, hparams.n_ctx - 1))
        return
    while nsamples == 0 or generated < nsamples:
        rows = batch_size if nsamples == 0 else min(batch_size, nsamples - generated)
        generated = sampling.print_samples(enc, [[enc.eot_token]] * rows, generated, stop_at_endoftext, stop,
                                           record, seed=next(seeds), **settings)


if __name__ == '__main__':
    cli.run(sample_model)
