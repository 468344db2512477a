"""Official weights: cache, verified download against a local HTTP server, offline, import."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time

import pytest

from sam2_core import weights as W


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM2_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NAPARI_SAM2_OFFLINE", raising=False)
    return tmp_path / "home"


class _Server:
    """Serves files from a dict on 127.0.0.1; can lie about Content-Length; counts requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.claimed_length: dict[str, int] = {}
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(server.claimed_length.get(self.path, len(body))))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _fake_spec(monkeypatch, server, body: bytes, name="sam2.1_hiera_tiny", sha=None, size="auto"):
    path = f"/{name}.pt"
    server.files[path] = body
    spec = W.WeightSpec(name, server.url + path, sha or hashlib.sha256(body).hexdigest(),
                        len(body) if size == "auto" else size)
    monkeypatch.setitem(W.OFFICIAL_WEIGHTS, name, spec)
    return spec


def _no_leftovers(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".part")]


def test_table_of_official_weights():
    assert len(W.OFFICIAL_WEIGHTS) == 8
    for name, s in W.OFFICIAL_WEIGHTS.items():
        assert re.fullmatch(r"[0-9a-f]{64}", s.sha256)
        assert s.filename == f"{name}.pt" and s.url.startswith("https://")


def test_cache_dir_honours_env(home):
    assert W.cache_dir() == home / "checkpoints" and W.cache_dir().is_dir()
    assert W.cached_path("sam2_hiera_small") == home / "checkpoints" / "sam2_hiera_small.pt"


def test_download_verifies_and_caches(monkeypatch, server):
    body = b"x" * 300_000
    _fake_spec(monkeypatch, server, body)
    seen = []
    path = W.download("sam2.1_hiera_tiny", progress=lambda d, t: seen.append((d, t)))
    assert path.read_bytes() == body and W.is_cached("sam2.1_hiera_tiny")
    assert seen[-1] == (len(body), len(body)) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    assert path.with_name(path.name + ".sha256").read_text() == hashlib.sha256(body).hexdigest()
    n = server.requests
    assert W.ensure_weights("sam2.1_hiera_tiny") == path
    assert server.requests == n  # no second download
    assert _no_leftovers(W.cache_dir())


def test_wrong_hash_leaves_nothing(monkeypatch, server):
    _fake_spec(monkeypatch, server, b"abc" * 1000, sha="0" * 64)
    with pytest.raises(W.ChecksumError, match="does not match"):
        W.download("sam2.1_hiera_tiny", progress=False)
    assert not W.cached_path("sam2.1_hiera_tiny").exists() and _no_leftovers(W.cache_dir())


def test_truncated_download(monkeypatch, server):
    spec = _fake_spec(monkeypatch, server, b"y" * 5000, size=9000)
    server.claimed_length["/" + spec.filename] = 5000
    with pytest.raises(W.WeightsError, match="incomplete"):
        W.download("sam2.1_hiera_tiny", progress=False)
    assert not W.cached_path("sam2.1_hiera_tiny").exists() and _no_leftovers(W.cache_dir())


def test_short_body_against_content_length(monkeypatch, server):
    spec = _fake_spec(monkeypatch, server, b"z" * 4000, size=None)
    server.claimed_length["/" + spec.filename] = 8000  # the connection ends early
    with pytest.raises(W.WeightsError):
        W.download("sam2.1_hiera_tiny", progress=False, timeout=5)
    assert not W.cached_path("sam2.1_hiera_tiny").exists() and _no_leftovers(W.cache_dir())


def test_http_404(monkeypatch, server):
    spec = _fake_spec(monkeypatch, server, b"data")
    del server.files["/" + spec.filename]
    with pytest.raises(W.WeightsError, match="HTTP 404"):
        W.download("sam2.1_hiera_tiny", progress=False)


def test_no_server_is_offline_fast(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    spec = W.WeightSpec("sam2.1_hiera_tiny", f"http://127.0.0.1:{port}/w.pt", "0" * 64, 10)
    monkeypatch.setitem(W.OFFICIAL_WEIGHTS, "sam2.1_hiera_tiny", spec)
    t = time.perf_counter()
    with pytest.raises(W.OfflineError) as err:
        W.ensure_weights("sam2.1_hiera_tiny")
    assert time.perf_counter() - t < 5
    msg = str(err.value)
    assert spec.url in msg and str(W.cache_dir() / spec.filename) in msg and "models import" in msg


def test_offline_env_makes_no_request(monkeypatch, server):
    _fake_spec(monkeypatch, server, b"data")
    monkeypatch.setenv("NAPARI_SAM2_OFFLINE", "1")
    with pytest.raises(W.OfflineError, match="NAPARI_SAM2_OFFLINE"):
        W.ensure_weights("sam2.1_hiera_tiny")
    assert server.requests == 0
    with pytest.raises(W.OfflineError):
        W.ensure_weights("sam2.1_hiera_tiny", allow_download=False)


def test_damaged_cache_is_reported(monkeypatch, server):
    body = b"w" * 1000
    _fake_spec(monkeypatch, server, body)
    path = W.download("sam2.1_hiera_tiny", progress=False)
    path.write_bytes(b"v" * 1000)  # same size, different content
    time.sleep(0.01)
    with pytest.raises(W.ChecksumError, match="delete it"):
        W.ensure_weights("sam2.1_hiera_tiny")


def test_import_checkpoint(monkeypatch, tmp_path):
    body = b"official bytes" * 100
    spec = W.WeightSpec("sam2_hiera_tiny", "https://example.invalid/sam2_hiera_tiny.pt",
                        hashlib.sha256(body).hexdigest(), len(body))
    monkeypatch.setitem(W.OFFICIAL_WEIGHTS, "sam2_hiera_tiny", spec)
    src = tmp_path / "downloaded.pt"
    src.write_bytes(body)
    assert W.import_checkpoint(src).read_bytes() == body  # identified by hash
    assert W.import_checkpoint(src, name="sam2_hiera_tiny") == W.cached_path("sam2_hiera_tiny")
    with pytest.raises(W.ChecksumError):
        W.import_checkpoint(src, name="sam2.1_hiera_tiny")
    assert not W.cached_path("sam2.1_hiera_tiny").exists()
    other = tmp_path / "mine.pt"
    other.write_bytes(b"fine-tuned")
    with pytest.raises(W.WeightsError, match="not one of the official"):
        W.import_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        W.import_checkpoint(tmp_path / "nope.pt")
    assert _no_leftovers(W.cache_dir())


def test_build_sam2_uses_cache_and_reports_offline(monkeypatch, seeded_checkpoint):
    from sam2_core import build_sam2

    monkeypatch.setenv("NAPARI_SAM2_OFFLINE", "1")
    with pytest.raises(W.OfflineError, match="sam2_hiera_tiny.pt"):
        build_sam2("sam2_hiera_tiny")
    ckpt = seeded_checkpoint("sam2_hiera_tiny", 0)
    spec = W.WeightSpec("sam2_hiera_tiny", "https://example.invalid/sam2_hiera_tiny.pt", W.sha256_file(ckpt), None)
    monkeypatch.setitem(W.OFFICIAL_WEIGHTS, "sam2_hiera_tiny", spec)
    W.import_checkpoint(ckpt)
    model = build_sam2("sam2_hiera_tiny", device="cpu", image_size=256)
    assert model.config.name == "sam2_hiera_tiny"


def test_list_weights(monkeypatch, server):
    _fake_spec(monkeypatch, server, b"q" * 10)
    W.download("sam2.1_hiera_tiny", progress=False)
    rows = {r["name"]: r for r in W.list_weights()}
    assert rows["sam2.1_hiera_tiny"]["cached"] and not rows["sam2_hiera_large"]["cached"]
