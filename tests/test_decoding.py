"""The sampler's decoding controls, watermark and scores against argmax loops over full model.model passes
that apply each one as written here, in numpy, from its definition (docs/sampling.md, docs/research.md)."""
import numpy as np
import pytest
import tensorflow as tf

import checkpoint
import model
import sample
from conftest import sharpened_params

FORMS = [(False, False), (True, False), (True, True)]


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    h = model.default_hparams().override_from_dict(dict(n_vocab=211, n_ctx=32, n_embd=32, n_head=4, n_layer=2))
    d = tmp_path_factory.mktemp('m')
    checkpoint.save(str(d), h, sharpened_params(h))
    return checkpoint.load(str(d))


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def window_start(n, prompt, n_ctx, keep):
    """Where the window that predicts token n of a row starts, under the sampler's cut rule."""
    first = 0
    for i in range(prompt, n + 1):
        if i - first > n_ctx:
            first = i - keep
    return first


def next_logits(h, p, seq, prompt):
    first = window_start(len(seq), prompt, h.n_ctx, h.n_ctx // 2)
    return model.model(h, [seq[first:]], params=p)['logits'][0, -1].numpy().astype(np.float64)


# --- the controls, from their definitions -------------------------------------------------------------------

def np_penalties(logits, seq, new, c):
    """Hugging Face's order: logit_bias, the repetition penalty, then the bans."""
    x = logits.copy()
    for token, bias in (c.get('logit_bias') or {}).items():
        x[token] += bias
    theta = c.get('repetition_penalty', 1.0)
    for token in set(seq):
        x[token] = x[token] * theta if x[token] < 0 else x[token] / theta
    n = c.get('no_repeat_ngram_size', 0)
    if n and len(seq) >= n - 1:
        tail = seq[len(seq) - (n - 1):] if n > 1 else []
        for i in range(len(seq) - n + 1):
            if seq[i:i + n - 1] == tail:
                x[seq[i + n - 1]] = -np.inf
    for words in c.get('bad_words_ids', ()):
        if len(words) == 1 or seq[len(seq) - (len(words) - 1):] == list(words[:-1]):
            x[words[-1]] = -np.inf
    if new < c.get('min_new_tokens', 0):
        x[len(x) - 1] = -np.inf
    return x


def np_green(key, prev, n_vocab, gamma):
    """The published green list, written out again: uint32 arithmetic mod 2**32."""
    def fmix(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)
    base = ((key * 0x9E3779B1 + prev) & 0xFFFFFFFF) * 0x85EBCA6B & 0xFFFFFFFF
    return np.array([fmix((base + v) & 0xFFFFFFFF) < int(gamma * 2 ** 32) for v in range(n_vocab)])


def argmax_loop(h, p, rows, length, controls=None, watermark=None):
    out = []
    for row in rows:
        seq = [int(t) for t in row]
        for new in range(length):
            x = np_penalties(next_logits(h, p, seq, len(row)), seq, new, controls or {})
            if watermark:
                key, gamma, delta = watermark
                x = x + delta * np_green(key, seq[-1], h.n_vocab, gamma)
            seq.append(int(np.argmax(x)))
        out.append(seq)
    return out


ROWS = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12]]
CONTROLS = [
    dict(repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(no_repeat_ngram_size=3, repetition_penalty=1.2),
    dict(bad_words_ids=((73,), (208, 7), (7, 33, 7))),   # tokens the plain greedy output holds
    dict(logit_bias={17: 4.0, 73: -np.inf, 19: 2.5}),
    dict(min_new_tokens=30, logit_bias={210: 30.0}),        # 210, the last id: <|endoftext|>, held back
]


def test_plain_greedy_repeats_itself_so_the_controls_have_work(tiny):
    h, p = tiny
    for seq in argmax_loop(h, p, ROWS, 40):
        pairs = list(zip(seq, seq[1:]))
        assert len(set(pairs)) < len(pairs) - 10


@pytest.mark.parametrize('controls', CONTROLS, ids=lambda c: ','.join(c))
def test_each_control_greedy_equals_an_argmax_loop_that_applies_it(tiny, controls):
    """Ragged prompts, 40 tokens past a 32-token context, in every step form."""
    h, p = tiny
    expected = argmax_loop(h, p, ROWS, 40, controls)
    assert expected != argmax_loop(h, p, ROWS, 40)   # the control changed the tokens
    for xla, copies in FORMS:
        out = sample.sample_sequence(hparams=h, params=p, length=40, context=ROWS, temperature=0, xla=xla,
                                     transposed_copies=copies, **controls)
        assert out.to_list() == expected, (xla, copies)


def test_controls_in_bfloat16_keep_their_promises(tiny):
    h, p = tiny
    p16 = {k: v if model.stays_float32(k) else tf.cast(v, tf.bfloat16) for k, v in p.items()}
    for xla, copies in FORMS:
        out = sample.sample_sequence(hparams=h, params=p16, length=40, context=ROWS, temperature=0, xla=xla,
                                     transposed_copies=copies, no_repeat_ngram_size=2).to_list()
        for row, seq in zip(ROWS, out):
            pairs = list(zip(seq, seq[1:]))
            assert len(pairs) == len(set(pairs)), seq


@pytest.mark.parametrize('top_k', [0, 5])
def test_sampled_output_never_holds_what_a_control_forbids(tiny, top_k):
    h, p = tiny
    eot = h.n_vocab - 1
    bans = ((17,), (40, 41))
    for seed in range(3):
        out = sample.sample_sequence(hparams=h, params=p, length=36, context=ROWS * 2, seed=seed, top_k=top_k,
                                     temperature=1.5, no_repeat_ngram_size=3, bad_words_ids=bans, min_new_tokens=20,
                                     logit_bias={eot: 8.0}).to_list()
        for row, seq in zip(ROWS * 2, out):
            triples = [tuple(seq[i:i + 3]) for i in range(len(seq) - 2)]
            assert len(triples) == len(set(triples))
            new = seq[len(row):]
            assert 17 not in new and (40, 41) not in set(zip(seq, seq[1:]))
            assert eot not in new[:20] and eot in new[20:]   # held back, then (biased up) drawn


def test_min_p_and_typical_draw_only_from_what_they_keep(tiny):
    h, p = tiny
    for settings in (dict(min_p=0.2), dict(typical_p=0.5), dict(min_p=0.05, top_k=20)):
        out, scores = sample.sample_sequence(hparams=h, params=p, length=12, context=ROWS, seed=5, temperature=1.0,
                                             return_scores=True, **settings)
        for r, (row, seq) in enumerate(zip(ROWS, out.to_list())):
            for i in range(len(row), len(seq)):
                probs = np.exp(log_softmax(next_logits(h, p, seq[:i], len(row))))
                if 'top_k' in settings:
                    probs[np.argsort(-probs)[settings['top_k']:]] = 0
                    probs /= probs.sum()
                kept = np.ones(h.n_vocab, bool)
                if 'min_p' in settings:
                    kept = probs >= settings['min_p'] * probs.max()
                if 'typical_p' in settings:
                    surprise = np.abs(-np.log(probs) - -(probs * np.log(probs)).sum())
                    order = np.argsort(surprise, kind='stable')
                    kept = np.zeros(h.n_vocab, bool)
                    kept[order[:np.searchsorted(np.cumsum(probs[order]), settings['typical_p']) + 1]] = True
                token = seq[i]
                assert kept[token], (settings, i)
                q = np.where(kept, probs, 0)
                np.testing.assert_allclose(scores['sampled_logprobs'][r, i - len(row)], np.log(q[token] / q.sum()),
                                           atol=2e-4)


# --- scores -------------------------------------------------------------------------------------------------

def test_scores_are_the_models_and_the_drawn_distributions_log_probabilities(tiny):
    h, p = tiny
    out, scores = sample.sample_sequence(hparams=h, params=p, length=40, context=ROWS, top_k=7, temperature=0.8,
                                         seed=2, return_scores=True)
    assert scores['logprobs'].shape == scores['sampled_logprobs'].shape == (2, 40)
    for r, (row, seq) in enumerate(zip(ROWS, out.to_list())):
        for i in range(len(row), len(seq)):
            logp = log_softmax(next_logits(h, p, seq[:i], len(row)))
            np.testing.assert_allclose(scores['logprobs'][r, i - len(row)], logp[seq[i]], atol=2e-4)
            top = np.argsort(-logp)[:7]
            assert seq[i] in top
            kept = log_softmax(logp[top] / 0.8)
            np.testing.assert_allclose(scores['sampled_logprobs'][r, i - len(row)],
                                       kept[list(top).index(seq[i])], atol=2e-4)
    greedy, g = sample.sample_sequence(hparams=h, params=p, length=5, context=ROWS, temperature=0, return_scores=True)
    assert np.all(g['sampled_logprobs'] == 0) and np.all(g['logprobs'] < 0)
    assert greedy.to_list() == sample.sample_sequence(hparams=h, params=p, length=5, context=ROWS,
                                                      temperature=0).to_list()


# --- the watermark ------------------------------------------------------------------------------------------

def test_watermarked_greedy_equals_an_argmax_loop_with_delta_on_the_green_list(tiny):
    h, p = tiny
    mark = (1234567, 0.25, 2.0)
    expected = argmax_loop(h, p, ROWS, 40, watermark=mark)
    assert expected != argmax_loop(h, p, ROWS, 40)
    for xla, copies in FORMS:
        out = sample.sample_sequence(hparams=h, params=p, length=40, context=ROWS, temperature=0, xla=xla,
                                     transposed_copies=copies, watermark=mark[0], watermark_gamma=mark[1],
                                     watermark_delta=mark[2])
        assert out.to_list() == expected, (xla, copies)


def z(tokens, key, gamma):
    green = [np_green(key, a, 211, gamma)[b] for a, b in zip(tokens, tokens[1:])]
    return (sum(green) - gamma * len(green)) / np.sqrt(len(green) * gamma * (1 - gamma))


def test_200_watermarked_tokens_are_detected_and_unmarked_ones_are_not(tiny):
    h, p = tiny
    settings = dict(hparams=h, params=p, length=200, context=[[1]], top_k=40, seed=9)
    marked = sample.sample_sequence(watermark=77, watermark_delta=4.0, **settings)[0].numpy().tolist()
    plain = sample.sample_sequence(**settings)[0].numpy().tolist()
    assert z(marked[1:], 77, 0.25) > 4
    assert abs(z(plain[1:], 77, 0.25)) < 4
    assert abs(z(marked[1:], 78, 0.25)) < 4   # a wrong key does not detect


@pytest.mark.parametrize('kw,fragment', [
    (dict(repetition_penalty=0.5), 'repetition_penalty must be'),
    (dict(no_repeat_ngram_size=-1), 'no_repeat_ngram_size must be'),
    (dict(min_p=2.0), 'min_p must be'),
    (dict(typical_p=0), 'typical_p must be'),
    (dict(logit_bias={500: 1.0}), '500'),
    (dict(watermark=-1), 'watermark key must be an integer in [0, 2**31)'),
    (dict(watermark=1, watermark_gamma=1.5), 'gamma'),
    (dict(return_scores='yes'), 'return_scores must be True or False'),
])
def test_bad_control_settings_are_one_line(tiny, kw, fragment):
    h, p = tiny
    with pytest.raises(sample.SampleError) as e:
        sample.sample_sequence(hparams=h, params=p, length=3, context=ROWS, **kw)
    assert fragment in str(e.value) and '\n' not in str(e.value), str(e.value)


# --- beam search --------------------------------------------------------------------------------------------

def reference_beams(h, p, rows, length, k, length_penalty=1.0, early_stopping=False, n=1):
    """Hugging Face's beam search written out over full passes: per prompt, the k best continuations by
    summed log-prob; a candidate among the k best that draws <|endoftext|> is finished with score
    sum / new_tokens ** length_penalty; done per early_stopping; at the end the running beams finish too."""
    eos, results = h.n_vocab - 1, []
    for row in rows:
        beams = [(0.0, [])] + [(-1e9, [])] * (k - 1)
        finished, done = [], False
        for i in range(length):
            cands = []
            for score, new in beams:
                logp = log_softmax(model.model(h, [list(row) + new], params=p)['logits'][0, -1].numpy())
                cands += [(score + logp[v], new, v) for v in range(h.n_vocab)]
            cands.sort(key=lambda c: -c[0])
            cands = cands[:2 * k]
            kept = []
            for j, (score, new, v) in enumerate(cands):
                if len(kept) == k:
                    break
                if v == eos:
                    if j < k:
                        finished.append((score / (len(new) + 1) ** length_penalty, new + [v]))
                        finished = sorted(finished, key=lambda f: -f[0])[:k]
                else:
                    kept.append((score, new + [v]))
            if len(finished) == k:
                worst = min(f[0] for f in finished)
                if early_stopping is True or worst >= cands[0][0] / (i + 1) ** length_penalty:
                    done = True
                    break
            beams = kept
        if not done:
            for score, new in beams:
                finished.append((score / len(new) ** length_penalty, new))
            finished = sorted(finished, key=lambda f: -f[0])[:k]
        results.append([(new, score) for score, new in sorted(finished, key=lambda f: -f[0])[:n]])
    return results


@pytest.mark.parametrize('k,length_penalty,early_stopping', [(2, 1.0, False), (3, 0.5, True), (3, 2.0, False)])
def test_beam_search_equals_a_breadth_first_reference_over_full_passes(tiny, k, length_penalty, early_stopping):
    h, p = tiny
    rows = [[3, 4, 5], [6, 7, 8, 9, 10, 11, 12], [20]]
    got = sample.beam_search(hparams=h, params=p, context=rows, length=8, num_beams=k, length_penalty=length_penalty,
                             early_stopping=early_stopping, num_return_sequences=2)
    want = reference_beams(h, p, rows, 8, k, length_penalty, early_stopping, n=2)
    for g, w in zip(got, want):
        assert [tokens for tokens, _ in g] == [tokens for tokens, _ in w]
        np.testing.assert_allclose([s for _, s in g], [s for _, s in w], rtol=1e-4, atol=1e-4)


def test_beam_search_finishes_beams_at_endoftext(tiny):
    """With <|endoftext|> made likely, beams finish early and their score counts it as a new token."""
    h, p = tiny
    eos = h.n_vocab - 1
    p2 = dict(p, **{'model/wte': tf.constant(p['model/wte'].numpy() * np.where(
        np.arange(h.n_vocab)[:, None] == eos, 3.0, 1.0).astype(np.float32))})
    got = sample.beam_search(hparams=h, params=p2, context=[[3, 4, 5]], length=8, num_beams=3, num_return_sequences=3)
    want = reference_beams(h, p2, [[3, 4, 5]], 8, 3, n=3)
    assert [t for t, _ in got[0]] == [t for t, _ in want[0]]
    assert any(t[-1] == eos and len(t) < 8 for t, _ in got[0]), got


def test_beam_search_refuses_to_go_past_the_context(tiny):
    h, p = tiny
    with pytest.raises(sample.SampleError, match='does not go past the context'):
        sample.beam_search(hparams=h, params=p, context=[[1] * 30], length=5, num_beams=2)
