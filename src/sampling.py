"""What the two sampling scripts share: their flags' documentation and checks, loading the model, and
printing samples (streamed, cut at <|endoftext|> or at stop strings)."""
import json
import os

import numpy as np

import checkpoint
import cli
import controls
import encoder
import files
import sample

FLAGS_DOC = """
    Args:
      model_name: which model to use, a folder inside models_dir (117M and 345M find 124M and 355M).
      seed: integer seed for the random number generators; fix it to reproduce results.
      nsamples: {nsamples}
      batch_size: number of samples drawn in parallel (only affects speed/memory).
      length: number of tokens in generated text; if None (default), {length}. It may exceed the
        model's context (see keep).
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
      stop: end each sample before the first occurrence of this text, which is not printed. Python
        escapes are understood, e.g. --stop '\\n\\n' for a blank line; for several, give a list, e.g.
        --stop '["\\n\\n", "THE END"]'.
      keep: past the model's context, each new token is predicted from at most n_ctx tokens; when the
        tokens since the last cut would exceed n_ctx, the text is cut to its last `keep` tokens (default
        half the context), which are fed again.
      precision: the weights' precision in memory: float32 (default), bfloat16 (half the memory), or
        float16 (GPU only). The checkpoint on disk is unchanged.
      xla: compile the one-token step with XLA (--xla) or run it as a plain graph (--noxla); by default
        a short timed trial of both on the first step picks the faster (GPT2_XLA=0/1 also decides).
      transposed_copies: under XLA, run the blocks' matmuls on transposed copies of their weights
        (--transposed_copies; faster, costs the blocks' size in memory again, 324 MiB at 124M) or not
        (--notransposed_copies); by default where they fit in memory (GPT2_TRANSPOSED_COPIES=0/1).
      repetition_penalty: >= 1 (1, default: off): every token already in the text (prompt included) has its
        logit divided by this where positive, multiplied where negative (CTRL's penalty; Hugging Face's).
      no_repeat_ngram_size: n > 0 never repeats an n-gram of the text (prompt included); 0 (default): off.
      min_new_tokens: <|endoftext|> cannot be drawn before this many new tokens (with --stop_at_endoftext).
      typical_p: typical sampling (Meister et al. 2022) keeps this much probability of the most typical
        tokens; 1 (default): off.
      min_p: keep only tokens at least this times as likely as the most likely one; 0 (default): off.
      ban: a text never to write (every tokenisation of it, with and without a leading space); for
        several, a list, e.g. --ban '["foo", "bar baz"]'.
      logit_bias: a JSON object of token id: bias added to its logit, e.g. '{{"50256": "-inf"}}' (-inf bans).
      watermark: an integer key in [0, 2**31): watermark the samples (Kirchenbauer et al. 2023; detect
        with python src/detect.py stats --watermark_key KEY; docs/research.md).
      watermark_gamma: the watermark's green fraction of the vocabulary (default 0.25).
      watermark_delta: the bias added to green tokens' logits (default 2.0).
      num_beams: beam search with this many beams (Hugging Face's semantics) instead of sampling; 1
        (default): off. It prints the best beam per prompt (or --num_return_sequences of them) with its score,
        ends beams at <|endoftext|>, and does not go past the context.
      length_penalty: beam search: a finished beam scores sum of log-probs / new tokens ** this (default 1).
      early_stopping: beam search: stop a prompt once num_beams beams have finished (True), when no running
        beam can beat them (False, default), or "never" (the exact bound).
      num_return_sequences: beam search: print this many of the best beams per prompt (default 1).
      json_out: also write every sample to this file, one JSON object per line: the prompt, the text, its
        token ids, their log-probabilities under the model, and its provenance (model, settings, seed,
        watermark key, "synthetic": true).{extra}
    """


def documented(summary, nsamples, length, extra=''):
    """A decorator giving a script's function its --help text (fire shows the docstring)."""
    def attach(fn):
        fn.__doc__ = summary + '\n' + FLAGS_DOC.format(nsamples=nsamples, length=length, extra=extra)
        return fn
    return attach


def check_flags(batch_size, seed, temperature, top_k, top_p, stop):
    """The shared flags, validated: (batch_size, seed, temperature, top_k, top_p, stop strings)."""
    batch_size = cli.integer('batch_size', batch_size, minimum=1)
    seed = cli.integer('seed', seed, minimum=0, allow_none=True)
    return (batch_size, seed) + sample.check_settings(temperature, top_k, top_p) + (stop_strings(stop),)


def step_form(xla, transposed_copies):
    """--xla and --transposed_copies as sample_sequence takes them: {'xla': ..., 'transposed_copies': ...}."""
    for name, value in (('xla', xla), ('transposed_copies', transposed_copies)):
        if value not in (None, True, False):
            raise cli.UsageError(f'--{name} takes no value: --{name} or --no{name} (leave it out for the timed '
                                 f'trial), got {value!r}')
    return dict(xla=xla, transposed_copies=transposed_copies)


def stop_strings(stop):
    """--stop as a tuple of non-empty strings with Python escapes decoded ('\\n' is a newline)."""
    if stop is None:
        return ()
    values = list(stop) if isinstance(stop, (list, tuple)) else [stop]
    strings = []
    for value in values:
        if not isinstance(value, str):   # fire reads --stop 42 as a number
            raise cli.UsageError(f'--stop must be text, got {value!r}; quote it twice, e.g. --stop \'"42"\'')
        try:
            value = value.encode('latin-1', 'backslashreplace').decode('unicode_escape')
        except UnicodeDecodeError as e:
            raise cli.UsageError(f'--stop {value!r}: bad escape ({e.reason}); write a backslash as \\\\') from None
        if not value:
            raise cli.UsageError('--stop is empty; give the text that ends a sample, e.g. --stop \'\\n\\n\'')
        strings.append(value)
    return tuple(strings)


def decoding(enc, hparams, repetition_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0, typical_p=1.0,
             min_p=0.0, ban=None, logit_bias=None, watermark=None, watermark_gamma=0.25, watermark_delta=2.0):
    """The decoding controls' and watermark's flags as sample_sequence's arguments, checked (one line each)."""
    if isinstance(logit_bias, dict):   # fire reads --logit_bias '{"198": 2.5}' as a dict
        logit_bias = json.dumps({str(k): (str(v) if isinstance(v, str) else v) for k, v in logit_bias.items()})
    bans = ban if isinstance(ban, (list, tuple)) else [] if ban is None else [ban]
    try:
        settings = dict(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                        min_new_tokens=min_new_tokens, typical_p=typical_p, min_p=min_p,
                        logit_bias=None if logit_bias is None else controls.parse_logit_bias(logit_bias),
                        bad_words_ids=controls.ban_sequences(enc, [str(b) if not isinstance(b, str) else b
                                                                   for b in bans]),
                        watermark=watermark, watermark_gamma=watermark_gamma, watermark_delta=watermark_delta)
        sample.stream_sequence(hparams=hparams, params=None, length=0, context=[[0]], **settings)   # checks only
    except (controls.ControlsError, sample.SampleError) as e:
        raise cli.UsageError(str(e)) from None
    return settings


class Record:
    """--json_out: every sample as one JSON object per line, the file rewritten whole (atomically) after
    each batch, so it never holds half a line."""

    def __init__(self, path, provenance):
        self.path, self.provenance, self.lines = files.expand(path), provenance, []
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise cli.UsageError(f'--json_out {path}: the folder {folder} does not exist or cannot be written')

    def add(self, prompt, text, tokens, logprobs, seed):
        self.lines.append(json.dumps({'prompt': prompt, 'text': text, 'tokens': tokens,
                                      'logprobs': [round(float(x), 6) for x in logprobs],
                                      'provenance': dict(self.provenance, seed=seed)}, ensure_ascii=False))

    def write(self):
        files.write_atomic(self.path, ''.join(line + '\n' for line in self.lines))


def provenance(model_name, models_dir, precision, **settings):
    """What --json_out records of how the samples were made."""
    shown = {k: v for k, v in settings.items() if k not in ('hparams', 'params', 'context')}
    shown['bad_words_ids'] = [list(b) for b in shown.get('bad_words_ids', ())]
    if shown.get('logit_bias') is not None:
        shown['logit_bias'] = {str(k): (str(v) if v == float('-inf') else v) for k, v in dict(shown['logit_bias']).items()}
    return {'model': str(model_name), 'models_dir': str(models_dir), 'precision': precision, 'settings': shown,
            'watermark_key': settings.get('watermark'), 'generator': 'gpt-2 (TensorFlow 2) src/sample.py',
            'synthetic': True}


def load_model(model_name, models_dir, length, default_length, keep, precision='float32'):
    """(encoder, hparams, params, length, keep) for a sampling script; length None means
    default_length(hparams), keep None half the context; precision: the weights' (checkpoint.load)."""
    length = cli.integer('length', length, minimum=1, allow_none=True)
    keep = cli.integer('keep', keep, minimum=1, allow_none=True)
    dtype = cli.precision(precision)
    path = checkpoint.model_path(model_name, models_dir)
    enc = encoder.get_encoder(os.path.basename(path), os.path.dirname(path))
    hparams, params = checkpoint.load(path, dtype=dtype)
    if keep is not None and keep >= hparams.n_ctx:
        raise cli.UsageError(f'--keep must be smaller than the context: --keep {keep} >= {hparams.n_ctx} '
                             f'(this model has n_ctx={hparams.n_ctx})')
    return enc, hparams, params, default_length(hparams) if length is None else length, keep


def print_samples(enc, context, number, stop_at_endoftext, stop=(), record=None, **settings):
    """Draw a sample after each row of context (token lists) and print each under its header, numbered
    from number + 1; a single sample is printed as it is written.  A sample ends at <|endoftext|> (with
    stop_at_endoftext) or before the first of the `stop` strings, neither printed; drawing ends when every
    sample has.  record: a Record that gets each sample (its tokens up to where it ended, <|endoftext|>
    left out).  Returns the last sample's number."""
    eot = enc.eot_token
    streamed = len(context) == 1
    texts = [StopText(stop) for _ in context]
    decoders = [enc.stream_decoder() for _ in context]
    drawn, logprobs, ended = [], [], np.zeros(len(context), bool)
    lengths = np.zeros(len(context), int)   # each sample's tokens until it ended
    if streamed:
        print_header(number + 1)
    for column in sample.stream_sequence(context=context, return_scores=record is not None, **settings):
        if record is not None:
            column, scores, _ = column
            logprobs.append(scores)
        lengths[~ended] += 1
        if stop_at_endoftext:
            ended |= column == eot
        drawn.append(column)
        for row in np.flatnonzero(~ended):
            piece = texts[row].push(decoders[row].push(int(column[row])))
            ended[row] = texts[row].stopped
            if streamed:
                print(piece, end='', flush=True)
        if ended.all():
            break   # every sample has ended: no need to draw the rest
    rows = np.stack(drawn, axis=1).tolist() if drawn else [[]] * len(context)
    if record is not None:
        for row, tokens in enumerate(rows):
            n = lengths[row] - (stop_at_endoftext and eot in tokens[:lengths[row]])
            record.add(enc.decode(list(context[row])), cut_at_stop(enc.decode(tokens[:n]), stop), tokens[:n],
                       [lp[row] for lp in logprobs[:n]], settings.get('seed'))
        record.write()
    if streamed:
        print(texts[0].push(decoders[0].flush()) + texts[0].rest())
        return number + 1
    for row, tokens in enumerate(rows):
        if stop_at_endoftext and eot in tokens:
            tokens = tokens[:tokens.index(eot)]
        number += 1
        print_header(number)
        print(cut_at_stop(enc.decode(tokens), stop), flush=True)
    return number


def check_beams(num_beams, length_penalty, early_stopping, num_return_sequences):
    """The beam search flags as beam_search's arguments (None for num_beams 1: sampling)."""
    num_beams = cli.integer('num_beams', num_beams, minimum=1)
    num_return_sequences = cli.integer('num_return_sequences', num_return_sequences, minimum=1)
    if num_beams == 1:
        if num_return_sequences != 1:
            raise cli.UsageError('--num_return_sequences is for beam search: add --num_beams N (N >= it); '
                                 'for more samples use --nsamples')
        return None
    if num_return_sequences > num_beams:
        raise cli.UsageError(f'--num_return_sequences {num_return_sequences} must be <= --num_beams {num_beams}')
    length_penalty = cli.number('length_penalty', length_penalty)
    if early_stopping not in (True, False, 'never'):
        raise cli.UsageError(f'--early_stopping must be True, False or never, got {early_stopping!r}')
    return dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                num_return_sequences=num_return_sequences)


def print_beams(enc, tokens, number, beams, hparams, params, length):
    """Beam search after the prompt tokens; prints the best beams under headers with their scores."""
    for new, score in sample.beam_search(hparams=hparams, params=params, context=[tokens], length=length, **beams)[0]:
        number += 1
        print_header(number)
        print(f'(beam score {score:.4f}) ' + enc.decode([t for t in new if t != enc.eot_token]), flush=True)
    return number


def print_header(n):
    print('=' * 40 + ' SAMPLE ' + str(n) + ' ' + '=' * 40)


def cut_at_stop(text, stop):
    """text up to the first occurrence of any of the stop strings."""
    return text[:min([i for i in (text.find(s) for s in stop) if i >= 0], default=len(text))]


class StopText:
    """The text of one sample as it arrives, cut before the first stop string: push() returns what can be
    printed now, holding back only the shortest ending that a later piece could turn into a stop string."""

    def __init__(self, stop):
        self.stop, self.text, self.printed, self.stopped = stop, '', 0, False

    def push(self, piece):
        if self.stopped:
            return ''
        self.text += piece
        # An occurrence can only start after what was printed, which never began one.
        found = [i for i in (self.text.find(s, self.printed) for s in self.stop) if i >= 0]
        if found:
            end, self.stopped = min(found), True
        else:
            end = len(self.text) - max([k for s in self.stop for k in range(1, len(s))
                                        if self.text.endswith(s[:k]) and k <= len(self.text) - self.printed],
                                       default=0)
        out, self.printed = self.text[self.printed:end], end
        return out

    def rest(self):
        """What is still held back once the sample has ended without a stop string."""
        return '' if self.stopped else self.text[self.printed:]
