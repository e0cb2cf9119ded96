#!/usr/bin/env python3
"""Score a GPT-2 model on local text: perplexity (per token and per word), bits per byte and per
character, LAMBADA-style last-word prediction and Children's Book Test cloze accuracy.

    python src/eval.py perplexity --data wiki.test.tokens --detokenizer wikitext --count_line_ends
    python src/eval.py lambada --data lambada_test.jsonl
    python src/eval.py cbt --data cbtest_CN_test_2500ex.txt --detokenizer 1bw
    python src/eval.py perplexity --help

The method, which the GPT-2 paper does not spell out, is fixed here and printed with every result:

* Documents.  A text file is one document (--format lines: one per line, the line break included);
  a .jsonl file holds one document per line, in the field --field.  Each document is scored on its
  own, after <|endoftext|> (id 50256) as its first context token, so its first real token is
  predicted too (--bos=False: the document's first token is context only and is not scored).
* Windows.  A document longer than the context is scored by a sliding window of --context tokens
  (default n_ctx) that advances --stride tokens (default context/2).  Each token is scored exactly
  once, in the first window that reaches it, so every token after the first window sees at least
  context - stride + 1 tokens; the final window is pulled back to end at the document's end, which
  gives its new tokens as much context as the window allows.
* Normalisation.  NLL is summed over the scored BPE tokens of the (detokenised) text, then divided by
  counts of the ORIGINAL text, before detokenisation: words = whitespace-separated words (plus one per
  line break with --count_line_ends, the <eos> that word-level benchmarks count), bytes = UTF-8
  bytes, chars = Unicode code points.  ppl_word = exp(NLL / words), bits per byte =
  NLL / ln 2 / bytes, bits per char = NLL / ln 2 / chars, ppl_token = exp(NLL / tokens).
* LAMBADA.  The target is the passage's final whitespace-delimited word; the context is everything
  before it, and the word is encoded with one leading space, as GPT-2 tokenises " word".  accuracy:
  every BPE token of the word is the argmax given the context and the word's earlier tokens (what
  greedy decoding would write); accuracy_first_token / accuracy_last_token check one token only.
  perplexity = exp(mean over passages of the word's summed NLL).  A passage longer than --context
  loses its beginning ('truncated').  A final word of k BPE tokens needs k inputs (at least one
  context token, then the word's first k - 1 tokens), so a passage whose word has more tokens than
  --context cannot be scored: it is skipped and counted ('skipped_long_word'), never scored on part
  of the word; if that leaves no passage at all, it is an error.
* CBT (Children's Book Test: cbtest_CN_test_2500ex.txt, cbtest_NE_test_2500ex.txt).  Each example
  is 20 numbered context sentences and a query with the blank XXXXX, an answer and 10 candidates.
  As in the GPT-2 paper (sec. 3.2), each candidate is put in place of XXXXX and the model scores
  "the choice and the rest of the sentence conditioned on this choice": the summed log-probability
  of the query's tokens from the candidate's first token to the end of the query line, given
  <|endoftext|> (--bos), the 20 context sentences joined by single spaces and the query up to the
  blank.  The candidate with the highest total wins (ties: the first listed); accuracy = fraction
  of examples whose winner is the answer.  The detokeniser runs on the whole text with XXXXX still
  in it (XXXXX is word-like, so it is detokenised like the word that replaces it), and for any
  detokeniser but none, CBT's `` and '' quotes become ".  A text longer than --context loses its
  beginning ('truncated'); a query rest longer than --context is an error.
"""
import json
import math
import os
import re
import stat
import sys

import cli
cli.import_tensorflow_quietly()   # before model, sample, ...: TensorFlow without its start-up noise
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import detokenize
import encoder
import checkpoint
import files
import model
import quantize

EOT = 50256  # <|endoftext|>
FORMATS = ('auto', 'text', 'lines', 'jsonl')
INVALID_UTF8 = ('error', 'replace')


class EvalError(ValueError):
    """A data file, flag or model/data combination that cannot be scored; one line, with the fix."""


# ---------------------------------------------------------------------------------------------
# Reading data.

def read_documents(path, format='auto', field='text', invalid_utf8='error', auto='text'):
    """The documents in path, as a list of str.

    format: 'text' (the whole file is one document), 'lines' (each non-blank line is one, its line
    break included), 'jsonl' (one JSON object per line, text in `field`; a bare JSON string also
    works), or 'auto' (jsonl for .jsonl/.json files, else `auto`).
    invalid_utf8: 'error', or 'replace' to read bytes that are not UTF-8 (e.g. enwik8 cut mid-character)
    as lone surrogates: they count as their original bytes and are scored as U+FFFD.
    """
    if format not in FORMATS:
        raise EvalError(f'--format must be one of {", ".join(FORMATS)}, not {format!r}')
    if invalid_utf8 not in INVALID_UTF8:
        raise EvalError(f'--invalid_utf8 must be one of {", ".join(INVALID_UTF8)}, not {invalid_utf8!r}')
    if format == 'auto':
        format = 'jsonl' if path.lower().endswith(('.jsonl', '.json')) else auto
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise EvalError(f'cannot read {path}: {e.strerror}') from None
    try:
        text = data.decode('utf-8', 'strict' if invalid_utf8 == 'error' else 'surrogateescape')
    except UnicodeDecodeError as e:
        raise EvalError(f'{path} is not valid UTF-8 (byte {e.start}); pass --invalid_utf8=replace to score '
                        'such bytes as U+FFFD while still counting them as bytes') from None
    if text.startswith('\ufeff'):
        text = text[1:]  # a byte-order mark is not part of the text
    if format == 'text':
        return [text]
    # Split on '\n' only: str.splitlines would also break at U+2028, form feeds and the like inside a line.
    lines = text.split('\n')
    if format == 'lines':
        return [line + '\n' for line in lines[:-1] if line.strip()] + ([lines[-1]] if lines[-1].strip() else [])
    documents = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise EvalError(f'{path} line {lineno} is not JSON ({e}); '
                            '--format=jsonl expects one object per line') from None
        if isinstance(record, dict):
            record = record.get(field)
        if not isinstance(record, str):
            raise EvalError(f'{path} line {lineno} has no string field {field!r}; choose it with --field')
        documents.append(record)
    return documents


def count_units(original, count_line_ends=False):
    """(words, bytes, chars) of a document's original text: the perplexity denominators."""
    words = len(original.split()) + (original.count('\n') if count_line_ends else 0)
    return words, len(original.encode('utf-8', 'surrogateescape')), len(original)


def metrics(nll, tokens, words, nbytes, chars):
    """The normalised scores of a total NLL in nats.  Empty denominators give None."""
    def per(n, f):
        return f(nll / n) if n else None

    def exp(x):
        return math.exp(x) if x < 700 else math.inf

    return {'ppl_token': per(tokens, exp), 'ppl_word': per(words, exp),
            'bits_per_byte': per(nbytes, lambda x: x / math.log(2)),
            'bits_per_char': per(chars, lambda x: x / math.log(2))}


# ---------------------------------------------------------------------------------------------
# Sliding windows.

def plan_windows(n, context, stride):
    """Windows over a stream of n tokens s[0..n-1] whose targets s[1..n-1] are each scored once.

    Returns (start, end, first): inputs s[start:end] (at most `context` of them) predict
    s[start+1:end+1], and targets first..end are scored in this window (the window's last ones).
    """
    if not 1 <= stride <= context:
        raise EvalError(f'stride must be between 1 and the context ({context}), got {stride}')
    windows = []
    done, start = 0, 0  # targets 1..done are scored
    while done < n - 1:
        end = min(start + context, n - 1)
        if end == n - 1:
            start = max(0, end - context)  # the last window: as much context as fits
        windows.append((start, end, done + 1))
        done = end
        start += stride
    return windows


class Scorer:
    """Per-token NLL and greedy hits for many windows, batched through one compiled forward pass.

    The forward pass is a tf.function over int32 [batch_size, None] inputs, so it is traced once:
    a batch is padded on the right to its longest window (causal attention keeps padding out of the
    real positions), and the last batch is padded with empty rows.
    """

    def __init__(self, hparams, params, batch_size):
        spec = tf.TensorSpec([batch_size, None], tf.int32)
        self.batch_size = batch_size

        @tf.function(input_signature=[spec, spec])
        def score(inputs, targets):
            logits = model.model(hparams, inputs, params=params, matmul=quantize.compiled_matmul)['logits']
            # log-sum-exp form: stable for any logits.
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
            hit = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
            return nll, hit

        self._score = score

    def __call__(self, windows, progress=False, desc='scoring'):
        """windows: (tokens, start, end, n_scored) -> per window (nll float64[n_scored], hit bool[n_scored]).

        tokens[start:end] are the inputs and tokens[start+1:end+1] the targets; the last n_scored
        targets are scored.
        """
        # Longest first, so each batch pads little.
        order = sorted(range(len(windows)), key=lambda i: windows[i][2] - windows[i][1], reverse=True)
        results = [None] * len(windows)
        with tqdm(total=sum(w[3] for w in windows), unit='tok', desc=desc, file=sys.stderr,
                  disable=None if progress else True) as bar:
            for b in range(0, len(order), self.batch_size):
                chunk = order[b:b + self.batch_size]
                length = max(windows[i][2] - windows[i][1] for i in chunk)
                inputs = np.zeros([self.batch_size, length], np.int32)
                targets = np.zeros([self.batch_size, length], np.int32)
                for row, i in enumerate(chunk):
                    tokens, start, end, _ = windows[i]
                    inputs[row, :end - start] = tokens[start:end]
                    targets[row, :end - start] = tokens[start + 1:end + 1]
                nll, hit = (t.numpy() for t in self._score(inputs, targets))
                for row, i in enumerate(chunk):
                    _, start, end, n_scored = windows[i]
                    width = end - start
                    results[i] = (nll[row, width - n_scored:width].astype(np.float64),
                                  hit[row, width - n_scored:width])
                bar.update(sum(windows[i][3] for i in chunk))
        return results


def context_and_stride(hparams, context, stride):
    """(context, stride) checked against the model, with the defaults n_ctx and context // 2 (also detect.py's)."""
    context = hparams['n_ctx'] if context is None else context
    if isinstance(context, bool) or not isinstance(context, int) or not 1 <= context <= hparams['n_ctx']:
        raise EvalError(f'--context must be an integer from 1 to n_ctx={hparams["n_ctx"]}, got {context!r}')
    stride = max(1, context // 2) if stride is None else stride
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context:
        raise EvalError(f'--stride must be an integer from 1 to the context ({context}), got {stride!r}')
    return context, stride


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f'--batch_size must be a positive integer, got {batch_size!r}')


def _encode(enc, text, hparams):
    ids = enc.encode(text)
    if ids and max(ids) >= hparams['n_vocab']:
        raise EvalError(f'token id {max(ids)} is outside the model\'s vocabulary of {hparams["n_vocab"]}; '
                        'the encoder does not belong to this model')
    return ids


# ---------------------------------------------------------------------------------------------
# Perplexity, bits per byte, bits per character.

def perplexity(hparams, params, enc, documents, detokenizer='none', context=None, stride=None,
               batch_size=4, bos=True, count_line_ends=False, progress=False, scorer=None):
    """Score documents (a list of str); returns a dict of counts, metrics and settings (see the module doc)."""
    context, stride = context_and_stride(hparams, context, stride)
    _check_batch_size(batch_size)
    detok = _detokenizer(detokenizer)
    words = nbytes = chars = 0
    windows = []
    for doc in documents:
        w, b, c = count_units(doc, count_line_ends)
        words, nbytes, chars = words + w, nbytes + b, chars + c
        stream = np.array(([EOT] if bos else []) + _encode(enc, detok(doc), hparams), np.int32)
        for start, end, first in plan_windows(len(stream), context, stride):
            windows.append((stream, start, end, end - first + 1))
    tokens = sum(w[3] for w in windows)
    if not tokens:
        raise EvalError('nothing to score: the documents have no tokens' + ('' if bos else ' after their first'))

    scored = (scorer or Scorer(hparams, params, batch_size))(windows, progress, desc='perplexity')
    nll = sum(float(np.sum(n)) for n, _ in scored)
    # Context of a scored target = the window's inputs up to it (position j sees j + 1 tokens).
    contexts = [np.arange(end - start - n + 1, end - start + 1) for _, start, end, n in windows]
    result = {'task': 'perplexity', 'documents': len(documents), 'tokens': tokens, 'words': words,
              'bytes': nbytes, 'chars': chars, 'nll': nll, **metrics(nll, tokens, words, nbytes, chars),
              'windows': len(windows), 'min_context': int(min(c.min() for c in contexts)),
              'mean_context': float(sum(c.sum() for c in contexts) / tokens)}
    result['settings'] = dict(detokenizer=detokenizer, context=context, stride=stride, bos=bool(bos),
                              count_line_ends=bool(count_line_ends))
    return result


def _detokenizer(name):
    try:
        return detokenize.get(name)
    except ValueError as e:
        raise EvalError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# LAMBADA: predict a passage's final word.

def split_last_word(passage):
    """(context, target): target is ' ' + the final whitespace-delimited word, context what precedes it.

    The whitespace before the word is dropped from the context and becomes the target's single leading
    space, because GPT-2's pre-tokeniser attaches a space to the word after it (" word").  None when
    the passage has fewer than two words.
    """
    m = re.search(r'\s+(\S+)\s*$', passage)
    if m is None or not passage[:m.start()].strip():
        return None
    return passage[:m.start()], ' ' + m.group(1)


def lambada(hparams, params, enc, passages, detokenizer='none', context=None, batch_size=4, bos=True,
            progress=False, scorer=None):
    """Last-word accuracy and perplexity over passages (a list of str); returns a dict (see the module doc)."""
    context, _ = context_and_stride(hparams, context, None)
    _check_batch_size(batch_size)
    detok = _detokenizer(detokenizer)
    windows, skipped, too_long, truncated = [], 0, 0, 0
    for passage in passages:
        split = split_last_word(detok(passage))
        if split is None:
            skipped += 1
            continue
        # Encoding the two parts separately gives the same tokens as encoding the whole passage:
        # the pre-tokeniser always breaks before the space that starts " word".
        word = _encode(enc, split[1], hparams)
        if len(word) > context:  # not even one context token fits before the word's first token
            too_long += 1
            continue
        stream = ([EOT] if bos else []) + _encode(enc, split[0], hparams) + word
        if len(stream) - 1 > context:
            stream, truncated = stream[-(context + 1):], truncated + 1  # keep the passage's end
        windows.append((np.array(stream, np.int32), 0, len(stream) - 1, len(word)))
    if not windows and too_long:
        raise EvalError(f'every passage was skipped: {too_long} have a final word longer than --context={context} '
                        f'tokens, {skipped} have fewer than two words; raise --context')
    if not windows:
        raise EvalError('no passage has a context and a final word to predict')

    scored = (scorer or Scorer(hparams, params, batch_size))(windows, progress, desc='lambada')
    # Teacher forcing equals greedy decoding here: greedy decoding writes the argmax token, and if it is
    # the word's first token, its next input is exactly the teacher-forced one, so by induction it
    # writes the whole word iff every teacher-forced argmax is right.  (Like the usual LAMBADA scorers
    # it does not ask whether the model would end the word there: "drape" counts if it would go on
    # to "drapes".)
    n = len(scored)
    word_nll = sum(float(np.sum(nll)) for nll, _ in scored)
    word_tokens = sum(len(nll) for nll, _ in scored)
    result = {'task': 'lambada', 'passages': n, 'skipped': skipped, 'skipped_long_word': too_long,
              'truncated': truncated,
              'accuracy': sum(bool(hit.all()) for _, hit in scored) / n,
              'accuracy_first_token': sum(bool(hit[0]) for _, hit in scored) / n,
              'accuracy_last_token': sum(bool(hit[-1]) for _, hit in scored) / n,
              'perplexity': math.exp(min(word_nll / n, 700)),
              'ppl_token': math.exp(min(word_nll / word_tokens, 700)),
              'mean_word_tokens': word_tokens / n, 'nll': word_nll,
              'correct': [bool(hit.all()) for _, hit in scored]}  # per passage scored, in order
    result['settings'] = dict(detokenizer=detokenizer, context=context, bos=bool(bos))
    return result


# ---------------------------------------------------------------------------------------------
# CBT: the Children's Book Test, a cloze with candidates.

BLANK = 'XXXXX'
_NUMBERED = re.compile(r'^\s*(\d+)(?:\s(.*))?$')


def read_cbt(path):
    """The examples of a CBT file, as dicts: context (list of str), query (with XXXXX), answer, candidates.

    An example is numbered lines 1..k: context sentences ("N sentence"), then the query line
    "k query<TAB>answer<TAB>cand1|cand2|..." (any number of tabs between the fields); blank lines
    separate examples.
    """
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except OSError as e:
        raise EvalError(f'cannot read {path}: {e.strerror}') from None
    except UnicodeDecodeError as e:
        raise EvalError(f'{path} is not valid UTF-8 (byte {e.start})') from None
    if text.startswith('\ufeff'):
        text = text[1:]
    examples, context, start = [], [], None
    for lineno, line in enumerate(text.split('\n'), start=1):
        line = line.rstrip('\r')
        if not line.strip():
            if context:
                raise EvalError(f'{path} line {lineno}: the example that starts on line {start} has no query line '
                                '(the numbered line with "query<TAB>answer<TAB>candidates")')
            continue
        m = _NUMBERED.match(line)
        if m is None:
            raise EvalError(f'{path} line {lineno} does not start with its number; is this a CBT file?')
        if int(m.group(1)) != len(context) + 1:
            raise EvalError(f'{path} line {lineno} is numbered {m.group(1)}, expected {len(context) + 1}; '
                            'is an example cut short or a blank line missing?')
        start = lineno if not context else start
        body = m.group(2) or ''
        if '\t' not in body:
            context.append(body.strip())
            continue
        fields = [f.strip() for f in body.split('\t') if f.strip()]
        if len(fields) != 3:
            raise EvalError(f'{path} line {lineno}: a query line needs query, answer and candidates '
                            f'separated by tabs, found {len(fields)} fields')
        query, answer, candidates = fields[0], fields[1], [c.strip() for c in fields[2].split('|') if c.strip()]
        if query.count(BLANK) != 1:
            raise EvalError(f'{path} line {lineno}: the query must contain {BLANK} exactly once')
        if answer not in candidates:
            raise EvalError(f'{path} line {lineno}: the answer {answer!r} is not among the candidates')
        if not context:
            raise EvalError(f'{path} line {lineno}: a query with no context sentences before it')
        examples.append(dict(context=context, query=query, answer=answer, candidates=candidates))
        context = []
    if context:
        raise EvalError(f'{path}: the example that starts on line {start} has no query line')
    if not examples:
        raise EvalError(f'{path} holds no CBT example')
    return examples


def cbt_texts(example, detok, quotes=True):
    """(prefix, rests): the detokenised text before the blank, and for each candidate the text from it to
    the end of the query, with the whitespace before the blank moved to its start (GPT-2 encodes " word")."""
    raw = ' '.join(example['context'] + [example['query']])
    if quotes:  # CBT writes quotes PTB-style, `` and ''
        raw = raw.replace('``', '"').replace("''", '"')
    text = detok(raw)
    pos = text.rfind(BLANK)
    if pos < 0:
        raise EvalError(f'the detokeniser removed {BLANK} from the query {example["query"]!r}')
    prefix, after = text[:pos], text[pos + len(BLANK):]
    space = prefix[len(prefix.rstrip()):]
    prefix = prefix[:len(prefix) - len(space)]
    return prefix, [space + candidate + after for candidate in example['candidates']]


def cbt(hparams, params, enc, examples, detokenizer='none', context=None, batch_size=10, bos=True,
        progress=False, scorer=None):
    """Cloze accuracy over CBT examples (from read_cbt); returns a dict (see the module doc)."""
    context, _ = context_and_stride(hparams, context, None)
    _check_batch_size(batch_size)
    detok = _detokenizer(detokenizer)
    windows, owner, truncated = [], [], 0
    for i, example in enumerate(examples):
        prefix, rests = cbt_texts(example, detok, quotes=detokenizer != 'none')
        head = ([EOT] if bos else []) + _encode(enc, prefix, hparams)
        cut = False
        for rest in rests:
            scored = _encode(enc, rest, hparams)
            if len(scored) > context:
                raise EvalError(f'example {i + 1}: the query from the blank on is {len(scored)} tokens, more than '
                                f'--context={context} allows; raise --context')
            stream = head + scored
            if len(stream) - 1 > context:
                stream, cut = stream[-(context + 1):], True  # keep the end: the query
            windows.append((np.array(stream, np.int32), 0, len(stream) - 1, len(scored)))
            owner.append(i)
        truncated += cut
    if not bos and any(w[3] >= len(w[0]) for w in windows):
        raise EvalError('a candidate starts the text and --bos=False leaves it nothing to be conditioned on')

    scored = (scorer or Scorer(hparams, params, batch_size))(windows, progress, desc='cbt')
    logprob = [[] for _ in examples]
    for i, (nll, _) in zip(owner, scored):
        logprob[i].append(-float(np.sum(nll)))
    predictions = [int(np.argmax(lp)) for lp in logprob]
    correct = [ex['candidates'][p] == ex['answer'] for ex, p in zip(examples, predictions)]
    n = len(examples)
    result = {'task': 'cbt', 'examples': n, 'n_correct': sum(correct), 'accuracy': sum(correct) / n,
              'candidates': len(windows), 'truncated': truncated,
              'mean_scored_tokens': sum(w[3] for w in windows) / len(windows),
              'predictions': predictions, 'correct': correct}  # per example: candidate index, right or not
    result['settings'] = dict(detokenizer=detokenizer, context=context, bos=bool(bos))
    return result


# ---------------------------------------------------------------------------------------------
# Reporting.

ROWS = {
    'perplexity': [('documents', 'documents'), ('tokens', 'BPE tokens scored'),
                   ('words', 'words (original text)'), ('bytes', 'bytes (original, UTF-8)'),
                   ('chars', 'chars (original)'), ('ppl_token', 'perplexity per token'),
                   ('ppl_word', 'perplexity per word'), ('bits_per_byte', 'bits per byte'),
                   ('bits_per_char', 'bits per char'), ('mean_context', 'mean context (tokens)'),
                   ('min_context', 'min context (tokens)')],
    'lambada': [('passages', 'passages'), ('skipped', 'skipped (one word)'),
                ('skipped_long_word', 'skipped (word > context)'),
                ('truncated', 'truncated to the context'), ('accuracy', 'accuracy (whole word)'),
                ('accuracy_first_token', 'accuracy (first BPE token)'),
                ('accuracy_last_token', 'accuracy (last BPE token)'),
                ('perplexity', 'perplexity (final word)'), ('ppl_token', 'perplexity per word token'),
                ('mean_word_tokens', 'BPE tokens per final word')],
    'cbt': [('examples', 'examples'), ('n_correct', 'correct'), ('accuracy', 'accuracy'),
            ('candidates', 'candidates scored'), ('truncated', 'truncated to the context'),
            ('mean_scored_tokens', 'BPE tokens scored per candidate')],
}


def format_table(result):
    """A two-column text table of a result dict, settings last."""
    lines = []
    for key, label in ROWS[result['task']]:
        value = result[key]
        if value is None:
            text = 'n/a'
        elif isinstance(value, float):
            text = f'{value:.4f}'
        else:
            text = f'{value:,}'
        lines.append(f'{label:<30} {text:>14}')
    lines.append('settings: ' + ', '.join(f'{k}={v}' for k, v in result['settings'].items()))
    return '\n'.join(lines)


def check_json_out(path):
    """Refuse a --json_out that could not be written, before any scoring: one line with the reason."""
    if isinstance(path, bool) or not str(path):
        raise EvalError('--json_out needs a file name: --json_out PATH')
    path = files.expand(path)
    if os.path.isdir(path):
        raise EvalError(f'--json_out {path} is a directory; name a file in it, e.g. {os.path.join(path, "result.json")}')
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise EvalError(f'--json_out {path} exists and is not a regular file')
    folder = os.path.dirname(path) or '.'
    if not os.path.isdir(folder):
        raise EvalError(f'--json_out {path}: its folder {folder} does not exist')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EvalError(f'--json_out {path}: its folder {folder} is not writable')
    return path


def write_json(path, result):
    """Write result as JSON (infinities as null), atomically (files.write_atomic)."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in result.items()}
    files.write_atomic(path, json.dumps(clean, indent=2) + '\n')


# ---------------------------------------------------------------------------------------------
# Command line.

def _load(model_name, models_dir, precision):
    """(hparams, params, encoder, the model's folder with ~ and $VARS expanded)."""
    dtype = cli.precision(precision)
    model_dir = checkpoint.model_path(model_name, models_dir)
    hparams, params = checkpoint.load(model_dir, dtype=dtype)
    enc = encoder.get_encoder(os.path.basename(model_dir), os.path.dirname(model_dir))
    return hparams, params, enc, model_dir


def _data_path(data):
    if data is None or isinstance(data, bool):
        raise EvalError('pass the file to score: --data PATH')
    path = files.expand(data)
    if not os.path.isfile(path):
        raise EvalError(f'data file {path} does not exist')
    return path


def perplexity_command(data=None, model_name='124M', models_dir='models', format='auto', field='text',
                       detokenizer='none', context=None, stride=None, batch_size=4, bos=True,
                       count_line_ends=False, invalid_utf8='error', json_out=None, progress=True,
                       precision='float32'):
    """Perplexity per token and per word, bits per byte and per char of a text or jsonl file.

    Args:
      data: the file to score (.txt: one document, unless --format=lines; .jsonl: one per line).
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      format: auto (jsonl for .jsonl/.json, else text), text, lines or jsonl.
      field: the JSON field holding a document's text.
      detokenizer: none, wikitext, ptb or 1bw (applied before BPE; counts use the original text).
      context: tokens per window (default: the model's n_ctx).
      stride: tokens a window advances (default: context // 2); stride == context: no overlap.
      batch_size: windows per forward pass (memory: about batch_size * context * 50257 * 8 bytes).
      bos: condition each document's first token on <|endoftext|> (False: leave it unscored).
      count_line_ends: also count each line break as a word (the <eos> of word-level benchmarks).
      invalid_utf8: error, or replace (score bytes that are not UTF-8 as U+FFFD, count their bytes).
      json_out: also write the result, with counts and settings, to this JSON file (checked before
        scoring: its folder must exist and be writable; written atomically).
      progress: show a progress bar on stderr.
      precision: the weights' precision in memory: float32 (default), bfloat16 (half the memory), or
        float16 (GPU only); logits and scores are float32 either way.
    """
    path = _data_path(data)
    json_out = None if json_out is None else check_json_out(json_out)
    documents = read_documents(path, format, str(field), invalid_utf8)
    hparams, params, enc, model_dir = _load(model_name, models_dir, precision)
    result = perplexity(hparams, params, enc, documents, detokenizer, context, stride, batch_size, bos,
                        count_line_ends, progress)
    _report(result, dict(data=path, model=model_dir, precision=precision, format=format), json_out)


def lambada_command(data=None, model_name='124M', models_dir='models', format='auto', field='text',
                    detokenizer='none', context=None, batch_size=4, bos=True, invalid_utf8='error',
                    json_out=None, progress=True, precision='float32'):
    """LAMBADA-style last-word accuracy and perplexity of the passages in a jsonl or text file.

    Args:
      data: the passages (.jsonl: one object per line; otherwise one passage per line).
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      format: auto (jsonl for .jsonl/.json, else lines), lines or jsonl.
      field: the JSON field holding a passage.
      detokenizer: none, wikitext, ptb or 1bw, applied to each passage before it is split.
      context: the most tokens a passage may use (default n_ctx; longer ones lose their beginning,
        and a passage whose final word alone has more tokens is skipped and counted).
      batch_size: passages per forward pass.
      bos: put <|endoftext|> before each passage.
      invalid_utf8: error, or replace (read bytes that are not UTF-8 as U+FFFD).
      json_out: also write the result, with counts and settings, to this JSON file (checked before
        scoring: its folder must exist and be writable; written atomically).
      progress: show a progress bar on stderr.
      precision: the weights' precision in memory: float32 (default), bfloat16 (half the memory), or
        float16 (GPU only); logits and scores are float32 either way.
    """
    path = _data_path(data)
    json_out = None if json_out is None else check_json_out(json_out)
    passages = read_documents(path, format, str(field), invalid_utf8, auto='lines')
    hparams, params, enc, model_dir = _load(model_name, models_dir, precision)
    result = lambada(hparams, params, enc, passages, detokenizer, context, batch_size, bos, progress)
    _report(result, dict(data=path, model=model_dir, precision=precision, format=format), json_out)


def cbt_command(data=None, model_name='124M', models_dir='models', detokenizer='none', context=None,
                batch_size=10, bos=True, json_out=None, progress=True, precision='float32'):
    """Children's Book Test accuracy: the candidate that makes the query most likely fills its blank.

    Args:
      data: a CBT file, e.g. cbtest_CN_test_2500ex.txt or cbtest_NE_test_2500ex.txt.
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      detokenizer: none, wikitext, ptb or 1bw, applied to the context and query (1bw recommended: CBT
        is tokenised like 1BW; any but none also turns its `` and '' quotes into ").
      context: the most tokens an example may use (default n_ctx; longer ones lose their beginning).
      batch_size: candidate texts per forward pass (10: one example's candidates).
      bos: put <|endoftext|> before each example.
      json_out: also write the result, with per-example predictions and settings, to this JSON file
        (checked before scoring: its folder must exist and be writable; written atomically).
      progress: show a progress bar on stderr.
      precision: the weights' precision in memory: float32 (default), bfloat16 (half the memory), or
        float16 (GPU only); logits and scores are float32 either way.
    """
    path = _data_path(data)
    json_out = None if json_out is None else check_json_out(json_out)
    examples = read_cbt(path)
    hparams, params, enc, model_dir = _load(model_name, models_dir, precision)
    result = cbt(hparams, params, enc, examples, detokenizer, context, batch_size, bos, progress)
    _report(result, dict(data=path, model=model_dir, precision=precision), json_out)


def _report(result, where, json_out):
    result['settings'] = {**where, **result['settings']}
    print(format_table(result))
    if json_out is not None:
        write_json(str(json_out), result)


COMMANDS = {'perplexity': perplexity_command, 'lambada': lambada_command, 'cbt': cbt_command}


def main(argv=None):
    """Run the command line; returns the exit status (user errors: one line on stderr, status 1)."""
    return cli.main(COMMANDS, argv, name='eval.py', errors=(EvalError,))


if __name__ == '__main__':
    sys.exit(main())
