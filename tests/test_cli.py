"""cli.py: importable without TensorFlow; TensorFlow's start-up noise hidden, everything else it says shown."""
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, SRC

TF_SCRIPTS = ['interactive_conditional_samples.py', 'generate_unconditional_samples.py', 'train.py', 'eval.py', 'export.py']
NOISE = [   # lines TensorFlow 2.21 writes at every start on a CPU machine (see cli.TF_NOISE)
    'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
    'I0000 00:00:1795992428.722033    7348 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will '
    'not be used.',
    'E0000 00:00:1795992434.647427    7348 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed '
    'call to cuInit: UNKNOWN ERROR (303)',
]
CRASH = 'F0000 00:00:1795992434.6 7348 fake.cc:1] this CPU lacks the AVX instructions this TensorFlow needs'


def env(**extra):
    """The user's environment (no TF_CPP_MIN_LOG_LEVEL), with extra variables; None removes one."""
    e = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    e.update({k: v for k, v in extra.items() if v is not None})
    return e


@pytest.fixture(scope='module')
def fake_tensorflow(tmp_path_factory):
    """A folder holding a `tensorflow` package that writes TensorFlow's start-up noise and a fatal line
    to fd 2, then aborts, as TensorFlow does on a CPU it was not built for."""
    folder = tmp_path_factory.mktemp('fake')
    (folder / 'tensorflow').mkdir()
    lines = ''.join(line + '\n' for line in NOISE + [CRASH]).encode()
    (folder / 'tensorflow' / '__init__.py').write_text(f'import os\nos.write(2, {lines!r})\nos.abort()\n')
    return str(folder)


def test_importing_the_tensorflow_free_modules_leaves_tensorflow_out(fake_tensorflow):
    code = ('import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import cli, files, encode, encoder, '
            'download_model; print(sorted(m for m in ("tensorflow", "model", "sample") if m in sys.modules))')
    result = subprocess.run([sys.executable, '-c', code, SRC, ROOT], capture_output=True, text=True, timeout=120,
                            env=env(PYTHONPATH=fake_tensorflow))
    assert (result.returncode, result.stdout, result.stderr) == (0, '[]\n', '')


@pytest.mark.parametrize('script', TF_SCRIPTS)
def test_a_crash_inside_the_tensorflow_import_shows_its_message(fake_tensorflow, script):
    result = subprocess.run([sys.executable, os.path.join(SRC, script)], capture_output=True, text=True, timeout=120,
                            env=env(PYTHONPATH=fake_tensorflow))
    assert result.returncode == -signal.SIGABRT
    assert result.stderr.splitlines() == [CRASH]   # the fatal line, and none of the start-up noise
    everything = subprocess.run([sys.executable, os.path.join(SRC, script)], capture_output=True, text=True,
                                timeout=120, env=env(PYTHONPATH=fake_tensorflow, TF_CPP_MIN_LOG_LEVEL='0'))
    assert everything.stderr.splitlines() == NOISE + [CRASH]   # TF_CPP_MIN_LOG_LEVEL=0 shows it all


def test_encode_runs_where_tensorflow_would_crash(fake_tensorflow, tmp_path):
    (tmp_path / 'a.txt').write_text('Some text')
    result = subprocess.run([sys.executable, os.path.join(SRC, 'encode.py'), str(tmp_path / 'a.txt'),
                             '--out', str(tmp_path / 'a.npy')], capture_output=True, text=True, timeout=120,
                            env=env(PYTHONPATH=fake_tensorflow))
    assert result.returncode == 0 and result.stderr == '', result.stderr
    assert 'wrote 2 tokens' in result.stdout


def startup_lines(level):
    """What a bare `import tensorflow` (and device discovery) writes to stderr on this machine."""
    code = 'import tensorflow as tf; tf.config.list_physical_devices()'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                            env=env(TF_CPP_MIN_LOG_LEVEL=level))
    return {strip_prefix(line) for line in result.stderr.splitlines() if line.strip()}


def strip_prefix(line):
    """A log line without its time stamp and thread id, which differ from run to run."""
    return re.sub(r'^[IWEF]\d{4} [\d:.]+\s+\d+ ', '', line)


@pytest.mark.parametrize('level', [None, '2', '3'])
def test_a_sampling_run_shows_no_startup_line_whatever_the_log_level(tiny_models_dir, level):
    raw = startup_lines(level or '2')
    assert raw, 'TensorFlow printed nothing at start-up here, so this test could not fail'
    result = subprocess.run([sys.executable, os.path.join(SRC, 'generate_unconditional_samples.py'), '--models_dir',
                             tiny_models_dir, '--model_name', 'tiny', '--nsamples', '1', '--length', '3'],
                            capture_output=True, text=True, timeout=120, env=env(TF_CPP_MIN_LOG_LEVEL=level))
    assert result.returncode == 0, result.stderr
    shown = {strip_prefix(line) for line in result.stderr.splitlines()}
    assert not shown & raw, result.stderr


def test_eval_expands_paths_and_draws_its_bar_only_on_a_terminal(tiny_models_dir, tmp_path, monkeypatch, capsys):
    import io
    import eval as eval_lib
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('GPT2_TEST_MODELS', tiny_models_dir)
    (tmp_path / 'text.txt').write_text('The quick brown fox jumps over the lazy dog.\n')

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, 'stderr', stream)
        eval_lib.perplexity_command(data='~/text.txt', model_name='tiny', models_dir='$GPT2_TEST_MODELS',
                                    json_out='~/result.json', progress=True)
        assert ('tok/s' in stream.getvalue()) == drawn, stream.getvalue()
        saved = json.loads((tmp_path / 'result.json').read_text())
        assert saved['tokens'] > 0 and saved['settings']['model'] == os.path.join(tiny_models_dir, 'tiny')
        (tmp_path / 'result.json').unlink()
    out = capsys.readouterr().out
    assert out.count('perplexity per token') == 2 and f'data={tmp_path / "text.txt"},' in out
    assert out.count(f'model={os.path.join(tiny_models_dir, "tiny")},') == 2 and '$GPT2_TEST_MODELS' not in out, out
