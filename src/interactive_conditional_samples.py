#!/usr/bin/env python3
"""Continue prompts typed at the terminal (or piped in, one per line) with GPT-2 samples."""
import os
import sys

import cli
import encoder
import model
import sample


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


def interact_model(model_name='124M', seed=None, nsamples=1, batch_size=1, length=None,
                   temperature=1, top_k=0, top_p=1, models_dir='models'):
    """Interactively continue prompts typed at the terminal (Ctrl-D quits).

    Args:
      model_name: which model to use, a folder inside models_dir (117M and 345M find 124M and 355M).
      seed: integer seed for the random number generators; fix it to reproduce results.
      nsamples: number of samples to return for each prompt.
      batch_size: number of samples drawn in parallel (only affects speed/memory).
      length: number of tokens in generated text; if None (default), half the context.
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
    """
    nsamples = cli.integer('nsamples', nsamples, minimum=1)
    batch_size, seed, temperature, top_k, top_p = check_flags(batch_size, seed, temperature, top_k, top_p)
    enc, hparams, params, length = load_model(model_name, models_dir, length, lambda h: h.n_ctx // 2)
    seeds = sample.seed_stream(seed)
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
            print('error: the prompt is not valid UTF-8; set your terminal to UTF-8 and try again',
                  file=sys.stderr)
            continue
        tokens = enc.encode(raw_text)
        if len(tokens) + length > hparams.n_ctx:
            print(f'error: the prompt is {len(tokens)} tokens; with --length {length} that exceeds the context '
                  f'of {hparams.n_ctx}; shorten the prompt or lower --length', file=sys.stderr)
            continue
        generated = 0
        while generated < nsamples:
            rows = min(batch_size, nsamples - generated)
            settings = dict(hparams=hparams, params=params, length=length, context=[tokens] * rows,
                            temperature=temperature, top_k=top_k, top_p=top_p, seed=next(seeds))
            if rows == 1:  # a single sample is shown as it is written
                generated += 1
                print_header(generated)
                text = enc.stream_decoder()
                for column in sample.stream_sequence(**settings):
                    print(text.push(int(column[0])), end='', flush=True)
                print(text.flush())
                continue
            out = sample.sample_sequence(**settings).numpy()
            for row in out:
                generated += 1
                print_header(generated)
                print(enc.decode(row[len(tokens):].tolist()), flush=True)
        print('=' * 80, flush=True)


def print_header(n):
    print('=' * 40 + ' SAMPLE ' + str(n) + ' ' + '=' * 40)


def check_flags(batch_size, seed, temperature, top_k, top_p):
    """The sampling scripts' shared flags, validated."""
    batch_size = cli.integer('batch_size', batch_size, minimum=1)
    seed = cli.integer('seed', seed, minimum=0, allow_none=True)
    return (batch_size, seed) + sample.check_settings(temperature, top_k, top_p)


def load_model(model_name, models_dir, length, default_length):
    """(encoder, hparams, params, length) for a sampling script; length None means default_length(hparams)."""
    length = cli.integer('length', length, minimum=1, allow_none=True)
    path = model.model_path(model_name, models_dir)
    enc = encoder.get_encoder(os.path.basename(path), os.path.dirname(path))
    hparams, params = model.load(path)
    if length is None:
        length = default_length(hparams)
    elif length > hparams.n_ctx - 1:
        raise cli.UsageError(f"can't get samples longer than the context: --length {length} > "
                             f'{hparams.n_ctx - 1} (this model has n_ctx={hparams.n_ctx})')
    return enc, hparams, params, length


if __name__ == '__main__':
    cli.run(interact_model)
