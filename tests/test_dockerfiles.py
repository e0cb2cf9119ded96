"""What can be checked of the Dockerfiles without a Docker engine."""

import fnmatch
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]
FILENAMES = ["checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
             "model.ckpt.index", "model.ckpt.meta", "vocab.bpe"]


def instructions(name):
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / name).read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def ignored_patterns():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(relpath):
    """True when .dockerignore keeps relpath (or a folder above it) out of the build context."""
    parts = Path(relpath).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for pat in ignored_patterns() for p in prefixes)


def download_command(name, sizes=None):
    """The RUN line that fetches models, with its ARG default (or sizes) substituted."""
    args = dict(re.fullmatch(r'(\w+)(?:="?([^"]*)"?)?', a).groups("") for w, a in instructions(name) if w == "ARG")
    if sizes is not None:
        args["MODEL_SIZES"] = sizes
    (line,) = [a for w, a in instructions(name) if w == "RUN" and "download_model.py" in a]
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], line)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_an_official_tensorflow_2_image(name):
    (image,) = [a for w, a in instructions(name) if w == "FROM"]
    suffix = "-gpu" if name.endswith("gpu") else ""
    assert re.fullmatch(rf"tensorflow/tensorflow:2\.\d+\.\d+{suffix}", image), image


def test_cpu_and_gpu_images_differ_only_in_base_image():
    cpu, gpu = (instructions(n) for n in DOCKERFILES)
    assert [p for p in cpu if p[0] != "FROM"] == [p for p in gpu if p[0] != "FROM"]
    assert cpu[0][1] + "-gpu" == gpu[0][1]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_paths_exist_and_are_not_dockerignored(name):
    copies = [shlex.split(a) for w, a in instructions(name) if w in ("COPY", "ADD")]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert not source.startswith("--"), f"{name}: unexpected flag {source}"
            assert (ROOT / source).exists(), f"{name} copies missing {source}"
            if source != ".":
                assert not is_ignored(source), f".dockerignore excludes {source}"


def test_dockerignore_keeps_models_and_git_out_but_code_in():
    for path in ["models/124M/model.ckpt.meta", ".git/config", "src/__pycache__/x.pyc", "models/124M/vocab.bpe.part"]:
        assert is_ignored(path), path
    for path in ["download_model.py", "requirements.txt", "src/vocab/encoder.json", "tests/test_dockerfiles.py"]:
        assert not is_ignored(path), path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_requirements_are_installed_and_parse(name):
    runs = [a for w, a in instructions(name) if w == "RUN"]
    assert any(re.search(r"\bpip install\b.*-r requirements\.txt\b", r) for r in runs)
    lines = [l.strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    names = {Requirement(l).name.lower() for l in lines if l and not l.startswith("#")}
    assert {"tensorflow", "requests", "tqdm"} <= names


@pytest.mark.parametrize("name", DOCKERFILES)
def test_models_are_fetched_after_requirements_and_script(name):
    steps = instructions(name)
    pip = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "requirements.txt" in a)
    script = next(i for i, (w, a) in enumerate(steps) if w in ("COPY", "ADD") and "download_model.py" in a)
    fetch = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "download_model.py" in a)
    assert pip < fetch and script < fetch
    assert download_command(name).split()[-1] == "124M"  # the default, as in the original image


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A plain static file server with 124M and 355M in OpenAI's layout."""
    root = tmp_path_factory.mktemp("mirror")
    for size in ["124M", "355M"]:
        folder = root / "models" / size
        folder.mkdir(parents=True)
        for filename in FILENAMES:
            if filename in ("encoder.json", "vocab.bpe"):
                shutil.copy(ROOT / "src/vocab" / filename, folder / filename)
            else:
                (folder / filename).write_bytes(os.urandom(20_000))
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("sizes", [None, "124M 355M"])
def test_download_step_works_against_a_mirror(mirror, tmp_path, sizes):
    url, served = mirror
    # The image's working folder holds only requirements.txt and download_model.py at that step.
    shutil.copy(ROOT / "download_model.py", tmp_path)
    argv = shlex.split(download_command("Dockerfile.cpu", sizes))
    assert argv[:2] == ["python3", "download_model.py"]
    assert "GPT2_BASE_URL" in [a for w, a in instructions("Dockerfile.cpu") if w == "ARG"]
    env = dict(os.environ, GPT2_BASE_URL=url, NO_PROXY="127.0.0.1,localhost")  # as --build-arg would
    result = subprocess.run([sys.executable, *argv[1:]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for size in (sizes or "124M").split():
        for filename in FILENAMES:
            relpath = Path("models", size, filename)
            assert (tmp_path / relpath).read_bytes() == (served / relpath).read_bytes(), relpath
