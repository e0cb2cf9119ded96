"""What the scripts share about files, without importing TensorFlow: model names and folders, user
paths, atomic writes, locks."""
import os
import re
import socket
import sys
import time

RELEASED_MODELS = ('124M', '355M', '774M', '1558M')
LEGACY_NAMES = {'117M': '124M', '345M': '355M'}   # the names OpenAI first gave 124M and 355M


class ModelFolderError(ValueError):
    """A model name that is not a folder inside models_dir, with the fix."""


def expand(path):
    """A path flag as the user meant it: ~ and $VARS expanded."""
    return os.path.expanduser(os.path.expandvars(os.fspath(path) if isinstance(path, os.PathLike) else str(path)))


def model_dir(model_name, models_dir='models'):
    """The folder of a model inside models_dir, refusing names that would leave it.

    The legacy names 117M and 345M find the folders 124M and 355M that download_model.py writes.
    """
    name = str(model_name)
    models_dir = expand(models_dir)
    if (not name or name in ('.', '..') or '..' in name or '/' in name or '\\' in name or '\0' in name
            or os.path.isabs(name)):
        raise ModelFolderError(f'invalid model name {name!r}: give the name of a folder inside {models_dir}, '
                               f'e.g. {RELEASED_MODELS[0]}')
    path = os.path.join(models_dir, name)
    if not os.path.isdir(path) and name in LEGACY_NAMES:
        path = os.path.join(models_dir, LEGACY_NAMES[name])
    if not os.path.isdir(path):
        wanted = LEGACY_NAMES.get(name, name)
        hint = (f'run: python download_model.py {wanted}' if wanted in RELEASED_MODELS else
                f'models are {", ".join(RELEASED_MODELS)} (python download_model.py NAME) or your own '
                f'checkpoint folders, e.g. from train.py')
        raise ModelFolderError(f'model {name} not found: {path} does not exist; {hint}')
    return path


def fix_hint(model_dir):
    """How to repair model_dir: download a released model again, or re-save one of your own."""
    name = os.path.basename(os.path.normpath(str(model_dir)))
    name = LEGACY_NAMES.get(name, name)
    if name in RELEASED_MODELS:   # --verify: a plain rerun trusts files that an older tool wrote
        return f'run: python download_model.py {name} --verify'
    return 'download it again (python download_model.py 124M --verify) or re-save it (checkpoint.save, train.py)'


def write_atomic(path, text):
    """Write text to a temporary file beside path, sync it, then rename it over path: path never holds
    half a file, and a failed write leaves the old file and no temporary one."""
    tmp = os.path.join(os.path.dirname(path), f'.{os.path.basename(path)}.{os.getpid()}.tmp')
    try:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class BusyError(RuntimeError):
    """A lock that another process holds; the message names that process."""


class Lock:
    """An advisory lock on the file at path, for one process writing a folder at a time.

    acquire(wait=False) raises BusyError naming the holder; wait=True blocks, first calling
    on_wait(holder).  The system releases the lock when its process ends, however it ends, so a
    killed run never blocks the next; the file itself is deleted on release.  fcntl.flock on POSIX
    (on NFS, Linux maps it to a lock the server sees), msvcrt.locking on Windows.
    """

    def __init__(self, path):
        self.path, self.file = path, None

    def acquire(self, wait=False, on_wait=None):
        while True:
            f = open(self.path, 'a+', encoding='utf-8')
            try:
                if not _try_lock(f):
                    f.seek(0)
                    holder = f.read().strip() or 'another process'
                    if not wait:
                        raise BusyError(f'{os.path.dirname(self.path) or "."} is in use by {holder}')
                    if on_wait is not None:
                        on_wait(holder)
                    _wait_lock(f)
            except BaseException:
                f.close()
                raise
            if _same_file(f, self.path):   # not a file that its last holder deleted meanwhile
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f'process {os.getpid()} ({os.path.basename(sys.argv[0]) or "python"}) on {socket.gethostname()} '
                f'since {time.strftime("%Y-%m-%d %H:%M:%S")}')
        f.flush()
        self.file = f
        return self

    def release(self):
        if self.file is None:
            return
        try:
            os.remove(self.path)   # while still held: a run waiting on this file then tries again
        except OSError:
            pass
        _unlock(self.file)
        self.file.close()
        self.file = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _same_file(f, path):
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


if os.name == 'nt':
    import msvcrt

    def _try_lock(f, mode=msvcrt.LK_NBLCK):
        f.seek(1 << 30)   # a byte far past the text, so the holder's name stays readable
        try:
            msvcrt.locking(f.fileno(), mode, 1)
            return True
        except OSError:
            return False

    def _wait_lock(f):
        while not _try_lock(f):
            time.sleep(0.5)

    def _unlock(f):
        f.seek(1 << 30)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _try_lock(f):
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _wait_lock(f):
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)

    def _unlock(f):
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def use_compile_cache():
    """Let XLA keep the steps it compiles for the CPU on disk, so a later process loads them instead of
    compiling them again (seconds for each model shape, batch size and cache size; GPU steps are compiled
    in each process).  Returns the folder, or None.

    The folder is $GPT2_COMPILE_CACHE (0 turns the cache off), else $XDG_CACHE_HOME/gpt-2/xla or
    ~/.cache/gpt-2/xla, with a subfolder per TensorFlow version and CPU: a step compiled for one CPU's
    instructions must not run on another's.  It is passed to TensorFlow in TF_XLA_FLAGS, unless those
    already name a cache, so it takes effect only if called before TensorFlow starts its runtime (its
    first op or device query), and only where the folder can be written: XLA fails a compile whose
    result it cannot save.
    """
    setting = os.environ.get('GPT2_COMPILE_CACHE', '')
    flags = os.environ.get('TF_XLA_FLAGS', '')
    if setting == '0' or 'tf_xla_persistent_cache_directory' in flags:
        return None
    version = _tensorflow_version()
    if version is None:
        return None
    base = expand(setting) if setting else os.path.join(
        expand(os.environ.get('XDG_CACHE_HOME') or '~/.cache'), 'gpt-2', 'xla')
    import hashlib
    import platform
    folder = os.path.join(base, f'tf{version}-{hashlib.sha256(_cpu_identity().encode()).hexdigest()[:12]}'
                                f'-{platform.machine()}')
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f'.probe.{os.getpid()}')
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError:
        return None
    remove_unfit_entries(folder)
    os.environ['TF_XLA_FLAGS'] = (f'{flags} --tf_xla_persistent_cache_directory={folder} '
                                  f'--tf_xla_persistent_cache_device_types=CPU').strip()
    return folder


# The instruction sets XLA's CPU code generator emits, by LLVM's name, with their /proc/cpuinfo name.
CPU_EXTENSIONS = {
    **{name: name for name in (
        'sse', 'sse2', 'ssse3', 'sse4a', 'avx', 'avx2', 'fma', 'fma4', 'f16c', 'xop', 'bmi2', 'popcnt', 'aes',
        'vpclmulqdq', 'gfni', 'vaes', 'avx512f', 'avx512cd', 'avx512dq', 'avx512bw', 'avx512vl', 'avx512ifma',
        'avx512vbmi')},
    'sse3': 'pni', 'sse4.1': 'sse4_1', 'sse4.2': 'sse4_2', 'bmi': 'bmi1', 'lzcnt': 'abm', 'pclmul': 'pclmulqdq',
    'avx512vbmi2': 'avx512_vbmi2', 'avx512vp2intersect': 'avx512_vp2intersect', 'avx512vnni': 'avx512_vnni', 'avx512bitalg': 'avx512_bitalg', 'avx512vpopcntdq': 'avx512_vpopcntdq',
    'avx512bf16': 'avx512_bf16', 'avx512fp16': 'avx512_fp16', 'avxvnni': 'avx_vnni', 'avxifma': 'avx_ifma',
    'avxvnniint8': 'avx_vnni_int8', 'avxneconvert': 'avx_ne_convert', 'amx-tile': 'amx_tile',
    'amx-bf16': 'amx_bf16', 'amx-int8': 'amx_int8', 'amx-fp16': 'amx_fp16', 'amx-complex': 'amx_complex',
}
_FEATURE_LIST = re.compile(rb'(?<![\w.+-])[+-][a-z0-9][\w.-]*(?:,[+-][a-z0-9][\w.-]*){4,}')


def missing_extensions(entry, cpu_flags):
    """The instruction sets (CPU_EXTENSIONS) that the compiled step in the file `entry` was built for and
    that a CPU with these /proc/cpuinfo flags lacks: an XLA cache entry records its target's features as
    LLVM names them, '+avx512f,-amx-fp16,...'."""
    with open(entry, 'rb') as f:
        wanted = {feature[1:] for match in _FEATURE_LIST.findall(f.read())
                  for feature in match.decode().split(',') if feature[0] == '+'}
    return sorted(name for name in wanted & CPU_EXTENSIONS.keys() if CPU_EXTENSIONS[name] not in cpu_flags)


def remove_unfit_entries(folder, cpu_flags=None):
    """Delete the compile cache's entries built for an instruction set this CPU lacks, so that XLA compiles
    those steps again rather than load code that would stop the process (SIGILL).  The folder is already
    one per CPU model and flags; this guards against entries copied in from elsewhere.  cpu_flags: this
    CPU's /proc/cpuinfo flags (read by default).  Returns the names removed."""
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if not flags:
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        try:
            if name.endswith('.pb') and missing_extensions(path, flags):
                os.remove(path)
                removed.append(name)
        except OSError:   # removed or being replaced by another process
            continue
    return removed


def _cpu_flags():
    """This CPU's instruction-set flags from /proc/cpuinfo (x86 Linux), else an empty set."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def _tensorflow_version():
    """The installed TensorFlow's version, without importing it (None if there is none)."""
    if 'tensorflow' in sys.modules:
        return getattr(sys.modules['tensorflow'], '__version__', None)
    from importlib import metadata
    for name in ('tensorflow', 'tensorflow-cpu', 'tensorflow-intel', 'tensorflow-macos', 'tf-nightly'):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_identity():
    """The CPU's model and instruction-set flags (Linux), else what platform knows of it."""
    import platform
    try:
        with open('/proc/cpuinfo') as f:
            lines = f.read().split('\n\n')[0].splitlines()
        return '\n'.join(line for line in lines if line.split(':')[0].strip() in
                         ('vendor_id', 'model name', 'flags', 'Features', 'CPU implementer', 'CPU part'))
    except OSError:
        return f'{platform.processor()} {platform.machine()}'
