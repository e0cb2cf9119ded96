"""eval.py and detokenize.py: scores checked against direct model.model computations and hand counts."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import detokenize
import encoder
import eval as ev
import checkpoint
import model

SMALL = dict(n_vocab=50257, n_ctx=32, n_embd=32, n_head=4, n_layer=2)
V = 50257


@pytest.fixture(scope='module')
def enc():
    return encoder.get_default_encoder()


@pytest.fixture(scope='module')
def small():
    """A tiny model with large random weights, so that a token's score depends strongly on its context."""
    h = model.default_hparams().override_from_dict(SMALL)
    rng = np.random.default_rng(7)
    params = {}
    for name, shape in checkpoint.param_shapes(h).items():
        leaf = name.rsplit('/', 1)[1]
        value = {'g': np.ones(shape), 'b': np.zeros(shape)}.get(leaf)
        params[name] = tf.constant(0.3 * rng.standard_normal(shape) if value is None else value, tf.float32)
    return h, params


class IdsEncoder:
    """Documents written as space-separated token ids, so tests choose the exact token stream."""

    def encode(self, text):
        return [int(t) for t in text.split()]


@pytest.fixture(scope='module')
def small_scorer(small):
    """One compiled scorer for the tests that use the small model (tracing costs more than scoring)."""
    return ev.Scorer(*small, batch_size=3)


def log_probs(h, params, tokens):
    """float64 log-softmax of model.model's logits for one sequence, computed outside eval.py."""
    logits = model.model(h, np.array([tokens], np.int32), params=params)['logits'].numpy()[0].astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Detokenisers.

@pytest.mark.parametrize('name, tokenized, expected', [
    ('wikitext', ' = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . \n',
     '= Robert Boulter =\n\nRobert Boulter is an English film, television and theatre actor.\n'),
    ('wikitext', ' He had a guest @-@ starring role as " Craig " in " Teddy \'s Story " ; 8 @,@ 500 troops , 52 @.@ 9 % . ',
     'He had a guest-starring role as "Craig" in "Teddy\'s Story"; 8,500 troops, 52.9%.'),
    ('wikitext', ' = = Career = = \n Valkyria 3 : Unrecorded ( Japanese : 戦場 , lit . Battlefield 3 ) , the Blue Jackets \' record \n',
     '== Career ==\nValkyria 3: Unrecorded (Japanese: 戦場, lit. Battlefield 3), the Blue Jackets\' record\n'),
    ('wikitext', ' = = = Early life = = = \n He did n\'t go ! Why ? \n',
     '=== Early life ===\nHe didn\'t go! Why?\n'),
    ('ptb', " the company said it does n't expect $ N million in <unk> 's sales \n mr. <unk> is N years old \n",
     "the company said it doesn't expect $N million in <unk>'s sales\nmr. <unk> is N years old\n"),
    ('ptb', " we 're sure they 've been there and i 'm told he 'll go \n",
     "we're sure they've been there and i'm told he'll go\n"),
    ('1bw', 'He said : " I \'m not sure , but we \'ll see . " Prices rose 5 % to $ 3.5 billion ( up from $ 2 billion ) !\n',
     'He said: "I\'m not sure, but we\'ll see." Prices rose 5% to $3.5 billion (up from $2 billion)!\n'),
    ('1bw', "The players ' union , which did n't comment , meets [ again ] on Friday ; it 's over .",
     "The players' union, which didn't comment, meets [again] on Friday; it's over."),
    ('none', ' a , b @-@ c \n', ' a , b @-@ c \n'),
])
def test_detokenizers_on_known_pairs(name, tokenized, expected):
    assert detokenize.get(name)(tokenized) == expected


def test_detokenizers_leave_untokenised_text_alone():
    text = 'He said: "I\'m here (really), it\'s 5% of $3.5 billion."\nWell-known.\n'
    for name in ('wikitext', '1bw'):
        assert detokenize.get(name)(text) == text


def test_unknown_detokenizer_is_a_clear_error():
    with pytest.raises(ValueError, match='wikitext'):
        detokenize.get('moses')


# ---------------------------------------------------------------------------------------------
# Reading documents.

def test_read_documents_formats(tmp_path):
    f = tmp_path / 'd.txt'
    f.write_bytes('\ufeffone\u2028still one\n\n  \ntwo'.encode('utf-8'))
    assert ev.read_documents(str(f)) == ['one\u2028still one\n\n  \ntwo']
    assert ev.read_documents(str(f), 'lines') == ['one\u2028still one\n', 'two']
    j = tmp_path / 'd.jsonl'
    j.write_text('{"text": "a\\nb\u2028c", "id": 1}\r\n\n"bare"\n', encoding='utf-8')
    assert ev.read_documents(str(j)) == ['a\nb\u2028c', 'bare']
    assert ev.read_documents(str(j), 'lines') == ['{"text": "a\\nb\u2028c", "id": 1}\r\n', '"bare"\n']
    with pytest.raises(ev.EvalError, match="line 1 has no string field 'body'"):
        ev.read_documents(str(j), field='body')
    b = tmp_path / 'cut.txt'
    b.write_bytes('café'.encode('utf-8')[:-1])  # a file cut inside the two bytes of é
    with pytest.raises(ev.EvalError, match='not valid UTF-8'):
        ev.read_documents(str(b))
    (doc,) = ev.read_documents(str(b), invalid_utf8='replace')
    assert ev.count_units(doc)[1] == 4  # the original bytes, the stray one included


# ---------------------------------------------------------------------------------------------
# Sliding windows.

@pytest.mark.parametrize('n, context, stride', [(1, 8, 8), (2, 8, 8), (9, 8, 8), (10, 8, 8), (40, 8, 8),
                                                (41, 8, 3), (100, 8, 1), (17, 8, 5), (8, 8, 4), (300, 32, 12)])
def test_windows_score_every_target_once_with_enough_context(n, context, stride):
    windows = ev.plan_windows(n, context, stride)
    scored = [t for start, end, first in windows for t in range(first, end + 1)]
    assert sorted(scored) == list(range(1, n))  # every target once
    for start, end, first in windows:
        assert 0 <= start < first <= end and end - start <= context
        # Target t sees inputs start..t-1: all of them when t <= context, else at least context - stride + 1.
        assert first - start >= min(first, context - stride + 1)
    if n - 1 >= context:
        assert all(end - start == context for start, end, _ in windows)  # the last window is pulled back, full


def test_bad_strides_are_refused(small):
    h, params = small
    with pytest.raises(ev.EvalError, match='stride'):
        ev.perplexity(h, params, IdsEncoder(), ['1 2 3'], context=8, stride=9)
    with pytest.raises(ev.EvalError, match='context'):
        ev.perplexity(h, params, IdsEncoder(), ['1 2 3'], context=33)


# ---------------------------------------------------------------------------------------------
# Perplexity against model.model.

def test_perplexity_with_stride_equal_to_context_is_plain_chunking(small, small_scorer):
    """A stream of 3 * 32 + 1 tokens: three disjoint windows, scored here directly."""
    h, params = small
    C = h.n_ctx
    ids = np.random.default_rng(1).integers(0, 50000, 3 * C).tolist()
    stream = [ev.EOT] + ids
    chunks = np.array([stream[i * C:(i + 1) * C] for i in range(3)], np.int32)
    logits = model.model(h, chunks, params=params)['logits'].numpy().astype(np.float64)
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    nll = -sum(lp[i, j, stream[i * C + j + 1]] for i in range(3) for j in range(C))
    result = ev.perplexity(h, params, IdsEncoder(), [' '.join(map(str, ids))], context=C, stride=C,
                           scorer=small_scorer)
    assert result['tokens'] == 3 * C and result['windows'] == 3
    assert result['nll'] == pytest.approx(nll, rel=1e-5)
    assert result['ppl_token'] == pytest.approx(math.exp(nll / (3 * C)), rel=1e-4)


def start_of(t, n_targets, context, stride):
    """Where target t's window starts, from the rule in eval.py's docstring: the first window of
    0, stride, 2 stride, ... that reaches t; the window that reaches the end starts at end - context."""
    if n_targets <= context:
        return 0
    k = max(0, math.ceil((t - context) / stride))
    return k * stride if k * stride + context < n_targets else n_targets - context


@pytest.mark.parametrize('bos', [True, False])
def test_perplexity_with_a_smaller_stride_scores_each_token_once_with_its_window_context(small, small_scorer, bos):
    h, params = small
    C, S = 16, 6
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 50000, 57).tolist(), rng.integers(0, 50000, 9).tolist()]  # long, and short
    nll, count = 0.0, 0
    for ids in docs:
        stream = ([ev.EOT] if bos else []) + ids
        T = len(stream) - 1
        starts = {}
        for t in range(1, T + 1):
            starts.setdefault(start_of(t, T, C, S), []).append(t)
        for start, targets in starts.items():
            assert targets[-1] - start <= C
            # Causal attention: one pass over stream[start:last target] gives each target's score
            # conditioned on exactly stream[start:t].
            lp = log_probs(h, params, stream[start:targets[-1]])
            nll -= sum(lp[t - 1 - start, stream[t]] for t in targets)
            count += len(targets)
    result = ev.perplexity(h, params, IdsEncoder(), [' '.join(map(str, d)) for d in docs],
                           context=C, stride=S, bos=bos, scorer=small_scorer)
    assert result['tokens'] == count == sum(len(d) for d in docs) - (0 if bos else len(docs))
    assert result['nll'] == pytest.approx(nll, rel=1e-5)
    assert result['ppl_token'] == pytest.approx(math.exp(nll / count), rel=1e-4)
    # The comparison is sensitive to the context each token gets: without overlap the total differs.
    other = ev.perplexity(h, params, IdsEncoder(), [' '.join(map(str, d)) for d in docs], context=C, stride=C,
                          bos=bos, scorer=small_scorer)
    assert abs(other['nll'] - nll) > 1e-3 * nll


def test_normalisation_by_hand():
    """6 bits over 3 tokens, 2 words, 4 bytes, 3 chars."""
    m = ev.metrics(6 * math.log(2), tokens=3, words=2, nbytes=4, chars=3)
    assert m['ppl_token'] == pytest.approx(4.0)       # 2 ** (6 / 3)
    assert m['ppl_word'] == pytest.approx(8.0)        # 2 ** (6 / 2)
    assert m['bits_per_byte'] == pytest.approx(1.5)   # 6 / 4
    assert m['bits_per_char'] == pytest.approx(2.0)   # 6 / 3
    assert ev.metrics(1.0, 1, 0, 0, 0)['ppl_word'] is None


def test_count_units_by_hand():
    assert ev.count_units('Xylophone café') == (2, 15, 14)
    assert ev.count_units(' a  b\nc \n', count_line_ends=True) == (3 + 2, 9, 9)


@pytest.fixture(scope='module')
def uniform(small):
    """wte = 0 makes every logit 0: each token costs exactly ln(50257) nats."""
    h, params = small
    return h, {**params, 'model/wte': tf.zeros_like(params['model/wte'])}


def test_uniform_model_bits_per_byte_and_per_word_by_hand(uniform, enc):
    h, params = uniform
    # "Xylophone café" is X|yl|ophone| café: 4 tokens, 2 words, 15 bytes (é is 2), 14 chars.
    r = ev.perplexity(h, params, enc, ['Xylophone café'])
    assert (r['tokens'], r['words'], r['bytes'], r['chars']) == (4, 2, 15, 14)
    assert r['ppl_token'] == pytest.approx(V, rel=1e-4)
    assert r['ppl_word'] == pytest.approx(V ** 2, rel=1e-3)
    assert r['bits_per_byte'] == pytest.approx(4 * math.log2(V) / 15, rel=1e-5)
    assert r['bits_per_char'] == pytest.approx(4 * math.log2(V) / 14, rel=1e-5)


def test_counts_use_the_original_text_not_the_detokenised_one(uniform, enc):
    h, params = uniform
    # Scored as "well-known café" (well|-|known| café); counted as WikiText's 4 words, 20 bytes, 19 chars.
    r = ev.perplexity(h, params, enc, ['well @-@ known café'], detokenizer='wikitext')
    assert (r['tokens'], r['words'], r['bytes'], r['chars']) == (4, 4, 20, 19)
    assert r['ppl_word'] == pytest.approx(V, rel=1e-4)
    assert r['bits_per_byte'] == pytest.approx(4 * math.log2(V) / 20, rel=1e-5)
    r = ev.perplexity(h, params, enc, ['well @-@ known café\n'], detokenizer='wikitext', count_line_ends=True)
    assert (r['tokens'], r['words']) == (5, 5)


# ---------------------------------------------------------------------------------------------
# LAMBADA.

def test_split_last_word():
    assert ev.split_last_word('He ate the  apple \n') == ('He ate the', ' apple')
    assert ev.split_last_word('"Come here," said\nBob') == ('"Come here," said', ' Bob')
    assert ev.split_last_word('  alone ') is None


CONTEXTS = ['She played a tune on the', 'The band brought an old', 'In the music room stood a',
            'He tapped the keys of the']


@pytest.fixture(scope='module')
def xylophone(enc):
    """A tiny model trained (50 Adam steps) to end every passage of CONTEXTS with " Xylophone" (X|yl|ophone)."""
    h = model.default_hparams().override_from_dict(SMALL)
    variables = {k: tf.Variable(v) for k, v in checkpoint.init_params(h, seed=3).items()}
    rows = [[ev.EOT] + enc.encode(c) + enc.encode(' Xylophone') for c in CONTEXTS]
    width = max(map(len, rows)) - 1
    x, y, mask = (np.zeros([len(rows), width], dtype) for dtype in (np.int32, np.int32, np.float32))
    for i, r in enumerate(rows):
        x[i, :len(r) - 1], y[i, :len(r) - 1] = r[:-1], r[1:]
        mask[i, len(r) - 4:len(r) - 1] = 1  # the word's three tokens only
    vs = list(variables.values())
    m1, m2 = [tf.Variable(tf.zeros_like(v)) for v in vs], [tf.Variable(tf.zeros_like(v)) for v in vs]

    @tf.function
    def step(i):
        with tf.GradientTape() as tape:
            logits = model.model(h, x, params=variables)['logits']
            nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            loss = tf.reduce_sum(nll * mask) / tf.reduce_sum(mask)
        for g, v, a, b in zip(tape.gradient(loss, vs), vs, m1, m2):
            g = tf.convert_to_tensor(g)
            a.assign(0.9 * a + 0.1 * g)
            b.assign(0.999 * b + 0.001 * g * g)
            v.assign_sub(1e-2 * (a / (1 - 0.9 ** i)) / (tf.sqrt(b / (1 - 0.999 ** i)) + 1e-8))
        return loss

    for i in range(1, 51):
        loss = step(tf.constant(float(i)))
    assert float(loss) < 0.1
    return h, {k: tf.convert_to_tensor(v) for k, v in variables.items()}


@pytest.fixture(scope='module')
def xylophone_scorer(xylophone):
    return ev.Scorer(*xylophone, batch_size=4)


def greedy_word(h, params, enc, context, n):
    """Greedy decoding of n tokens after context, one model.model call per token."""
    tokens = [ev.EOT] + enc.encode(context)
    for _ in range(n):
        tokens.append(int(np.argmax(model.model(h, np.array([tokens], np.int32), params=params)['logits'][0, -1])))
    return tokens[-n:]


def test_lambada_accuracy_on_a_model_trained_to_predict_a_known_word(xylophone, xylophone_scorer, enc):
    h, params = xylophone
    trained = [c + ' Xylophone' for c in CONTEXTS]
    assert ev.lambada(h, params, enc, trained, scorer=xylophone_scorer)['accuracy'] == 1.0
    # Same contexts, other words: " Xylo" (X|yl|o) and " Xyz" (X|yz) share the first token only, " Bob" nothing.
    others = [CONTEXTS[0] + ' Xylo', CONTEXTS[1] + ' Xyz', CONTEXTS[2] + ' Bob']
    r = ev.lambada(h, params, enc, trained + others, scorer=xylophone_scorer)
    assert r['passages'] == 7
    assert r['accuracy'] == pytest.approx(4 / 7)
    assert r['accuracy_first_token'] == pytest.approx(6 / 7)   # the first-token-only score is fooled twice
    assert r['accuracy_last_token'] == pytest.approx(4 / 7)
    assert r['correct'] == [True] * 4 + [False] * 3
    # Teacher-forced "every token is the argmax" agrees with real greedy decoding, passage by passage.
    for passage, correct in zip(trained + others, r['correct']):
        context, word = ev.split_last_word(passage)
        target = enc.encode(word)
        assert (greedy_word(h, params, enc, context, len(target)) == target) == correct
    # The final word's perplexity: exp(mean over passages of the word's summed NLL), checked directly.
    total = 0.0
    for passage in trained + others:
        context, word = ev.split_last_word(passage)
        stream = [ev.EOT] + enc.encode(context) + enc.encode(word)
        k = len(enc.encode(word))
        lp = log_probs(h, params, stream[:-1])
        total -= sum(lp[len(stream) - 2 - j, stream[len(stream) - 1 - j]] for j in range(k))
    assert r['perplexity'] == pytest.approx(math.exp(total / 7), rel=1e-4)
    assert r['perplexity'] < ev.lambada(h, params, enc, others, scorer=xylophone_scorer)['perplexity']


def test_lambada_keeps_the_end_of_passages_longer_than_the_context(xylophone, xylophone_scorer, enc):
    h, params = xylophone
    long = ' '.join(['la'] * 40) + ' ' + CONTEXTS[0] + ' Xylophone'
    r = ev.lambada(h, params, enc, [long, 'Xylophone'], scorer=xylophone_scorer)
    assert (r['truncated'], r['skipped'], r['passages']) == (1, 1, 1)
    stream = ([ev.EOT] + enc.encode(long.rsplit(' ', 1)[0]) + enc.encode(' Xylophone'))[-(h.n_ctx + 1):]
    lp = log_probs(h, params, stream[:-1])
    assert r["nll"] == pytest.approx(-sum(lp[-1 - j, stream[-1 - j]] for j in range(3)), abs=1e-4)


def test_lambada_skips_final_words_that_do_not_fit_the_context(xylophone, xylophone_scorer, enc):
    """A word of k BPE tokens needs k inputs (one context token and its first k - 1 tokens): with
    --context below k it cannot be scored, and is skipped and counted instead of mis-scored."""
    h, params = xylophone
    assert len(enc.encode(' Xylophone')) == 3
    long_word = ' Xylophonezzqqxxkkjj'
    k = len(enc.encode(long_word))
    assert k > 3
    passages = [c + ' Xylophone' for c in CONTEXTS] + [CONTEXTS[0] + long_word]
    # context 3 = the word's length: scored (one context token), exactly as computed directly.
    r = ev.lambada(h, params, enc, passages, context=3, scorer=xylophone_scorer)
    assert (r['passages'], r['skipped_long_word'], r['mean_word_tokens']) == (4, 1, 3.0)
    total = 0.0
    for passage in passages[:4]:
        context, word = ev.split_last_word(passage)
        stream = ([ev.EOT] + enc.encode(context) + enc.encode(word))[-4:]
        lp = log_probs(h, params, stream[:-1])
        total -= sum(lp[j, stream[j + 1]] for j in range(3))
    assert r['nll'] == pytest.approx(total, rel=1e-4)
    assert 'skipped (word > context)' in ev.format_table(r)
    # With room for the long word, nothing is skipped.
    r = ev.lambada(h, params, enc, passages, context=k, scorer=xylophone_scorer)
    assert (r['passages'], r['skipped_long_word']) == (5, 0)
    assert r['mean_word_tokens'] == pytest.approx((4 * 3 + k) / 5)
    # A context of 2 fits none of them: one line saying why and what to change.
    with pytest.raises(ev.EvalError, match=r'every passage was skipped: 5 have a final word longer than '
                                           r'--context=2 tokens.*raise --context') as err:
        ev.lambada(h, params, enc, passages, context=2, scorer=xylophone_scorer)
    assert '\n' not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Command line.

def test_cli_perplexity_and_lambada_write_json(tiny_models_dir, tmp_path, capsys, enc):
    text = tmp_path / 'wiki.txt'
    text.write_text(' = Title = \n A guest @-@ starring role , in 2000 . \n' * 6, encoding='utf-8')
    out = tmp_path / 'ppl.json'
    rc = ev.main(['perplexity', f'--data={text}', f'--models_dir={tiny_models_dir}', '--model_name=tiny',
                  '--detokenizer=wikitext', '--context=16', '--stride=8', '--count_line_ends',
                  f'--json_out={out}', '--noprogress'])
    assert rc == 0
    assert 'perplexity per word' in capsys.readouterr().out
    saved = json.loads(out.read_text())
    h, params = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    direct = ev.perplexity(h, params, enc, [text.read_text(encoding='utf-8')], 'wikitext', 16, 8,
                           count_line_ends=True)
    assert saved['words'] == direct['words'] == 6 * (3 + 9 + 2)
    assert saved['ppl_word'] == pytest.approx(direct['ppl_word'], rel=1e-5)
    assert saved['settings']['stride'] == 8 and saved['settings']['detokenizer'] == 'wikitext'

    passages = tmp_path / 'lambada.jsonl'
    passages.write_text('\n'.join(json.dumps({'text': c + ' Xylophone'}) for c in CONTEXTS) + '\n')
    rc = ev.main(['lambada', '--data', str(passages), '--models_dir', tiny_models_dir, '--model_name', 'tiny',
                  '--json_out', str(tmp_path / 'l.json'), '--noprogress'])
    assert rc == 0 and 'accuracy (whole word)' in capsys.readouterr().out
    assert json.loads((tmp_path / 'l.json').read_text())['passages'] == 4


@pytest.mark.parametrize('args, message', [
    (['perplexity', '--data=/nonexistent.txt'], 'does not exist'),
    (['perplexity', '--data=DATA', '--strid=3'], 'unknown flag --strid'),
    (['perplexity', '--data=DATA', '--stride=17', '--context=16'], 'stride'),
    (['perplexity', '--data=DATA', '--detokenizer=moses'], 'unknown detokenizer'),
    (['perplexity', '--data=DATA', '--model_name=missing'], 'does not exist'),
    (['perplexity', '--data=BAD_JSONL'], 'line 2 is not JSON'),
    (['lambada', '--data=DATA', '--format=csv'], '--format'),
    (['score', '--data=DATA'], 'unknown command'),
])
def test_cli_user_errors_are_one_line(tiny_models_dir, tmp_path, capsys, args, message):
    (tmp_path / 'd.txt').write_text('some text\n')
    (tmp_path / 'bad.jsonl').write_text('{"text": "ok"}\n{oops\n')
    args = [a.replace('DATA', str(tmp_path / 'd.txt')).replace('BAD_JSONL', str(tmp_path / 'bad.jsonl'))
            for a in args]
    rc = ev.main(args + [f'--models_dir={tiny_models_dir}'] + ([] if any('model_name' in a for a in args)
                                                                else ['--model_name=tiny']))
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith('eval.py: error: ') and message in err and '\n' not in err


@pytest.mark.parametrize('target, message', [
    ('DIR', 'is a directory'),
    ('DIR/missing/out.json', 'folder DIR/missing does not exist'),
    ('DIR/ro/out.json', 'folder DIR/ro is not writable'),
])
def test_cli_bad_json_out_is_refused_before_scoring(tiny_models_dir, tmp_path, capsys, monkeypatch,
                                                   target, message):
    if target.startswith('DIR/ro') and os.geteuid() == 0:
        pytest.skip('root may write anywhere')
    (tmp_path / 'ro').mkdir(mode=0o555)
    (tmp_path / 'd.txt').write_text('some text here\n')

    def no_scoring(*args, **kwargs):
        raise AssertionError('scored before checking --json_out')

    monkeypatch.setattr(ev, 'perplexity', no_scoring)
    monkeypatch.setattr(ev, 'lambada', no_scoring)
    for command in ('perplexity', 'lambada'):
        rc = ev.main([command, f'--data={tmp_path / "d.txt"}', f'--models_dir={tiny_models_dir}',
                      '--model_name=tiny', f'--json_out={target.replace("DIR", str(tmp_path))}', '--noprogress'])
        err = capsys.readouterr().err.strip()
        assert rc == 1
        assert err.startswith('eval.py: error: --json_out ') and '\n' not in err
        assert message.replace('DIR', str(tmp_path)) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['d.txt', 'ro']


def test_write_json_replaces_the_file_atomically(tmp_path, monkeypatch):
    out = tmp_path / 'r.json'
    out.write_text('old')
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(ev.os, 'fsync', lambda fd: (synced.append(fd), fsync(fd)))
    ev.write_json(str(out), {'a': 1.5, 'b': math.inf})
    assert json.loads(out.read_text()) == {'a': 1.5, 'b': None} and synced
    assert [p.name for p in tmp_path.iterdir()] == ['r.json']  # no temporary file left behind
    # A failed write leaves the old file and no temporary one.
    monkeypatch.setattr(ev.os, 'replace', lambda *a, **k: (_ for _ in ()).throw(OSError(28, 'No space left')))
    with pytest.raises(OSError):
        ev.write_json(str(out), {'a': 2})
    assert json.loads(out.read_text()) == {'a': 1.5, 'b': None}
    assert [p.name for p in tmp_path.iterdir()] == ['r.json']


def test_cli_process_exits_1_without_a_traceback(tmp_path):
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'src', 'eval.py')
    p = subprocess.run([sys.executable, src, 'perplexity', '--data', str(tmp_path / 'missing.txt')],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert 'Traceback' not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith('eval.py: error: data file')


# ---------------------------------------------------------------------------------------------
# CBT.

CBT_SENTENCES = ['The cat sat on the mat .', "`` Where is the dog ? '' asked Tom .", 'The dog was in the garden .',
                 'Mary ran to the house .', 'It was a sunny day .', 'Tom liked the garden .',
                 'The bird sang a song .', 'Mary laughed .', 'The sun was warm .', 'Tom had a red ball .',
                 'The dog wanted the ball .', 'Mary threw it far .', 'The cat did not move .',
                 'Then the wind blew .', 'The trees shook .', 'Tom called the dog .', 'It came running .',
                 'Mary gave it a bone .', 'The dog was happy .', 'They all went home .']
CBT_CANDIDATES = ['ball', 'bird', 'bone', 'cat', 'day', 'dog', 'garden', 'house', 'mat', 'song']


def write_cbt(path):
    """Two examples with CBT's quirks: double tabs, single tabs, a stray trailing tab and CRLF, blank lines."""
    first = [f'{i} {s}' for i, s in enumerate(CBT_SENTENCES, start=1)]
    first.append('21 The dog ran after the XXXXX in the garden .\t\tball\t\t' + '|'.join(CBT_CANDIDATES))
    second = [f'{i} {s}' for i, s in enumerate(reversed(CBT_SENTENCES), start=1)]
    second.append("21 `` Come here , XXXXX ! '' said Mary .\tdog\t" + '|'.join(reversed(CBT_CANDIDATES)) + '\t')
    path.write_bytes(('\n'.join(first) + '\n\n' + '\r\n'.join(second) + '\r\n\n\n').encode('utf-8'))
    return str(path)


def test_read_cbt_parses_examples_and_tab_quirks(tmp_path):
    examples = ev.read_cbt(write_cbt(tmp_path / 'cbt.txt'))
    assert len(examples) == 2
    a, b = examples
    assert a['context'] == CBT_SENTENCES and b['context'] == CBT_SENTENCES[::-1]
    assert a['query'] == 'The dog ran after the XXXXX in the garden .' and a['answer'] == 'ball'
    assert b['query'] == "`` Come here , XXXXX ! '' said Mary ." and b['answer'] == 'dog'
    assert a['candidates'] == CBT_CANDIDATES and b['candidates'] == CBT_CANDIDATES[::-1]


@pytest.mark.parametrize('text, message', [
    ('1 A b .\n2 The XXXXX .\tb\n', 'needs query, answer and candidates'),
    ('1 A b .\n2 The XXXXX .\tz\ta|b\n', "answer 'z' is not among"),
    ('1 A b .\n2 The blank .\ta\ta|b\n', 'XXXXX exactly once'),
    ('1 A b .\n3 The XXXXX .\ta\ta|b\n', 'numbered 3, expected 2'),
    ('1 A b .\n\n2 The XXXXX .\ta\ta|b\n', 'has no query line'),
    ('A b .\n', 'does not start with its number'),
])
def test_read_cbt_refuses_malformed_files(tmp_path, text, message):
    path = tmp_path / 'bad.txt'
    path.write_text(text)
    with pytest.raises(ev.EvalError, match=message) as err:
        ev.read_cbt(str(path))
    assert '\n' not in str(err.value)


def test_cbt_texts_put_the_candidate_and_the_rest_of_the_query_after_the_prefix():
    example = dict(context=['Tom said , `` I do n\'t know . \'\''], query="`` Come here , XXXXX ! '' said Mary .",
                   answer='dog', candidates=['dog', 'cat'])
    prefix, rests = ev.cbt_texts(example, detokenize.get('1bw'))
    assert prefix == 'Tom said, "I don\'t know." "Come here,'
    assert rests == [' dog!" said Mary.', ' cat!" said Mary.']
    prefix, rests = ev.cbt_texts(example, detokenize.get('none'), quotes=False)
    assert prefix == "Tom said , `` I do n't know . '' `` Come here ,"
    assert rests == [" dog ! '' said Mary .", " cat ! '' said Mary ."]


def test_cbt_predicts_the_argmax_of_direct_log_probabilities(tiny_models_dir, tmp_path, enc):
    h, params = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    examples = ev.read_cbt(write_cbt(tmp_path / 'cbt.txt'))
    result = ev.cbt(h, params, enc, examples, batch_size=10)
    context = h['n_ctx']
    expected, truncated = [], 0
    for example in examples:
        text = ' '.join(example['context'])
        query = example['query']
        before = text + ' ' + query[:query.index('XXXXX')].rstrip()
        scores = []
        for candidate in example['candidates']:
            full = [ev.EOT] + enc.encode(text + ' ' + query.replace('XXXXX', candidate))
            head = [ev.EOT] + enc.encode(before)
            assert full[:len(head)] == head
            n = len(full) - len(head)  # the candidate's tokens and the rest of the query
            seq = full[-(context + 1):]
            lp = log_probs(h, params, seq[:-1])
            scores.append(sum(lp[j, seq[j + 1]] for j in range(len(seq) - 1 - n, len(seq) - 1)))
        truncated += len(full) > context + 1
        assert len(set(np.round(scores, 6))) > 1  # the candidates are told apart
        expected.append(int(np.argmax(scores)))
    assert truncated == 2 and result['truncated'] == 2  # 20 sentences exceed the tiny model's 64 tokens
    assert result['predictions'] == expected
    correct = [ex['candidates'][p] == ex['answer'] for ex, p in zip(examples, expected)]
    assert result['correct'] == correct and result['accuracy'] == sum(correct) / 2
    assert result['examples'] == 2 and result['candidates'] == 20


def test_cli_cbt_writes_json(tiny_models_dir, tmp_path, capsys, enc):
    data = write_cbt(tmp_path / 'cbtest_CN_test_2500ex.txt')
    out = tmp_path / 'cbt.json'
    rc = ev.main(['cbt', f'--data={data}', f'--models_dir={tiny_models_dir}', '--model_name=tiny',
                  '--detokenizer=1bw', '--context=48', f'--json_out={out}', '--noprogress'])
    assert rc == 0
    assert 'accuracy' in capsys.readouterr().out
    saved = json.loads(out.read_text())
    h, params = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    direct = ev.cbt(h, params, enc, ev.read_cbt(data), '1bw', 48)
    assert saved['examples'] == 2 and saved['predictions'] == direct['predictions']
    assert saved['accuracy'] == direct['accuracy']
    assert saved['settings']['detokenizer'] == '1bw' and saved['settings']['context'] == 48
    assert saved['settings']['data'] == data
