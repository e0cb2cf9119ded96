#!/usr/bin/env python3
"""Continue prompts typed at the terminal (or piped in, one per line) with GPT-2 samples."""
import sys

import cli
cli.import_tensorflow_quietly(compile_cache=True)   # before model, sample, ...: see there
import sample
import sampling


@sampling.documented('Interactively continue prompts typed at the terminal (Ctrl-D quits).',
                     nsamples='number of samples to return for each prompt.', length='half the context',
                     extra='\n      prompt: continue this text once and exit, instead of asking at the terminal.')
def interact_model(model_name='124M', seed=None, nsamples=1, batch_size=1, length=None,
                   temperature=1, top_k=0, top_p=1, models_dir='models', *, stop_at_endoftext=False, prompt=None,
                   stop=None, keep=None, precision='float32', xla=None, transposed_copies=None, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0,
                   typical_p=1.0, min_p=0.0, ban=None, logit_bias=None, watermark=None, watermark_gamma=0.25,
                   watermark_delta=2.0, json_out=None, num_beams=1, length_penalty=1.0,
                   early_stopping=False, num_return_sequences=1):
    nsamples = cli.integer('nsamples', nsamples, minimum=1)
    batch_size, seed, temperature, top_k, top_p, stop = sampling.check_flags(batch_size, seed, temperature,
                                                                             top_k, top_p, stop)
    if prompt is not None and not isinstance(prompt, str):   # fire reads --prompt 1984 as a number
        raise cli.UsageError(f'--prompt must be text, got {prompt!r} ({type(prompt).__name__}); quote it twice, '
                             f'e.g. --prompt \'"1984"\'')
    form = sampling.step_form(xla, transposed_copies)
    beams = sampling.check_beams(num_beams, length_penalty, early_stopping, num_return_sequences)
    if prompt == '':
        raise cli.UsageError('--prompt is empty; give some text, e.g. --prompt "Once upon a time"')
    enc, hparams, params, length, keep = sampling.load_model(model_name, models_dir, length,
                                                             lambda h: h.n_ctx // 2, keep, precision)
    form.update(sampling.decoding(enc, hparams, repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                                 min_new_tokens=min_new_tokens, typical_p=typical_p, min_p=min_p, ban=ban,
                                 logit_bias=logit_bias, watermark=watermark, watermark_gamma=watermark_gamma,
                                 watermark_delta=watermark_delta))
    seeds = sample.seed_stream(seed)
    settings = dict(hparams=hparams, params=params, length=length, temperature=temperature, top_k=top_k,
                    top_p=top_p, keep=keep, **form)
    record = None if json_out is None else sampling.Record(json_out, sampling.provenance(
        model_name, models_dir, precision, **settings))

    def answer(text):
        """Print nsamples continuations of text."""
        tokens = enc.encode(text)
        if len(tokens) > hparams.n_ctx:
            print(f'note: the prompt is {len(tokens)} tokens, longer than the context; continuing its last '
                  f'{hparams.n_ctx}', file=sys.stderr, flush=True)
            tokens = tokens[-hparams.n_ctx:]
        generated = 0
        if beams:
            sampling.print_beams(enc, tokens, 0, beams, hparams, params, min(length, hparams.n_ctx - len(tokens)))
            print('=' * 80, flush=True)
            return
        while generated < nsamples:
            rows = min(batch_size, nsamples - generated)
            generated = sampling.print_samples(enc, [tokens] * rows, generated, stop_at_endoftext, stop, record,
                                               seed=next(seeds), **settings)
        print('=' * 80, flush=True)

    if prompt is not None:   # one-shot, from the shell
        answer(prompt)
        return
    if hasattr(sys.stdin, 'reconfigure'):  # bytes that are not UTF-8 reach the check below
        sys.stdin.reconfigure(errors='surrogateescape')
    while True:
        raw_text = read_prompt()
        if raw_text is None:
            print()
            return
        if not raw_text:
            print('Prompt should not be empty! Type some text, or press Ctrl-D to quit.')
            continue
        if any('\udc80' <= c <= '\udcff' for c in raw_text):
            print('error: the prompt is not valid UTF-8; set your terminal to UTF-8 and try again', file=sys.stderr)
        else:
            answer(raw_text)


def read_prompt():
    """The next prompt, or None at end of input (Ctrl-D)."""
    try:
        text = input('Model prompt >>> ')
    except EOFError:
        return None
    if not sys.stdin.isatty():
        # Piped prompts are echoed, so the output reads like a terminal session.
        print(text.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace'))
    return text


if __name__ == '__main__':
    cli.run(interact_model)
