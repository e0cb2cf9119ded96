"""files.py: path expansion, repair hints and the advisory lock (no TensorFlow)."""
import os
import subprocess
import sys
import threading
import time

import pytest

import files
from conftest import SRC


def test_expand_home_and_variables(monkeypatch, tmp_path):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('GPT2_TEST_DIR', '/data')
    assert files.expand('~/models') == os.path.join(str(tmp_path), 'models')
    assert files.expand('$GPT2_TEST_DIR/x') == '/data/x' and files.expand('${GPT2_TEST_DIR}/x') == '/data/x'
    assert files.expand('plain/$UNSET_GPT2_VAR') == 'plain/$UNSET_GPT2_VAR'   # as the shell leaves it, visibly
    assert files.expand(tmp_path / '~') == str(tmp_path / '~')   # only a leading ~ is the home folder


@pytest.mark.parametrize('name', ['124M', '117M', '1558M'])
def test_fix_hint_names_the_command_that_repairs_a_released_model(name):
    wanted = files.LEGACY_NAMES.get(name, name)
    assert files.fix_hint(os.path.join('models', name)) == f'run: python download_model.py {wanted} --verify'
    assert 'checkpoint.save' in files.fix_hint(os.path.join('checkpoint', 'run1'))


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    path = str(tmp_path / '.lock')
    with files.Lock(path):
        with pytest.raises(files.BusyError) as err:
            files.Lock(path).acquire()
        assert f'{tmp_path} is in use by process {os.getpid()} (' in str(err.value)
    assert not os.path.exists(path)   # released and deleted
    with files.Lock(path):
        pass


def test_a_waiting_lock_is_told_who_holds_it_and_gets_it_after_release(tmp_path):
    path = str(tmp_path / '.lock')
    first = files.Lock(path).acquire()
    told, got = [], []
    waiter = threading.Thread(target=lambda: got.append(files.Lock(path).acquire(wait=True, on_wait=told.append)))
    waiter.start()
    time.sleep(0.3)
    assert not got and len(told) == 1 and f'process {os.getpid()}' in told[0]
    first.release()
    waiter.join(timeout=10)
    assert got and f'process {os.getpid()}' in open(path).read()
    got[0].release()


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    path = str(tmp_path / '.lock')
    code = 'import sys, time, files; held = files.Lock(sys.argv[1]).acquire(); print("held", flush=True); time.sleep(60)'
    holder = subprocess.Popen([sys.executable, '-c', code, path],
                              stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=SRC))
    assert holder.stdout.readline() == 'held\n'
    with pytest.raises(files.BusyError, match=f'process {holder.pid} '):
        files.Lock(path).acquire()
    holder.kill()
    holder.wait(timeout=10)
    assert os.path.exists(path)   # left behind
    files.Lock(path).acquire().release()


def test_model_dir_expands_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv('HOME', str(tmp_path))
    monkeypatch.setenv('GPT2_TEST_DIR', str(tmp_path))
    (tmp_path / 'models' / '124M').mkdir(parents=True)
    expected = os.path.join(str(tmp_path), 'models', '124M')
    assert files.model_dir('124M', '~/models') == expected == files.model_dir('117M', '$GPT2_TEST_DIR/models')


def test_compile_cache_folder_per_tensorflow_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv('GPT2_COMPILE_CACHE', str(tmp_path / 'cc'))
    monkeypatch.setenv('TF_XLA_FLAGS', '--tf_xla_clustering_debug')
    folder = files.use_compile_cache()
    assert os.path.isdir(folder) and os.path.dirname(folder) == str(tmp_path / 'cc')
    assert os.path.basename(folder).startswith('tf' + files._tensorflow_version() + '-')
    assert os.environ['TF_XLA_FLAGS'].split() == ['--tf_xla_clustering_debug',
                                                  f'--tf_xla_persistent_cache_directory={folder}',
                                                  '--tf_xla_persistent_cache_device_types=CPU']
    assert os.listdir(folder) == []   # the write probe is gone
    # A cache the user named already stays; 0 turns it off; a folder that cannot be written is not used.
    assert files.use_compile_cache() is None and os.environ['TF_XLA_FLAGS'].count('persistent_cache_directory') == 1
    monkeypatch.setenv('TF_XLA_FLAGS', '')
    monkeypatch.setenv('GPT2_COMPILE_CACHE', '0')
    assert files.use_compile_cache() is None and os.environ['TF_XLA_FLAGS'] == ''
    (tmp_path / 'file').write_text('')
    monkeypatch.setenv('GPT2_COMPILE_CACHE', str(tmp_path / 'file'))
    assert files.use_compile_cache() is None and os.environ['TF_XLA_FLAGS'] == ''
    monkeypatch.delenv('GPT2_COMPILE_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert files.use_compile_cache().startswith(str(tmp_path / 'xdg' / 'gpt-2' / 'xla') + os.sep)


def test_cpu_identity_names_the_instruction_sets():
    identity = files._cpu_identity()
    assert identity and (not os.path.exists('/proc/cpuinfo') or 'flags' in identity or 'Features' in identity)


RECORDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'xla-aot-loader-warning-intel.txt')


def recorded_aot_lines():
    """Two of the lines XLA's AOT loader printed on an Intel Xeon (Sapphire Rapids) loading a healthy entry."""
    with open(RECORDED, encoding='utf-8') as f:
        lines = [line for line in f.read().splitlines() if line]
    assert len(lines) == 2 and all('cpu_aot_loader.cc' in line for line in lines)
    return lines


def compile_features(line):
    return line.split('Compile machine features: [', 1)[1].split(']', 1)[0]


def fake_entry(path, features):
    """A compile cache entry as XLA writes it, as far as remove_unfit_entries reads it: binary, with the
    target's feature list somewhere inside."""
    path.write_bytes(os.urandom(2000) + b'\x12\x05znver\x1a' + features.encode() + b'\x22\x00' + os.urandom(500))


def test_remove_unfit_entries_keeps_what_this_cpu_runs(tmp_path):
    """An entry built for an instruction set the CPU lacks is removed (XLA then compiles the step again);
    the recorded Intel entry's own CPU keeps it, whatever tuning attributes (+prefer-no-gather) it lists."""
    features = compile_features(recorded_aot_lines()[0])
    assert '+prefer-no-gather' in features and '+amx-bf16' in features
    intel = {files.CPU_EXTENSIONS.get(f[1:], f[1:]) for f in features.split(',') if f[0] == '+'}
    intel = {f for f in intel if not f.startswith('prefer-')}   # /proc/cpuinfo lists no tuning attributes
    for name in ('a.pb', 'b.pb'):
        fake_entry(tmp_path / name, features)
    (tmp_path / 'c.pb').write_bytes(os.urandom(3000))   # no feature list: nothing to judge
    assert files.missing_extensions(tmp_path / 'a.pb', intel) == []
    assert files.remove_unfit_entries(str(tmp_path), intel) == []
    no_amx = intel - {'amx_bf16', 'amx_tile', 'amx_int8', 'avx512_fp16'}
    assert files.missing_extensions(tmp_path / 'a.pb', no_amx) == ['amx-bf16', 'amx-int8', 'amx-tile', 'avx512fp16']
    assert files.remove_unfit_entries(str(tmp_path), no_amx) == ['a.pb', 'b.pb']
    assert os.listdir(tmp_path) == ['c.pb']


def test_use_compile_cache_removes_unfit_entries(tmp_path, monkeypatch):
    flags = files._cpu_flags()
    lacking = [name for name, flag in files.CPU_EXTENSIONS.items() if flag not in flags]
    if not flags or not lacking:
        pytest.skip('needs a CPU whose /proc/cpuinfo lacks one of files.CPU_EXTENSIONS')
    monkeypatch.setenv('GPT2_COMPILE_CACHE', str(tmp_path / 'cc'))
    monkeypatch.delenv('TF_XLA_FLAGS', raising=False)
    folder = files.use_compile_cache()
    fake_entry(tmp_path / 'cc' / os.path.basename(folder) / 'unfit.pb', f'+sse,+sse2,+{lacking[0]},-cx8,-sgx')
    fake_entry(tmp_path / 'cc' / os.path.basename(folder) / 'fit.pb', '+sse,+sse2,+prefer-no-gather,-cx8,-sgx')
    monkeypatch.delenv('TF_XLA_FLAGS')
    assert files.use_compile_cache() == folder
    assert os.listdir(folder) == ['fit.pb']


FILTER_SCRIPT = '''
import os, sys
import quiet
with quiet.stderr_without(quiet.COMPILE_CACHE_NOISE):
    for line in sys.argv[1:]:
        os.write(2, line.encode() + b"\\n")
'''


def test_compile_cache_noise_hides_the_recorded_tuning_lines_and_nothing_else():
    """The recorded lines (tuning attributes only) are hidden; the same line flagging an instruction set,
    and any other error line, pass."""
    recorded = recorded_aot_lines()
    isa = recorded[0].replace('feature +prefer-no-scatter is', 'feature +amx-fp16 is')
    assert isa != recorded[0]
    other = 'E0000 00:00:1.0   10 some_other.cc:12] Something else went wrong'
    run = subprocess.run([sys.executable, '-c', FILTER_SCRIPT, *recorded, isa, other], cwd=SRC,
                         capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=SRC, TF_CPP_MIN_LOG_LEVEL='2'))
    assert run.returncode == 0
    assert run.stderr.splitlines() == [isa, other]
