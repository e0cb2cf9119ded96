"""Tests for src/encoder.py: GPT-2's byte pair encoding."""

import gc
import hashlib
import inspect
import json
import os
import random
import shutil
import time
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

import encoder
from encoder import ENDOFTEXT, EncoderError

ENGINES = ['python', 'tiktoken'] if encoder.tiktoken else ['python']
needs_tiktoken = pytest.mark.skipif(
    encoder.tiktoken is None, reason="tiktoken is not installed (pip install tiktoken)")


@pytest.fixture(scope='module', params=ENGINES)
def enc(request):
    return encoder.get_default_encoder(request.param)


@pytest.fixture(scope='module')
def py_enc():
    return encoder.get_default_encoder('python')


@pytest.fixture(scope='module')
def reference():
    """tiktoken built here, independently of encoder.Encoder, from src/vocab."""
    if encoder.tiktoken is None:
        pytest.skip("tiktoken is not installed (pip install tiktoken)")
    with open(os.path.join(encoder.VOCAB_DIR, 'encoder.json'), encoding='utf-8') as f:
        vocab = json.load(f)
    byte_of = {c: b for b, c in encoder.bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in tok): i for tok, i in vocab.items() if tok != ENDOFTEXT}
    return encoder.tiktoken.Encoding(name='gpt2-test-reference', pat_str=encoder.PAT,
                                     mergeable_ranks=ranks,
                                     special_tokens={ENDOFTEXT: vocab[ENDOFTEXT]})


def assigned_chars():
    """Every character assigned in Python's unicodedata (no surrogates, no private use)."""
    return [chr(c) for c in range(0x110000)
            if unicodedata.category(chr(c)) not in ('Cn', 'Cs', 'Co')]


# --- the byte alphabet and known ids ---------------------------------------

def test_bytes_to_unicode_is_reversible_and_printable():
    table = encoder.bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    # Spellings visible in vocab.bpe ("Ġ t", "Ċ"): space and newline.
    assert table[ord(' ')] == 'Ġ' and table[ord('\n')] == 'Ċ' and table[ord('A')] == 'A'


def test_known_ids(enc):
    assert enc.encode("Hello!!") == [15496, 3228]
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode("") == []
    assert enc.decode([]) == ""


def test_endoftext_is_ordinary_text_by_default(enc):
    ids = enc.encode(ENDOFTEXT)
    assert len(ids) == 7 and enc.eot_token not in ids
    assert enc.decode(ids) == ENDOFTEXT


def test_endoftext_when_allowed(enc):
    assert enc.eot_token == 50256
    assert enc.encode(ENDOFTEXT, allowed_special={ENDOFTEXT}) == [50256]
    assert enc.encode(ENDOFTEXT, allowed_special='all') == [50256]
    assert enc.decode([50256]) == ENDOFTEXT
    text = "Hi <|endoftext|> there<|endoftext|><|endoftext|>"
    ids = enc.encode(text, allowed_special='all')
    assert ids == (enc.encode("Hi ") + [50256] + enc.encode(" there") + [50256, 50256])
    assert enc.decode(ids) == text


def test_unknown_special_token_is_an_error(enc):
    with pytest.raises(ValueError, match="unknown special"):
        enc.encode("x", allowed_special={'<|fim|>'})


def test_contractions_are_case_sensitive(enc):
    # GPT-2's regex has no IGNORECASE: "'s" is one piece, "'S" is two.
    assert enc.encode("it's") == enc.encode("it") + enc.encode("'s")
    assert enc.encode("IT'S") == enc.encode("IT") + enc.encode("'") + enc.encode("S")


def test_lone_surrogates_become_replacement_characters(enc):
    assert enc.encode("a\ud800b") == enc.encode("a\ufffdb")
    assert enc.encode("x\udfff") == enc.encode("x\ufffd")
    # A surrogate pair written as two code points is its character.
    assert enc.encode("\ud83d\ude00!") == enc.encode("\U0001F600!")


def test_encode_rejects_non_str(enc):
    with pytest.raises(TypeError, match="str"):
        enc.encode(b"bytes")


@pytest.mark.parametrize('bad', [[50257], [-1], [2**40], [15496, 99999, 0]])
def test_decode_out_of_range_is_a_clear_error(enc, bad):
    with pytest.raises(ValueError, match=r"not in the vocabulary \(valid ids are 0\.\.50256\)"):
        enc.decode(bad)
    stream = enc.stream_decoder()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        for t in bad:
            stream.push(t)


# --- round trips and engine agreement (property tests) ---------------------

unicode_text = st.text(st.characters(exclude_categories=('Cs', 'Cn')), max_size=80)
# Whitespace, punctuation, apostrophes and letters: the regex's edge cases.
messy_text = st.lists(st.sampled_from(
    list(" \t\n\r\x0b\x0c\x85\xa0\u2028\u3000'’\"!?.,-_()sStTmMdDlLrReEvV aZ09\u0301\u200d")
    + ["\r\n", "  ", "'s", "'S", "'ll", "'LL", "'Re", "<|endoftext|>", "😀", "é"]),
    max_size=60).map(''.join)


@pytest.mark.parametrize('engine', ENGINES)
@settings(max_examples=500, deadline=None)
@given(text=st.one_of(unicode_text, messy_text))
def test_round_trip(engine, text):
    e = encoder.get_default_encoder(engine)
    ids = e.encode(text)
    assert e.decode(ids) == text
    assert e.decode(e.encode(text, allowed_special='all')) == text


@needs_tiktoken
@settings(max_examples=500, deadline=None)
@given(text=st.one_of(unicode_text, messy_text))
def test_python_engine_matches_tiktoken_engine(text):
    py = encoder.get_default_encoder('python')
    tk = encoder.get_default_encoder('tiktoken')
    assert py.encode(text) == tk.encode(text)
    assert py.encode(text, allowed_special='all') == tk.encode(text, allowed_special='all')


# --- agreement with an independent implementation --------------------------

def varied_documents():
    """A few hundred KB covering English, code, every script, emoji, marks,
    whitespace runs, contractions in every case and 10,000-character words."""
    rng = random.Random(1234)
    docs = {'empty': ''}
    import pydoc_data.topics
    docs['english'] = ''.join(pydoc_data.topics.topics.values())[:150_000]
    docs['code'] = ''.join(inspect.getsource(m) for m in (encoder, json, random, shutil))

    chars = assigned_chars()
    rng.shuffle(chars)
    words, i = [], 0
    while i < len(chars):
        n = rng.randint(1, 8)
        words.append(''.join(chars[i:i + n]))
        i += n
    docs['every script'] = ''.join(w + rng.choice([' ', '  ', '\n', '', '. ']) for w in words)

    emoji = ['👨‍👩‍👧‍👦', '🏳️‍🌈', '👍🏽', '🇫🇷', '1️⃣', '❤️', '🧑🏿‍🚀', '😀']
    docs['emoji'] = ''.join(rng.choice(emoji) + rng.choice(['', ' ', 'a', ' b']) for _ in range(3000))
    marks = [c for c in chars if unicodedata.category(c) == 'Mn']
    docs['combining'] = ' '.join(rng.choice('aeioun xyzαβжя') + ''.join(rng.choices(marks, k=rng.randint(1, 4)))
                                 for _ in range(5000))
    spaces = [' ', '  ', '    ', ' ' * 37, '\t', '\t\t', '\n', '\r\n', '\r', '\n\n\n', ' \n',
              '\x0b', '\x0c', '\xa0', '\u3000', '\u2028', '\x85', '\u2009']
    docs['whitespace'] = ''.join(rng.choice(['word', 'x', '1', '!', '', 'Ä']) + rng.choice(spaces)
                                 for _ in range(20000)) + '   '
    contractions = []
    for base in ['s', 't', 're', 've', 'm', 'll', 'd']:
        for mask in range(2 ** len(base)):
            cased = ''.join(c.upper() if mask >> k & 1 else c for k, c in enumerate(base))
            for quote in ["'", "’"]:
                contractions += [f"it{quote}{cased}", f" {quote}{cased}", f"{quote}{cased}x", f"{quote}{cased}"]
    docs['contractions'] = ' '.join(rng.choice(contractions) for _ in range(5000))
    docs['long words'] = ' '.join([
        ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(10_000)),
        ''.join(rng.choice('abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ') for _ in range(10_000)),
        ''.join(rng.choice('0123456789') for _ in range(10_000)),
        ''.join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(10_000)),
        ''.join(rng.choice('!@#$%^&*()[]{}') for _ in range(10_000)),
        'a' * 10_000, ' ' * 10_000, '😀' * 2_000])
    return docs


@pytest.fixture(scope='module')
def documents():
    return varied_documents()


def test_documents_are_large_and_varied(documents):
    assert sum(len(d.encode('utf-8')) for d in documents.values()) > 300_000
    assert len(documents['every script']) > 100_000


@pytest.mark.parametrize('engine', ENGINES)
def test_matches_independent_tiktoken(engine, documents, reference):
    e = encoder.get_default_encoder(engine)
    for name, doc in documents.items():
        ids = e.encode(doc)
        assert ids == reference.encode_ordinary(doc), name
        assert e.decode(ids) == doc, name
    mixed = documents['english'][:2000] + ' ' + ENDOFTEXT + documents['code'][:2000] + ENDOFTEXT
    assert e.encode(mixed, allowed_special='all') == reference.encode(mixed, allowed_special='all')


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.characters(exclude_categories=('Cs', 'Cn')), max_size=40),
       at=st.lists(st.integers(0, 40), max_size=3))
def test_allowed_special_matches_tiktoken(reference, text, at):
    for i in sorted(at, reverse=True):
        text = text[:i] + ENDOFTEXT + text[i:]
    expected = reference.encode(text, allowed_special='all')
    for engine in ENGINES:
        e = encoder.get_default_encoder(engine)
        assert e.encode(text, allowed_special={ENDOFTEXT}) == expected
        assert e.encode(text) == reference.encode_ordinary(text)


# --- the pure-Python engine's cost -----------------------------------------

def best_time(fn, repeat=5):
    """Fastest of repeat runs, with the garbage collector paused."""
    times = []
    gc.disable()
    try:
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return min(times)


def test_python_bpe_is_not_quadratic(py_enc):
    """A 20,000-letter word costs about what 20,000 letters in short words do.

    The naive loop (find the best pair, merge it everywhere, repeat) rescans
    the whole word after every merge: ~80x slower here; the heap: ~1-3x.
    """
    e = encoder.Encoder(py_enc.encoder, sorted(py_enc.bpe_ranks, key=py_enc.bpe_ranks.get),
                        engine='python')
    rng = random.Random(5)
    word = ''.join(rng.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(20_000))
    words = ' '.join(word[i:i + 8] for i in range(0, len(word), 8))
    e.cache_size = 0  # every piece is a cache miss: we time BPE itself
    short_time = best_time(lambda: e.encode(words))
    long_time = best_time(lambda: e.encode(word), repeat=3)
    assert long_time < 20 * short_time, (long_time, short_time)


@needs_tiktoken
def test_long_words_match_tiktoken(py_enc, reference):
    rng = random.Random(7)
    for alphabet in ['ab', 'abcdefghijklmnopqrstuvwxyz', 'aaaaab', 'é ']:
        word = ''.join(rng.choice(alphabet) for _ in range(20_000))
        assert py_enc.encode(word) == reference.encode_ordinary(word), alphabet


def test_cache_is_bounded(py_enc):
    e = encoder.Encoder(py_enc.encoder, sorted(py_enc.bpe_ranks, key=py_enc.bpe_ranks.get),
                        engine='python')
    e.cache_size = 100
    words = [f" w{i}x" for i in range(1000)] + ['q' * 5000]
    ids = e.encode(''.join(words))
    assert len(e.cache) <= 100
    assert all(len(piece) <= e.cache_max_piece for piece in e.cache)
    assert ids == py_enc.encode(''.join(words))


# --- streaming decoder ------------------------------------------------------

def test_stream_decoder_holds_back_split_characters(enc):
    text = "a👨‍👩‍👧‍👦 héllo 日本語 🏳️‍🌈!"
    ids = enc.encode(text)
    partial = [t for t in ids if not is_utf8(enc.decode_bytes([t]))]
    assert partial, "expected some tokens that hold only part of a character"
    stream = enc.stream_decoder()
    pieces = [stream.push(t) for t in ids]
    assert '' in pieces  # something was held back...
    assert all('\ufffd' not in p for p in pieces)  # ...instead of being mangled
    assert ''.join(pieces) + stream.flush() == text


def test_stream_decoder_flush_replaces_an_unfinished_character(enc):
    first = enc.encode("👍")[0]
    assert not is_utf8(enc.decode_bytes([first]))
    stream = enc.stream_decoder()
    assert stream.push(first) == ''
    assert stream.flush() == '\ufffd' == enc.decode([first])
    assert stream.push(enc.encode("ok")[0]) == 'ok'  # usable after a flush


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 50256), max_size=40))
def test_stream_decoder_matches_decode_on_random_tokens(ids):
    for engine in ENGINES:
        e = encoder.get_default_encoder(engine)
        stream = e.stream_decoder()
        assert ''.join(stream.push(t) for t in ids) + stream.flush() == e.decode(ids)


def is_utf8(data):
    try:
        data.decode('utf-8')
        return True
    except UnicodeDecodeError:
        return False


# --- loading vocabulary files -----------------------------------------------

@pytest.fixture()
def model_dir(tmp_path):
    """A models dir holding 124M/ with copies of the vendored files."""
    folder = tmp_path / '124M'
    folder.mkdir()
    for name in ('encoder.json', 'vocab.bpe'):
        shutil.copy(os.path.join(encoder.VOCAB_DIR, name), folder / name)
    return tmp_path


def load_error(models_dir):
    with pytest.raises(EncoderError) as info:
        encoder.get_encoder('124M', str(models_dir))
    message = str(info.value)
    assert '\n' not in message
    assert 'run: python download_model.py 124M --verify' in message
    return message


@pytest.mark.parametrize('engine', ENGINES)
def test_get_encoder_reads_the_model_folder(model_dir, engine):
    e = encoder.get_encoder('124M', str(model_dir), engine=engine)
    assert e.engine == engine
    assert e.encode("Hello!!") == [15496, 3228]


def test_falls_back_to_vendored_files(tmp_path):
    (tmp_path / '124M').mkdir()
    for models_dir in (tmp_path, tmp_path / 'nowhere'):
        e = encoder.get_encoder('124M', str(models_dir))
        assert e.encode("Hello!!") == [15496, 3228]


@pytest.mark.parametrize('present', ['encoder.json', 'vocab.bpe'])
def test_half_present_vocabulary_is_an_error(model_dir, present):
    missing = 'vocab.bpe' if present == 'encoder.json' else 'encoder.json'
    os.remove(model_dir / '124M' / missing)
    message = load_error(model_dir)
    assert f"no {missing}" in message


def truncate(path, fraction, at_line_end=False):
    data = path.read_bytes()
    cut = int(len(data) * fraction)
    if at_line_end:
        cut = data.rindex(b'\n', 0, cut) + 1
    path.write_bytes(data[:cut])


@pytest.mark.parametrize('damage', [
    lambda p: truncate(p, 0.5),
    lambda p: p.write_text('not json'),
    lambda p: p.write_text('[1, 2, 3]'),
    lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), 'Ġt': 'x'})),
    lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != 'Ġthe'})),
    lambda p: p.write_text(json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != ENDOFTEXT})),
], ids=['truncated', 'not-json', 'not-a-dict', 'bad-id', 'missing-token', 'no-endoftext'])
def test_corrupted_encoder_json_is_an_error(model_dir, damage):
    damage(model_dir / '124M' / 'encoder.json')
    assert 'encoder.json' in load_error(model_dir)


@pytest.mark.parametrize('damage', [
    lambda p: truncate(p, 0.5),
    lambda p: truncate(p, 0.5, at_line_end=True),
    lambda p: truncate(p, 0.0001, at_line_end=True),
    lambda p: p.write_text('Ġ t\n'),
    lambda p: p.write_bytes(p.read_bytes().replace(b'\n\xc4\xa0 t\n', b'\nbroken line here\n')),
    lambda p: p.write_bytes(b'\xff\xfe' + p.read_bytes()),
], ids=['truncated-mid-line', 'truncated', 'header-only', 'no-header', 'bad-line', 'not-utf8'])
def test_corrupted_vocab_bpe_is_an_error(model_dir, damage):
    damage(model_dir / '124M' / 'vocab.bpe')
    assert 'vocab.bpe' in load_error(model_dir)


def test_vendored_files_match_their_hashes():
    for name, digest in encoder.VOCAB_SHA256.items():
        with open(os.path.join(encoder.VOCAB_DIR, name), 'rb') as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def test_modified_vendored_files_are_refused(tmp_path, monkeypatch):
    vocab = tmp_path / 'vocab'
    shutil.copytree(encoder.VOCAB_DIR, vocab)
    # Still well-formed, so only the hash check can notice.
    (vocab / 'vocab.bpe').write_bytes((vocab / 'vocab.bpe').read_bytes() + b'\n')
    monkeypatch.setattr(encoder, 'VOCAB_DIR', str(vocab))
    with pytest.raises(EncoderError, match=r"vocab\.bpe has been modified \(sha256 mismatch\)"):
        encoder.get_encoder('124M', str(tmp_path / 'models'))


# --- engine choice ------------------------------------------------------------

def test_engine_choice(py_enc, monkeypatch):
    merges = sorted(py_enc.bpe_ranks, key=py_enc.bpe_ranks.get)
    with pytest.raises(ValueError, match="engine must be one of"):
        encoder.Encoder(py_enc.encoder, merges, engine='rust')
    monkeypatch.setattr(encoder, 'tiktoken', None)
    assert encoder.Encoder(py_enc.encoder, merges).engine == 'python'
    with pytest.raises(ValueError, match="tiktoken is not installed"):
        encoder.Encoder(py_enc.encoder, merges, engine='tiktoken')


@needs_tiktoken
def test_default_engine_is_tiktoken():
    assert encoder.get_default_encoder().engine == 'tiktoken'
