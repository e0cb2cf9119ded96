#!/usr/bin/env python3
"""Per-token scores of texts under a GPT-2 model, the GLTR view, zero-shot detection statistics and
watermark detection.

    python src/detect.py score essay.txt --html_out essay.html
    python src/detect.py stats samples.jsonl --jsonl --watermark_key 42
    python src/detect.py auroc --human human.jsonl --machine machine.jsonl --plot roc.png

Every token of a text is scored, the first one conditioned on <|endoftext|> (id 50256), and texts
longer than the context are scored by eval.py's sliding window (eval.plan_windows: each token once,
in the first window that reaches it).  Log-probabilities and entropies are in nats, from float32
logits.  A token's rank is 1 + the number of vocabulary tokens whose logit is strictly larger.  The
statistics, their papers and the JSON format: docs/research.md.
"""
import html
import importlib.util
import json
import math
import os
import sys

import cli
cli.import_tensorflow_quietly()   # before model, checkpoint, ...: TensorFlow without its start-up noise
import numpy as np
import tensorflow as tf
from tqdm import tqdm

import checkpoint
import encoder
import eval as ev
import files
import model
import quantize
import watermark

EOT = ev.EOT
PRECISIONS = ('float32', 'bfloat16', 'int8')
GLTR_LIMITS = (10, 100, 1000)                                     # rank buckets: <= 10, <= 100, <= 1000, rest
GLTR_COLOURS = ('#ADFF80', '#FFEA80', '#FF9280', '#E5B0FF')       # GLTR's green, yellow, red, purple
GLTR_LABELS = ('top 10', 'top 100', 'top 1000', 'rest')


class DetectError(ValueError):
    """Texts or settings that cannot be scored; one line, with the fix."""


# ---------------------------------------------------------------------------------------------
# Scoring.

class Scorer:
    """Per-token log-prob, rank, entropy, variance of log p and the top-N alternatives for windows of
    token ids, through one forward pass traced once (int32 [None, None] inputs, padded on the right:
    causal attention keeps the padding out of the real positions)."""

    def __init__(self, hparams, params, top=5):
        spec = tf.TensorSpec([None, None], tf.int32)
        self.top = top

        @tf.function(input_signature=[spec, spec])
        def score(inputs, targets):
            logits = model.model(hparams, inputs, params=params, matmul=quantize.compiled_matmul)['logits']          # [batch, seq, n_vocab]
            logp = tf.nn.log_softmax(logits)
            p = tf.exp(logp)
            target_logit = tf.gather(logits, targets, batch_dims=2)                  # [batch, seq]
            rank = 1 + tf.reduce_sum(tf.cast(logits > target_logit[..., None], tf.int32), axis=-1)
            mean = tf.reduce_sum(tf.math.multiply_no_nan(logp, p), axis=-1)          # E_p[log p] = -entropy
            var = tf.reduce_sum(tf.math.multiply_no_nan(tf.square(logp - mean[..., None]), p), axis=-1)
            _, top_ids = tf.math.top_k(logits, k=top)                                # [batch, seq, top]
            return {'logprob': tf.gather(logp, targets, batch_dims=2), 'rank': rank, 'entropy': -mean,
                    'logprob_var': var, 'top_ids': top_ids,
                    'top_logprob': tf.gather(logp, top_ids, batch_dims=2)}

        self._score = score

    def __call__(self, windows, batch_size=8, progress=False):
        """windows: (tokens, start, end, n_scored) as eval.Scorer takes them -> per window a dict of
        numpy arrays over its last n_scored targets (tokens[start+1:end+1])."""
        order = sorted(range(len(windows)), key=lambda i: windows[i][2] - windows[i][1], reverse=True)
        results = [None] * len(windows)
        with tqdm(total=sum(w[3] for w in windows), unit='tok', desc='scoring', file=sys.stderr,
                  disable=None if progress else True) as bar:
            for b in range(0, len(order), batch_size):
                chunk = order[b:b + batch_size]
                length = max(windows[i][2] - windows[i][1] for i in chunk)
                inputs = np.zeros([len(chunk), length], np.int32)
                targets = np.zeros([len(chunk), length], np.int32)
                for row, i in enumerate(chunk):
                    tokens, start, end, _ = windows[i]
                    inputs[row, :end - start] = tokens[start:end]
                    targets[row, :end - start] = tokens[start + 1:end + 1]
                out = {k: v.numpy() for k, v in self._score(inputs, targets).items()}
                for row, i in enumerate(chunk):
                    _, start, end, n_scored = windows[i]
                    width = end - start
                    results[i] = {k: v[row, width - n_scored:width] for k, v in out.items()}
                bar.update(sum(windows[i][3] for i in chunk))
        return results


def _count(name, value, minimum, maximum=None):
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or (maximum is not None and value > maximum)):
        limit = f'from {minimum} to {maximum}' if maximum is not None else f'>= {minimum}'
        raise DetectError(f'--{name} must be an integer {limit}, got {value!r}')
    return value


def score_texts(hparams, params, enc, texts, top=5, batch_size=8, context=None, stride=None,
                progress=False, scorer=None):
    """Score every token of each text; returns one dict per text:

    {"text": str, "tokens": [{"id", "text", "logprob", "rank", "entropy", "logprob_var", "top"}, ...]}

    "text" of a token is its piece of the text (the pieces join to the text exactly; a token that
    ends inside a UTF-8 character has "" and the character goes to the token that completes it);
    "logprob_var" is Var_{v ~ p}[log p(v)], which Fast-DetectGPT needs; "top" is [[id, logprob], ...]
    for the `top` tokens with the largest logits.  Memory: about batch_size * context * n_vocab *
    16 bytes per pass (6.6 GB for 124M at batch 8 and context 1024; lower batch_size).
    scorer: a Scorer(hparams, params, top) to reuse its traced forward pass.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise DetectError('score_texts() takes a list of str (one per text)')
    context, stride = ev.context_and_stride(hparams, context, stride)
    top = _count('top', top, 0, hparams['n_vocab'])
    batch_size = _count('batch_size', batch_size, 1)
    if scorer is not None and scorer.top != top:
        raise DetectError(f'the scorer gives the top {scorer.top} alternatives, not {top}')
    scorer = scorer or Scorer(hparams, params, top)

    streams, windows, owner = [], [], []
    for i, text in enumerate(texts):
        ids = enc.encode(text)
        if ids and max(ids) >= hparams['n_vocab']:
            raise DetectError(f'token id {max(ids)} is outside the model\'s vocabulary of {hparams["n_vocab"]}; '
                              'the encoder does not belong to this model')
        stream = np.array([EOT] + ids, np.int32)
        streams.append(stream)
        for start, end, first in ev.plan_windows(len(stream), context, stride):
            windows.append((stream, start, end, end - first + 1))
            owner.append(i)
    parts = [[] for _ in texts]
    for i, result in zip(owner, scorer(windows, batch_size, progress)):   # a text's windows are in order
        parts[i].append(result)

    scored = []
    for text, stream, windows_of_text in zip(texts, streams, parts):
        ids = stream[1:].tolist()
        decoder = enc.stream_decoder()
        pieces = [decoder.push(t) for t in ids]
        if pieces:
            pieces[-1] += decoder.flush()
        cols = ({k: np.concatenate([w[k] for w in windows_of_text]) for k in windows_of_text[0]}
                if windows_of_text else {})
        tokens = [{'id': t, 'text': piece, 'logprob': float(cols['logprob'][j]), 'rank': int(cols['rank'][j]),
                   'entropy': float(cols['entropy'][j]), 'logprob_var': float(cols['logprob_var'][j]),
                   'top': [[int(a), float(b)] for a, b in zip(cols['top_ids'][j], cols['top_logprob'][j])]}
                  for j, (t, piece) in enumerate(zip(ids, pieces))]
        scored.append({'text': text, 'tokens': tokens})
    return scored


# ---------------------------------------------------------------------------------------------
# Statistics.

def gltr_buckets(ranks):
    """Bucket index per rank: 0 (<= 10), 1 (<= 100), 2 (<= 1000), 3 (rest)."""
    return np.searchsorted(np.array(GLTR_LIMITS), np.asarray(ranks), side='left')


def stats(scored, watermark_key=None, gamma=0.25, unique_pairs=False):
    """Detection statistics of one scored text (an element of score_texts' result):

    n_tokens, mean_logprob, mean_log_rank (natural log), mean_entropy (nats), gltr (fractions of tokens
    of rank <= 10, <= 100, <= 1000, else), fast_detectgpt (analytic sampling discrepancy, the scoring
    model as sampling model) and, with a watermark_key, watermark_z (watermark.z_score).  Means are
    None for a text with no tokens, fast_detectgpt when its variance sum is 0.
    """
    tokens = scored['tokens']
    n = len(tokens)
    logprob = np.array([t['logprob'] for t in tokens], np.float64)
    rank = np.array([t['rank'] for t in tokens], np.float64)
    entropy = np.array([t['entropy'] for t in tokens], np.float64)
    var = np.array([t['logprob_var'] for t in tokens], np.float64)
    result = {'n_tokens': n, 'mean_logprob': None, 'mean_log_rank': None, 'mean_entropy': None,
              'gltr': [None] * 4, 'fast_detectgpt': None}
    if n:
        counts = np.bincount(gltr_buckets(rank), minlength=4)
        # mu_t = sum_v p log p = -entropy_t, sigma^2_t = logprob_var_t.
        spread = math.sqrt(var.sum())
        result.update(mean_logprob=float(logprob.mean()), mean_log_rank=float(np.log(rank).mean()),
                      mean_entropy=float(entropy.mean()), gltr=[float(c / n) for c in counts],
                      fast_detectgpt=float((logprob.sum() + entropy.sum()) / spread) if spread > 0 else None)
    if watermark_key is not None:
        result['watermark_z'] = watermark.z_score([t['id'] for t in tokens], watermark_key, gamma, unique_pairs)
    return result


def auroc(human_values, machine_values):
    """P(a random machine value > a random human one), ties counting 1/2."""
    human = np.sort(np.asarray(human_values, np.float64))
    machine = np.asarray(machine_values, np.float64)
    if not len(human) or not len(machine):
        raise DetectError('AUROC needs at least one human and one machine value')
    below = np.searchsorted(human, machine, side='left')
    ties = np.searchsorted(human, machine, side='right') - below
    return float((below.sum() + 0.5 * ties.sum()) / (len(human) * len(machine)))


# Each statistic evaluate() reports: (name, its value from a stats dict, the direction that means "machine").
STATISTICS = (
    ('mean_logprob', lambda s: s['mean_logprob'], 'higher'),          # OpenAI's log-prob baseline, GLTR
    ('mean_log_rank', lambda s: s['mean_log_rank'], 'lower'),         # Mitchell et al.'s log-rank baseline
    ('mean_entropy', lambda s: s['mean_entropy'], 'higher'),          # as DetectGPT's entropy baseline
    ('gltr_top10', lambda s: s['gltr'][0], 'higher'),                 # GLTR, cumulative fractions
    ('gltr_top100', lambda s: None if s['gltr'][0] is None else s['gltr'][0] + s['gltr'][1], 'higher'),
    ('gltr_top1000', lambda s: None if s['gltr'][0] is None else 1 - s['gltr'][3], 'higher'),
    ('fast_detectgpt', lambda s: s['fast_detectgpt'], 'higher'),
    ('watermark_z', lambda s: s.get('watermark_z'), 'higher'),
)


def oriented_values(stats_list, name):
    """A statistic's values over stats dicts, negated where "lower" means machine; None values left out."""
    getter, sign = {n: (g, -1.0 if d == 'lower' else 1.0) for n, g, d in STATISTICS}[name]
    return [sign * v for v in map(getter, stats_list) if v is not None]


def evaluate(human_stats, machine_stats):
    """{statistic: {"auroc", "machine_if", "n_human", "n_machine"}} for two lists of stats dicts.

    auroc is that of the statistic oriented so that larger means machine (the value itself where
    machine_if is "higher", its negation where "lower"); 0.5 is chance, below 0.5 the other direction
    separates.  Texts without a value (no tokens; no watermark key) are left out; a statistic without
    values on both sides is not reported.
    """
    result = {}
    for name, _, direction in STATISTICS:
        h, m = oriented_values(human_stats, name), oriented_values(machine_stats, name)
        if h and m:
            result[name] = {'auroc': auroc(h, m), 'machine_if': direction, 'n_human': len(h), 'n_machine': len(m)}
    return result


def roc_curve(human_values, machine_values):
    """(false positive rates, true positive rates) over every threshold, machine = positive."""
    human, machine = np.asarray(human_values, np.float64), np.asarray(machine_values, np.float64)
    thresholds = np.unique(np.concatenate([human, machine]))[::-1]
    fpr = [0.0] + [float(np.mean(human >= t)) for t in thresholds]
    tpr = [0.0] + [float(np.mean(machine >= t)) for t in thresholds]
    return fpr, tpr


def write_roc_plot(path, human_stats, machine_stats):
    """A PNG of every statistic's ROC curve (needs matplotlib), written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    evaluation = evaluate(human_stats, machine_stats)
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, row in evaluation.items():
        fpr, tpr = roc_curve(oriented_values(human_stats, name), oriented_values(machine_stats, name))
        ax.plot(fpr, tpr, label=f'{name} ({row["auroc"]:.3f})')
    ax.plot([0, 1], [0, 1], color='grey', linestyle=':')
    ax.set(xlabel='false positive rate (human called machine)', ylabel='true positive rate', title='ROC')
    ax.legend(loc='lower right', fontsize='small')
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.tmp.png')
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------
# The GLTR view.

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:60em;color:#222}
.text{font-family:monospace;white-space:pre-wrap;line-height:1.7;border:1px solid #ccc;padding:.8em}
.b0{background:#ADFF80}.b1{background:#FFEA80}.b2{background:#FF9280}.b3{background:#E5B0FF}
.text span{box-shadow:inset -1px 0 rgba(0,0,0,.18)}.text span:hover{outline:1px solid #000}
.summary{display:flex;gap:2em;align-items:flex-start;margin:.5em 0}
.summary table{border-collapse:collapse}.summary td{padding:.1em .5em}
.bar{display:flex;height:1.2em;width:24em;border:1px solid #999}
.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;border:1px solid #999}"""


def _tooltip(token, enc):
    lines = [f'p = {math.exp(token["logprob"]):.4g} (log p = {token["logprob"]:.3f})', f'rank {token["rank"]}',
             f'entropy {token["entropy"]:.3f} nats']
    if token['top']:
        lines.append('top:')
        lines += [f'{n}. {enc.decode([i])!r} {math.exp(lp):.4g}' for n, (i, lp) in enumerate(token['top'], start=1)]
    return '\n'.join(lines)


def _histogram_svg(probabilities, bins=10, width=300, height=110):
    counts = np.histogram(np.clip(probabilities, 0, 1), bins=bins, range=(0, 1))[0]
    top = max(1, int(counts.max(initial=0)))
    w = width / bins
    bars = []
    for k, c in enumerate(counts):
        h = (height - 30) * c / top
        bars.append(f'<rect x="{k * w + 1:.1f}" y="{height - 15 - h:.1f}" width="{w - 2:.1f}" height="{h:.1f}" '
                    f'fill="#6a8fd0"><title>p in [{k / bins:.1f}, {(k + 1) / bins:.1f}): {c}</title></rect>'
                    f'<text x="{k * w + w / 2:.1f}" y="{height - 17 - h:.1f}" font-size="9" '
                    f'text-anchor="middle">{c}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="histogram of token probabilities">{"".join(bars)}'
            f'<text x="0" y="{height - 2}" font-size="10">p = 0</text>'
            f'<text x="{width}" y="{height - 2}" font-size="10" text-anchor="end">1</text></svg>')


def _section(number, title, scored, enc):
    tokens = scored['tokens']
    s = stats(scored)
    ranks = [t['rank'] for t in tokens]
    counts = np.bincount(gltr_buckets(ranks), minlength=4) if tokens else np.zeros(4, int)
    fractions = counts / max(1, len(tokens))
    rows = ''.join(f'<tr><td><div class="swatch b{k}"></div></td><td>{GLTR_LABELS[k]}</td>'
                   f'<td>{counts[k]}</td><td>{fractions[k]:.1%}</td></tr>' for k in range(4))
    bar = ''.join(f'<div class="b{k}" style="width:{100 * fractions[k]:.2f}%"></div>' for k in range(4))
    figures = ''
    if tokens:
        figures = (f'<p>mean log p {s["mean_logprob"]:.3f} nats, mean log rank {s["mean_log_rank"]:.3f}, '
                   f'mean entropy {s["mean_entropy"]:.3f} nats, Fast-DetectGPT '
                   + ('n/a' if s['fast_detectgpt'] is None else f'{s["fast_detectgpt"]:.3f}') + '</p>')
    spans = ''.join(f'<span class="b{b}" title="{html.escape(_tooltip(t, enc), quote=True)}">'
                    f'{html.escape(t["text"], quote=True)}</span>'
                    for t, b in zip(tokens, gltr_buckets(ranks) if tokens else []))
    heading = html.escape(f'{number}. {title}' if title else f'Text {number}', quote=True)
    return (f'<section><h2>{heading} ({len(tokens)} tokens)</h2>{figures}<div class="summary"><div>'
            f'<table>{rows}</table><div class="bar">{bar}</div></div><div><div>probability of each token</div>'
            f'{_histogram_svg(np.exp([t["logprob"] for t in tokens]))}</div></div>'
            f'<div class="text">{spans}</div></section>')


def render_html(scored, titles=None, enc=None):
    """The GLTR page of score_texts' result, as one self-contained HTML string (no scripts, no fetches):
    one <span> per token (the page has no other span), coloured by rank bucket, its title the
    probability, rank, entropy and top alternatives.  titles: a heading per text; enc decodes the
    alternatives (default: the vendored GPT-2 vocabulary)."""
    enc = enc or encoder.get_default_encoder()
    titles = list(titles) if titles is not None else [None] * len(scored)
    legend = ' '.join(f'<div class="swatch b{k}"></div> {GLTR_LABELS[k]}' for k in range(4))
    body = ''.join(_section(i, title, s, enc) for i, (s, title) in enumerate(zip(scored, titles), start=1))
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>GLTR view</title>'
            f'<style>{CSS}</style></head><body><h1>GLTR view</h1><p>Each token is coloured by the rank of its '
            f'logit among the model\'s predictions: {legend}. Hover over a token for its probability, rank '
            f'and the model\'s top alternatives.</p>{body}</body></html>\n')


def write_html(path, scored, titles=None, enc=None):
    """Write render_html(scored, titles, enc) to path atomically (files.write_atomic)."""
    files.write_atomic(os.fspath(path), render_html(scored, titles, enc))


# ---------------------------------------------------------------------------------------------
# Command line.

def _check_out(flag, path):
    """An output path checked before any scoring, as eval.check_json_out does for --json_out."""
    try:
        return ev.check_json_out(path)
    except ev.EvalError as e:
        raise cli.UsageError(str(e).replace('--json_out', '--' + flag)) from None


def _read(paths, jsonl, flag='FILE'):
    """(texts, sources): each file is one text, or with jsonl one per line ({"text": ...} or a string)."""
    if not paths:
        raise cli.UsageError(f'name the text files to score: detect.py COMMAND {flag}...')
    texts, sources = [], []
    for path in paths:
        path = files.expand(str(path))
        if not os.path.isfile(path):
            raise cli.UsageError(f'{path} does not exist' if not os.path.exists(path) else f'{path} is not a file')
        documents = ev.read_documents(path, 'jsonl' if jsonl else 'text')
        texts += documents
        sources += [f'{path}#{k}' for k in range(1, len(documents) + 1)] if jsonl else [path]
    return texts, sources


def _switch(value, paths):
    """(bool, paths) for a switch such as --jsonl: fire gives `--jsonl a.jsonl` the file as the switch's value."""
    if isinstance(value, bool) or value is None:
        return bool(value), paths
    return True, (str(value),) + tuple(paths)


def _load(model_name, models_dir, precision):
    """(hparams, params, encoder) of models_dir/model_name with the weights in `precision`."""
    dtype = tf.as_dtype(cli.precision_name(precision, PRECISIONS))
    model_dir = checkpoint.model_path(model_name, models_dir)
    hparams, params = checkpoint.load(model_dir, dtype=dtype)
    enc = encoder.get_encoder(os.path.basename(model_dir), os.path.dirname(model_dir))
    return hparams, params, enc


def _watermark_settings(key, gamma, unique_pairs):
    if key is not None:
        watermark.check_key(key)
        watermark.check_gamma(gamma)
    return dict(watermark_key=key, gamma=gamma, unique_pairs=bool(unique_pairs))


def _fmt(value, width=9):
    return f'{"n/a":>{width}}' if value is None else f'{value:>{width}.3f}'


def format_stats(rows):
    """A text table: one line of statistics per (source, stats) row."""
    wm = any('watermark_z' in s for _, s in rows)
    head = (f'{"tokens":>7} {"logprob":>9} {"logrank":>9} {"entropy":>9} {"top10":>6} {"top100":>6} '
            f'{"top1000":>7} {"rest":>6} {"fastdgpt":>9}' + (f' {"wm_z":>9}' if wm else '') + '  text')
    lines = [head]
    for source, s in rows:
        g = ''.join(f' {"n/a" if f is None else f"{f:.3f}":>{w}}' for f, w in zip(s['gltr'], (6, 6, 7, 6)))
        lines.append(f'{s["n_tokens"]:>7} {_fmt(s["mean_logprob"])} {_fmt(s["mean_log_rank"])} '
                     f'{_fmt(s["mean_entropy"])}{g} {_fmt(s["fast_detectgpt"])}'
                     + (f' {_fmt(s.get("watermark_z"))}' if wm else '') + f'  {source}')
    return '\n'.join(lines)


def format_tokens(source, scored):
    """A text table of one text's tokens: position, rank, log p, entropy and the token."""
    lines = [f'{source}: {len(scored["tokens"])} tokens',
             f'{"pos":>6} {"rank":>6} {"logprob":>9} {"entropy":>9}  token']
    for j, t in enumerate(scored['tokens']):
        lines.append(f'{j:>6} {t["rank"]:>6} {t["logprob"]:>9.3f} {t["entropy"]:>9.3f}  {t["text"]!r}')
    return '\n'.join(lines)


def _score_files(paths, jsonl, model_name, models_dir, precision, json_out, html_out, top, batch_size, context,
                 stride, progress, watermark_settings, table):
    json_out = None if json_out is None else _check_out('json_out', json_out)
    html_out = None if html_out is None else _check_out('html_out', html_out)
    texts, sources = _read(paths, jsonl)
    hparams, params, enc = _load(model_name, models_dir, precision)
    scored = score_texts(hparams, params, enc, texts, top, batch_size, context, stride, progress)
    rows = [(source, stats(s, **watermark_settings)) for source, s in zip(sources, scored)]
    if json_out is not None:
        files.write_atomic(json_out, ''.join(json.dumps({'source': source, **s, 'stats': st}) + '\n'
                                             for (source, st), s in zip(rows, scored)))
    if html_out is not None:
        write_html(html_out, scored, sources, enc)
    if json_out is None:
        print(table(scored, sources, rows))


def score_command(*files, jsonl=False, model_name='124M', models_dir='models', precision='float32',
                  json_out=None, html_out=None, top=5, batch_size=8, context=None, stride=None, progress=True):
    """Score every token of each FILE: log-probability, rank, entropy and the top alternatives.

    Args:
      files: the texts: each file is one text (with --jsonl: one {"text": ...} object per line).
      jsonl: read each FILE as JSON lines.
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      precision: the weights' precision, float32, bfloat16 or int8 (logits and scores are float32 either way).
      json_out: write JSON lines here, one {"source", "text", "tokens", "stats"} object per text
        (checked before scoring; written atomically); without it, a table goes to stdout.
      html_out: write the GLTR page (one self-contained HTML file) here.
      top: alternatives kept per token.
      batch_size: windows per forward pass.
      context: tokens per window (default: the model's n_ctx).
      stride: tokens a window advances (default: context // 2).
      progress: show a progress bar on stderr.
    """
    jsonl, files = _switch(jsonl, files)
    _score_files(files, jsonl, model_name, models_dir, precision, json_out, html_out, top, batch_size, context,
                 stride, progress, {},
                 lambda scored, sources, rows: '\n\n'.join(format_tokens(src, s) for src, s in zip(sources, scored)))


def stats_command(*files, jsonl=False, model_name='124M', models_dir='models', precision='float32',
                  json_out=None, html_out=None, top=5, batch_size=8, context=None, stride=None,
                  watermark_key=None, watermark_gamma=0.25, unique_pairs=False, progress=True):
    """Detection statistics of each FILE: mean log p, mean log rank, mean entropy, GLTR fractions,
    Fast-DetectGPT and, with --watermark_key, the watermark's z-score.

    Args:
      files: the texts: each file is one text (with --jsonl: one {"text": ...} object per line).
      jsonl: read each FILE as JSON lines.
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      precision: the weights' precision, float32, bfloat16 or int8 (logits and scores are float32 either way).
      json_out: write JSON lines here, one {"source", "text", "tokens", "stats"} object per text
        (checked before scoring; written atomically); without it, a table goes to stdout.
      html_out: write the GLTR page (one self-contained HTML file) here.
      top: alternatives kept per token (in --json_out and --html_out).
      batch_size: windows per forward pass.
      context: tokens per window (default: the model's n_ctx).
      stride: tokens a window advances (default: context // 2).
      watermark_key: the watermark's key, an integer in [0, 2**31): adds watermark_z.
      watermark_gamma: the watermark's green fraction, in (0, 1).
      unique_pairs: count each (previous token, token) pair once in the z-score.
      progress: show a progress bar on stderr.
    """
    jsonl, files = _switch(jsonl, files)
    unique_pairs, files = _switch(unique_pairs, files)
    settings = _watermark_settings(watermark_key, watermark_gamma, unique_pairs)
    _score_files(files, jsonl, model_name, models_dir, precision, json_out, html_out, top, batch_size, context,
                 stride, progress, settings, lambda scored, sources, rows: format_stats(rows))


def auroc_command(human=None, machine=None, plot=None, json_out=None, model_name='124M', models_dir='models',
                  precision='float32', batch_size=8, context=None, stride=None, watermark_key=None,
                  watermark_gamma=0.25, unique_pairs=False, progress=True):
    """AUROC of every detection statistic at telling machine texts from human ones.

    Args:
      human: JSON lines, one {"text": ...} object (or JSON string) per line: the human texts.
      machine: JSON lines of the machine texts (e.g. score --json_out's output also works).
      plot: also write the ROC curves to this PNG (needs matplotlib).
      json_out: write {"auroc": {statistic: {...}}, "human": [stats], "machine": [stats]} here (one JSON object).
      model_name: model folder under models_dir (e.g. 124M).
      models_dir: folder holding the model folders.
      precision: the weights' precision, float32, bfloat16 or int8 (8-bit weights, quantize.py).
      batch_size: windows per forward pass.
      context: tokens per window (default: the model's n_ctx).
      stride: tokens a window advances (default: context // 2).
      watermark_key: also evaluate the watermark's z-score with this key.
      watermark_gamma: the watermark's green fraction, in (0, 1).
      unique_pairs: count each (previous token, token) pair once in the z-score.
      progress: show a progress bar on stderr.
    """
    settings = _watermark_settings(watermark_key, watermark_gamma, unique_pairs)
    if human is None or machine is None or isinstance(human, bool) or isinstance(machine, bool):
        raise cli.UsageError('auroc needs both sets of texts: --human FILE.jsonl --machine FILE.jsonl')
    json_out = None if json_out is None else _check_out('json_out', json_out)
    if plot is not None:
        plot = _check_out('plot', plot)
        if importlib.util.find_spec('matplotlib') is None:
            raise cli.UsageError('--plot needs matplotlib, which is not installed: pip install matplotlib')
    sides = {}
    for flag, path in (('human', human), ('machine', machine)):
        try:
            texts, _ = _read([path], jsonl=True, flag='--' + flag)
        except ev.EvalError as e:
            reason = str(e).split('; --format')[0]   # eval's hint names its own flag
            raise cli.UsageError(f'--{flag} takes JSON lines, one {{"text": ...}} per line: {reason}') from None
        if not texts:
            raise cli.UsageError(f'--{flag} {path} holds no text')
        sides[flag] = texts
    hparams, params, enc = _load(model_name, models_dir, precision)
    scorer = Scorer(hparams, params, top=0)
    human_stats, machine_stats = (
        [stats(s, **settings) for s in score_texts(hparams, params, enc, sides[flag], 0, batch_size, context,
                                                   stride, progress, scorer)]
        for flag in ('human', 'machine'))
    evaluation = evaluate(human_stats, machine_stats)
    print(f'{"statistic":<16} {"AUROC":>7}  machine if  ({len(human_stats)} human, {len(machine_stats)} machine texts)')
    for name, row in evaluation.items():
        print(f'{name:<16} {row["auroc"]:>7.4f}  {row["machine_if"]}')
    if json_out is not None:
        files.write_atomic(json_out, json.dumps({'auroc': evaluation, 'human': human_stats,
                                                 'machine': machine_stats}, indent=1) + '\n')
    if plot is not None:
        write_roc_plot(plot, human_stats, machine_stats)


COMMANDS = {'score': score_command, 'stats': stats_command, 'auroc': auroc_command}


def main(argv=None):
    """Run the command line; returns the exit status (user errors: one line on stderr, status 1)."""
    return cli.main(COMMANDS, argv, name='detect.py', errors=(DetectError, ev.EvalError, watermark.WatermarkError))


if __name__ == '__main__':
    sys.exit(main())
