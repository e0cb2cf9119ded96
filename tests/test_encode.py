"""encode.py: the token file holds exactly the encoder's ids, documents joined by <|endoftext|>."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import cli
import encode
import encoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOT = 50256
DOCS = ['Hello world.\nA second line, with punctuation!\n', 'Ünïcödé and 日本語 text  \n\n', 'x']


@pytest.fixture(scope='module')
def enc():
    return encoder.get_default_encoder()


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding='utf-8')
    return str(path)


def test_ids_are_the_encoders_with_eot_between_documents_and_round_trip(tmp_path, enc):
    paths = [write(tmp_path / f'{i}.txt', d) for i, d in enumerate(DOCS)]
    out = str(tmp_path / 'data.npy')
    stats = encode.encode(*paths, out=out, progress=False)
    tokens = np.load(out)
    assert tokens.dtype == np.uint16
    expected = enc.encode(DOCS[0]) + [EOT] + enc.encode(DOCS[1]) + [EOT] + enc.encode(DOCS[2])
    assert tokens.tolist() == expected
    assert enc.decode(tokens.tolist()) == '<|endoftext|>'.join(DOCS)
    assert (stats['tokens'], stats['documents'], stats['files']) == (len(expected), 3, 3)


def test_folders_globs_jsonl_and_duplicates(tmp_path, enc):
    write(tmp_path / 'corpus' / 'a.txt', 'alpha')
    write(tmp_path / 'corpus' / 'sub' / 'b.txt', 'beta')
    write(tmp_path / 'corpus' / 'skip.md', 'not text by extension')
    write(tmp_path / 'corpus' / 'empty.txt', '')
    jsonl = write(tmp_path / 'r.jsonl', json.dumps({'text': 'gamma', 'id': 1}) + '\n\n' + json.dumps('delta') + '\n')
    out = str(tmp_path / 'data.npz')
    # a.txt is named twice (directly and through its folder): it is read once.
    stats = encode.encode(str(tmp_path / 'corpus' / 'a.txt'), str(tmp_path / 'corpus'), str(tmp_path / '*.jsonl'),
                          out=out, progress=False)
    with np.load(out) as z:
        tokens = z['tokens'].tolist()
    assert enc.decode(tokens) == '<|endoftext|>'.join(['alpha', 'beta', 'gamma', 'delta'])
    assert stats['empty'] == 1 and stats['documents'] == 4
    assert encode.find_files([jsonl]) == ([jsonl], {'hidden_files': 0, 'hidden_folders': 0})


def test_allow_special_decides_what_a_literal_endoftext_is(tmp_path, enc):
    text = 'first story<|endoftext|>second story'
    path = write(tmp_path / 'a.txt', text)
    special = encode.encode(path, out=str(tmp_path / 's.npy'), progress=False)
    assert np.load(tmp_path / 's.npy').tolist() == enc.encode('first story') + [EOT] + enc.encode('second story')
    assert special['special'] == 1
    plain = encode.encode(path, out=str(tmp_path / 'p.npy'), allow_special=False, progress=False)
    ids = np.load(tmp_path / 'p.npy').tolist()
    assert EOT not in ids and ids == enc.encode(text)
    assert plain['special'] == 1   # reported either way, never silent


# Text rich in the whitespace runs where a careless split changes GPT-2's pre-tokenisation.
TEXTS = st.lists(st.sampled_from(['a', 'Zb', '9', '.', ',', "'s", ' ', '  ', '\n', '\n\n', '\t', 'é', '語', '\r']),
                 max_size=120).map(''.join)


@settings(max_examples=150, deadline=None)
@given(TEXTS, st.integers(min_value=1, max_value=30))
@example('word\n\n\nnext', 5)
@example('word \nnext', 5)
def test_split_points_never_change_the_ids(text, chunk_chars):
    enc = encoder.get_default_encoder()
    pieces = list(encode.split_text(text, chunk_chars))
    assert ''.join(pieces) == text
    assert [i for p in pieces for i in enc.encode(p)] == enc.encode(text)


def test_parallel_workers_give_the_same_file(tmp_path, enc, monkeypatch):
    lines = [f'Line {i}: the quick brown fox, {i * 7} times.\n' for i in range(3000)]
    text = ''.join(lines)
    paths = [write(tmp_path / 'big.txt', text), write(tmp_path / 'small.txt', 'tail document')]
    monkeypatch.setattr(encode, 'PARALLEL_MIN_BYTES', 0)
    stats = encode.encode(*paths, out=str(tmp_path / 'par.npy'), workers=2, chunk_chars=5000, progress=False)
    assert stats['processes'] == 2
    assert np.load(tmp_path / 'par.npy').tolist() == enc.encode(text) + [EOT] + enc.encode('tail document')


def test_bad_inputs_are_clear_errors_and_keep_the_old_output(tmp_path):
    out = tmp_path / 'data.npy'
    np.save(out, np.arange(5, dtype=np.uint16))
    before = out.read_bytes()
    bad = [
        ([str(tmp_path / 'missing.txt')], 'does not exist'),
        ([str(tmp_path / 'nothing*.txt')], 'no files match'),
        ([write(tmp_path / 'e.txt', '')], 'hold no text'),
        ([write(tmp_path / 'r.jsonl', '{"text": "ok"}\n{oops\n')], 'r.jsonl:2: not valid JSON'),
        ([write(tmp_path / 'k.jsonl', '{"body": "ok"}\n')], "field 'text'"),
    ]
    (tmp_path / 'latin1.txt').write_bytes('café'.encode('latin-1'))
    bad.append(([str(tmp_path / 'latin1.txt')], 'not UTF-8'))
    for inputs, message in bad:
        with pytest.raises(encode.EncodeError, match=message):
            encode.encode(*inputs, out=str(out), progress=False)
        assert out.read_bytes() == before
    with pytest.raises(encode.EncodeError, match='must end in .npy or .npz'):
        encode.encode(str(tmp_path / 'e.txt'), out=str(tmp_path / 'x.bin'))
    assert sorted(os.listdir(tmp_path)) == ['data.npy', 'e.txt', 'k.jsonl', 'latin1.txt', 'r.jsonl']  # no temp files


def test_cli_reports_and_fails_in_one_line(tmp_path):
    path = write(tmp_path / 'a.txt', 'Some text<|endoftext|>more')
    script = os.path.join(ROOT, 'src', 'encode.py')
    ok = subprocess.run([sys.executable, script, path, '--out', str(tmp_path / 'a.npy'), '--progress=False'],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert 'wrote 4 tokens (1 document from 1 file' in ok.stdout
    assert "found 1 literal '<|endoftext|>'" in ok.stdout and 'tokens/s' in ok.stdout
    bad = subprocess.run([sys.executable, script, str(tmp_path / 'nope.txt'), '--out', str(tmp_path / 'b.npy')],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f'encode.py: error: {tmp_path / "nope.txt"} does not exist']
    typo = subprocess.run([sys.executable, script, path, '--outt', str(tmp_path / 'c.npy')],
                          capture_output=True, text=True, timeout=60)
    assert typo.returncode == 1 and typo.stderr.startswith('encode.py: error: unknown flag --outt; valid flags: --out ')


def test_model_name_is_checked_and_legacy_names_map(tmp_path, monkeypatch):
    path = write(tmp_path / 'a.txt', 'text')
    models = tmp_path / 'models'
    (models / 'mine').mkdir(parents=True)
    for name, message in [('../models', 'invalid model name'), ('..', 'invalid model name'),
                          ('a/b', 'invalid model name'), ('a\\b', 'invalid model name'),
                          (str(models / 'mine'), 'invalid model name'),
                          ('nope', 'model nope not found: .*nope does not exist')]:
        with pytest.raises(encode.EncodeError, match=message):
            encode.encode(path, out=str(tmp_path / 'o.npy'), model_name=name, models_dir=str(models), progress=False)
    # A folder with only half a vocabulary shows which folder was read: 117M is 124M's old name.
    (models / '124M').mkdir()
    (models / '124M' / 'encoder.json').write_text('{}')
    with pytest.raises(encoder.EncoderError, match=r'124M has encoder.json but no vocab.bpe'):
        encode.encode(path, out=str(tmp_path / 'o.npy'), model_name='117M', models_dir=str(models), progress=False)
    # An existing folder without vocabulary files uses the shared GPT-2 vocabulary, as before.
    stats = encode.encode(path, out=str(tmp_path / 'o.npy'), model_name='mine', models_dir=str(models), progress=False)
    assert stats['tokens'] == 1 and np.load(tmp_path / 'o.npy').tolist() == encoder.get_default_encoder().encode('text')


def test_numeric_names_and_bad_workers(tmp_path, monkeypatch):
    # fire reads `encode.py 2024 --out 5` as the ints 2024 and 5.
    write(tmp_path / '2024' / 'a.txt', 'text')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(encode.EncodeError, match='--out must end in .npy or .npz, got 5'):
        encode.encode(2024, out=5, progress=False)
    assert encode.encode(2024, out='x.npy', progress=False)['tokens'] == 1
    for workers in ('abc', 0, -1, 2.5, True):
        with pytest.raises(cli.UsageError, match=f'--workers must be an integer >= 1, got {workers!r}'):
            encode.encode(2024, out='y.npy', workers=workers, progress=False)
    assert not os.path.exists('y.npy')


def test_cli_numeric_folder_and_bad_flag_values(tmp_path):
    write(tmp_path / '2024' / 'a.txt', 'text')
    script = os.path.join(ROOT, 'src', 'encode.py')
    ok = subprocess.run([sys.executable, script, '2024', '--out', 'x.npy', '--progress=False'],
                        capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert ok.returncode == 0 and 'wrote 1 tokens' in ok.stdout, ok.stderr
    for args, message in [(['--workers', 'abc'], "--workers must be an integer >= 1, got 'abc'"),
                          (['--model_name', '../x'], "invalid model name '../x'"),
                          (['--out', '5'], '--out must end in .npy or .npz, got 5')]:
        bad = subprocess.run([sys.executable, script, '2024', '--out', 'y.npy'] + args,
                             capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith(f'encode.py: error: {message}'), bad.stderr


def test_hidden_folders_are_skipped_and_counted(tmp_path, enc):
    write(tmp_path / 'docs' / 'a.txt', 'kept')
    write(tmp_path / 'docs' / 'sub' / 'b.txt', 'kept too')
    write(tmp_path / 'docs' / '.ipynb_checkpoints' / 'a-checkpoint.txt', 'a duplicate')
    write(tmp_path / 'docs' / 'sub' / '.git' / 'notes.txt', 'not a document')
    write(tmp_path / 'docs' / '.draft.txt', 'hidden file')
    write(tmp_path / 'docs' / '.DS_Store', 'not text, not counted')
    stats = encode.encode(str(tmp_path / 'docs'), out=str(tmp_path / 'o.npy'), progress=False)
    assert np.load(tmp_path / 'o.npy').tolist() == enc.encode('kept') + [EOT] + enc.encode('kept too')
    assert (stats['files'], stats['hidden_folders'], stats['hidden_files']) == (2, 2, 1)
    assert "skipped 2 hidden folders and 1 hidden text file inside the input folders" in encode.report(stats)
    # Named explicitly, a hidden file or folder is read.
    paths, _ = encode.find_files([str(tmp_path / 'docs' / '.ipynb_checkpoints'), str(tmp_path / 'docs' / '.draft.txt')])
    assert [os.path.basename(p) for p in paths] == ['a-checkpoint.txt', '.draft.txt']


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    path = write(tmp_path / 'a.txt', 'Some text')
    empty = write(tmp_path / 'e.txt', '')
    script = os.path.join(ROOT, 'src', 'encode.py')
    piped = subprocess.run([sys.executable, script, path, empty, '--out', str(tmp_path / 'a.npy')],
                           capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and piped.stderr == '', piped.stderr   # no bar, not even an empty one
    assert 'wrote 2 tokens' in piped.stdout and 'skipped 1 empty document' in piped.stdout

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, 'stderr', Terminal())
    encode.encode(path, out=str(tmp_path / 'b.npy'))
    assert 'encoding: 100%' in sys.stderr.getvalue()


def test_paths_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    monkeypatch.setenv('GPT2_TEST_DIR', str(tmp_path))
    write(tmp_path / 'home' / 'texts' / 'a.txt', 'Some text')
    stats = encode.encode('~/texts', out='$GPT2_TEST_DIR/a.npy', progress=False)
    assert stats['out'] == str(tmp_path / 'a.npy') and np.load(tmp_path / 'a.npy').size == 2
    write(tmp_path / 'b.txt', 'more')
    assert encode.encode('$GPT2_TEST_DIR/b*.txt', out='~/b.npy', progress=False)['tokens'] == 1
    assert (tmp_path / 'home' / 'b.npy').exists()
