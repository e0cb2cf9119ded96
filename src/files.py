"""What the scripts share about files, without importing TensorFlow: model names and folders, user
paths, atomic writes."""
import os

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
