"""What every command-line script shares: fire for flags, and one clear line instead of a traceback."""
import inspect
import os
import sys
import tempfile

_VERBOSE = 'TF_CPP_MIN_LOG_LEVEL' in os.environ   # a user who set it wants TensorFlow's own logging
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def import_tensorflow_quietly():
    """Import TensorFlow without the lines its C++ core writes to stderr at start-up (absl notices,
    'Could not find cuda drivers' on CPU machines), which TF_CPP_MIN_LOG_LEVEL no longer silences.
    They are shown after all if the import fails, and always when TF_CPP_MIN_LOG_LEVEL was set."""
    if _VERBOSE or 'tensorflow' in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            import tensorflow as tf
            tf.constant(0) + 0   # device initialisation logs too
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode('utf-8', 'replace'))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


import_tensorflow_quietly()


class UsageError(ValueError):
    """A flag value that cannot be used."""


def user_errors():
    """The exception types that mean 'the user asked for something impossible', not a bug."""
    import model
    import sample
    import encoder
    return (UsageError, model.ModelError, sample.SampleError, encoder.EncoderError)


def check_flags(fn, argv):
    """Refuse flags that fn does not take, in one line (fire would print its whole usage)."""
    params = inspect.signature(fn).parameters
    for arg in argv:
        if arg.startswith('--') and len(arg) > 2:
            name = arg[2:].split('=', 1)[0].replace('-', '_')
            if name not in params and name not in ('help', 'helpfull'):
                raise UsageError(f'unknown flag --{name}; valid flags: '
                                 + ' '.join('--' + p for p in params))


def integer(name, value, minimum=None, allow_none=False):
    """A flag value as int, or a UsageError naming the flag."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        limit = f' >= {minimum}' if minimum is not None else ''
        raise UsageError(f'--{name} must be an integer{limit}, got {value!r}')
    return value


def run(fn):
    """Run fn as a fire CLI: user errors become 'error: ...' and exit status 1, Ctrl-C exit status 130."""
    import fire
    try:
        check_flags(fn, sys.argv[1:])
        fire.Fire(fn)
    except KeyboardInterrupt:
        print('\ninterrupted', file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.stderr.close()  # output piped into e.g. `head`: stop quietly
        sys.exit(0)
    except user_errors() as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
