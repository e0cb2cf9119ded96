"""The two sampling scripts, in process (fast) and as subprocesses (flags, exit codes, stdin)."""
import inspect
import json
import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import SRC, write_model

import generate_unconditional_samples as uncond
import interactive_conditional_samples as interactive
import sampling

HEADER = re.compile(r'^=+ SAMPLE (\d+) =+$', re.M)


def headers(text):
    return [int(n) for n in HEADER.findall(text)]


@pytest.mark.parametrize('nsamples,batch_size', [(1, 1), (3, 2), (4, 4), (5, 3)])
def test_unconditional_sample_count(tiny_models_dir, capsys, nsamples, batch_size):
    uncond.sample_model(model_name='tiny', models_dir=tiny_models_dir, nsamples=nsamples,
                        batch_size=batch_size, length=4, seed=1, top_k=40)
    assert headers(capsys.readouterr().out) == list(range(1, nsamples + 1))


def test_interactive_counts_and_prompts(tiny_models_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, 'stdin', io.StringIO('first prompt\n\nsecond prompt\n'))
    interactive.interact_model(model_name='tiny', models_dir=tiny_models_dir, nsamples=3, batch_size=2,
                               length=5, seed=2)
    out = capsys.readouterr().out
    assert headers(out) == [1, 2, 3, 1, 2, 3]
    assert out.count('Prompt should not be empty!') == 1
    assert out.count('=' * 80 + '\n') == 2


def test_interactive_greedy_continues_the_prompt(tiny_models_dir, capsys, monkeypatch):
    import encoder
    import model
    import checkpoint
    import sample
    monkeypatch.setattr(sys, 'stdin', io.StringIO('The quick brown fox\n'))
    interactive.interact_model(model_name='tiny', models_dir=tiny_models_dir, length=6, top_k=1)
    out = capsys.readouterr().out
    enc = encoder.get_encoder('tiny', tiny_models_dir)
    h, p = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    ctx = enc.encode('The quick brown fox')
    expected = sample.sample_sequence(hparams=h, params=p, length=6, context=[ctx], top_k=1).numpy()[0]
    assert enc.decode(expected[len(ctx):].tolist()) + '\n' in out


def test_interactive_keeps_the_end_of_an_overlong_prompt(tiny_models_dir, capsys, monkeypatch):
    import encoder
    import checkpoint
    import sample
    text = ' '.join(f'word{i}' for i in range(40))
    monkeypatch.setattr(sys, 'stdin', io.StringIO(text + '\nshort\n'))
    interactive.interact_model(model_name='tiny', models_dir=tiny_models_dir, length=70, top_k=1)
    captured = capsys.readouterr()
    enc = encoder.get_encoder('tiny', tiny_models_dir)
    tokens = enc.encode(text)
    assert len(tokens) > 64
    assert captured.err.splitlines() == [f'note: the prompt is {len(tokens)} tokens, longer than the context; '
                                         'continuing its last 64']
    assert headers(captured.out) == [1, 1]
    h, p = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    expected = sample.sample_sequence(hparams=h, params=p, length=70, context=[tokens[-64:]], top_k=1).numpy()[0]
    assert enc.decode(expected[64:].tolist()) + '\n' in captured.out


def test_same_seed_same_session(tiny_models_dir, capsys):
    run = lambda seed: (uncond.sample_model(model_name='tiny', models_dir=tiny_models_dir, nsamples=3,
                                            batch_size=1, length=8, seed=seed), capsys.readouterr().out)[1]
    a, b, c = run(4), run(4), run(5)
    assert a == b and a != c
    samples = HEADER.split(a)
    assert len(set(samples[2::2])) == 3   # successive batches differ


def script(name, *args, stdin=''):
    env = dict(os.environ)
    env.pop('TF_CPP_MIN_LOG_LEVEL', None)
    return subprocess.run([sys.executable, os.path.join(SRC, name), *args], input=stdin.encode()
                          if isinstance(stdin, str) else stdin, capture_output=True, timeout=120, env=env)


def test_interactive_subprocess_piped_prompts_and_eof(tiny_models_dir):
    r = script('interactive_conditional_samples.py', '--model_name', 'tiny', '--models_dir', tiny_models_dir,
               '--length', '4', '--nsamples', '2', stdin=b'Hello\n\xff\xfe bad bytes\nWorld\n')
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert headers(out) == [1, 2, 1, 2]
    assert r.stderr.decode().strip().splitlines() == ['error: the prompt is not valid UTF-8; set your terminal '
                                                      'to UTF-8 and try again']


def run_cli(fn, args, capsys, monkeypatch):
    """cli.run in process, as `python script.py ARGS` would call it.  Returns (exit status, stderr)."""
    import cli
    monkeypatch.setattr(sys, 'argv', ['script.py', *args])
    with pytest.raises(SystemExit) as e:
        cli.run(fn)
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize('args,fragment', [
    (['--top_k', '-3'], 'top_k'),
    (['--top_p', '1.5'], 'top_p'),
    (['--temperature', '-1'], 'temperature'),
    (['--nsamples', 'two'], 'nsamples'),
    (['--batch_size', '0'], 'batch_size'),
    (['--seed', 'x'], 'seed'),
    (['--seed', '-1'], '--seed must be an integer >= 0'),
    (['tiny', '1', '1', '1', '3', '1', '0', '1', 'models', 'extra'], 'too many arguments'),
    (['--keep', '64'], '--keep must be smaller than the context: --keep 64 >= 64'),
    (['--keep', '0'], '--keep must be an integer >= 1'),
    (['--stop', ''], '--stop is empty'),
    (['--stop', '42'], 'quote it twice'),
    (['--stop', '\\x4'], '--stop'),
    (['--bogus', '1'], 'unknown flag --bogus'),
    (['--model_name', '../tiny'], 'invalid model name'),
    (['--model_name', '774M'], 'download_model.py 774M'),
])
@pytest.mark.parametrize('fn', [uncond.sample_model, interactive.interact_model])
def test_bad_flags_one_line(tiny_models_dir, capsys, monkeypatch, fn, args, fragment):
    code, err = run_cli(fn, ['--model_name', 'tiny', '--models_dir', tiny_models_dir, '--nsamples', '1', *args],
                        capsys, monkeypatch)
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith('script.py: error: ') and fragment in err, err


def test_bad_flag_subprocess(tiny_models_dir):
    r = script('generate_unconditional_samples.py', '--models_dir', tiny_models_dir, '--top_p', '2')
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and not r.stdout
    assert err.splitlines() == ['generate_unconditional_samples.py: error: top_p must be in (0, 1] '
                                '(1 means no nucleus truncation), got 2.0']


def test_half_downloaded_model_folder(tmp_path, capsys, monkeypatch):
    path = write_model(tmp_path, '124M')
    os.unlink(os.path.join(path, 'model.ckpt.data-00000-of-00001'))
    code, err = run_cli(uncond.sample_model, ['--models_dir', str(tmp_path), '--nsamples', '1'], capsys,
                        monkeypatch)
    assert code == 1 and len(err.splitlines()) == 1
    assert 'model.ckpt.data-00000-of-00001 is missing' in err and 'download_model.py 124M' in err


def test_unconditional_subprocess_legacy_name(tmp_path):
    write_model(tmp_path, '124M')
    r = script('generate_unconditional_samples.py', '--model_name', '117M', '--models_dir', str(tmp_path),
               '--nsamples', '2', '--batch_size', '2', '--length', '3', '--top_k', '40')
    assert r.returncode == 0, r.stderr
    assert headers(r.stdout.decode()) == [1, 2]


def test_cli_number():
    import cli
    assert cli.number('top_p', 0.5, 0, 1, inclusive_min=False) == 0.5
    for bad in ('abc', float('nan'), float('inf'), -1, 0, 2, True):
        with pytest.raises(cli.UsageError, match=r'--top_p must be a number in \(0, 1\]'):
            cli.number('top_p', bad, 0, 1, inclusive_min=False)


def test_one_shot_prompt_from_the_shell(tiny_models_dir):
    args = ('--model_name', 'tiny', '--models_dir', tiny_models_dir, '--length', '4', '--nsamples', '3',
            '--batch_size', '2', '--seed', '3')
    r = script('interactive_conditional_samples.py', *args, '--prompt', 'Hello world', stdin='never read\n')
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    assert headers(out) == [1, 2, 3] and 'Model prompt' not in out and out.endswith('=' * 80 + '\n')
    # the same samples as the same prompt typed at the prompt
    typed = script('interactive_conditional_samples.py', *args, stdin='Hello world\n').stdout.decode()
    assert out in typed
    for bad, fragment in [('', '--prompt is empty'), ('1984', "quote it twice")]:
        r = script('interactive_conditional_samples.py', *args, '--prompt', bad)
        err = r.stderr.decode().strip()
        assert r.returncode == 1 and len(err.splitlines()) == 1 and fragment in err, err


class FakeEncoder:
    eot_token = 9

    def decode(self, tokens):
        return ' '.join(map(str, tokens))

    def stream_decoder(self):
        class Stream:
            def push(self, token):
                return f' {token}'

            def flush(self):
                return ''
        return Stream()


@pytest.mark.parametrize('stop', [False, True])
def test_print_samples_stops_at_endoftext(monkeypatch, capsys, stop):
    columns = [[1, 2, 3], [9, 4, 5], [6, 9, 7], [8, 8, 9], [5, 5, 5]]   # row 0 ends at step 1, row 2 at step 3
    drawn = []

    def fake_stream(**settings):
        for column in columns[:settings['length']]:
            drawn.append(column)
            yield np.array(column[:len(settings['context'])])
    monkeypatch.setattr(sampling.sample, 'stream_sequence', fake_stream)
    assert sampling.print_samples(FakeEncoder(), [[0]] * 3, 4, stop, length=5) == 7
    out = capsys.readouterr().out
    assert headers(out) == [5, 6, 7]
    rows = [line for line in out.splitlines() if not line.startswith('=')]
    if stop:
        assert rows == ['1', '2 4', '3 5 7'] and len(drawn) == 4   # nothing drawn once every row has ended
    else:
        assert rows == ['1 9 6 8 5', '2 4 9 8 5', '3 5 7 9 5'] and len(drawn) == 5
    drawn.clear()
    assert sampling.print_samples(FakeEncoder(), [[0]], 0, stop, length=5) == 1   # one row: streamed
    assert capsys.readouterr().out.splitlines()[1] == (' 1' if stop else ' 1 9 6 8 5')
    assert len(drawn) == (2 if stop else 5)


def test_stop_at_endoftext_prints_a_prefix_of_the_full_sample(tiny_models_dir):
    args = ('--model_name', 'tiny', '--models_dir', tiny_models_dir, '--length', '30', '--nsamples', '4',
            '--batch_size', '2', '--seed', '5')
    full = script('generate_unconditional_samples.py', *args)
    stopped = script('generate_unconditional_samples.py', *args, '--stop_at_endoftext')
    assert full.returncode == stopped.returncode == 0
    split = lambda r: HEADER.split(r.stdout.decode())[2::2]
    for a, b in zip(split(full), split(stopped)):
        assert a.startswith(b.rstrip('\n')) and '<|endoftext|>' not in b


def test_length_past_the_context_in_both_scripts(tiny_models_dir, capsys, monkeypatch):
    import encoder
    import checkpoint
    import sample
    enc = encoder.get_encoder('tiny', tiny_models_dir)
    h, p = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    uncond.sample_model(model_name='tiny', models_dir=tiny_models_dir, nsamples=1, length=150, top_k=1, keep=20)
    out = capsys.readouterr().out
    expected = sample.sample_sequence(hparams=h, params=p, length=150, start_token=enc.eot_token, batch_size=1,
                                      top_k=1, keep=20).numpy()[0, 1:]
    assert out.split('\n', 1)[1] == enc.decode(expected.tolist()) + '\n'
    monkeypatch.setattr(sys, 'stdin', io.StringIO('Hello\n'))
    interactive.interact_model(model_name='tiny', models_dir=tiny_models_dir, length=100, top_k=1)
    ctx = enc.encode('Hello')
    expected = sample.sample_sequence(hparams=h, params=p, length=100, context=[ctx], top_k=1).numpy()[0]
    assert enc.decode(expected[len(ctx):].tolist()) + '\n' in capsys.readouterr().out


@pytest.mark.parametrize('given,expected', [
    (r'\n\n', ('\n\n',)), ('\n', ('\n',)), ('THE END', ('THE END',)), ([r'\t', 'é日'], ('\t', 'é日')),
    (None, ()),
])
def test_stop_strings_understand_python_escapes(given, expected):
    assert sampling.stop_strings(given) == expected


def pieces_through_stop_text(pieces, stop):
    text = sampling.StopText(stop)
    out = [text.push(piece) for piece in pieces]
    return out, text.rest()


def test_stop_text_holds_back_only_what_could_become_a_stop():
    # 'END' spans three pieces; 'E' and 'EN' are held back until they turn out to be the stop string
    assert pieces_through_stop_text(['the E', 'N', 'D of it'], ('END',)) == (['the ', '', ''], '')
    # a held-back 'E' that does not continue into 'END' is printed with what follows
    assert pieces_through_stop_text(['the E', 'X', 'D'], ('END',)) == (['the ', 'EX', 'D'], '')
    # only the shortest ending that could still become a stop is held: of 'aab' for 'aabx', not of 'a'
    assert pieces_through_stop_text(['xa', 'ab', 'y'], ('aabx', 'q')) == (['x', '', 'aaby'], '')
    # the earliest of several stops; text at the end is given back by rest()
    assert pieces_through_stop_text(['one\n', '\ntwo'], ('\n\n', 'one')) == (['', ''], '')
    assert pieces_through_stop_text(['two\n', '\none'], ('\n\n', 'one')) == (['two', ''], '')
    assert pieces_through_stop_text(['ab', 'c'], ('x',)) == (['ab', 'c'], '')
    assert pieces_through_stop_text(['ab', 'cx'], ('xy',)) == (['ab', 'c'], 'x')


class ChunkEncoder(FakeEncoder):
    """Token t decodes to CHUNKS[t]."""
    CHUNKS = ['he', 'llo', ' wo', 'rld', '\n', '\n', 'again', '<eot>', '', 'x']

    def decode(self, tokens):
        return ''.join(self.CHUNKS[t] for t in tokens)

    def stream_decoder(self):
        chunks = self.CHUNKS

        class Stream:
            def push(self, token):
                return chunks[token]

            def flush(self):
                return ''
        return Stream()


@pytest.mark.parametrize('rows', [1, 3])
def test_print_samples_ends_before_a_stop_string_spanning_tokens(monkeypatch, capsys, rows):
    columns = [0, 1, 2, 3, 4, 5, 6, 1, 2]   # 'hello world\n\nagain...'
    drawn = []

    def fake_stream(**settings):
        for token in columns:
            drawn.append(token)
            yield np.array([token] * len(settings['context']))
    monkeypatch.setattr(sampling.sample, 'stream_sequence', fake_stream)
    printed = []
    real_print = print
    monkeypatch.setattr('builtins.print', lambda *a, **k: (printed.append(a), real_print(*a, **k)))
    sampling.print_samples(ChunkEncoder(), [[0]] * rows, 0, False, ('lo wor', '\n\n'), length=9)
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if not line.startswith('=')] == ['hel'] * rows
    assert len(drawn) == 4                                    # no token drawn after every sample stopped
    assert not any('lo' in str(a) for a in printed)           # nothing of the stop string was ever printed


def test_stop_in_a_real_sample(tiny_models_dir):
    """Greedy samples (so equal in every batch) cut before a stop string taken from their middle."""
    args = ('--model_name', 'tiny', '--models_dir', tiny_models_dir, '--length', '16', '--top_k', '1')
    full = HEADER.split(script('generate_unconditional_samples.py', *args, '--nsamples', '1').stdout.decode())[2]
    stop = next(full[i:i + 3] for i in range(4, len(full)) if full[i:i + 3].isascii() and full[i:i + 3].isalpha())
    expected = full[:full.find(stop)] + '\n'
    for batch in ('1', '2'):
        r = script('generate_unconditional_samples.py', *args, '--nsamples', batch, '--batch_size', batch,
                   '--stop', stop)
        assert r.returncode == 0, r.stderr
        assert HEADER.split(r.stdout.decode())[2::2] == [expected] * int(batch)


def test_help_lists_every_flag_with_its_meaning():
    for name, fn in (('generate_unconditional_samples.py', uncond.sample_model),
                     ('interactive_conditional_samples.py', interactive.interact_model)):
        r = script(name, '--help')
        out = ' '.join((r.stdout + r.stderr).decode().split())   # fire writes help to stdout or stderr, wrapped
        for flag in inspect.signature(fn).parameters:
            assert f'--{flag}=' in out, (name, flag)
        for meaning in ('the first occurrence of this text', 'which are fed again', 'nucleus sampling'):
            assert meaning in out, (name, meaning)


def test_compiled_steps_are_kept_for_the_next_process(tiny_models_dir, tmp_path):
    """A second run loads the XLA steps the first compiled (files.use_compile_cache) and samples the same."""
    env = {k: v for k, v in os.environ.items() if k != 'TF_XLA_FLAGS'}
    env['GPT2_COMPILE_CACHE'] = str(tmp_path / 'cache')
    run = lambda: subprocess.run(
        [sys.executable, os.path.join(SRC, 'generate_unconditional_samples.py'), '--model_name', 'tiny',
         '--models_dir', tiny_models_dir, '--length', '6', '--seed', '3', '--top_k', '5', '--nsamples', '2'],
        capture_output=True, text=True, timeout=180, env=env)
    first = run()
    assert first.returncode == 0, first.stderr
    [folder] = os.listdir(tmp_path / 'cache')
    entries = sorted(os.listdir(tmp_path / 'cache' / folder))
    assert entries and all(e.endswith('XLA_CPU_JIT.pb') for e in entries), entries
    second = run()
    assert second.returncode == 0 and second.stdout == first.stdout
    assert first.stderr == second.stderr == "", second.stderr   # no error line from reading the cache
    assert sorted(os.listdir(tmp_path / 'cache' / folder)) == entries   # nothing compiled anew


@pytest.mark.parametrize('name', ['generate_unconditional_samples.py', 'interactive_conditional_samples.py'])
def test_json_out_records_each_sample_with_scores_that_rescoring_gives(tiny_models_dir, tmp_path, name):
    """--json_out: one object per sample; its log-probs are what detect.py's scorer gives the same tokens
    afterwards; the provenance says how it was made and that it is synthetic."""
    import checkpoint
    import detect
    out = tmp_path / 'samples.jsonl'
    args = ['--model_name', 'tiny', '--models_dir', tiny_models_dir, '--length', '20', '--top_k', '5', '--seed', '4',
            '--nsamples', '2', '--batch_size', '2', '--watermark', '99', '--no_repeat_ngram_size', '2',
            '--json_out', str(out)]
    if name.startswith('interactive'):
        args += ['--prompt', 'Hello there']
    r = script(name, *args)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    out = r.stdout.decode().replace('=' * 80 + '\n', '')   # the interactive script's line after each prompt
    printed = [chunk[1:-1] for chunk in HEADER.split(out)[2::2]]   # between the header and '\n'
    assert len(records) == 2 and [rec['text'] for rec in records] == printed[:2]
    h, p = checkpoint.load(os.path.join(tiny_models_dir, 'tiny'))
    import encoder
    enc = encoder.get_encoder('tiny', tiny_models_dir)
    for rec in records:
        assert rec['provenance']['synthetic'] is True and rec['provenance']['watermark_key'] == 99
        assert rec['provenance']['settings']['top_k'] == 5 and rec['provenance']['model'] == 'tiny'
        assert len(rec['tokens']) == len(rec['logprobs']) == 20 and enc.decode(rec['tokens']) == rec['text']
        stream = np.array(enc.encode(rec['prompt'], allowed_special='all') + rec['tokens'], np.int32)
        n = len(rec['tokens'])
        [again] = detect.Scorer(h, p)([(stream, 0, len(stream) - 1, n)])
        np.testing.assert_allclose(rec['logprobs'], again['logprob'], atol=1e-4)
