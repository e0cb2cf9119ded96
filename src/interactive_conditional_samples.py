#!/usr/bin/env python3
"""Continue prompts typed at the terminal (or piped in, one per line) with GPT-2 samples."""
import os
import sys

import numpy as np

import cli
import encoder
import model
import checkpoint
import sample

# The flags both sampling scripts share; fire shows each function's docstring as its --help.
FLAGS_DOC = """
    Args:
      model_name: which model to use, a folder inside models_dir (117M and 345M find 124M and 355M).
      seed: integer seed for the random number generators; fix it to reproduce results.
      nsamples: {nsamples}
      batch_size: number of samples drawn in parallel (only affects speed/memory).
      length: number of tokens in generated text; if None (default), {length}.
      temperature: float controlling randomness in the Boltzmann distribution. Lower temperature
        gives less random completions; as it approaches zero the model becomes deterministic and
        repetitive (0 is greedy). Higher temperature gives more random completions.
      top_k: integer controlling diversity. 1 means only 1 word is considered for each step
        (token), resulting in deterministic completions, while 40 means 40 words are considered at
        each step. 0 (default) is a special setting meaning no restrictions. 40 generally is a good value.
      top_p: float in (0, 1]: nucleus sampling keeps the smallest set of most likely tokens whose
        probability adds up to top_p. 1 (default) turns it off.
      models_dir: path to the parent folder containing model subfolders (i.e. contains the
        <model_name> folder).
      stop_at_endoftext: end each sample at its first <|endoftext|> token, which is not printed
        (by default, as in the original, every sample runs to its full length).
      precision: the weights' precision in memory: float32 (default), bfloat16 (half the memory), or
        float16 (GPU only).  The checkpoint on disk is unchanged.{extra}
    """


def interact_model(model_name='124M', seed=None, nsamples=1, batch_size=1, length=None,
                   temperature=1, top_k=0, top_p=1, models_dir='models', *, stop_at_endoftext=False, prompt=None,
                   precision='float32'):
    nsamples = cli.integer('nsamples', nsamples, minimum=1)
    batch_size, seed, temperature, top_k, top_p = check_flags(batch_size, seed, temperature, top_k, top_p)
    if prompt is not None and not isinstance(prompt, str):   # fire reads --prompt 1984 as a number
        raise cli.UsageError(f'--prompt must be text, got {prompt!r} ({type(prompt).__name__}); quote it twice, '
                             f'e.g. --prompt \'"1984"\'')
    if prompt == '':
        raise cli.UsageError('--prompt is empty; give some text, e.g. --prompt "Once upon a time"')
    dtype = cli.precision(precision)
    enc, hparams, params, length = load_model(model_name, models_dir, length, lambda h: h.n_ctx // 2, dtype)
    seeds = sample.seed_stream(seed)
    settings = dict(hparams=hparams, params=params, length=length, temperature=temperature, top_k=top_k,
                    top_p=top_p)

    def answer(text):
        """Print nsamples continuations of text, or return the one-line reason it cannot be continued."""
        tokens = enc.encode(text)
        if len(tokens) + length > hparams.n_ctx:
            return (f'the prompt is {len(tokens)} tokens; with --length {length} that exceeds the context '
                    f'of {hparams.n_ctx}; shorten the prompt or lower --length')
        generated = 0
        while generated < nsamples:
            rows = min(batch_size, nsamples - generated)
            generated = print_samples(enc, [tokens] * rows, generated, stop_at_endoftext, seed=next(seeds),
                                      **settings)
        print('=' * 80, flush=True)

    if prompt is not None:   # one-shot, from the shell
        error = answer(prompt)
        if error:
            raise cli.UsageError(error)
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
            error = 'the prompt is not valid UTF-8; set your terminal to UTF-8 and try again'
        else:
            error = answer(raw_text)
        if error:
            print('error: ' + error, file=sys.stderr)


interact_model.__doc__ = """Interactively continue prompts typed at the terminal (Ctrl-D quits).
""" + FLAGS_DOC.format(nsamples='number of samples to return for each prompt.', length='half the context',
                       extra='\n      prompt: continue this text once and exit, instead of asking at the terminal.')


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


def print_samples(enc, context, number, stop_at_endoftext, **settings):
    """Draw a sample after each row of context (token lists) and print each under its header, numbered
    from number + 1; a single sample is printed as it is written.  Returns the last sample's number."""
    eot = enc.eot_token
    columns = sample.stream_sequence(context=context, **settings)
    if len(context) == 1:
        print_header(number + 1)
        text = enc.stream_decoder()
        for column in columns:
            if stop_at_endoftext and column[0] == eot:
                break
            print(text.push(int(column[0])), end='', flush=True)
        print(text.flush())
        return number + 1
    drawn, ended = [], np.zeros(len(context), bool)
    for column in columns:
        drawn.append(column)
        ended |= column == eot
        if stop_at_endoftext and ended.all():
            break   # every row has ended: no need to draw the rest
    for row in np.stack(drawn, axis=1).tolist():
        if stop_at_endoftext and eot in row:
            row = row[:row.index(eot)]
        number += 1
        print_header(number)
        print(enc.decode(row), flush=True)
    return number


def print_header(n):
    print('=' * 40 + ' SAMPLE ' + str(n) + ' ' + '=' * 40)


def check_flags(batch_size, seed, temperature, top_k, top_p):
    """The sampling scripts' shared flags, validated."""
    batch_size = cli.integer('batch_size', batch_size, minimum=1)
    seed = cli.integer('seed', seed, minimum=0, allow_none=True)
    return (batch_size, seed) + sample.check_settings(temperature, top_k, top_p)


def load_model(model_name, models_dir, length, default_length, dtype='float32'):
    """(encoder, hparams, params, length) for a sampling script; length None means default_length(hparams);
    dtype: the weights' precision (checkpoint.load)."""
    length = cli.integer('length', length, minimum=1, allow_none=True)
    path = checkpoint.model_path(model_name, models_dir)
    enc = encoder.get_encoder(os.path.basename(path), os.path.dirname(path))
    hparams, params = checkpoint.load(path, dtype=dtype)
    if length is None:
        length = default_length(hparams)
    elif length > hparams.n_ctx - 1:
        raise cli.UsageError(f"can't get samples longer than the context: --length {length} > "
                             f'{hparams.n_ctx - 1} (this model has n_ctx={hparams.n_ctx})')
    return enc, hparams, params, length


if __name__ == '__main__':
    cli.run(interact_model)
