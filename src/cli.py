"""What every command-line script shares: fire for flags, one clear line instead of a traceback, and
TensorFlow's import without its start-up noise.  Importing cli does not import TensorFlow: each script
that uses TensorFlow calls import_tensorflow_quietly() before importing model, sample, checkpoint, ..."""
import functools
import inspect
import math
import os
import sys

import files
import quiet

def import_tensorflow_quietly(compile_cache=False):
    """Import TensorFlow without the lines its C++ core writes at every start-up (absl and CPU-feature
    notices, 'Could not find cuda drivers' on machines without a GPU), which TF_CPP_MIN_LOG_LEVEL does
    not silence; every other line it writes is shown, also when it then kills the process.

    Stderr passes through a filter process during the import.  TF_CPP_MIN_LOG_LEVEL defaults to 2, and
    2 or 3 filter too; set it to 0 (or 1) to see everything TensorFlow says.  Call it at the top of a
    script, before importing model, sample, checkpoint, ... (which import TensorFlow themselves).
    compile_cache=True also turns on the compile cache (files.use_compile_cache), which must precede
    TensorFlow's start; the sampling scripts do, whose steps (sample.py) keep its read noise off stderr.
    """
    if compile_cache:
        files.use_compile_cache()
    if 'tensorflow' in sys.modules:
        return
    if not quiet.wanted():
        import tensorflow  # noqa: F401  (asked for everything; or Windows, where fd 2 is not redirected)
        return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    with quiet.stderr_without(quiet.TF_NOISE, quiet.TF_NO_DRIVER_NOISE):
        import tensorflow as tf
        # Device discovery logs too; unlike running an op, it leaves the runtime unconfigured, so
        # tf.distribute and logical devices can still be set up afterwards.
        tf.config.list_physical_devices()


class UsageError(ValueError):
    """A flag value that cannot be used."""


def user_errors():
    """The exception types that mean 'the user asked for something impossible', not a bug: cli's and
    files', and those of the project's modules that this process has imported (a script that never
    imported model cannot raise model.ModelError; importing it here would import TensorFlow)."""
    errors = [UsageError, files.ModelFolderError, files.BusyError]
    for module, name in (('model', 'ModelError'), ('sample', 'SampleError'), ('encoder', 'EncoderError')):
        error = getattr(sys.modules.get(module), name, None)
        if isinstance(error, type) and issubclass(error, Exception):
            errors.append(error)
    return tuple(errors)


def check_flags(fn, argv):
    """Refuse unknown commands and flags in one line (fire would print its whole usage screen).

    fn is the function that fire calls, or a dict {command name: function}."""
    if isinstance(fn, dict):
        if not argv or argv[0] in ('-h', '--help'):
            return
        if argv[0] not in fn:
            raise UsageError(f'unknown command {argv[0]!r}; choose one of {", ".join(fn)}')
        fn, argv = fn[argv[0]], argv[1:]
    params = inspect.signature(fn).parameters
    flags = [p for p, v in params.items() if v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    positional = 0
    for arg in argv:
        if arg == '--':
            break
        if not arg.startswith('-'):
            positional += 1
        if arg.startswith('--') and len(arg) > 2:
            name = arg[2:].split('=', 1)[0].replace('-', '_')
            negated = name.startswith('no') and name[2:] in flags   # fire's --noflag for booleans
            if name not in flags and not negated and name not in ('help', 'helpfull'):
                raise UsageError(f'unknown flag --{name}; valid flags: ' + ' '.join('--' + p for p in flags))
    flags_with_values = sum(1 for a in argv if a.startswith('--') and '=' not in a and len(a) > 2)
    takes_positional = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params.values())
    takes_any = any(p.kind == p.VAR_POSITIONAL for p in params.values())
    if positional > takes_positional + flags_with_values and not takes_any:
        raise UsageError(f'too many arguments ({positional} without a --flag); valid flags: '
                         + ' '.join('--' + p for p in flags))


def without(fn, *names):
    """fn as the command line offers it: without the parameters `names` (hooks for Python callers, which
    no flag can give), so that --help leaves them out and check_flags refuses them in one line."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def command(*args, **kwargs):
        return fn(*args, **kwargs)
    command.__signature__ = signature.replace(parameters=[p for p in signature.parameters.values()
                                                          if p.name not in names])
    return command


def integer(name, value, minimum=None, allow_none=False):
    """A flag value as int, or a UsageError naming the flag."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        limit = f' >= {minimum}' if minimum is not None else ''
        raise UsageError(f'--{name} must be an integer{limit}, got {value!r}')
    return value


def number(name, value, minimum=None, maximum=None, allow_none=False, inclusive_min=True, inclusive_max=True):
    """A flag value as a finite float within [minimum, maximum] (or with open ends), or a UsageError."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok:
        ok = ((minimum is None or (value >= minimum if inclusive_min else value > minimum))
              and (maximum is None or (value <= maximum if inclusive_max else value < maximum)))
    if not ok:
        if minimum is not None and maximum is not None:
            limit = f' in {"[" if inclusive_min else "("}{minimum:g}, {maximum:g}{"]" if inclusive_max else ")"}'
        elif minimum is not None:
            limit = f' {">=" if inclusive_min else ">"} {minimum:g}'
        elif maximum is not None:
            limit = f' {"<=" if inclusive_max else "<"} {maximum:g}'
        else:
            limit = ''
        raise UsageError(f'--{name} must be a number{limit}, got {value!r}')
    return float(value)


PRECISIONS = ('float32', 'bfloat16', 'float16', 'int8')   # --precision: the weights' dtype, by its TensorFlow name
FLOAT_PRECISIONS = PRECISIONS[:3]   # what training computes in (int8: 8-bit weights for inference, quantize.py)


def precision_name(value, allowed=PRECISIONS):
    """--precision checked against the names a script allows (a subset of PRECISIONS), or a UsageError.
    Returns the name, a TensorFlow dtype name (tf.as_dtype converts it)."""
    if not isinstance(value, str) or value not in allowed:
        raise UsageError(f'--precision must be one of {", ".join(allowed)}, got {value!r}')
    return value


def precision(value):
    """--precision as a TensorFlow dtype for checkpoint.load, or a UsageError.  float16 needs a GPU: on a
    CPU, TensorFlow computes it through float32 conversions, slower than float32 itself."""
    import tensorflow as tf
    if precision_name(value) == 'float16' and not tf.config.list_physical_devices('GPU'):
        raise UsageError('--precision float16 needs a GPU and none is visible; use bfloat16 or float32 on a CPU')
    return tf.as_dtype(value)


def main(fn, argv=None, name=None, errors=()):
    """Run fn (or {command: fn}) as a fire CLI and return the exit status.

    User errors (the project's own exception types, `errors`, files that cannot be read or written,
    running out of memory) print one line, 'NAME: error: ...', and return 1; Ctrl-C returns 130."""
    import fire
    argv = sys.argv[1:] if argv is None else list(argv)
    name = name or os.path.basename(sys.argv[0])
    try:
        check_flags(fn, argv)
        fire.Fire(fn, command=argv, name=name)
    except KeyboardInterrupt:
        print(f'\n{name}: interrupted', file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # output piped into e.g. `head`: stop quietly
        return 0
    except user_errors() + tuple(errors) as e:
        print(f'{name}: error: {e}', file=sys.stderr)
        return 1
    except OSError as e:
        where = f': {e.filename}' if e.filename else ''
        print(f'{name}: error: {e.strerror or e}{where}', file=sys.stderr)
        return 1
    except MemoryError:
        print(f'{name}: error: out of memory; lower --batch_size or the sequence length', file=sys.stderr)
        return 1
    except Exception as e:
        tf = sys.modules.get('tensorflow')   # only a script that imported TensorFlow can run out of its memory
        if tf is not None and isinstance(e, tf.errors.ResourceExhaustedError):
            print(f'{name}: error: out of memory; lower --batch_size or the sequence length', file=sys.stderr)
            return 1
        raise
    return 0


def run(fn, errors=()):
    """main() for `if __name__ == '__main__'`: exits with its status."""
    sys.exit(main(fn, errors=errors))
