#!/usr/bin/env python3
"""Download released GPT-2 models: checkpoint, hyperparameters and BPE vocabulary.

    python download_model.py 124M            # into models/124M
    python download_model.py 124M 355M --quiet

Each file streams into <file>.part and is renamed only once complete, so a
final name never holds a partial file and a rerun resumes where it stopped.
The file's validator (its ETag, else Last-Modified) is kept beside the .part in
<file>.part.etag and sent as If-Range when resuming, so a file that changed on
the server since is fetched again from byte 0 instead of being spliced onto the
old bytes.  Without a validator a resume trusts the server's file to be unchanged.
"""

import argparse
import hashlib
import ipaddress
import math
import os
import re
import sys
import time
import urllib.parse

import requests
from tqdm import tqdm

DEFAULT_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2"
BASE_URL_ENV = "GPT2_BASE_URL"
MODEL_NAMES = ("124M", "355M", "774M", "1558M")
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


class DownloadError(Exception):
    """A download that cannot go on; the message is one line for the user."""


class _Transient(Exception):
    """A failure worth retrying: network trouble, 5xx, a body cut short."""


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
                   retries=5, backoff=1.0, timeout=(10, 60)):
    """Fetch one model's seven files into models_dir/<name>; return that folder.

    A model whose files are all present is skipped without any request.
    retries counts further attempts per file after a failure that made no
    progress; the wait before retry k is backoff * 2**(k-1) seconds.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise DownloadError(f"retries must be an integer >= 0, not {retries!r}")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < math.inf:
        raise DownloadError(f"backoff must be a finite number of seconds >= 0, not {backoff!r}")
    name = resolve_model_name(model_name)
    if name != model_name:
        _note(f"{model_name} is the old name of {name}; fetching {name} into {os.path.join(models_dir, name)}")
    base = resolve_base_url(base_url)
    model_dir = os.path.join(models_dir, name)
    missing = [f for f in FILENAMES if not _is_complete(os.path.join(model_dir, f), f)]
    if not missing:
        if not quiet:
            _note(f"{name} is already complete in {model_dir}")
        return model_dir

    os.makedirs(model_dir, exist_ok=True)
    with requests.Session() as session, \
            tqdm(desc=f"{name} total", unit="B", unit_scale=True, unit_divisor=1024,
                 disable=True if quiet else None) as total_bar:
        for filename in missing:
            url = f"{base}/models/{name}/{filename}"
            with tqdm(desc=f"Fetching {filename}", unit="B", unit_scale=True, unit_divisor=1024,
                      leave=False, disable=True if quiet else None) as file_bar:
                _download_file(session, url, os.path.join(model_dir, filename), filename,
                               retries, backoff, timeout, file_bar, total_bar)
    if not quiet:
        _note(f"{name} downloaded into {model_dir}")
    return model_dir


def _is_complete(path, filename):
    """True when path holds a finished file (final names only ever do); vocab is hash-checked."""
    if not os.path.isfile(path):
        return False
    return filename not in KNOWN_SHA256 or _sha256(path) == KNOWN_SHA256[filename]


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
    """Fill path + '.part' from url, resuming and retrying, then check it and rename it to path."""
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
            time.sleep(backoff * 2 ** (failures - 1))

    expected = KNOWN_SHA256.get(filename)
    if expected and _sha256(part) != expected:
        _remove_part(part)
        raise DownloadError(
            f"{url}: {filename} does not match the GPT-2 vocabulary (sha256 mismatch);"
            f" the server sent something else, check the base URL")
    os.replace(part, path)
    _remove(_sidecar(part))


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
    tmp = sidecar + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(validator + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, sidecar)


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
        if status >= 500 or status in RETRY_STATUSES:
            raise _Transient(f"HTTP {status} {resp.reason}")
        if status not in (200, 206):
            raise DownloadError(f"{url}: HTTP {status} {resp.reason}")
        if url.startswith("https:") and not resp.url.startswith("https:"):
            raise DownloadError(f"{url}: redirected to insecure {resp.url}; refusing plain HTTP")
        if "text/html" in resp.headers.get("Content-Type", ""):
            raise DownloadError(f"{url}: the server sent a web page, not the file; check the base URL")

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
               "A rerun resumes partial downloads (from byte 0 if the file changed on the server) "
               "and skips complete models.")
    parser.add_argument("models", nargs="+", metavar="model",
                        help=f"{', '.join(MODEL_NAMES)} (old names 117M and 345M also work)")
    parser.add_argument("--models_dir", "--models-dir", default="models",
                        help="folder that receives <name>/ (default: models)")
    parser.add_argument("--base_url", "--base-url", default=None,
                        help=f"mirror serving <base>/models/<name>/<file> (default: {DEFAULT_BASE_URL})")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
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
            download_model(name, args.models_dir, args.base_url, args.quiet, args.retries, args.backoff)
    except KeyboardInterrupt:
        print("interrupted; rerun to resume", file=sys.stderr)
        return 130
    except (DownloadError, OSError) as exc:
        print(f"download_model.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
