"""controls.py against plain numpy written from each control's definition (loops over rows and tokens),
eagerly and under XLA; Hugging Face's own processors as an optional cross-check."""
import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

import controls
from controls import Controls, ControlsError

V = 40        # vocabulary of the random cases: small, so random histories repeat tokens and n-grams
T = 24        # history buffer columns
EOS = 7


# --- references, straight from the definitions ---------------------------------------------------------

def history(tokens, start, length, r):
    return [int(t) for t in tokens[r, start[r]:length]]


def ref_penalties(logits, c, tokens, start, length, new_count):
    out = np.array(logits, np.float64)
    for r in range(out.shape[0]):
        h = history(tokens, start, length, r)
        for i, b in dict(c.logit_bias).items():
            out[r, i] += b
        if c.repetition_penalty != 1:
            for v in set(h):
                if 0 <= v < out.shape[1]:
                    x = out[r, v]
                    out[r, v] = x * c.repetition_penalty if x < 0 else x / c.repetition_penalty
        banned = set()
        n = c.no_repeat_ngram_size
        if n:
            last = h[len(h) - (n - 1):] if n > 1 else []
            for i in range(len(h) - n + 1):
                if h[i:i + n - 1] == last:
                    banned.add(h[i + n - 1])
        for word in c.bad_words_ids:
            word = list(word)
            if len(word) == 1:
                if word != [c.eos_id]:
                    banned.add(word[0])
            elif len(h) >= len(word) - 1 and h[len(h) - (len(word) - 1):] == word[:-1]:
                banned.add(word[-1])
        if new_count < c.min_new_tokens:
            banned.add(c.eos_id)
        for v in banned:
            if 0 <= v < out.shape[1]:
                out[r, v] = -np.inf
    return out


def ref_softmax(row):
    row = np.asarray(row, np.float64)
    e = np.exp(row - row.max())
    return e / e.sum()


def ref_typical(logits, mass):
    out = np.array(logits, np.float64)
    for r in range(out.shape[0]):
        p = ref_softmax(logits[r])
        entropy = -sum(q * math.log(q) for q in p if q > 0)
        distance = [abs(-math.log(q) - entropy) if q > 0 else math.inf for q in p]
        order = sorted(range(len(p)), key=lambda v: distance[v])
        kept, total = [], 0.0
        for v in order:
            kept.append(v)
            total += p[v]
            if total >= mass:
                break
        for v in range(len(p)):
            if v not in kept and distance[v] > distance[kept[-1]]:
                out[r, v] = controls.FILLER
    return out


def ref_min_p(logits, min_p):
    out = np.array(logits, np.float64)
    for r in range(out.shape[0]):
        p = ref_softmax(logits[r])
        for v in range(len(p)):
            if p[v] < min_p * p.max():
                out[r, v] = controls.FILLER
    return out


# --- random cases ------------------------------------------------------------------------------------------

def case(seed, batch=6, vocab=V, alphabet=4):
    """Logits of both signs and histories over a small alphabet (so n-grams repeat), with ragged starts
    and unwritten columns past `length` holding garbage."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, [batch, vocab]).astype(np.float32)
    tokens = rng.integers(0, alphabet, [batch, T]).astype(np.int32)
    tokens[:, 2::5] = rng.integers(0, vocab, [batch, len(range(2, T, 5))])   # rarer ids, never the last
    length = T - 3
    start = rng.integers(0, length // 2, [batch]).astype(np.int32)
    start[0] = 0
    start[-1] = length - 1                       # a row with one real token
    tokens[:, length:] = rng.integers(0, vocab, [batch, T - length])
    for r in range(batch):
        tokens[r, :start[r]] = rng.integers(0, alphabet)   # padding: ids that must not count as history
    return logits, tokens, start, length


def run(c, logits, tokens, start, length, new_count, xla):
    fn = lambda *a: controls.apply_penalties(a[0], c, *a[1:])
    if xla:
        fn = tf.function(fn, jit_compile=True)
    args = (tf.constant(logits), tf.constant(tokens), tf.constant(start), tf.constant(length, tf.int32),
            tf.constant(new_count, tf.int32))
    return fn(*args).numpy()


def assert_same(got, want):
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = ~np.isneginf(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6)


CASES = {
    'repetition': Controls(repetition_penalty=1.7),
    'ngram1': Controls(no_repeat_ngram_size=1),
    'ngram2': Controls(no_repeat_ngram_size=2),
    'ngram3': Controls(no_repeat_ngram_size=3),
    'bad_words': Controls(bad_words_ids=((3,), (1, 2), (2, 0, 5), (4, 4, 4, 1), (EOS,), (0, EOS)), eos_id=EOS),
    'logit_bias': Controls(logit_bias={0: 2.5, 5: -1.25, 11: -math.inf, V - 1: 0.5}),
    'everything': Controls(repetition_penalty=1.3, no_repeat_ngram_size=2, min_new_tokens=2, eos_id=EOS,
                           logit_bias={1: 3.0, 2: -math.inf}, bad_words_ids=((4,), (0, 1), (3, 5, 2))),
}


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
@pytest.mark.parametrize('name', sorted(CASES))
def test_penalties_match_numpy(name, xla):
    c = CASES[name]
    for seed in range(3):
        logits, tokens, start, length = case(seed)
        want = ref_penalties(logits, c, tokens, start, length, 1)
        assert_same(run(c, logits, tokens, start, length, 1, xla), want)


def test_the_random_cases_exercise_each_control():
    """The references change several rows in these cases, so the comparisons above can fail."""
    multi_token = Controls(bad_words_ids=tuple(w for w in CASES['bad_words'].bad_words_ids if len(w) > 1))
    for name, c in dict(CASES, multi_token=multi_token).items():
        rows = 0
        for seed in range(3):
            logits, tokens, start, length = case(seed)
            rows += (ref_penalties(logits, c, tokens, start, length, 1) != logits).any(axis=1).sum()
        assert rows >= 4, name
    logits, tokens, start, length = case(0)
    rep = ref_penalties(logits, CASES['repetition'], tokens, start, length, 1)
    assert ((logits < 0) & (rep < logits)).any() and ((logits > 0) & (rep < logits)).any()


def test_repetition_penalty_counts_each_id_once_and_ignores_padding():
    logits = np.array([[2.0, -2.0, 4.0, 1.0]], np.float32)
    tokens = np.array([[3, 0, 0, 0, 1]], np.int32)                  # column 0 (id 3) is padding
    out = run(Controls(repetition_penalty=2.0), logits, tokens, np.array([1]), 5, 0, xla=False)
    np.testing.assert_allclose(out, [[1.0, -4.0, 4.0, 1.0]])


def test_ngram_by_hand():
    # history 5 6 7 5 6: the 3-gram (5, 6, 7) is there and the row ends with 5 6, so 7 is banned
    tokens = np.array([[9, 5, 6, 7, 5, 6, 0, 0]], np.int32)
    logits = np.zeros([1, 10], np.float32)
    for xla in (False, True):
        out = run(Controls(no_repeat_ngram_size=3), logits, tokens, np.array([1]), 6, 0, xla)
        assert np.isneginf(out[0]).nonzero()[0].tolist() == [7]
        out = run(Controls(no_repeat_ngram_size=2), logits, tokens, np.array([1]), 6, 0, xla)
        assert np.isneginf(out[0]).nonzero()[0].tolist() == [7]       # ends with 6; 6 was followed by 7


def test_multi_token_bad_word_needs_its_prefix_inside_the_row():
    """(9, 4) bans 4 after a 9, but not when the 9 is padding."""
    tokens = np.array([[9, 1, 9], [9, 1, 2]], np.int32)
    logits = np.zeros([2, 10], np.float32)
    c = Controls(bad_words_ids=((9, 4),))
    out = run(c, logits, tokens, np.array([0, 0]), 3, 0, xla=False)
    assert list(zip(*np.isneginf(out).nonzero())) == [(0, 4)]
    out = run(c, logits, tokens[:, :1], np.array([1, 1]), 1, 0, xla=False)   # rows of padding only
    assert not np.isneginf(out).any()


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
def test_min_new_tokens_boundary(xla):
    logits, tokens, start, length = case(1)
    c = Controls(min_new_tokens=3, eos_id=EOS)
    for new_count in (0, 2, 3, 4):
        out = run(c, logits, tokens, start, length, new_count, xla)
        assert_same(out, ref_penalties(logits, c, tokens, start, length, new_count))
        assert np.isneginf(out[:, EOS]).all() == (new_count < 3)
        assert np.isneginf(out).sum() == (out.shape[0] if new_count < 3 else 0)


def test_off_by_default_returns_the_input_itself():
    logits = tf.random.normal([2, V])
    assert not Controls().active
    assert controls.apply_penalties(logits, Controls(), None, None, None, None) is logits
    assert controls.truncate(logits, Controls()) is logits
    assert controls.typical_logits(logits, 1.0) is logits
    assert controls.min_p_logits(logits, 0.0) is logits
    assert Controls(min_p=0.1).active and not Controls(min_p=0.1).penalizes
    assert Controls(no_repeat_ngram_size=2).penalizes and not Controls(no_repeat_ngram_size=2).truncates


def test_off_by_default_adds_no_ops_to_a_graph():
    fn = tf.function(lambda x: controls.truncate(controls.apply_penalties(x, Controls(), None, None, None, None),
                                                 Controls()))
    graph = fn.get_concrete_function(tf.TensorSpec([2, V])).graph
    assert sorted(op.type for op in graph.get_operations()) == ['Identity', 'Placeholder']


# --- truncations -----------------------------------------------------------------------------------------

def truncation_logits(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, [5, 300]).astype(np.float32)
    logits[1, :5] = -np.inf                                         # banned by a penalty
    logits[2, 10:20] = controls.FILLER                              # cut by top-k / top-p
    logits[3] = rng.normal(0, 0.05, [300])                          # nearly flat
    logits[4, 0] = 12                                               # one token dominates
    return logits


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
@pytest.mark.parametrize('mass', [0.2, 0.5, 0.9, 0.99])
def test_typical_matches_numpy(mass, xla):
    fn = lambda x: controls.typical_logits(x, mass)
    fn = tf.function(fn, jit_compile=True) if xla else fn
    for seed in range(2):
        logits = truncation_logits(seed)
        got = fn(tf.constant(logits)).numpy()
        assert not np.isnan(got).any()
        want = ref_typical(logits, mass)
        np.testing.assert_array_equal(got == controls.FILLER, want == controls.FILLER)
        np.testing.assert_array_equal(got, np.where(want == controls.FILLER, controls.FILLER, logits))
        assert ((got != controls.FILLER) & np.isfinite(got)).any(axis=1).all()


def test_typical_can_drop_the_most_likely_token():
    # entropy 1.09 nats; -log 0.4 = 0.92 is further from it than -log 0.3 = 1.20
    logits = np.log(np.array([[0.4, 0.3, 0.3]], np.float32))
    got = controls.typical_logits(tf.constant(logits), 0.5).numpy()
    assert got[0, 0] == controls.FILLER and (got[0, 1:] == logits[0, 1:]).all()


def test_typical_stops_where_the_mass_reaches_p_exactly():
    """Probabilities exact in float32: 0.25 is the most typical (|2 - 1.75| bits), then 0.5; together
    they reach 0.75 exactly, so the two 0.125s go."""
    logits = np.log(np.array([[0.5, 0.25, 0.125, 0.125]], np.float32))
    got = controls.typical_logits(tf.constant(logits), 0.75).numpy()
    np.testing.assert_array_equal(got, [[logits[0, 0], logits[0, 1], controls.FILLER, controls.FILLER]])
    np.testing.assert_array_equal(got, ref_typical(logits, 0.75))


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
@pytest.mark.parametrize('min_p', [0.01, 0.1, 0.5, 1.0])
def test_min_p_matches_numpy(min_p, xla):
    fn = lambda x: controls.min_p_logits(x, min_p)
    fn = tf.function(fn, jit_compile=True) if xla else fn
    for seed in range(2):
        logits = truncation_logits(seed)
        got = fn(tf.constant(logits)).numpy()
        assert not np.isnan(got).any()
        want = ref_min_p(logits, min_p)
        np.testing.assert_array_equal(got == controls.FILLER, want == controls.FILLER)
        assert (got == np.where(want == controls.FILLER, controls.FILLER, logits)).all()


def test_truncate_is_min_p_then_typical():
    logits = truncation_logits(3)
    c = Controls(typical_p=0.6, min_p=0.05)
    got = controls.truncate(tf.constant(logits), c).numpy()
    np.testing.assert_array_equal(got, ref_typical(ref_min_p(logits, 0.05), 0.6).astype(np.float32))


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
def test_the_draw_never_picks_a_banned_or_cut_token(xla):
    logits = np.zeros([2, 6], np.float32)
    logits[:, [1, 4]] = -np.inf
    logits[:, 2] = controls.FILLER
    draw = lambda x, seed: tf.random.stateless_categorical(x, 4000, seed, dtype=tf.int32)
    draw = tf.function(draw, jit_compile=True) if xla else draw
    picks = draw(tf.constant(logits), tf.constant([1, 2])).numpy()
    assert set(np.unique(picks)) == {0, 3, 5}


# --- settings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize('kwargs, message', [
    (dict(repetition_penalty=0.5), 'repetition_penalty must be a number >= 1 (1 means off), got 0.5'),
    (dict(repetition_penalty=math.inf), 'repetition_penalty must be'),
    (dict(repetition_penalty=True), 'repetition_penalty must be'),
    (dict(repetition_penalty='1.2'), 'repetition_penalty must be'),
    (dict(no_repeat_ngram_size=-1), 'no_repeat_ngram_size must be an integer >= 0 (0 means off), got -1'),
    (dict(no_repeat_ngram_size=2.0), 'no_repeat_ngram_size must be an integer'),
    (dict(min_new_tokens=-3), 'min_new_tokens must be an integer >= 0'),
    (dict(eos_id=-1), 'eos_id must be an integer >= 0'),
    (dict(typical_p=0), 'typical_p must be a number in (0, 1] (1 means off), got 0'),
    (dict(typical_p=1.5), 'typical_p must be'),
    (dict(min_p=-0.1), 'min_p must be a number in [0, 1] (0 means off), got -0.1'),
    (dict(min_p=float('nan')), 'min_p must be'),
    (dict(logit_bias=[1, 2]), 'logit_bias must be a dict {token id: bias}'),
    (dict(logit_bias={'a': 1.0}), 'logit_bias keys must be token ids'),
    (dict(logit_bias={-1: 1.0}), 'logit_bias keys must be token ids'),
    (dict(logit_bias={3: math.inf}), 'logit_bias values must be finite numbers or -inf'),
    (dict(logit_bias={3: float('nan')}), 'logit_bias values must be'),
    (dict(logit_bias=[(3, 1.0), (3, 2.0)]), 'logit_bias gives token 3 twice'),
    (dict(bad_words_ids=5), 'bad_words_ids must be a sequence of token-id sequences'),
    (dict(bad_words_ids=[5]), 'bad_words_ids must be a sequence of token-id sequences'),
    (dict(bad_words_ids=['ab']), 'bad_words_ids must be a sequence of token-id sequences'),
    (dict(bad_words_ids=[[]]), 'each of bad_words_ids must be a non-empty sequence'),
    (dict(bad_words_ids=[[1, -2]]), 'each of bad_words_ids must be'),
])
def test_bad_values_give_one_line_errors(kwargs, message):
    with pytest.raises(ControlsError) as e:
        Controls(**kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_ids_outside_the_vocabulary_are_refused_at_the_first_call():
    c = Controls(bad_words_ids=((1, V + 3),))
    with pytest.raises(ControlsError, match=f'token id {V + 3} .* outside the vocabulary of {V} tokens'):
        controls.apply_penalties(tf.zeros([1, V]), c, np.zeros([1, 4], np.int32), [0], 4, 0)
    with pytest.raises(ControlsError, match='token id 50256'):
        Controls(min_new_tokens=1).check(n_vocab=V)


def test_settings_are_normalised_and_hashable():
    a = Controls(logit_bias={5: 1, 2: -math.inf}, bad_words_ids=[[1, 2], (1, 2), np.array([3])])
    b = Controls(logit_bias=[(2, -math.inf), (5, 1.0)], bad_words_ids=((1, 2), (3,)))
    assert a == b and hash(a) == hash(b)
    assert a.logit_bias == ((2, -math.inf), (5, 1.0)) and a.bad_words_ids == ((1, 2), (3,))
    assert isinstance(Controls(typical_p=1).typical_p, float)


def test_ban_sequences():
    import encoder
    enc = encoder.get_default_encoder()
    got = controls.ban_sequences(enc, ['hello world', 'Paris'])
    want = [tuple(enc.encode(t)) for t in ('hello world', ' hello world', 'Paris', ' Paris')]
    assert got == tuple(want) and len(set(want)) == 4
    assert controls.ban_sequences(enc, [' x', ' x']) == (tuple(enc.encode(' x')), tuple(enc.encode('  x')))
    for bad in ('', None):
        with pytest.raises(ControlsError, match=r"^--ban needs a non-empty text, got (''|None)$"):
            controls.ban_sequences(enc, ['ok', bad])
    assert Controls(bad_words_ids=got).bad_words_ids == got


def test_parse_logit_bias():
    assert controls.parse_logit_bias('{"50256": "-inf", "198": 2.5, "7": -Infinity}') == \
        {7: -math.inf, 198: 2.5, 50256: -math.inf}
    assert controls.parse_logit_bias('{}') == {}
    for text, message in [('{"a": 1}', "--logit_bias keys must be token ids"),
                          ('[1, 2]', '--logit_bias must be a JSON object'),
                          ('{"1": 2', '--logit_bias must be a JSON object'),
                          ('{"1": "big"}', 'logit_bias values must be finite numbers or -inf'),
                          ('{"1": Infinity}', 'logit_bias values must be')]:
        with pytest.raises(ControlsError) as e:
            controls.parse_logit_bias(text)
        assert message in str(e.value) and '\n' not in str(e.value)


# --- beam search -------------------------------------------------------------------------------------

def test_beam_step_by_hand():
    # one row, two beams, three tokens: candidates are beam score + log-prob
    log_probs = tf.math.log(tf.constant([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    beam_scores = tf.math.log(tf.constant([0.4, 0.6]))
    scores, tokens, beams = controls.beam_step(log_probs, beam_scores, num_beams=2)
    # products: beam 0: .20 .12 .08, beam 1: .06 .36 .18 -> best four: .36 (1,1) .20 (0,0) .18 (1,2) .12 (0,1)
    np.testing.assert_allclose(np.exp(scores.numpy()), [[0.36, 0.20, 0.18, 0.12]], rtol=1e-6)
    assert tokens.numpy().tolist() == [[1, 0, 2, 1]] and beams.numpy().tolist() == [[1, 0, 1, 0]]
    assert tokens.dtype == beams.dtype == tf.int32


@pytest.mark.parametrize('xla', [False, True], ids=['eager', 'xla'])
def test_beam_step_matches_brute_force(xla):
    rng = np.random.default_rng(5)
    batch, beams, vocab = 3, 4, 50
    log_probs = np.log(rng.dirichlet(np.ones(vocab), batch * beams)).astype(np.float32)
    beam_scores = rng.normal(-5, 2, batch * beams).astype(np.float32)
    step = tf.function(controls.beam_step, jit_compile=True) if xla else controls.beam_step
    scores, tokens, indices = (t.numpy() for t in step(tf.constant(log_probs), tf.constant(beam_scores), beams))
    for b in range(batch):
        candidates = [(beam_scores[b * beams + i] + log_probs[b * beams + i, v], i, v)
                      for i in range(beams) for v in range(vocab)]
        best = sorted(candidates, key=lambda c: -c[0])[:2 * beams]
        np.testing.assert_allclose(scores[b], [c[0] for c in best], rtol=1e-6)
        assert list(zip(indices[b], tokens[b])) == [(c[1], c[2]) for c in best]


def test_first_beam_scores_start_from_one_beam():
    scores = controls.first_beam_scores(2, 3).numpy()
    assert scores.tolist() == [0, -1e9, -1e9, 0, -1e9, -1e9]
    log_probs = tf.zeros([6, 5]) + tf.range(5, dtype=tf.float32)
    _, tokens, beams = controls.beam_step(log_probs, scores, 3)
    assert (beams.numpy()[:, :5] == 0).all() and tokens.numpy()[:, :5].tolist() == [[4, 3, 2, 1, 0]] * 2


def test_beam_hypotheses_by_hand():
    h = controls.BeamHypotheses(num_beams=2, length_penalty=1.0, early_stopping=False, max_length=20, prompt_len=3)
    h.add([9, 9, 9, 1, 2], -4.0)              # 2 new tokens: score -2
    assert h.worst_score == -2 and not h.is_done(-0.1, 6)   # still room
    h.add([9, 9, 9, 1, 2, 3, 4], -4.0)        # 4 new: -1
    assert [s for s, _ in h.best()] == [-1, -2] and h.worst_score == -2
    h.add([9, 9, 9, 5], -2.5)                 # -2.5: worse than both, not kept
    assert len(h) == 2 and h.worst_score == -2
    h.add([9, 9, 9, 5, 6], -3.0)              # -1.5: replaces -2
    assert [s for s, _ in h.best()] == [-1, -1.5] and h.worst_score == -1.5
    # False: the best running sum over the new tokens so far (cur_len 9 -> 6 new)
    assert h.is_done(-9.0, 9) and not h.is_done(-8.9, 9)      # -9 / 6 = -1.5 >= worst
    h2 = controls.BeamHypotheses(2, 1.0, 'never', max_length=23, prompt_len=3)
    for s, tokens in h.beams:
        h2.add(tokens, s * (len(tokens) - 3))
    assert h2.is_done(-30.0, 9) and not h2.is_done(-29.9, 9)  # "never", penalty > 0: bound at 20 new tokens
    h3 = controls.BeamHypotheses(2, 1.0, True)
    h3.add([1], -100.0)
    assert not h3.is_done(0.0, 2)
    h3.add([1, 2], -100.0)
    assert h3.is_done(0.0, 2)                                  # True: done once num_beams are finished


def test_beam_hypotheses_length_penalty_and_never_with_negative_penalty():
    h = controls.BeamHypotheses(1, length_penalty=2.0)
    h.add([1, 2, 3], -9.0)
    assert h.best()[0][0] == -1.0                              # -9 / 3**2
    h = controls.BeamHypotheses(1, length_penalty=-1.0, early_stopping='never', max_length=50)
    h.add([1, 2], -1.0)                                        # -1 * 2 = -2
    assert h.is_done(-0.5, 4) and not h.is_done(-0.49, 4)     # penalty <= 0: bound at cur_len, -0.5 * 4


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_beams=0), 'num_beams must be an integer >= 1'),
    (dict(num_beams=2, length_penalty=math.nan), 'length_penalty must be a finite number'),
    (dict(num_beams=2, early_stopping='sometimes'), 'early_stopping must be True, False or "never"'),
    (dict(num_beams=2, early_stopping=1), 'early_stopping must be True, False or "never"'),
    (dict(num_beams=2, early_stopping='never'), 'early_stopping="never" needs max_length'),
])
def test_beam_hypotheses_bad_values(kwargs, message):
    with pytest.raises(ControlsError) as e:
        controls.BeamHypotheses(**kwargs)
    assert message in str(e.value) and '\n' not in str(e.value)


# --- Hugging Face's own processors, where installed (a cross-check; the numpy references above are the tests)

def hf_processors():
    pytest.importorskip('torch')
    return pytest.importorskip('transformers.generation.logits_process')


def test_penalties_match_hugging_face():
    """Each row alone (HF counts left padding as history in n-grams and bad words), HF's processors in
    _get_logits_processor's order."""
    import torch
    hf = hf_processors()
    for name, c in CASES.items():
        logits, tokens, start, length = case(2)
        new_count = 1
        got = run(c, logits, tokens, start, length, new_count, xla=False)
        for r in range(len(logits)):
            ids = torch.tensor([history(tokens, start, length, r)])
            scores = torch.tensor(logits[r:r + 1])
            chain = []
            if c.logit_bias:
                chain.append(hf.SequenceBiasLogitsProcessor([[[i], b] for i, b in c.logit_bias]))
            if c.repetition_penalty != 1:
                chain.append(hf.RepetitionPenaltyLogitsProcessor(c.repetition_penalty))
            if c.no_repeat_ngram_size:
                chain.append(hf.NoRepeatNGramLogitsProcessor(c.no_repeat_ngram_size))
            if c.bad_words_ids:
                chain.append(hf.NoBadWordsLogitsProcessor([list(s) for s in c.bad_words_ids], c.eos_id))
            if c.min_new_tokens:
                chain.append(hf.MinNewTokensLengthLogitsProcessor(ids.shape[1] - new_count, c.min_new_tokens,
                                                                  c.eos_id))
            for processor in chain:
                scores = processor(ids, scores)
            assert_same(got[r:r + 1], scores.numpy().astype(np.float64))


def test_repetition_penalty_matches_hugging_face_on_the_padded_batch():
    """transformers 5 skips each row's left padding (prompt_ignore_length from the attention mask)."""
    import torch
    hf = hf_processors()
    logits, tokens, start, length = case(4)
    c = Controls(repetition_penalty=1.4)
    processor = hf.RepetitionPenaltyLogitsProcessor(1.4, prompt_ignore_length=torch.tensor(start, dtype=torch.long))
    if not isinstance(processor.prompt_ignore_length, torch.Tensor):
        pytest.skip('this transformers takes no per-row prompt_ignore_length')
    want = processor(torch.tensor(tokens[:, :length], dtype=torch.long), torch.tensor(logits)).numpy()
    assert_same(run(c, logits, tokens, start, length, 0, xla=False), want)


def test_truncations_match_hugging_face():
    import torch
    hf = hf_processors()
    for seed, mass, min_p in itertools.product(range(2), (0.3, 0.9), (0.02, 0.3)):
        logits = truncation_logits(seed)
        typical = hf.TypicalLogitsWarper(mass, filter_value=controls.FILLER)
        minp = hf.MinPLogitsWarper(min_p, filter_value=controls.FILLER)
        np.testing.assert_array_equal(controls.typical_logits(tf.constant(logits), mass).numpy(),
                                      typical(None, torch.tensor(logits)).numpy())
        np.testing.assert_array_equal(controls.min_p_logits(tf.constant(logits), min_p).numpy(),
                                      minp(None, torch.tensor(logits)).numpy())
