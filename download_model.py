#!/usr/bin/env python3
"""Download released GPT-2 models: checkpoint, hyperparameters and BPE vocabulary.

    python download_model.py 124M            # into models/124M
    python download_model.py 124M 355M --quiet
    python download_model.py 124M --verify   # check every file against the server, repair what differs

Each file streams into <file>.part and is renamed only once complete, so a
final name never holds a partial file and a rerun resumes where it stopped.
The file's validator (its ETag, else Last-Modified) is kept beside the .part in
<file>.part.etag and sent as If-Range when resuming, so a file that changed on
the server since is fetched again from byte 0 instead of being spliced onto the
old bytes.  Without a validator a resume trusts the server's file to be unchanged.

download.json in the model folder records each finished file's size,
validator and sha256.  A rerun compares the sizes on disk with it, without any
request, and fetches again only what differs: a shorter file (cut short by a
full disk or an interrupted copy) resumes, and is fetched again from byte 0 if
the result does not match its recorded sha256; any other difference starts over.
--verify asks the server for every file's size and checks each file's sha256
against the record (the vocabulary files: against their known sha256), also in
folders that have no record, and repairs what differs.

One run at a time writes a model folder: a second one waits for the first
(an advisory lock on <folder>/.download.lock, released by the system when the
process ends, so a killed run never blocks the next).

This script runs alone (the Dockerfiles copy it before the code), so it keeps
its own copy of the model names (src/files.py), of the path expansion
(files.expand) and of the lock (files.lock).
"""

import argparse
import email.utils
import errno
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import sys
import time
import urllib.parse

import requests
from tqdm import tqdm

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
BASE_URL_ENV = "GPT2_BASE_URL"
MODEL_NAMES = ("124M", "355M", "774M", "1558M")  # a copy of files.RELEASED_MODELS: this script runs alone
LEGACY_NAMES = {"117M": "124M", "345M": "355M"}
FILENAMES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
# Every released model shares the same vocabulary; src/vocab holds copies.
KNOWN_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
CHUNK_SIZE = 1 << 16
# Statuses worth retrying besides 5xx: request timeout, too many requests.
RETRY_STATUSES = (408, 429)
RETRY_AFTER_CAP = 120  # seconds: the longest Retry-After (on 429 or 503) that is honoured
RECORD = "download.json"  # in the model folder: each finished file's size, validator and sha256
LOCK = ".download.lock"  # in the model folder: held while a run writes it


class DownloadError(Exception):
    """A download that cannot go on; the message is one line for the user."""


class _Transient(Exception):
    """A failure worth retrying: network trouble, 5xx, a body cut short.

    wait: seconds the server asked for (Retry-After), or 0."""

    def __init__(self, message, wait=0):
        super().__init__(message)
        self.wait = wait


class _StartOver(Exception):
    """The .part cannot be resumed; delete it and fetch from byte 0."""


def _note(message):
    print(f"download_model.py: {message}", file=sys.stderr)


def resolve_model_name(name):
    """Return the released name for name (legacy names map to new ones); refuse others."""
    if name in MODEL_NAMES:
        return name
    if name in LEGACY_NAMES:
        return LEGACY_NAMES[name]
    raise DownloadError(
        f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        f" (117M and 345M are old names for 124M and 355M)"
    )


def resolve_base_url(base_url=None):
    """Pick the base URL (argument, then $GPT2_BASE_URL, then OpenAI's) and check it."""
    base = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise DownloadError(f"base URL {base!r} is not an http(s) URL; pass e.g. --base_url {DEFAULT_BASE_URL}")
    if parsed.scheme == "http" and not _is_loopback(parsed.hostname):
        _note(f"warning: {base} is plain HTTP; the download is not protected in transit")
    return base.rstrip("/")


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def download_model(model_name, models_dir="models", base_url=None, quiet=False,
                   retries=5, backoff=1.0, timeout=(10, 60), verify=False):
    """Fetch one model's seven files into models_dir/<name>; return that folder.

    Files that match the folder's record (download.json) are kept without any
    request; verify=True asks the server for every file's size instead.
    Every file repaired gets one line on stderr (unless quiet).  retries counts
    further attempts per file after a failure that made no progress; the wait
    before retry k is backoff * 2**(k-1) seconds, or what the server asked for
    (Retry-After, at most RETRY_AFTER_CAP seconds) if longer.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DownloadError(f"retries must be an integer >= 0, not {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < math.inf:
        raise DownloadError(f"backoff must be a finite number of seconds >= 0, not {backoff!r}")
    name = resolve_model_name(model_name)
    models_dir = expand(models_dir)
    if name != model_name:
        _note(f"{model_name} is the old name of {name}; fetching {name} into {os.path.join(models_dir, name)}")
    base = resolve_base_url(base_url)
    model_dir = os.path.join(models_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    with _Lock(os.path.join(model_dir, LOCK), quiet), requests.Session() as session:
        record = _read_record(model_dir)
        say = (lambda message: None) if quiet else _note
        if verify:
            wanted = _check_against_server(session, base, name, model_dir, record, retries, backoff, timeout, say)
        else:
            wanted = _check_on_disk(model_dir, record, say)
        if not wanted:
            if not quiet:
                if verify:
                    _note(f"{name} in {model_dir}: all {len(FILENAMES)} files match the server")
                elif len(record) < len(FILENAMES):
                    _note(f"{name} is already complete in {model_dir} (written by an older tool: "
                          f"--verify checks it against the server)")
                else:
                    _note(f"{name} is already complete in {model_dir}")
            return model_dir
        with tqdm(desc=f"{name} total", unit="B", unit_scale=True, unit_divisor=1024,
                  disable=True if quiet else None) as total_bar:
            for filename in wanted:
                url = f"{base}/models/{name}/{filename}"
                with tqdm(desc=f"Fetching {filename}", unit="B", unit_scale=True, unit_divisor=1024,
                          leave=False, disable=True if quiet else None) as file_bar:
                    record[filename] = _repair_or_download(session, url, os.path.join(model_dir, filename),
                                                           record.get(filename), say, retries, backoff,
                                                           timeout, file_bar, total_bar)
                _write_record(model_dir, record)
    if not quiet:
        _note(f"{name} downloaded into {model_dir}")
    return model_dir


def expand(path):
    """A path flag as the user meant it: $VARS and ~ expanded (as files.expand does for src/)."""
    return os.path.expanduser(os.path.expandvars(os.fspath(path)))


# --- the record, and what differs from it ------------------------------------


def _read_record(model_dir):
    """{filename: {"size": int, "validator": str or None, "sha256": str or None}} of the files this tool
    finished; {} if none."""
    try:
        with open(os.path.join(model_dir, RECORD), encoding="utf-8") as f:
            files = json.load(f).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: {"size": v["size"], "validator": _header_value(v.get("validator")),
                "sha256": v.get("sha256") if isinstance(v.get("sha256"), str) else None}
            for k, v in files.items() if k in FILENAMES and isinstance(v, dict)
            and isinstance(v.get("size"), int) and not isinstance(v.get("size"), bool)}


def _write_record(model_dir, record):
    text = json.dumps({"about": "written by download_model.py: each file's size, validator (ETag or "
                                "Last-Modified) and sha256 when it finished; a rerun checks the files against it",
                       "files": {k: record[k] for k in FILENAMES if k in record}}, indent=2)
    _write_atomic(os.path.join(model_dir, RECORD), text + "\n")


def _check_on_disk(model_dir, record, say):
    """The files to fetch, judged without a request: missing, failing their sha256, or of another size
    than recorded (a shorter one is moved back to its .part to resume)."""
    wanted = []
    for filename in FILENAMES:
        path = os.path.join(model_dir, filename)
        entry = record.get(filename)
        if not os.path.isfile(path):
            wanted.append(filename)
        elif filename in KNOWN_SHA256:
            if _sha256(path) != KNOWN_SHA256[filename]:
                say(f"{filename} does not match the GPT-2 vocabulary (sha256); fetching it again")
                _remove(path)
                wanted.append(filename)
        elif entry is not None and os.path.getsize(path) != entry["size"]:
            _set_aside(path, os.path.getsize(path), entry["size"], entry["validator"], say)
            wanted.append(filename)
    return wanted


def _check_against_server(session, base, name, model_dir, record, retries, backoff, timeout, say):
    """The files to fetch, judged by asking the server for each file's size (vocabulary: sha256)."""
    wanted = []
    for filename in FILENAMES:
        path = os.path.join(model_dir, filename)
        if not os.path.isfile(path):
            say(f"{filename} is missing; fetching it")
            wanted.append(filename)
            continue
        if filename in KNOWN_SHA256:
            if _sha256(path) != KNOWN_SHA256[filename]:
                say(f"{filename} does not match the GPT-2 vocabulary (sha256); fetching it again")
                _remove(path)
                wanted.append(filename)
            elif filename not in record:
                record[filename] = {"size": os.path.getsize(path), "validator": None,
                                    "sha256": KNOWN_SHA256[filename]}
                _write_record(model_dir, record)
            continue
        url = f"{base}/models/{name}/{filename}"
        size, validator = _with_retries(lambda: _head(session, url, timeout), url, retries, backoff)
        have = os.path.getsize(path)
        entry = record.get(filename)
        if size is None or have == size:
            if entry and entry["sha256"] and entry["size"] == have and _sha256(path) != entry["sha256"]:
                say(f"{filename} does not match its recorded sha256; fetching it again")
                _remove(path)
                wanted.append(filename)
            elif filename not in record and size is not None:
                record[filename] = {"size": size, "validator": validator, "sha256": _sha256(path)}
                _write_record(model_dir, record)
            continue
        # Resuming is safe only with the validator of the bytes on disk (If-Range then restarts a
        # changed file); a file from an older tool has none.
        known = entry["validator"] if entry and entry["size"] == size else None
        _set_aside(path, have, size, known, say)
        wanted.append(filename)
    return wanted


def _repair_or_download(session, url, path, entry, say, retries, backoff, timeout, file_bar, total_bar):
    """_download_file, then the file's record entry.  A file resumed from the bytes of the one its entry
    describes (same validator) must also have its sha256, else it is fetched again from byte 0."""
    resumed = os.path.exists(path + ".part")
    size, validator, sha256 = _download_file(session, url, path, os.path.basename(path), retries, backoff,
                                             timeout, file_bar, total_bar)
    if resumed and entry and entry["sha256"] and validator == entry["validator"] and sha256 != entry["sha256"]:
        say(f"{os.path.basename(path)} does not match its recorded sha256 after resuming; fetching it from byte 0")
        _remove(path)
        size, validator, sha256 = _download_file(session, url, path, os.path.basename(path), retries, backoff,
                                                 timeout, file_bar, total_bar)
    return {"size": size, "validator": validator, "sha256": sha256}


def _set_aside(path, have, expected, validator, say):
    """Turn a final file of the wrong size back into a .part: resumed if shorter and its validator is
    known, else deleted to start over."""
    filename = os.path.basename(path)
    part = path + ".part"
    if have < expected and validator is not None:
        say(f"{filename} has {have:,} of {expected:,} bytes; fetching the rest")
        _remove(part)
        os.replace(path, part)
        _write_validator(part, validator)
    else:
        say(f"{filename} has {have:,} bytes, not {expected:,}; fetching it again")
        _remove(path)
        if os.path.exists(part):
            _remove_part(part)


def _head(session, url, timeout):
    """(size or None, validator or None) of url, from a HEAD request."""
    try:
        resp = session.head(url, headers={"Accept-Encoding": "identity"}, timeout=timeout, allow_redirects=True)
    except requests.exceptions.SSLError as exc:
        raise DownloadError(f"{url}: TLS failed: {_describe(exc)}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(_describe(exc)) from None
    with resp:
        _check_status(url, resp)
        return _int_or_none(resp.headers.get("Content-Length")), _validator(resp)


def _check_status(url, resp):
    """Raise _Transient for statuses worth retrying, DownloadError for other failures."""
    status = resp.status_code
    if status >= 500 or status in RETRY_STATUSES:
        raise _Transient(f"HTTP {status} {resp.reason}", _retry_after(resp))
    if status not in (200, 206):
        raise DownloadError(f"{url}: HTTP {status} {resp.reason}")
    if url.startswith("https:") and not resp.url.startswith("https:"):
        raise DownloadError(f"{url}: redirected to insecure {resp.url}; refusing plain HTTP")
    if "text/html" in resp.headers.get("Content-Type", ""):
        raise DownloadError(f"{url}: the server sent a web page, not the file; check the base URL")


def _retry_after(resp):
    """Seconds a 429 or 503 asks the client to wait (Retry-After: seconds or a date), capped; else 0."""
    if resp.status_code not in (429, 503):
        return 0
    text = (resp.headers.get("Retry-After") or "").strip()
    if text.isdigit():
        seconds = int(text)
    else:
        try:
            seconds = email.utils.parsedate_to_datetime(text).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return 0
    return min(max(seconds, 0), RETRY_AFTER_CAP)


def _with_retries(attempt, url, retries, backoff):
    """attempt() again after each _Transient, at most retries more times; its result."""
    failures = 0
    while True:
        try:
            return attempt()
        except _Transient as exc:
            failures += 1
            if failures > retries:
                tries = f"{failures} attempt{'s' if failures > 1 else ''}"
                raise DownloadError(f"{url}: {exc}; gave up after {tries}") from None
            time.sleep(max(backoff * 2 ** (failures - 1), exc.wait))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def _download_file(session, url, path, filename, retries, backoff, timeout, file_bar, total_bar):
    """Fill path + '.part' from url, resuming and retrying, then check it and rename it to path.

    Returns (size, validator, sha256) of the finished file."""
    part = path + ".part"
    if not os.path.exists(part):
        _remove(_sidecar(part))  # left by a run stopped just after renaming its .part
    best = _size(part)  # the .part's largest size so far; growing past it resets the failure count
    failures = 0
    while True:
        try:
            if _fetch_once(session, url, part, timeout, file_bar, total_bar):
                break
        except _StartOver:
            _remove_part(part)  # only raised when a Range was sent, so this cannot loop without progress
        except _Transient as exc:
            size = _size(part)
            if size > best:
                best, failures = size, 0
            failures += 1
            if failures > retries:
                tries = f"{failures} attempt{'s' if failures > 1 else ''}"
                raise DownloadError(f"{url}: {exc}; gave up after {tries} without progress (rerun to resume)") from None
            time.sleep(max(backoff * 2 ** (failures - 1), exc.wait))

    expected = KNOWN_SHA256.get(filename)
    sha256 = _sha256(part)
    if expected and sha256 != expected:
        _remove_part(part)
        raise DownloadError(
            f"{url}: {filename} does not match the GPT-2 vocabulary (sha256 mismatch);"
            f" the server sent something else, check the base URL")
    validator = _read_validator(part)
    size = _size(part)
    os.replace(part, path)
    _remove(_sidecar(part))
    return size, validator, sha256


def _sidecar(part):
    """Where the validator of the file whose first bytes part holds is kept."""
    return part + ".etag"


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _remove_part(part):
    os.remove(part)
    _remove(_sidecar(part))


def _header_value(text):
    """text stripped if it can go back into an If-Range header (printable ASCII, not too long), else None."""
    text = (text or "").strip()
    return text if text and len(text) <= 512 and all(" " <= c <= "~" for c in text) else None


def _validator(resp):
    """The response's validator for If-Range: a strong ETag, else Last-Modified, else None.

    (A weak ETag, W/"...", never matches in If-Range, so it would restart every resume.)
    """
    etag = _header_value(resp.headers.get("ETag"))
    if etag and not etag.startswith("W/"):
        return etag
    return _header_value(resp.headers.get("Last-Modified"))


def _read_validator(part):
    try:
        with open(_sidecar(part), encoding="ascii") as f:
            return _header_value(f.read())
    except (OSError, UnicodeDecodeError):
        return None


def _write_validator(part, validator):
    """Record part's validator atomically (temporary file, fsync, rename); None removes the record."""
    sidecar = _sidecar(part)
    if validator is None:
        _remove(sidecar)
        return
    _write_atomic(sidecar, validator + "\n")


def _write_atomic(path, text):
    """Write text to path + '.tmp', sync it and rename it to path."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _changed(validator, resp):
    """True when a 206 carries a validator that differs from the one the .part was started with
    (a server that ignored If-Range but honoured Range for a file that has since changed)."""
    if validator is None:
        return False
    now = _header_value(resp.headers.get("Last-Modified" if validator[-4:] == " GMT" else "ETag"))
    return now is not None and now != validator


def _fetch_once(session, url, part, timeout, file_bar, total_bar):
    """One request appending to part; True once part is whole, False if a range came short.

    Raises _Transient (retry), _StartOver (drop part) or DownloadError (give up).
    """
    have = _size(part)
    headers = {"Accept-Encoding": "identity"}
    validator = _read_validator(part) if have else None
    if have:
        headers["Range"] = f"bytes={have}-"
        if validator:  # a changed file then comes whole, with 200, instead of its tail
            headers["If-Range"] = validator
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.exceptions.SSLError as exc:  # retrying will not fix a certificate
        raise DownloadError(f"{url}: TLS failed: {_describe(exc)}") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Transient(_describe(exc)) from None
    with resp:
        status = resp.status_code
        if status == 416 and have:
            raise _StartOver()
        _check_status(url, resp)

        # Content-Length counts the bytes on the wire; with a Content-Encoding they
        # are not the file's bytes, and byte ranges cannot be resumed safely.
        encoded = resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
        announced = _int_or_none(resp.headers.get("Content-Length"))
        if status == 206:
            if not have:
                raise DownloadError(f"{url}: the server sent part of the file without being asked")
            start, total = _parse_content_range(resp.headers.get("Content-Range"))
            if start != have or encoded or _changed(validator, resp):
                raise _StartOver()  # another range or file than asked, or compressed bytes we cannot splice
            offset = have
        else:  # 200: the whole file, whether or not a Range was sent
            offset, total = 0, (None if encoded else announced)

        file_bar.total = total  # None when unknown: the bar then just counts bytes
        file_bar.reset()
        file_bar.update(offset)
        try:
            with open(part, "ab" if offset else "wb") as f:
                if not offset:  # the .part is empty now: record what its bytes will come from
                    _write_validator(part, _validator(resp))
                for chunk in resp.iter_content(CHUNK_SIZE):
                    f.write(chunk)
                    file_bar.update(len(chunk))
                    total_bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (requests.ConnectionError, requests.Timeout,
                requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"connection dropped ({_describe(exc)})") from None
        except requests.exceptions.ContentDecodingError as exc:
            raise _Transient(f"bad {resp.headers['Content-Encoding']} body ({_describe(exc)})") from None

        received = resp.raw.tell()
        if announced is not None and received != announced:
            raise _Transient(f"body ended after {received} of {announced} bytes")
    size = _size(part)
    if total is None or size == total:
        return True
    if size > total:
        _remove_part(part)
        raise DownloadError(f"{url}: got {size} bytes but the server announced {total}")
    if status == 206 and size > have:
        return False  # the server sent less than the rest, but correctly: ask again
    raise _Transient(f"have {size} of {total} bytes")


def _int_or_none(text):
    return int(text) if text and text.isdigit() else None


def _parse_content_range(text):
    """Return (start, total) from 'bytes start-end/total'; total is None for '*'."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", text or "")
    if not match:
        return None, None
    total = match[3]
    return int(match[1]), (None if total == "*" else int(total))


def _describe(exc):
    """A short one-line reason for a network error, preferring the operating system's."""
    seen = set()
    inner = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        links = [getattr(inner, "reason", None), inner.__cause__, inner.__context__, *inner.args]
        inner = next((e for e in links if isinstance(e, BaseException)), None)
    return " ".join(f"{type(exc).__name__}: {exc}".split())


class _Lock:
    """An advisory lock on path for one run: a second run waits for it, with a one-line notice.

    The system releases it when the process ends, however it ends.  (files.lock in src/ is the
    same lock; this script runs alone, so it keeps its own copy.)"""

    def __init__(self, path, quiet=False):
        self.path, self.quiet, self.file = path, quiet, None

    def __enter__(self):
        while True:
            try:
                f = open(self.path, "a+")
            except (PermissionError, OSError) as exc:
                if isinstance(exc, PermissionError) or exc.errno == errno.EROFS:
                    return self  # a read-only folder: nobody can write it, there is nothing to exclude
                raise
            if not _try_lock(f):
                f.seek(0)
                holder = f.read().strip() or "another process"
                if not self.quiet:
                    _note(f"{os.path.dirname(self.path)} is being written by {holder}; waiting for it to finish")
                _wait_lock(f)
            if _same_file(f, self.path):  # not a file that its last holder deleted meanwhile
                break
            f.close()
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {socket.gethostname()} (download_model.py)")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc):
        if self.file is None:
            return
        try:
            os.remove(self.path)  # while still held: a waiting run then finds a deleted file and retries
        except OSError:
            pass
        _unlock(self.file)
        self.file.close()


def _same_file(f, path):
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except OSError:
        return False


if os.name == "nt":
    import msvcrt

    def _try_lock(f, mode=msvcrt.LK_NBLCK):
        f.seek(1 << 30)  # a byte far past the text, so the holder's name stays readable
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


def _retries(text):
    """argparse type for --retries: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, not {text!r}")
    return value


def _backoff(text):
    """argparse type for --backoff: a finite number of seconds >= 0 (nan and inf would break time.sleep)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad arguments on one line instead of usage plus error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None):
    """Command line entry point; returns the exit status."""
    parser = _OneLineParser(
        prog="download_model.py",
        description="Download released GPT-2 models into MODELS_DIR/<name>/.",
        epilog=f"The base URL may also come from ${BASE_URL_ENV}. "
               "A rerun resumes partial downloads (from byte 0 if the file changed on the server), "
               f"repairs files whose size differs from the folder's record ({RECORD}) "
               "and skips complete models without a request. A second run on the same model waits for the first.")
    parser.add_argument("models", nargs="+", metavar="model",
                        help=f"{', '.join(MODEL_NAMES)} (old names 117M and 345M also work)")
    parser.add_argument("--models_dir", "--models-dir", default="models",
                        help="folder that receives <name>/ (default: models)")
    parser.add_argument("--base_url", "--base-url", default=None,
                        help=f"mirror serving <base>/models/<name>/<file> (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    parser.add_argument("--verify", action="store_true",
                        help="check every file against the server (size; sha256 for the vocabulary) "
                             "and repair what differs, also in folders written by other tools")
    parser.add_argument("--retries", type=_retries, default=5,
                        help="retries per file after a failure that made no progress (default: 5)")
    parser.add_argument("--backoff", type=_backoff, default=1.0,
                        help="seconds before the first retry, doubling each time (default: 1)")
    args = parser.parse_args(argv)
    try:
        wanted = {}  # released name -> name as typed; checks every name before fetching anything
        for name in args.models:
            wanted.setdefault(resolve_model_name(name), name)
        for name in wanted.values():
            download_model(name, args.models_dir, args.base_url, args.quiet, args.retries, args.backoff,
                           verify=args.verify)
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        return 130
    except (DownloadError, OSError) as exc:
        print(f"download_model.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
