"""download_model.py against a local HTTP server that misbehaves on request."""

import email.utils
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
import download_model as dm  # noqa: E402

SCRIPT = ROOT / "download_model.py"
DATA = "model.ckpt.data-00000-of-00001"


def make_model(seed, n_embd):
    """The seven files of a model in OpenAI's layout, small random stand-ins for the checkpoint."""
    rng = random.Random(seed)
    hparams = {"n_vocab": 50257, "n_ctx": 1024, "n_embd": n_embd, "n_head": 12, "n_layer": 12}
    return {
        "checkpoint": b'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n',
        "encoder.json": (ROOT / "src/vocab/encoder.json").read_bytes(),
        "hparams.json": json.dumps(hparams, indent=2).encode(),
        DATA: rng.randbytes(300_000),
        "model.ckpt.index": rng.randbytes(3_000),
        "model.ckpt.meta": rng.randbytes(40_000),
        "vocab.bpe": (ROOT / "src/vocab/vocab.bpe").read_bytes(),
    }


MODELS = {"124M": make_model(1, 768), "355M": make_model(2, 1024)}


def etag_of(data):
    return '"%s"' % hashlib.sha256(data).hexdigest()[:16]


class Handler(BaseHTTPRequestHandler):
    """Serves /models/<name>/<file>, applying the next planned fault for that file.

    A fault is a dict of: status (answer only that), body and content_type (other content),
    ignore_range, claim_start or range_len (a 206 for another or a shorter range), status_206
    (a 206 nobody asked for), gzip, no_length (body ends at close), cut_after or reset_after
    (close cleanly or reset after N body bytes), empty_body, delay (seconds per 16 KiB sent),
    etag (another ETag header than the content's hash, None for none), last_modified (a
    Last-Modified header), ignore_if_range (honour Range even when If-Range does not match).
    Like a real server it answers a Range with If-Range that does not match the current strong
    ETag or Last-Modified with 200 and the whole body.  retry_after adds that Retry-After header
    to a status reply.  HEAD requests are logged in .heads and see only the standing faults.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        with self.server.lock:
            self.server.active += 1
        try:
            self.serve()
        finally:
            with self.server.lock:
                self.server.active -= 1

    def serve(self):
        srv = self.server
        match = re.fullmatch(r"/models/([^/]+)/([^/]+)", self.path)
        files = MODELS.get(match[1]) if match else None
        if not files or match[2] not in files:
            return self.reply(404, b"<html>not found</html>")
        name, filename = match[1], match[2]
        head = self.command == "HEAD"
        with srv.lock:
            (srv.heads if head else srv.log).append((name, filename, dict(self.headers)))
            plan = None if head else srv.plan.get(filename)
            fault = plan.pop(0) if plan else dict(srv.always.get(filename, {}))
            if sum(f == filename for _, f, _ in srv.log + srv.heads) > 30:  # a client stuck in a loop fails
                fault = {"status": 410}
        if "status" in fault:
            retry = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else {}
            return self.reply(fault["status"], b"<html>busy</html>", retry)
        data = fault.get("body", files[filename])

        status, start = 200, 0
        headers = {"Content-Type": fault.get("content_type", "application/octet-stream")}
        etag, modified = fault.get("etag", etag_of(data)), fault.get("last_modified")
        if etag is not None:
            headers["ETag"] = etag
        if modified is not None:
            headers["Last-Modified"] = modified
        ask = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "bytes=0-" if fault.get("status_206") else ""))
        if_range = self.headers.get("If-Range")
        if ask and if_range is not None and not fault.get("ignore_if_range"):
            strong = etag is not None and not etag.startswith("W/")
            if not ((strong and if_range == etag) or (modified is not None and if_range == modified)):
                ask = None  # the file changed: send all of it
        if ask and not fault.get("ignore_range"):
            start = int(ask[1])
            if start >= len(data):
                return self.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            status = 206
            start = fault.get("claim_start", start)  # a server that sends another range than asked
            end = min(len(data), start + fault.get("range_len", len(data)))  # or only part of it
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
            data = data[:end]
        payload = data[start:]
        if fault.get("gzip"):
            payload = gzip.compress(payload)
            headers["Content-Encoding"] = "gzip"
        if fault.get("no_length"):
            headers["Connection"] = "close"  # the body ends when the connection closes
            self.close_connection = True
        else:
            headers["Content-Length"] = str(len(payload))
        limit = fault.get("cut_after", fault.get("reset_after", len(payload)))
        if fault.get("empty_body"):
            limit = 0
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if head:
            return
        self.send_body(name, filename, payload[:limit], fault.get("delay", 0))
        if limit < len(payload):
            self.close_connection = True
            if "reset_after" in fault:  # abort with a TCP reset rather than a clean close
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def send_body(self, name, filename, body, delay):
        """Write body in 16 KiB pieces, counting what was sent per file."""
        for i in range(0, len(body), 16384):
            piece = body[i:i + 16384]
            if delay:  # (a test may replace time.sleep)
                time.sleep(delay)
            try:
                self.wfile.write(piece)
            except OSError:  # the client went away
                self.close_connection = True
                return
            with self.server.lock:
                self.server.sent[name, filename] = self.server.sent.get((name, filename), 0) + len(piece)

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for key, value in dict(headers).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def server():
    """A fresh server per test: .plan[file] lists faults for successive requests, .always a standing one."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.lock = threading.Lock()
    httpd.plan, httpd.always, httpd.log, httpd.heads, httpd.sent, httpd.active = {}, {}, [], [], {}, 0
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv(dm.BASE_URL_ENV, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def fetch(server, tmp_path, name="124M", **kwargs):
    kwargs.setdefault("retries", 0)
    kwargs.setdefault("backoff", 0)
    kwargs.setdefault("quiet", True)
    return dm.download_model(name, str(tmp_path / "models"), server.url, **kwargs)


def assert_model(tmp_path, name="124M", served="124M"):
    """The folder holds the served files, byte for byte, and a record of exactly their sizes."""
    folder = tmp_path / "models" / name
    assert sorted(p.name for p in folder.iterdir()) == sorted(dm.FILENAMES + (dm.RECORD,))
    for filename, data in MODELS[served].items():
        assert (folder / filename).read_bytes() == data, filename
    record = json.loads((folder / dm.RECORD).read_text())["files"]
    assert record == {f: {"size": len(d), "validator": record[f]["validator"], "sha256": hashlib.sha256(d).hexdigest()}
                      for f, d in MODELS[served].items()}


def finals(tmp_path, name="124M"):
    folder = tmp_path / "models" / name
    partial = (".part", ".part.etag", dm.RECORD)
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(partial)) if folder.exists() else []


def run_cli(*args, env_extra=None, timeout=60):
    env = {k: v for k, v in os.environ.items() if k != dm.BASE_URL_ENV}
    env.update({"NO_PROXY": "127.0.0.1,localhost"}, **(env_extra or {}))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


# --- the normal path ---------------------------------------------------------


def test_fresh_download_is_byte_identical_and_leaves_no_parts(server, tmp_path):
    assert fetch(server, tmp_path) == str(tmp_path / "models" / "124M")
    assert_model(tmp_path)
    assert [(n, f) for n, f, _ in server.log] == [("124M", f) for f in dm.FILENAMES]
    for _, _, headers in server.log:
        assert "Range" not in headers
        assert headers["Accept-Encoding"] == "identity"


def test_second_run_makes_no_requests(server, tmp_path):
    fetch(server, tmp_path)
    server.log.clear()
    fetch(server, tmp_path, quiet=False)
    assert server.log == []


def test_tampered_vocab_file_is_fetched_again(server, tmp_path):
    fetch(server, tmp_path)
    (tmp_path / "models/124M/vocab.bpe").write_bytes(b"<html>old error page</html>")
    server.log.clear()
    fetch(server, tmp_path)
    assert [f for _, f, _ in server.log] == ["vocab.bpe"]
    assert_model(tmp_path)


def test_several_models_and_legacy_names(server, tmp_path, capsys):
    fetch(server, tmp_path, "117M")
    fetch(server, tmp_path, "345M")
    assert "117M is the old name of 124M" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "models")) == ["124M", "355M"]
    assert_model(tmp_path, "124M")
    assert_model(tmp_path, "355M", served="355M")
    assert {n for n, _, _ in server.log} == {"124M", "355M"}


@pytest.mark.parametrize("name", ["../x", "/etc", "124M/../..", "124M/", "", "117m", "1.5B", "models"])
def test_unknown_or_escaping_names_are_refused(server, tmp_path, name):
    with pytest.raises(dm.DownloadError, match=r"unknown model .*choose one of 124M, 355M, 774M, 1558M"):
        fetch(server, tmp_path, name)
    assert server.log == []
    assert not (tmp_path / "models").exists()


def test_base_url_comes_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(dm.BASE_URL_ENV, server.url + "/")
    dm.download_model("124M", str(tmp_path / "models"), quiet=True)
    assert_model(tmp_path)


@pytest.mark.parametrize("url, warns", [
    ("https://mirror.example/gpt-2/", False),
    ("http://127.0.0.1:8000", False),
    ("http://localhost", False),
    ("http://[::1]:80", False),
    ("http://mirror.example/gpt-2", True),
])
def test_plain_http_warns_unless_loopback(url, warns, capsys):
    assert dm.resolve_base_url(url) == url.rstrip("/")
    assert ("not protected" in capsys.readouterr().err) == warns


@pytest.mark.parametrize("url", ["ftp://mirror.example/x", "file:///etc", "mirror.example", "https://"])
def test_non_http_base_urls_are_refused(url):
    with pytest.raises(dm.DownloadError, match="not an http"):
        dm.resolve_base_url(url)


def test_default_base_url_is_openai_over_https(monkeypatch):
    assert dm.resolve_base_url() == "https://openaipublic.blob.core.windows.net/gpt-2"
    monkeypatch.setenv(dm.BASE_URL_ENV, "")  # what an unset Docker build argument may leave
    assert dm.resolve_base_url() == "https://openaipublic.blob.core.windows.net/gpt-2"


@pytest.fixture
def tls_redirect(server, tmp_path):
    """An HTTPS server with a fresh self-signed certificate, redirecting everything to plain `server`."""
    if not shutil.which("openssl"):
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", server.url + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

    tls = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"https://127.0.0.1:{tls.server_address[1]}", cert
    tls.shutdown()
    tls.server_close()


def test_https_download_redirected_to_plain_http_is_refused(tls_redirect, tmp_path, monkeypatch):
    url, cert = tls_redirect
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with pytest.raises(dm.DownloadError, match=r"checkpoint: redirected to insecure http://127\.0\.0\.1"):
        dm.download_model("124M", str(tmp_path / "models"), url, quiet=True, retries=0)
    assert finals(tmp_path) == []


def test_untrusted_certificate_fails_at_once(tls_redirect, tmp_path):
    url, _ = tls_redirect
    with pytest.raises(dm.DownloadError, match=r"checkpoint: TLS failed: .*CERTIFICATE_VERIFY_FAILED"):
        dm.download_model("124M", str(tmp_path / "models"), url, quiet=True, retries=5, backoff=10)
    assert finals(tmp_path) == []


# --- faults --------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"cut_after": 100_000}, {"reset_after": 70_000}])
def test_connection_dropped_mid_body_is_retried_with_range(server, tmp_path, fault):
    server.plan[DATA] = [dict(fault), dict(fault)]
    fetch(server, tmp_path, retries=2)
    assert_model(tmp_path)
    ranges = [h.get("Range") for _, f, h in server.log if f == DATA]
    assert len(ranges) == 3 and ranges[0] is None
    starts = [int(r[6:-1]) for r in ranges[1:]]
    assert 0 < starts[0] < starts[1] < len(MODELS["124M"][DATA])
    # Each retry asked only for the missing bytes.
    assert server.sent["124M", DATA] < len(MODELS["124M"][DATA]) + 2 * 100_000


def test_each_drop_that_made_progress_renews_the_retries(server, tmp_path):
    server.plan[DATA] = [{"cut_after": 80_000} for _ in range(4)]
    fetch(server, tmp_path, retries=1)
    assert_model(tmp_path)
    assert [f for _, f, _ in server.log].count(DATA) == 5


def test_drops_without_progress_give_up(server, tmp_path):
    server.always[DATA] = {"ignore_range": True, "cut_after": 100_000}  # every try restarts at byte 0
    with pytest.raises(dm.DownloadError, match=r"connection dropped.*gave up after 4 attempts without progress"):
        fetch(server, tmp_path, retries=3)
    assert [f for _, f, _ in server.log].count(DATA) == 4
    assert DATA not in finals(tmp_path)


@pytest.mark.parametrize("fault", [{"cut_after": 100_000}, {"cut_after": 30_000, "gzip": True}])
def test_short_body_is_caught_even_if_urllib3_does_not_check_length(server, tmp_path, monkeypatch, fault):
    build = requests.adapters.HTTPAdapter.build_response

    def lenient(self, req, resp):  # how urllib3 1.26 behaves by default
        resp.enforce_content_length = False
        return build(self, req, resp)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "build_response", lenient)
    server.plan[DATA] = [fault]
    fetch(server, tmp_path, retries=1)
    assert_model(tmp_path)
    assert [f for _, f, _ in server.log].count(DATA) >= 2


def test_interrupted_run_resumes_transferring_only_missing_bytes(server, tmp_path):
    server.plan[DATA] = [{"cut_after": 150_000}]
    with pytest.raises(dm.DownloadError, match=rf"{DATA}: connection dropped.*rerun to resume"):
        fetch(server, tmp_path)
    part = tmp_path / "models/124M" / (DATA + ".part")
    kept = part.stat().st_size
    assert 0 < kept <= 150_000
    assert DATA not in finals(tmp_path)
    assert MODELS["124M"][DATA].startswith(part.read_bytes())

    server.log.clear()
    server.sent.clear()
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert [f for _, f, _ in server.log] == [DATA, "model.ckpt.index", "model.ckpt.meta", "vocab.bpe"]
    assert server.log[0][2]["Range"] == f"bytes={kept}-"
    assert server.log[0][2]["If-Range"] == etag_of(MODELS["124M"][DATA])
    assert server.sent["124M", DATA] == len(MODELS["124M"][DATA]) - kept


def interrupt(server, tmp_path, **fault):
    """A first run cut off in the data file; returns the size of the .part it leaves."""
    server.plan[DATA] = [{"cut_after": 150_000, **fault}]
    with pytest.raises(dm.DownloadError, match="connection dropped"):
        fetch(server, tmp_path)
    server.log.clear()
    server.sent.clear()
    return (tmp_path / "models/124M" / (DATA + ".part")).stat().st_size


@pytest.mark.parametrize("fault", [{}, {"etag": 'W/"weak"', "last_modified": "Tue, 01 Apr 2025 10:00:00 GMT"}])
def test_file_changed_on_the_server_between_runs_restarts_from_zero(server, tmp_path, monkeypatch, fault):
    old = MODELS["124M"][DATA]
    kept = interrupt(server, tmp_path, **fault)
    validator = fault.get("last_modified", etag_of(old))  # a weak ETag cannot be used with If-Range
    sidecar = tmp_path / "models/124M" / (DATA + ".part.etag")
    assert sidecar.read_text().strip() == validator
    new = bytes(b ^ 0xFF for b in old)  # same size, other bytes: only a validator tells them apart
    monkeypatch.setitem(MODELS["124M"], DATA, new)
    if fault:
        server.always[DATA] = {**fault, "last_modified": "Wed, 02 Apr 2025 10:00:00 GMT"}
    fetch(server, tmp_path)
    assert (tmp_path / "models/124M" / DATA).read_bytes() == new
    (headers,) = [h for _, f, h in server.log if f == DATA]
    assert (headers["Range"], headers["If-Range"]) == (f"bytes={kept}-", validator)
    assert server.sent["124M", DATA] == len(new)  # the server sent it all, and only once
    assert sorted(os.listdir(tmp_path / "models/124M")) == sorted(dm.FILENAMES + (dm.RECORD,))  # no sidecar left


def test_changed_file_from_a_server_ignoring_if_range_is_not_spliced(server, tmp_path, monkeypatch):
    old = MODELS["124M"][DATA]
    kept = interrupt(server, tmp_path)
    new = bytes(b ^ 0xFF for b in old)
    monkeypatch.setitem(MODELS["124M"], DATA, new)
    server.always[DATA] = {"ignore_if_range": True}  # a 206 of the new file, with its new ETag
    fetch(server, tmp_path)
    assert (tmp_path / "models/124M" / DATA).read_bytes() == new
    assert [h.get("Range") for _, f, h in server.log if f == DATA] == [f"bytes={kept}-", None]
    assert sorted(os.listdir(tmp_path / "models/124M")) == sorted(dm.FILENAMES + (dm.RECORD,))


def test_without_a_validator_resume_sends_no_if_range(server, tmp_path):
    kept = interrupt(server, tmp_path, etag=None)
    assert not (tmp_path / "models/124M" / (DATA + ".part.etag")).exists()
    server.always[DATA] = {"etag": None}
    fetch(server, tmp_path)
    assert_model(tmp_path)
    (headers,) = [h for _, f, h in server.log if f == DATA]
    assert headers["Range"] == f"bytes={kept}-" and "If-Range" not in headers
    assert server.sent["124M", DATA] == len(MODELS["124M"][DATA]) - kept


def test_server_errors_are_retried_with_backoff(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(dm.time, "sleep", sleeps.append)
    server.plan["hparams.json"] = [{"status": 503}, {"status": 500}, {"status": 429}]
    fetch(server, tmp_path, retries=3, backoff=0.5)
    assert_model(tmp_path)
    assert sleeps == [0.5, 1.0, 2.0]


def test_persistent_server_error_gives_up_and_saves_nothing_final(server, tmp_path):
    server.always["hparams.json"] = {"status": 503}
    with pytest.raises(dm.DownloadError) as err:
        fetch(server, tmp_path, retries=2)
    message = str(err.value)
    assert f"{server.url}/models/124M/hparams.json" in message and "503" in message
    assert "3 attempts" in message and "\n" not in message
    assert "hparams.json" not in finals(tmp_path)
    assert not (tmp_path / "models/124M/hparams.json.part").exists()


def test_client_error_is_not_retried_and_names_url_and_status(server, tmp_path):
    server.always["model.ckpt.meta"] = {"status": 404}
    with pytest.raises(dm.DownloadError, match=r"/models/124M/model\.ckpt\.meta: HTTP 404"):
        fetch(server, tmp_path, retries=5)
    assert [f for _, f, _ in server.log].count("model.ckpt.meta") == 1
    assert "model.ckpt.meta" not in finals(tmp_path)
    assert not (tmp_path / "models/124M/model.ckpt.meta.part").exists()


def test_server_ignoring_range_restarts_from_byte_zero(server, tmp_path):
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(b"\0" * 5000)  # not a prefix of the real file
    server.always[DATA] = {"ignore_range": True}
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert [h.get("Range") for _, f, h in server.log if f == DATA] == ["bytes=5000-"]


def test_range_not_satisfiable_deletes_part_and_starts_over(server, tmp_path):
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    size = len(MODELS["124M"]["model.ckpt.meta"])
    (folder / "model.ckpt.meta.part").write_bytes(b"x" * (size + 10))
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert [h.get("Range") for _, f, h in server.log if f == "model.ckpt.meta"] == [f"bytes={size + 10}-", None]


def test_partial_response_for_another_range_is_not_appended(server, tmp_path):
    data = MODELS["124M"][DATA]
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(data[:1000])
    server.plan[DATA] = [{"claim_start": 0}]
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert [h.get("Range") for _, f, h in server.log if f == DATA] == ["bytes=1000-", None]


def test_partial_range_shorter_than_asked_is_continued(server, tmp_path):
    data = MODELS["124M"][DATA]
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(data[:1000])
    server.always[DATA] = {"range_len": 100_000}
    fetch(server, tmp_path, retries=0)
    assert_model(tmp_path)
    assert [h.get("Range") for _, f, h in server.log if f == DATA] == ["bytes=1000-", "bytes=101000-", "bytes=201000-"]


def test_empty_partial_responses_do_not_loop_forever(server, tmp_path):
    data = MODELS["124M"][DATA]
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(data[:1000])
    server.always[DATA] = {"empty_body": True, "no_length": True}
    with pytest.raises(dm.DownloadError, match=rf"{DATA}: have 1000 of {len(data)} bytes; gave up after 3 attempts"):
        fetch(server, tmp_path, retries=2)


def test_missing_content_length_reads_until_close(server, tmp_path):
    server.always.update({f: {"no_length": True} for f in dm.FILENAMES})
    fetch(server, tmp_path)
    assert_model(tmp_path)


def test_body_shorter_than_announced_is_retried(server, tmp_path):
    server.plan["model.ckpt.index"] = [{"cut_after": 1000}]
    fetch(server, tmp_path, retries=1)
    assert_model(tmp_path)


def test_body_always_short_fails_without_final_file(server, tmp_path):
    server.always["model.ckpt.index"] = {"cut_after": 1000}
    with pytest.raises(dm.DownloadError, match=r"model\.ckpt\.index: connection dropped"):
        fetch(server, tmp_path, retries=2)
    assert "model.ckpt.index" not in finals(tmp_path)


def test_html_page_served_as_vocabulary_is_rejected(server, tmp_path):
    server.always["encoder.json"] = {"body": b"<html><body>Service unavailable</body></html>"}
    with pytest.raises(dm.DownloadError, match=r"encoder\.json.*sha256 mismatch"):
        fetch(server, tmp_path)
    assert finals(tmp_path) == ["checkpoint"]
    assert not (tmp_path / "models/124M/encoder.json.part").exists()


def test_html_page_served_for_a_checkpoint_file_is_rejected(server, tmp_path):
    server.always[DATA] = {"body": b"<html>Sign in to continue</html>", "content_type": "text/html; charset=utf-8"}
    with pytest.raises(dm.DownloadError, match=rf"/models/124M/{DATA}: the server sent a web page"):
        fetch(server, tmp_path)
    assert DATA not in finals(tmp_path)
    assert not (tmp_path / "models/124M" / (DATA + ".part")).exists()


def test_unrequested_partial_response_is_an_error(server, tmp_path):
    server.always["checkpoint"] = {"status_206": True}
    with pytest.raises(dm.DownloadError, match="part of the file without being asked"):
        fetch(server, tmp_path)
    assert finals(tmp_path) == []


def test_gzip_content_encoding_writes_the_decoded_file(server, tmp_path):
    server.always.update({f: {"gzip": True} for f in dm.FILENAMES})
    fetch(server, tmp_path)
    assert_model(tmp_path)


def test_gzip_response_to_a_range_request_starts_over(server, tmp_path):
    data = MODELS["124M"][DATA]
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(data[:1000])
    server.always[DATA] = {"gzip": True}
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert [h.get("Range") for _, f, h in server.log if f == DATA] == ["bytes=1000-", None]


def test_unreachable_server_is_a_one_line_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(dm.DownloadError, match=r"checkpoint: Connection refused; gave up after 2 attempts"):
        dm.download_model("124M", str(tmp_path), f"http://127.0.0.1:{port}", quiet=True, retries=1, backoff=0)


# --- progress -------------------------------------------------------------------


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_count_bytes_actually_written(server, tmp_path, monkeypatch):
    bars = []

    class Recorder(dm.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.update(disable=False, file=io.StringIO())
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(dm, "tqdm", Recorder)
    folder = tmp_path / "models/124M"
    folder.mkdir(parents=True)
    (folder / (DATA + ".part")).write_bytes(b"\0" * 7000)
    server.plan[DATA] = [{"ignore_range": True, "cut_after": 90_000}]  # restart at 0, then a drop
    server.always["model.ckpt.meta"] = {"no_length": True}
    fetch(server, tmp_path, retries=1, quiet=False)
    assert_model(tmp_path)

    total, *files = bars
    assert total.desc == "124M total"
    assert {bar.desc: bar.n for bar in files} == {f"Fetching {f}": len(d) for f, d in MODELS["124M"].items()}
    assert total.n == sum(map(len, MODELS["124M"].values()))  # this run wrote each byte once
    by_name = {bar.desc: bar for bar in files}
    assert by_name[f"Fetching {DATA}"].total == len(MODELS["124M"][DATA])
    assert by_name["Fetching model.ckpt.meta"].total is None


def test_bars_drawn_only_on_a_terminal_and_not_when_quiet(server, tmp_path, monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    fetch(server, tmp_path / "a", quiet=False)
    assert "Fetching model.ckpt.meta" in tty.getvalue() and "124M total" in tty.getvalue()

    for where, quiet in [(FakeTTY(), True), (io.StringIO(), False)]:
        monkeypatch.setattr(sys, "stderr", where)
        fetch(server, tmp_path / str(quiet), quiet=quiet)
        assert "Fetching" not in where.getvalue()


# --- command line -------------------------------------------------------------------


def test_cli_downloads_several_models(server, tmp_path):
    result = run_cli("124M", "355M", "117M", "--models_dir", str(tmp_path / "models"), "--base_url", server.url)
    assert result.returncode == 0, result.stderr
    assert_model(tmp_path, "124M")
    assert_model(tmp_path, "355M", served="355M")
    assert len(server.log) == 14
    assert "Traceback" not in result.stderr


def test_cli_quiet_prints_nothing(server, tmp_path):
    result = run_cli("124M", "--quiet", "--models_dir", str(tmp_path / "models"),
                     env_extra={dm.BASE_URL_ENV: server.url})
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert_model(tmp_path)


@pytest.mark.parametrize("args, code, message", [
    (["../x"], 1, "unknown model '../x'; choose one of 124M"),
    (["124M", "999M"], 1, "unknown model '999M'"),
    ([], 2, "the following arguments are required: model"),
    (["124M", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["124M", "--retries", "x"], 2, "--retries: invalid int value"),
    (["124M", "--retries", "-1"], 2, "--retries: must be an integer >= 0, not '-1'"),
    (["124M", "--retries", "2.5"], 2, "--retries: invalid int value"),
    (["124M", "--backoff", "nan"], 2, "--backoff: must be a finite number of seconds >= 0, not 'nan'"),
    (["124M", "--backoff", "inf"], 2, "--backoff: must be a finite number of seconds >= 0, not 'inf'"),
    (["124M", "--backoff", "-1"], 2, "--backoff: must be a finite number of seconds >= 0, not '-1'"),
    (["124M", "--backoff", "soon"], 2, "--backoff: invalid float value: 'soon'"),
    (["124M", "--base_url", "ftp://mirror"], 1, "not an http(s) URL"),
])
def test_cli_bad_input_is_one_line_without_traceback(server, tmp_path, args, code, message):
    result = run_cli(*args, "--models_dir", str(tmp_path / "models"), env_extra={dm.BASE_URL_ENV: server.url})
    assert result.returncode == code
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("download_model.py: error: ")
    assert message in result.stderr
    assert server.log == [] and not (tmp_path / "models").exists()


@pytest.mark.parametrize("kwargs", [{"backoff": float("nan")}, {"backoff": float("inf")}, {"backoff": -1},
                                    {"retries": -1}, {"retries": 1.5}])
def test_bad_retries_or_backoff_are_refused_before_any_request(server, tmp_path, kwargs):
    with pytest.raises(dm.DownloadError, match="must be"):
        fetch(server, tmp_path, **kwargs)
    assert server.log == []


def test_cli_http_error_exits_1_with_one_line(server, tmp_path):
    server.always["checkpoint"] = {"status": 403}
    result = run_cli("124M", "--models_dir", str(tmp_path / "models"), "--base_url", server.url)
    assert result.returncode == 1
    assert result.stderr == f"download_model.py: error: {server.url}/models/124M/checkpoint: HTTP 403 Forbidden\n"


def test_cli_help():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--models_dir" in result.stdout and "--base_url" in result.stdout and "GPT2_BASE_URL" in result.stdout


def test_ctrl_c_exits_130_keeps_part_and_rerun_resumes(server, tmp_path):
    server.plan[DATA] = [{"delay": 0.05}]  # about a second for the data file
    env = {k: v for k, v in os.environ.items() if k != dm.BASE_URL_ENV}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "124M", "--models_dir", str(tmp_path / "models"),
                             "--base_url", server.url], stderr=subprocess.PIPE, text=True, env=env)
    part = tmp_path / "models/124M" / (DATA + ".part")
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 130
    assert stderr.splitlines()[-1] == "interrupted; rerun to resume"
    assert "Traceback" not in stderr
    kept = part.stat().st_size
    assert 0 < kept < len(MODELS["124M"][DATA])
    assert DATA not in finals(tmp_path)

    deadline = time.monotonic() + 10
    while server.active and time.monotonic() < deadline:  # let the interrupted response end
        time.sleep(0.01)
    server.sent.clear()
    fetch(server, tmp_path)
    assert_model(tmp_path)
    assert server.sent["124M", DATA] == len(MODELS["124M"][DATA]) - kept


def test_a_clean_checkout_fetches_into_models_by_default(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dm.download_model("124M", base_url=server.url, quiet=True) == os.path.join("models", "124M")
    assert_model(tmp_path)


# --- repair: the record, --verify ------------------------------------------------------


@pytest.fixture
def real_model(tmp_path_factory, monkeypatch):
    """Serve a tiny but loadable checkpoint (tests/conftest.py) as 124M."""
    from conftest import write_model
    folder = Path(write_model(tmp_path_factory.mktemp("served"), "124M"))
    files = {f: (folder / f).read_bytes() for f in dm.FILENAMES if f != "model.ckpt.meta"}
    files["model.ckpt.meta"] = b"not read by TensorFlow 2"
    monkeypatch.setitem(MODELS, "124M", files)
    return files


def cut_short(tmp_path, keep=0.4):
    path = tmp_path / "models/124M" / DATA
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return len(data) - int(len(data) * keep)


def test_damaged_checkpoint_names_verify_and_a_plain_rerun_repairs_only_it(server, tmp_path, real_model, capsys):
    import checkpoint
    import model
    fetch(server, tmp_path)
    missing = cut_short(tmp_path)
    with pytest.raises(model.ModelError) as err:
        checkpoint.load(str(tmp_path / "models/124M"))
    assert "run: python download_model.py 124M --verify" in str(err.value) and "\n" not in str(err.value)

    server.log.clear()
    server.sent.clear()
    fetch(server, tmp_path, quiet=False)
    assert [f for _, f, _ in server.log] == [DATA]  # no request for the intact files
    assert server.log[0][2]["Range"] == f"bytes={len(real_model[DATA]) - missing}-"
    assert server.sent["124M", DATA] == missing and server.heads == []
    kept, size = len(real_model[DATA]) - missing, len(real_model[DATA])
    assert f"{DATA} has {kept:,} of {size:,} bytes; fetching the rest" in capsys.readouterr().err
    assert_model(tmp_path)
    checkpoint.load(str(tmp_path / "models/124M"))


def test_without_a_record_verify_repairs_what_differs_from_the_server(server, tmp_path, real_model, capsys):
    import checkpoint
    fetch(server, tmp_path)
    cut_short(tmp_path)
    (tmp_path / "models/124M" / dm.RECORD).unlink()  # as an older tool leaves a folder
    server.log.clear()
    fetch(server, tmp_path)
    assert server.log == []  # a plain rerun cannot know: it trusts final names
    fetch(server, tmp_path, verify=True, quiet=False)
    assert sorted(f for _, f, _ in server.heads) == sorted(set(dm.FILENAMES) - set(dm.KNOWN_SHA256))
    assert [(f, h.get("Range")) for _, f, h in server.log] == [(DATA, None)]  # no validator known: from byte 0
    lines = [line for line in capsys.readouterr().err.splitlines() if DATA in line]
    assert len(lines) == 1 and f"{DATA} has" in lines[0] and "fetching it again" in lines[0]
    assert_model(tmp_path)  # byte-identical, and recorded
    checkpoint.load(str(tmp_path / "models/124M"))


def test_verify_of_an_intact_folder_only_asks_and_records_it(server, tmp_path, capsys):
    fetch(server, tmp_path)
    (tmp_path / "models/124M" / dm.RECORD).unlink()
    server.log.clear()
    fetch(server, tmp_path, verify=True, quiet=False)
    assert server.log == [] and len(server.heads) == len(dm.FILENAMES) - len(dm.KNOWN_SHA256)
    assert "all 7 files match the server" in capsys.readouterr().err
    assert_model(tmp_path)


def test_a_longer_file_starts_over_and_a_wrong_splice_is_caught_by_the_recorded_hash(server, tmp_path):
    fetch(server, tmp_path)
    folder = tmp_path / "models/124M"
    (folder / "model.ckpt.index").write_bytes(MODELS["124M"]["model.ckpt.index"] + b"junk")
    (folder / "hparams.json").write_bytes(b"{}")  # shorter, but not a prefix: resuming splices wrong bytes
    server.log.clear()
    fetch(server, tmp_path)
    assert [(f, h.get("Range")) for _, f, h in server.log] == [
        ("hparams.json", "bytes=2-"), ("hparams.json", None), ("model.ckpt.index", None)]
    assert_model(tmp_path)


def test_verify_catches_a_file_of_the_right_size_with_other_bytes(server, tmp_path):
    fetch(server, tmp_path)
    path = tmp_path / "models/124M/model.ckpt.meta"
    path.write_bytes(b"\0" * path.stat().st_size)  # what a crash can leave: the size, but zeros
    server.log.clear()
    fetch(server, tmp_path)
    assert server.log == [] and path.read_bytes() != MODELS["124M"]["model.ckpt.meta"]  # sizes match the record
    fetch(server, tmp_path, verify=True)
    assert [(f, h.get("Range")) for _, f, h in server.log] == [("model.ckpt.meta", None)]
    assert_model(tmp_path)


def test_verify_resumes_with_the_recorded_validator_and_restarts_a_changed_file(server, tmp_path, monkeypatch):
    fetch(server, tmp_path)
    cut_short(tmp_path)
    new = bytes(b ^ 0xFF for b in MODELS["124M"][DATA])  # changed on the server since: If-Range restarts
    monkeypatch.setitem(MODELS["124M"], DATA, new)
    server.log.clear()
    fetch(server, tmp_path, verify=True)
    (headers,) = [h for _, f, h in server.log if f == DATA]
    assert headers["If-Range"] == etag_of(bytes(b ^ 0xFF for b in new)) and "Range" in headers
    assert (tmp_path / "models/124M" / DATA).read_bytes() == new
    assert_model(tmp_path)


def test_cli_verify_prints_one_line_per_repaired_file(server, tmp_path):
    args = ("124M", "--models_dir", str(tmp_path / "models"), "--base_url", server.url)
    assert run_cli(*args).returncode == 0
    cut_short(tmp_path)
    (tmp_path / "models/124M/vocab.bpe").write_text("#version: 0.2\n")
    result = run_cli(*args, "--verify")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "fetching" in line]
    assert len(notes) == 2 and any(DATA in n for n in notes) and any("vocab.bpe" in n for n in notes)
    assert_model(tmp_path)


def test_head_requests_honour_retry_after(server, tmp_path, monkeypatch):
    fetch(server, tmp_path)
    sleeps = []
    monkeypatch.setattr(dm.time, "sleep", sleeps.append)
    server.always["checkpoint"] = {"status": 503, "retry_after": "3"}
    with pytest.raises(dm.DownloadError, match=r"checkpoint: HTTP 503 .*gave up after 3 attempts"):
        fetch(server, tmp_path, verify=True, retries=2, backoff=0.5)
    assert sleeps == [3, 3]


# --- Retry-After ---------------------------------------------------------------------


@pytest.mark.parametrize("status, header, wait", [
    (503, "7", 7), (429, "7", 7), (503, "100000", dm.RETRY_AFTER_CAP), (503, "soon", 0.5), (500, "7", 0.5),
])
def test_retry_after_is_honoured_and_capped(server, tmp_path, monkeypatch, status, header, wait):
    sleeps = []
    monkeypatch.setattr(dm.time, "sleep", sleeps.append)
    server.plan["hparams.json"] = [{"status": status, "retry_after": header}]
    fetch(server, tmp_path, retries=1, backoff=0.5)
    assert sleeps == [wait]
    assert_model(tmp_path)


def test_retry_after_as_an_http_date(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(dm.time, "sleep", sleeps.append)
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    server.plan["hparams.json"] = [{"status": 503, "retry_after": when}]
    fetch(server, tmp_path, retries=1, backoff=0.5)
    assert len(sleeps) == 1 and 25 < sleeps[0] <= 31


# --- one writer at a time ------------------------------------------------------------


def test_two_overlapping_downloads_fetch_each_file_once(server, tmp_path):
    server.plan[DATA] = [{"delay": 0.1}]  # about two seconds for the data file
    env = {k: v for k, v in os.environ.items() if k != dm.BASE_URL_ENV}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    args = [sys.executable, str(SCRIPT), "124M", "--models_dir", str(tmp_path / "models"), "--base_url", server.url]
    # The second starts once the first is writing the data file (~2 s left), however slowly either starts.
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)]
    part = tmp_path / "models/124M" / (DATA + ".part")
    deadline = time.monotonic() + 30
    while not part.exists() and time.monotonic() < deadline and procs[0].poll() is None:
        time.sleep(0.01)
    procs.append(subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env))
    errs = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    waited = [e for e in errs if "is being written by process" in e]
    assert len(waited) == 1 and "waiting for it to finish" in waited[0] and "already complete" in waited[0]
    assert sorted(f for _, f, _ in server.log) == sorted(dm.FILENAMES)  # each file fetched once
    assert_model(tmp_path)  # and no .part, no lock left


def test_a_killed_download_never_blocks_the_next(server, tmp_path):
    server.plan[DATA] = [{"delay": 0.05}]
    env = {k: v for k, v in os.environ.items() if k != dm.BASE_URL_ENV}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "124M", "--models_dir", str(tmp_path / "models"),
                             "--base_url", server.url], stderr=subprocess.DEVNULL, env=env)
    part = tmp_path / "models/124M" / (DATA + ".part")
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)
    lock = tmp_path / "models/124M" / dm.LOCK
    assert f"process {proc.pid} " in lock.read_text()
    proc.kill()
    proc.wait(timeout=20)
    assert lock.exists()  # left behind, naming a dead process
    start = time.monotonic()
    fetch(server, tmp_path)
    assert time.monotonic() - start < 10
    assert_model(tmp_path)


def test_models_dir_expands_home_and_variables(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GPT2_TEST_DIR", str(tmp_path))
    assert dm.download_model("124M", "~/m", server.url, quiet=True, retries=0) == str(tmp_path / "home/m/124M")
    result = run_cli("124M", "--quiet", "--models_dir", "$GPT2_TEST_DIR/models", "--base_url", server.url,
                     env_extra={"GPT2_TEST_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert_model(tmp_path)
    assert not (Path.cwd() / "~").exists() and not (Path.cwd() / "$GPT2_TEST_DIR").exists()


def test_a_complete_model_in_a_read_only_folder_is_still_reported_complete(server, tmp_path, capsys, monkeypatch):
    fetch(server, tmp_path)

    def read_only(path, mode="r", *args, **kwargs):  # (chmod would not stop root, who runs some CI)
        if mode != "r" and "rb" not in mode:
            raise PermissionError(13, "Permission denied", path)
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(dm, "open", read_only, raising=False)
    server.log.clear()
    fetch(server, tmp_path, quiet=False)
    assert server.log == [] and "124M is already complete" in capsys.readouterr().err
    (tmp_path / "models/124M/hparams.json").unlink()
    with pytest.raises(PermissionError):  # and a repair that must write says so
        fetch(server, tmp_path)
