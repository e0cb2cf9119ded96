"""detect.py and watermark.py against references written here: numpy log-softmax over direct model.model
passes on the documented windows, pairwise AUROC counts, and the green list in plain Python integers."""
import html.parser
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import checkpoint
import detect
import encoder
import model
import watermark
from conftest import ROOT, SRC, TINY_HPARAMS, sharpened_params

EOT = 50256
LONG = ('The quick brown fox jumps over the lazy dog. ' * 9 + 'Pack my box with five dozen liquor jugs! '
        'How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow. ' * 2)


@pytest.fixture(scope='module')
def enc():
    return encoder.get_default_encoder()


@pytest.fixture(scope='module')
def tiny(enc):
    """The tiny shape (n_ctx 64) with sharpened weights, graded so that the test texts' tokens rank in
    every GLTR bucket: their embeddings get a random boost along a direction that ln_f's bias adds."""
    h = model.default_hparams().override_from_dict(TINY_HPARAMS)
    params = sharpened_params(h)
    wte, bias = params['model/wte'].numpy(), params['model/ln_f/b'].numpy()
    ids = sorted(set(enc.encode(LONG + HOSTILE)))
    wte[ids, 0] += np.random.default_rng(9).uniform(0, 2.5, len(ids)).astype(np.float32)
    bias[0] = 4
    return h, {**params, 'model/wte': tf.constant(wte), 'model/ln_f/b': tf.constant(bias)}


@pytest.fixture(scope='module')
def scorer(tiny):
    return detect.Scorer(*tiny, top=5)


# ---------------------------------------------------------------------------------------------
# The reference: one model.model pass per documented window, numpy log-softmax in float64.

def reference_window(n, i, context, stride):
    """(start, end) of the window that scores target i of an n-token stream, by the documented rule:
    windows start at 0, stride, 2 stride, ... and hold `context` inputs; the first one that reaches the
    stream's last token is pulled back to end there; a target is scored in the first window reaching it."""
    start = 0
    while True:
        if start + context >= n - 1:
            return max(0, n - 1 - context), n - 1
        if i <= start + context:
            return start, start + context
        start += stride


def reference(h, params, enc, text, context=None, stride=None):
    """Per-token reference arrays for one text."""
    context = context or h['n_ctx']
    stride = stride or context // 2
    stream = [EOT] + enc.encode(text)
    n = len(stream)
    out = {k: [] for k in ('logits', 'logprob', 'rank', 'entropy', 'var', 'window')}
    passes = {}
    for i in range(1, n):
        start, end = reference_window(n, i, context, stride)
        if (start, end) not in passes:
            passes[start, end] = model.model(h, np.array([stream[start:end]], np.int32),
                                             params=params)['logits'].numpy()[0]
        logits = passes[start, end][i - 1 - start]                                      # float32 [n_vocab]
        x = logits.astype(np.float64)
        logp = x - np.logaddexp.reduce(x)
        p = np.exp(logp)
        mu = np.sum(p * logp)
        out['logits'].append(logits)
        out['logprob'].append(logp[stream[i]])
        out['rank'].append(1 + int(np.sum(logits > logits[stream[i]])))
        out['entropy'].append(-mu)
        out['var'].append(np.sum(p * logp ** 2) - mu ** 2)
        out['window'].append((start, end))
    return stream[1:], out


def near_ties(logits, value, tol=1e-4):
    """(strictly larger by more than tol, larger than value - tol): the ranks a float32 re-run may give."""
    return int(np.sum(logits > value + tol)), int(np.sum(logits > value - tol))


def check_against_reference(scored, ids, ref, top=5):
    assert [t['id'] for t in scored['tokens']] == ids
    exact = 0
    for t, logits, lp, rank, ent, var in zip(scored['tokens'], ref['logits'], ref['logprob'], ref['rank'],
                                             ref['entropy'], ref['var']):
        assert t['logprob'] == pytest.approx(lp, abs=2e-4)
        assert t['entropy'] == pytest.approx(ent, abs=2e-4)
        assert t['logprob_var'] == pytest.approx(var, rel=2e-3, abs=1e-5)
        above, below = near_ties(logits, logits[t['id']])
        assert above + 1 <= t['rank'] <= below + 1
        exact += t['rank'] == rank
        order = np.argsort(-logits, kind='stable')[:top]
        assert len(t['top']) == top
        for k, (tid, tlp) in enumerate(t['top']):
            assert logits[tid] == pytest.approx(logits[order[k]], abs=1e-4)   # same token unless a near tie
            x = logits.astype(np.float64)
            assert tlp == pytest.approx(x[tid] - np.logaddexp.reduce(x), abs=2e-4)
    assert exact >= 0.9 * len(ids)   # the tolerance only covers near ties


# ---------------------------------------------------------------------------------------------
# Scores.

def test_ragged_batch_matches_direct_passes(tiny, scorer, enc):
    h, params = tiny
    texts = ['Hello world.', '', 'A somewhat longer sentence, with punctuation; and more words.', 'x']
    scored = detect.score_texts(h, params, enc, texts, top=5, batch_size=2, scorer=scorer)
    assert [s['text'] for s in scored] == texts
    assert scored[1]['tokens'] == []
    for text, s in zip(texts, scored):
        ids, ref = reference(h, params, enc, text)
        check_against_reference(s, ids, ref)
        assert ''.join(t['text'] for t in s['tokens']) == text


@pytest.mark.parametrize('context, stride', [(None, None), (24, 10), (16, 16)])
def test_texts_longer_than_the_context_use_the_documented_windows(tiny, scorer, enc, context, stride):
    h, params = tiny
    texts = [LONG, 'Short one.', LONG[:150]]
    scored = detect.score_texts(h, params, enc, texts, top=5, batch_size=3, context=context, stride=stride,
                                scorer=scorer)
    ids, ref = reference(h, params, enc, LONG, context, stride)
    assert len(ids) > 2 * h['n_ctx']
    assert len(set(ref['window'])) >= 3
    check_against_reference(scored[0], ids, ref)
    for text, s in zip(texts[1:], scored[1:]):
        check_against_reference(s, *reference(h, params, enc, text, context, stride))


def test_pieces_join_to_the_text_even_inside_multibyte_characters(tiny, scorer, enc):
    text = 'café 😀 日本語 — ok'
    (s,) = detect.score_texts(*tiny, enc, [text], scorer=scorer)
    assert ''.join(t['text'] for t in s['tokens']) == text
    assert [t['id'] for t in s['tokens']] == enc.encode(text)


def test_bfloat16_weights_score_within_a_stated_tolerance(tiny, tmp_path, enc):
    """bf16 weights (8-bit mantissas) move these sharpened log-probs (about -9 to -21 nats) by at most
    0.25 nats and 0.06 on average (measured: 0.10 and 0.03); the logits stay float32."""
    h, params = tiny
    checkpoint.save(str(tmp_path / 'm'), h, params)
    _, bf16 = checkpoint.load(str(tmp_path / 'm'), dtype=tf.bfloat16)
    assert bf16['model/wte'].dtype == tf.bfloat16
    text = 'Weights in bfloat16 still give float32 logits.'
    (s,) = detect.score_texts(h, bf16, enc, [text], top=3)
    _, ref = reference(h, params, enc, text)
    got = np.array([t['logprob'] for t in s['tokens']])
    error = np.abs(got - np.array(ref['logprob']))
    assert error.max() < 0.25 and error.mean() < 0.06 and error.max() > 0   # > 0: bf16 weights were used
    assert all(isinstance(t['logprob'], float) for t in s['tokens'])


def test_bad_arguments_are_one_line_errors(tiny, enc):
    h, params = tiny
    for kwargs, message in [(dict(texts='a str'), 'list of str'), (dict(top=-1), '--top'),
                            (dict(batch_size=0), '--batch_size'), (dict(context=65), '--context'),
                            (dict(context=16, stride=17), '--stride')]:
        args = dict(texts=['x'], **{k: v for k, v in kwargs.items() if k != 'texts'})
        if 'texts' in kwargs:
            args['texts'] = kwargs['texts']
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            detect.score_texts(h, params, enc, **args)
        assert '\n' not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Statistics.

def test_stats_equal_a_numpy_computation_from_the_logits(tiny, scorer, enc):
    h, params = tiny
    (s,) = detect.score_texts(h, params, enc, [LONG], scorer=scorer)
    ids, ref = reference(h, params, enc, LONG)
    st = detect.stats(s, watermark_key=7, gamma=0.3)
    lp, rank = np.array(ref['logprob']), np.array(ref['rank'])
    mu, var = -np.array(ref['entropy']), np.array(ref['var'])
    assert st['n_tokens'] == len(ids)
    assert st['mean_logprob'] == pytest.approx(lp.mean(), abs=1e-4)
    assert st['mean_log_rank'] == pytest.approx(np.log(rank).mean(), abs=2e-2)
    assert st['mean_entropy'] == pytest.approx(-mu.mean(), abs=1e-4)
    assert st['fast_detectgpt'] == pytest.approx((lp.sum() - mu.sum()) / np.sqrt(var.sum()), rel=1e-3)
    expected = [np.mean(rank <= 10), np.mean((rank > 10) & (rank <= 100)), np.mean((rank > 100) & (rank <= 1000)),
                np.mean(rank > 1000)]
    assert st['gltr'] == pytest.approx(expected, abs=2.5 / len(ids))
    assert all(0 < f < 1 for f in expected) and sum(st['gltr']) == pytest.approx(1)
    assert st['watermark_z'] == pytest.approx(plain_z(ids, 7, 0.3))


def test_stats_by_hand():
    ranks = [1, 10, 11, 100, 101, 1000, 1001, 50000]
    tokens = [dict(id=i, logprob=-float(i), rank=r, entropy=2.0, logprob_var=0.5) for i, r in enumerate(ranks)]
    st = detect.stats({'text': '', 'tokens': tokens})
    assert st['gltr'] == [0.25, 0.25, 0.25, 0.25]
    assert st['mean_logprob'] == -3.5 and st['mean_entropy'] == 2.0
    assert st['mean_log_rank'] == pytest.approx(np.mean(np.log(ranks)))
    assert st['fast_detectgpt'] == pytest.approx((-28 + 16) / math.sqrt(4))
    assert 'watermark_z' not in st
    empty = detect.stats({'text': '', 'tokens': []}, watermark_key=1)
    assert empty['n_tokens'] == 0 and empty['mean_logprob'] is None and empty['watermark_z'] is None


def test_auroc_equals_a_pairwise_count_with_ties():
    rng = np.random.default_rng(1)
    for _ in range(5):
        human, machine = rng.integers(0, 6, 40), rng.integers(2, 8, 33)
        count = sum((m > h_) + 0.5 * (m == h_) for m in machine for h_ in human)
        assert detect.auroc(human, machine) == pytest.approx(count / (len(human) * len(machine)))
    assert detect.auroc([1, 2], [3, 4]) == 1 and detect.auroc([3, 4], [1, 2]) == 0 and detect.auroc([1], [1]) == 0.5
    with pytest.raises(ValueError):
        detect.auroc([], [1])


def test_evaluate_states_the_orientation():
    def fake(logprob, log_rank, z=None):
        s = dict(n_tokens=3, mean_logprob=logprob, mean_log_rank=log_rank, mean_entropy=1.0,
                 gltr=[0.5, 0.2, 0.2, 0.1], fast_detectgpt=logprob)
        return s if z is None else {**s, 'watermark_z': z}
    human = [fake(-5, 4), fake(-6, 5)]
    machine = [fake(-2, 1, 9.0), fake(-3, 2, 7.0)]
    ev = detect.evaluate(human, machine)
    assert ev['mean_logprob'] == dict(auroc=1.0, machine_if='higher', n_human=2, n_machine=2)
    assert ev['mean_log_rank']['auroc'] == 1.0 and ev['mean_log_rank']['machine_if'] == 'lower'
    assert ev['mean_entropy']['auroc'] == 0.5
    assert 'watermark_z' not in ev   # no human text has a z


# ---------------------------------------------------------------------------------------------
# The watermark.

def plain_green(key, p, v, gamma):
    """The published green list in Python integers, straight from its specification."""
    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)
    seed = (key * 0x9E3779B1 + p) & 0xFFFFFFFF
    return fmix32((seed * 0x85EBCA6B + v) & 0xFFFFFFFF) < math.floor(gamma * 2 ** 32)


def plain_z(tokens, key, gamma, unique=False):
    pairs = list(zip(tokens[:-1], tokens[1:]))
    if unique:
        pairs = sorted(set(pairs))
    g = sum(plain_green(key, int(p), int(v), gamma) for p, v in pairs)
    t = len(pairs)
    return (g - gamma * t) / math.sqrt(t * gamma * (1 - gamma))


def test_numpy_green_list_follows_the_specification():
    rng = np.random.default_rng(2)
    for key in [0, 1, 2 ** 31 - 1, *rng.integers(0, 2 ** 31, 6).tolist()]:
        prev = int(rng.integers(0, 50257))
        mask = watermark.green_numpy(key, prev, 50257, 0.25)
        assert mask.shape == (50257,) and abs(mask.mean() - 0.25) < 0.01
        for v in rng.integers(0, 50257, 200).tolist():
            assert mask[v] == plain_green(key, prev, v, 0.25)


@pytest.fixture(scope='module')
def xla_green():
    @tf.function(jit_compile=True)
    def green(key, prev):
        return watermark.green_mask(key, prev, 50257, 0.25)
    return green


def test_tensorflow_green_mask_is_bit_exact_eager_and_under_xla(xla_green):
    rng = np.random.default_rng(3)
    keys = [0, 2 ** 31 - 1, *rng.integers(0, 2 ** 31, 10).tolist()]
    for key in keys:
        prev = rng.integers(0, 50257, 6).astype(np.int32)
        prev[0] = EOT
        ref = watermark.green_numpy(key, prev, 50257, 0.25)                            # [6, 50257]
        eager = watermark.green_mask(key, prev, 50257, 0.25)
        assert eager.dtype == tf.bool and eager.shape == (6, 50257)
        assert np.array_equal(eager.numpy(), ref)
        assert np.array_equal(xla_green(tf.constant(key, tf.int32), tf.constant(prev)).numpy(), ref)
    assert np.array_equal(watermark.green_mask(tf.constant(5, tf.int64), [1, 2], 50257, 0.6).numpy(),
                          watermark.green_numpy(5, [1, 2], 50257, 0.6))


def test_bias_logits_adds_delta_to_the_green_list_in_a_compiled_step():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=[3, 50257]).astype(np.float32)
    prev = np.array([10, 20, EOT], np.int32)
    green = watermark.green_numpy(123, prev, 50257, 0.5)

    @tf.function(jit_compile=True)
    def step(logits, prev, key):
        return watermark.bias_logits(logits, prev, key, 0.5, 2.0)

    for out in (step(logits, prev, tf.constant(123)), watermark.bias_logits(logits, prev, 123, 0.5, 2.0)):
        assert np.allclose(out.numpy(), logits + 2.0 * green)
    bf = watermark.bias_logits(tf.constant(logits, tf.bfloat16), prev, 123, 0.5, 1.0)
    assert bf.dtype == tf.bfloat16


def test_z_score_equals_a_direct_count_and_unique_pairs_counts_each_pair_once():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 50257, 300).tolist()
    assert watermark.z_score(tokens, 99, 0.25) == pytest.approx(plain_z(tokens, 99, 0.25))
    loop = [11, 22, 33] * 40
    assert watermark.z_score(loop, 99, 0.25, unique_pairs=True) == pytest.approx(plain_z(loop, 99, 0.25, True))
    assert watermark.z_score(loop, 99, 0.25) == pytest.approx(plain_z(loop, 99, 0.25))
    assert watermark.z_score([5], 1, 0.25) is None and watermark.z_score([], 1, 0.25) is None


def all_green_sequence(key, gamma, n, seed=0):
    rng = np.random.default_rng(seed)
    tokens = [int(rng.integers(0, 50257))]
    for _ in range(n - 1):
        tokens.append(int(rng.choice(np.flatnonzero(watermark.green_numpy(key, tokens[-1], 50257, gamma)))))
    return tokens


def test_green_text_is_detected_and_other_keys_and_random_text_are_not():
    tokens = all_green_sequence(1234, 0.25, 120)
    assert watermark.z_score(tokens, 1234, 0.25) > 4
    assert abs(watermark.z_score(tokens, 4321, 0.25)) < 4
    random_tokens = np.random.default_rng(6).integers(0, 50257, 500)
    assert abs(watermark.z_score(random_tokens, 1234, 0.25)) < 4


def test_a_watermarked_sample_of_the_model_is_detected(tiny, scorer, enc):
    """Full model.model passes, the biased logits sampled: z > 4 with the key, not without the bias."""
    h, params = tiny
    rng = np.random.default_rng(7)
    for delta, detected in ((8.0, True), (0.0, False)):
        tokens = [EOT]
        for _ in range(40):
            logits = model.model(h, np.array([tokens], np.int32), params=params)['logits'][:, -1]
            biased = watermark.bias_logits(logits, tf.constant(tokens[-1:]), 77, 0.25, delta).numpy()[0]
            p = np.exp(biased - np.logaddexp.reduce(biased.astype(np.float64)))
            tokens.append(int(rng.choice(len(p), p=p / p.sum())))
        z = watermark.z_score(tokens[1:], 77, 0.25)
        assert (z > 4) == detected, z


@pytest.mark.parametrize('call, message', [
    (lambda: watermark.green_numpy(-1, 0, 10, 0.25), 'key must be an integer in [0, 2**31)'),
    (lambda: watermark.green_numpy(2 ** 31, 0, 10, 0.25), 'key must be an integer in [0, 2**31)'),
    (lambda: watermark.z_score([1, 2], 1.5, 0.25), 'key must be an integer'),
    (lambda: watermark.z_score([1, 2], True, 0.25), 'key must be an integer'),
    (lambda: watermark.z_score([1, 2], 1, 1.0), 'gamma (green fraction) must be a number in (0, 1)'),
    (lambda: watermark.green_mask(1, [0], 10, 0), 'gamma'),
    (lambda: watermark.bias_logits(np.zeros([1, 10], np.float32), [0], 1, 0.5, -1), 'delta must be a finite number >= 0'),
    (lambda: watermark.bias_logits(np.zeros([1, 10], np.float32), [0], 1, 0.5, math.nan), 'delta'),
])
def test_watermark_settings_out_of_range_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        call()
    assert '\n' not in str(err.value)


def test_the_documented_reference_detector_is_the_one_tested():
    doc = open(os.path.join(ROOT, 'docs', 'research.md'), encoding='utf-8').read()
    code = re.search(r'<!-- reference-detector -->\n```python\n(.*?)```', doc, re.S).group(1)
    namespace = {}
    exec(code, namespace)
    rng = np.random.default_rng(8)
    for key in rng.integers(0, 2 ** 31, 5).tolist():
        tokens = rng.integers(0, 50257, 200)
        prev = int(tokens[0])
        assert np.array_equal(namespace['green'](key, prev, np.arange(50257), 0.25),
                              watermark.green_numpy(key, prev, 50257, 0.25))
        assert namespace['z_score'](tokens, key, 0.25) == pytest.approx(watermark.z_score(tokens, key, 0.25))
    green = all_green_sequence(9, 0.5, 60, seed=1)
    assert namespace['z_score'](green, 9, 0.5) == pytest.approx(watermark.z_score(green, 9, 0.5))
    assert watermark.z_score(green, 9, 0.5) > 4


# ---------------------------------------------------------------------------------------------
# The GLTR page.

class Page(html.parser.HTMLParser):
    """Each span's class, title and text; every tag seen."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.spans, self.tags, self.inside = [], [], None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == 'span':
            assert self.inside is None, 'nested span'
            self.inside = dict(attrs, text='')

    def handle_endtag(self, tag):
        if tag == 'span':
            self.spans.append(self.inside)
            self.inside = None

    def handle_data(self, data):
        if self.inside is not None:
            self.inside['text'] += data


HOSTILE = 'A <script>alert(1)</script> and </span> with &amp; "double" and \'single\' quotes.\n\n<b>bold?</b>'


def test_gltr_page_escapes_everything_and_has_one_span_per_token(tiny, scorer, enc, tmp_path):
    texts = [HOSTILE, 'Second text.']
    scored = detect.score_texts(*tiny, enc, texts, scorer=scorer)
    path = tmp_path / 'gltr.html'
    detect.write_html(str(path), scored, titles=['<i>title</i>', None])
    page_text = path.read_text(encoding='utf-8')
    page = Page()
    page.feed(page_text)
    page.close()
    tokens = [t for s in scored for t in s['tokens']]
    assert len(page.spans) == len(tokens) == page.tags.count('span')
    assert not {'script', 'link', 'img', 'iframe', 'b', 'i'} & set(page.tags)
    assert not re.search(r'\bsrc=|href=|url\(|@import', page_text)
    assert ''.join(s['text'] for s in page.spans[:len(scored[0]['tokens'])]) == HOSTILE
    assert '<script' not in page_text and '</span> with' not in page_text and '&lt;' in page_text
    for span, t in zip(page.spans, tokens):
        bucket = 0 if t['rank'] <= 10 else 1 if t['rank'] <= 100 else 2 if t['rank'] <= 1000 else 3
        assert span['class'] == f'b{bucket}'
        assert f'rank {t["rank"]}' in span['title'] and f'p = {math.exp(t["logprob"]):.4g}' in span['title']
        assert repr(enc.decode([t['top'][0][0]])) in span['title']
    for colour in ('#ADFF80', '#FFEA80', '#FF9280', '#E5B0FF'):
        assert colour in page_text
    assert '<svg' in page_text and '&lt;i&gt;title&lt;/i&gt;' in page_text
    assert [p.name for p in tmp_path.iterdir()] == ['gltr.html']   # written under a temporary name, renamed


# ---------------------------------------------------------------------------------------------
# Command line.

def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, os.path.join(SRC, 'detect.py'), *map(str, args)], capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_cli_score_stats_auroc_end_to_end(tiny_models_dir, tmp_path, enc):
    model_flags = ['--models_dir', tiny_models_dir, '--model_name', 'tiny']
    a, b = tmp_path / 'a.txt', tmp_path / 'b.txt'
    a.write_text(HOSTILE, encoding='utf-8')
    b.write_text(LONG, encoding='utf-8')
    out, page = tmp_path / 'out.jsonl', tmp_path / 'out.html'
    p = run_cli('score', a, b, '--top', 3, '--json_out', out, '--html_out', page, *model_flags)
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r['source'] for r in records] == [str(a), str(b)] and records[1]['text'] == LONG
    h, params = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    direct = detect.score_texts(h, params, enc, [HOSTILE, LONG], top=3)
    for r, d in zip(records, direct):
        assert [t['id'] for t in r['tokens']] == [t['id'] for t in d['tokens']]
        assert np.allclose([t['logprob'] for t in r['tokens']], [t['logprob'] for t in d['tokens']], atol=1e-4)
        assert len(r['tokens'][0]['top']) == 3
        assert r['stats']['mean_logprob'] == pytest.approx(detect.stats(d)['mean_logprob'], abs=1e-4)
    parsed = Page()
    parsed.feed(page.read_text(encoding='utf-8'))
    assert len(parsed.spans) == sum(len(d['tokens']) for d in direct)

    texts = tmp_path / 'texts.jsonl'
    texts.write_text(json.dumps({'text': 'One text.'}) + '\n\n' + json.dumps('Two.') + '\n')
    p = run_cli('stats', '--jsonl', texts, '--watermark_key', 42, '--unique_pairs', *model_flags)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert 'fastdgpt' in lines[0] and 'wm_z' in lines[0] and lines[1].endswith(f'{texts}#1') and len(lines) == 3

    human, machine = tmp_path / 'human.jsonl', tmp_path / 'machine.jsonl'
    human.write_text(''.join(json.dumps({'text': t}) + '\n' for t in ['The cat.', 'A dog ran home.', 'Zebras!']))
    machine.write_text(out.read_text())   # score's output is valid input
    summary = tmp_path / 'auroc.json'
    p = run_cli('auroc', '--human', human, '--machine', machine, '--json_out', summary, *model_flags)
    assert p.returncode == 0, p.stderr
    assert 'mean_log_rank' in p.stdout and 'lower' in p.stdout
    result = json.loads(summary.read_text())
    assert len(result['human']) == 3 and len(result['machine']) == 2
    assert result['auroc']['mean_logprob']['auroc'] == pytest.approx(detect.auroc(
        [s['mean_logprob'] for s in result['human']], [s['mean_logprob'] for s in result['machine']]))
    assert result['auroc']['mean_log_rank']['machine_if'] == 'lower'


def test_cli_errors_are_one_line(tiny_models_dir, tmp_path, capsys):
    p = run_cli('score', tmp_path / 'missing.txt')
    assert p.returncode == 1 and 'Traceback' not in p.stderr
    assert p.stderr.strip().splitlines()[-1] == f'detect.py: error: {tmp_path / "missing.txt"} does not exist'
    (tmp_path / 'a.txt').write_text('some text')
    (tmp_path / 'ro').mkdir(mode=0o555)
    model_flags = [f'--models_dir={tiny_models_dir}', '--model_name=tiny']
    cases = [
        (['score', 'A', '--topp=3'], 'unknown flag --topp'),
        (['stats', 'A', '--watermark_key=-3'], 'key must be an integer in [0, 2**31)'),
        (['stats', 'A', '--watermark_key=3', '--watermark_gamma=1.5'], 'gamma'),
        (['score', 'A', '--precision=float16'], '--precision must be one of float32, bfloat16'),
        (['score', 'A', '--context=1000'], '--context must be an integer from 1 to n_ctx=64'),
        (['score', 'A', '--json_out=DIR'], '--json_out DIR is a directory'),
        (['score', 'A', '--html_out=DIR/nowhere/x.html'], '--html_out DIR/nowhere/x.html: its folder'),
        (['score'], 'name the text files'),
        (['auroc', '--human=A'], '--human FILE.jsonl --machine FILE.jsonl'),
        (['auroc', '--human=A', '--machine=A'], '--human takes JSON lines'),
        (['detect'], 'unknown command'),
    ]
    if os.geteuid() != 0:
        cases.append((['score', 'A', '--json_out=DIR/ro/x.jsonl'], 'is not writable'))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        cases.append((['auroc', '--human=A', '--machine=A', '--plot=DIR/roc.png'], 'pip install matplotlib'))
    for args, message in cases:
        args = [a.replace('A', str(tmp_path / 'a.txt'), 1) if a in ('A', '--human=A', '--machine=A') else a
                for a in args]
        args = [a.replace('DIR', str(tmp_path)) for a in args]
        rc = detect.main(args + model_flags)
        err = capsys.readouterr().err.strip()
        assert rc == 1, args
        assert err.startswith('detect.py: error: ') and '\n' not in err, err
        assert message.replace('DIR', str(tmp_path)) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['a.txt', 'ro']


@pytest.mark.skipif(__import__('importlib').util.find_spec('matplotlib') is None, reason='needs matplotlib')
def test_cli_auroc_plot(tiny_models_dir, tmp_path):
    texts = tmp_path / 't.jsonl'
    texts.write_text(''.join(json.dumps({'text': t}) + '\n' for t in ['One.', 'Two words.', 'Three more words.']))
    rc = detect.main(['auroc', f'--human={texts}', f'--machine={texts}', f'--plot={tmp_path / "roc.png"}',
                      f'--models_dir={tiny_models_dir}', '--model_name=tiny'])
    assert rc == 0 and (tmp_path / 'roc.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
