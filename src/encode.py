#!/usr/bin/env python3
"""Encode text into a GPT-2 token file for train.py.

    python src/encode.py corpus/ notes.txt 'more/**/*.txt' records.jsonl --out data.npy

Inputs are files, folders (searched recursively for *.txt and *.jsonl) and globs.  Each text
file is one document; each line of a .jsonl file is one document (a JSON string, or an object
whose --text_key field holds the text).  Documents are joined with <|endoftext|> (id 50256)
between them, so decoding the output gives the documents back joined by '<|endoftext|>'.

A literal '<|endoftext|>' inside a document is, by default (--allow_special=True), encoded as
the special token: that is what people who put it in their text as a separator mean.  The TF1
fine-tuning forks encoded it as seven ordinary tokens without saying so; here the count is
always reported, and --allow_special=False keeps such strings as plain text (for text that
merely quotes the string, e.g. web pages about GPT-2).

The output is a .npy array of uint16 token ids (memory-mappable: np.load(path, mmap_mode='r')),
or a compressed .npz holding it as 'tokens'.  It is written to a temporary file and renamed, so
an interrupted run never leaves a half-written token file under the final name.  Line endings
are read as Python's text mode reads them ('\\r\\n' becomes '\\n').
"""
import collections
import glob
import json
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np

import cli   # no TensorFlow: encoding never needs it
import encoder as encoder_lib
import files

TEXT_EXTENSIONS = ('.txt', '.jsonl')
PARALLEL_MIN_BYTES = 32 << 20     # below this, starting worker processes (~1 s each) costs more than it saves
CHUNK_CHARS = 1 << 20             # text per worker task (split only where the split cannot change the ids)

# A split is safe between 'X\n' and 'Y' when X and Y are letters, digits or punctuation: GPT-2's
# pre-tokeniser then ends a piece after the newline in the whole text and in the left part alone,
# and starts a piece at Y in both, so encoding the parts gives exactly the ids of the whole.
_SAFE_SPLIT = None


class EncodeError(cli.UsageError):
    """An input that cannot be encoded or an output that cannot be written, with the fix."""


def find_files(inputs):
    """Expand files, folders (recursive *.txt, *.jsonl) and globs into a sorted, de-duplicated list.

    Inside folders, hidden files and folders (names starting with '.', e.g. .git, .ipynb_checkpoints)
    are skipped, as globs skip them.  Returns (paths, {'hidden_files': n, 'hidden_folders': m}).
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    found = []
    hidden = collections.Counter(hidden_files=0, hidden_folders=0)
    for item in inputs:
        item = files.expand(item)   # also fire's ints: it reads `2024` as a number
        if os.path.isdir(item):
            matches = []
            for root, folders, names in os.walk(item):
                hidden['hidden_folders'] += sum(d.startswith('.') for d in folders)
                folders[:] = [d for d in folders if not d.startswith('.')]
                texts = [f for f in names if f.endswith(TEXT_EXTENSIONS)]
                hidden['hidden_files'] += sum(f.startswith('.') for f in texts)
                matches += [os.path.join(root, f) for f in texts if not f.startswith('.')]
            if not matches:
                raise EncodeError(f'folder {item} holds no {" or ".join(TEXT_EXTENSIONS)} files')
        elif os.path.isfile(item):
            matches = [item]
        elif glob.has_magic(item):
            matches = [m for m in glob.glob(item, recursive=True) if os.path.isfile(m)]
            if not matches:
                raise EncodeError(f'no files match {item}')
        else:
            raise EncodeError(f'{item} does not exist')
        found.extend(sorted(matches))
    if not found:
        raise EncodeError('no input files given')
    unique = {}
    for path in found:  # a file named twice (e.g. itself and through its folder) is read once
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values()), dict(hidden)


def read_documents(path, text_key='text'):
    """Yield the documents of one file: the whole text, or one per .jsonl line."""
    try:
        with open(path, encoding='utf-8') as f:
            if not path.endswith('.jsonl'):
                yield f.read()
                return
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as e:
                    raise EncodeError(f'{path}:{lineno}: not valid JSON ({e})') from None
                if isinstance(record, dict):
                    record = record.get(text_key)
                if not isinstance(record, str):
                    raise EncodeError(f'{path}:{lineno}: expected a JSON string or an object with a '
                                      f'string field {text_key!r} (set --text_key)')
                yield record
    except UnicodeDecodeError as e:
        raise EncodeError(f'{path} is not UTF-8 text (byte {e.start}: {e.reason}); convert it, '
                          'e.g. iconv -f latin1 -t utf-8') from None
    except OSError as e:
        raise EncodeError(f'cannot read {path} ({e.strerror})') from None


def split_text(text, chunk_chars=CHUNK_CHARS):
    """Cut text into pieces of about chunk_chars at points where encoding piecewise gives the same ids."""
    global _SAFE_SPLIT
    if _SAFE_SPLIT is None:
        import regex
        _SAFE_SPLIT = regex.compile(r'(?<=[\p{L}\p{N}\p{P}]\n)(?=[\p{L}\p{N}])')
    start = 0
    while len(text) - start > chunk_chars:
        m = _SAFE_SPLIT.search(text, start + chunk_chars)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    yield text[start:]


def _tasks(paths, text_key, chunk_chars, stats):
    """Yield (starts_document, text, input_bytes) for every chunk of every non-empty document.

    text is None for the progress-only item that closes each file.
    """
    for path in paths:
        size = os.path.getsize(path)
        stats['files'] += 1
        done = 0
        for doc in read_documents(path, text_key):
            if not doc:
                stats['empty'] += 1
                continue
            stats['documents'] += 1
            for i, piece in enumerate(split_text(doc, chunk_chars)):
                nbytes = min(len(piece.encode('utf-8', 'surrogatepass')), size - done)
                done += nbytes
                yield i == 0, piece, nbytes
        yield False, None, size - done


# Worker state: each process builds its encoder once.
_worker = {}


def _init_worker(model_name, models_dir):
    _worker['enc'] = get_encoder(model_name, models_dir)


def _encode_piece(text, allow_special):
    """(ids as a compact array, number of special tokens found in the text)."""
    enc = _worker['enc']
    ids = np.asarray(enc.encode(text, allowed_special='all' if allow_special else ()),
                     dtype=token_dtype(enc.n_vocab))
    n_special = int(np.count_nonzero(ids == enc.eot_token)) if allow_special else text.count('<|endoftext|>')
    return ids, n_special


def model_folder(model_name, models_dir='models'):
    """models_dir/model_name (files.model_dir: no names that leave models_dir; 117M and 345M find 124M
    and 355M), as an EncodeError when it cannot be used."""
    try:
        return files.model_dir(model_name, models_dir)
    except files.ModelFolderError as e:
        raise EncodeError(f'{e} (or leave out --model_name to use the vocabulary that every released '
                          'GPT-2 size shares)') from None


def get_encoder(model_name=None, models_dir='models'):
    """The model's encoder, or the vendored GPT-2 one (shared by every released size) when model_name is None."""
    if model_name is None:
        return encoder_lib.get_default_encoder()
    path = model_folder(model_name, models_dir)
    return encoder_lib.get_encoder(os.path.basename(path), os.path.dirname(path))


def check_workers(workers):
    """--workers as a positive int (None: every core), or a cli.UsageError."""
    if workers is None:
        return os.cpu_count() or 1
    return cli.integer('workers', workers, minimum=1)


def token_dtype(n_vocab):
    return np.uint16 if n_vocab <= 1 << 16 else np.uint32


def encode_stream(inputs, allow_special=True, model_name=None, models_dir='models', workers=None,
                  text_key='text', chunk_chars=CHUNK_CHARS, progress=True):
    """Yield arrays of token ids for the inputs, in order, with eot between documents.

    Returns (via StopIteration.value, see encode_to_array) a dict of counts.  Uses `workers`
    processes (default: every core) when the inputs hold at least PARALLEL_MIN_BYTES.
    """
    workers = check_workers(workers)
    paths, hidden = find_files(inputs)
    total_bytes = sum(os.path.getsize(p) for p in paths)
    enc = get_encoder(model_name, models_dir)
    eot = np.asarray([enc.eot_token], token_dtype(enc.n_vocab))
    stats = collections.Counter(files=0, documents=0, empty=0, special=0, tokens=0)
    stats.update(hidden, bytes=total_bytes)
    stats['processes'] = workers if workers > 1 and total_bytes >= PARALLEL_MIN_BYTES else 1
    bar = _progress_bar(total_bytes, progress)
    tasks = _tasks(paths, text_key, chunk_chars, stats)
    pool = None
    try:
        if stats['processes'] > 1:
            # spawn, not fork: the caller (train.py) may already run TensorFlow's threads.
            ctx = multiprocessing.get_context('spawn')
            pool = ctx.Pool(stats['processes'], _init_worker, (model_name, models_dir))
            results = _ordered_async(pool, tasks, allow_special, 2 * stats['processes'])
        else:
            _worker['enc'] = enc
            results = ((starts, None if text is None else _encode_piece(text, allow_special), nbytes)
                       for starts, text, nbytes in tasks)
        first = True
        for starts, result, nbytes in results:
            bar.update(nbytes)
            if result is None:
                continue
            ids, n_special = result
            stats['special'] += n_special
            if starts and not first:
                stats['tokens'] += 1
                yield eot
            first = False
            stats['tokens'] += len(ids)
            yield ids
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        bar.close()
    return dict(stats)


def _ordered_async(pool, tasks, allow_special, window):
    """Run tasks on the pool, at most `window` in flight, yielding results in input order."""
    pending = collections.deque()
    for starts, text, nbytes in tasks:
        job = None if text is None else pool.apply_async(_encode_piece, (text, allow_special))
        pending.append((starts, job, nbytes))
        while len(pending) > window:
            starts, job, nbytes = pending.popleft()
            yield starts, job and job.get(), nbytes
    while pending:
        starts, job, nbytes = pending.popleft()
        yield starts, job and job.get(), nbytes


def _progress_bar(total, enabled):
    from tqdm import tqdm
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc='encoding',
                disable=None if enabled else True, file=sys.stderr, dynamic_ncols=True)   # None: only on a terminal


def encode_to_array(inputs, **kwargs):
    """All the inputs' tokens as one numpy array (uint16 for GPT-2's vocabulary), and the counts."""
    gen = encode_stream(inputs, **kwargs)
    parts = []
    while True:
        try:
            parts.append(next(gen))
        except StopIteration as stop:
            stats = stop.value
            break
    dtype = parts[0].dtype if parts else np.uint16
    return (np.concatenate(parts) if parts else np.zeros([0], dtype)), stats


def encode(*inputs, out=None, allow_special=True, model_name=None, models_dir='models', workers=None,
           text_key='text', chunk_chars=CHUNK_CHARS, progress=True):
    """Encode text files, folders and globs into a token file.  Returns the counts as a dict.

    Args:
      inputs: text files (.txt or any other name), .jsonl files, folders (searched for *.txt and
        *.jsonl) and globs ('data/**/*.txt'); each file, or each .jsonl line, is one document.
      out: the token file to write: NAME.npy (uint16, memory-mappable) or NAME.npz (compressed).
      allow_special: encode a literal '<|endoftext|>' in the text as the special token 50256
        (True) or as the seven ordinary tokens of that string (False).
      model_name: take the vocabulary from models_dir/model_name (default: the vendored GPT-2
        vocabulary, which every released size uses).
      models_dir: folder holding model folders.
      workers: processes for large inputs (default: every core; inputs under 32 MiB use one).
      text_key: the field of a .jsonl object that holds the text.
      chunk_chars: characters of text per worker task.
      progress: show a progress bar over input bytes.
    """
    if out is None or out == '':
        raise EncodeError('give the output file: --out data.npy (or data.npz)')
    out = files.expand(out)   # also fire's ints: it reads `--out 5` as a number
    if not out.endswith(('.npy', '.npz')):
        raise EncodeError(f'--out must end in .npy or .npz, got {out}')
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise EncodeError(f'output folder {folder} does not exist')
    start = time.perf_counter()
    gen = encode_stream(inputs, allow_special=allow_special, model_name=model_name, models_dir=models_dir,
                        workers=workers, text_key=text_key, chunk_chars=chunk_chars, progress=progress)
    try:
        fd, raw_path = tempfile.mkstemp(prefix='.' + os.path.basename(out) + '.', suffix='.raw', dir=folder)
    except OSError as e:
        raise EncodeError(f'cannot write to {folder} ({e.strerror})') from None
    tmp_out = raw_path[:-4] + out[-4:]
    dtype = None
    try:
        with os.fdopen(fd, 'wb') as raw:
            while True:
                try:
                    ids = next(gen)
                except StopIteration as stop:
                    stats = stop.value
                    break
                dtype = ids.dtype
                raw.write(ids.tobytes())
        if stats['tokens'] == 0:
            raise EncodeError('the inputs hold no text (every document is empty); nothing written')
        _finish(raw_path, tmp_out, dtype, stats['tokens'])
        os.replace(tmp_out, out)
    except OSError as e:
        raise EncodeError(f'cannot write {out} ({e.strerror})') from None
    finally:
        gen.close()
        for p in (raw_path, tmp_out):
            if os.path.exists(p):
                os.unlink(p)
    stats['seconds'] = time.perf_counter() - start
    stats['out'] = out
    return stats


def _finish(raw_path, path, dtype, count):
    """Turn the raw ids into a .npy (header + the bytes, streamed) or a compressed .npz."""
    if path.endswith('.npz'):
        np.savez_compressed(path, tokens=np.fromfile(raw_path, dtype=dtype))
        return
    with open(path, 'wb') as f, open(raw_path, 'rb') as raw:
        np.lib.format.write_array_header_1_0(f, {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 'fortran_order': False, 'shape': (count,)})
        while True:
            block = raw.read(1 << 24)
            if not block:
                break
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def _count(n, noun):
    return f'{n:,} {noun}' + ('' if n == 1 else 's')


def report(stats):
    """The one-paragraph summary that the CLI prints."""
    s = stats
    seconds = max(s['seconds'], 1e-9)
    lines = [f"wrote {s['tokens']:,} tokens ({_count(s['documents'], 'document')} from {_count(s['files'], 'file')}, "
             f"{s['bytes'] / 2**20:.1f} MiB) to {s['out']} in {s['seconds']:.1f} s: "
             f"{s['tokens'] / seconds:,.0f} tokens/s, {s['bytes'] / 2**20 / seconds:.2f} MiB/s "
             f"on {s['processes']} process{'es' if s['processes'] > 1 else ''}"]
    if s['empty']:
        lines.append(f"skipped {_count(s['empty'], 'empty document')}")
    if s.get('hidden_files') or s.get('hidden_folders'):
        parts = [_count(s[k], noun) for k, noun in (('hidden_folders', 'hidden folder'),
                                                    ('hidden_files', 'hidden text file')) if s[k]]
        lines.append(f"skipped {' and '.join(parts)} inside the input folders (names starting with '.'; "
                     "name them to include them)")
    if s['special']:
        lines.append(f"found {s['special']:,} literal '<|endoftext|>' in the text: "
                     + ('encoded as the special token 50256 (--allow_special=False keeps them as text)'
                        if s.get('allow_special', True) else
                        'kept as ordinary text (--allow_special=True makes them the special token 50256)'))
    return '\n'.join(lines)


def main(*inputs, out=None, allow_special=True, model_name=None, models_dir='models', workers=None,
         text_key='text', progress=True):
    """Encode text files, folders and globs into a token file for train.py.

    Args:
      inputs: text files, .jsonl files, folders (searched for *.txt and *.jsonl) and globs.
      out: output token file, NAME.npy (uint16, memory-mappable) or NAME.npz (compressed).
      allow_special: a literal '<|endoftext|>' in the text becomes the special token 50256
        (default) rather than seven ordinary tokens.
      model_name: take the vocabulary from models_dir/model_name (default: GPT-2's, vendored).
      models_dir: folder holding model folders.
      workers: processes for large inputs (default: every core).
      text_key: the field of .jsonl objects that holds the text.
      progress: show a progress bar over input bytes.
    """
    stats = encode(*inputs, out=out, allow_special=allow_special, model_name=model_name,
                   models_dir=models_dir, workers=workers, text_key=text_key, progress=progress)
    stats['allow_special'] = allow_special
    print(report(stats))


if __name__ == '__main__':
    cli.run(main)
