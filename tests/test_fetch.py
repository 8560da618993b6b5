"""Dataset download against a loopback HTTP server (no internet needed)."""

from __future__ import annotations

import hashlib
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedsynth.cli import app
from fedsynth.data.fetch import PNEUMONIAMNIST, fetch_pneumoniamnist, pneumoniamnist_filename
from fedsynth.data.ingest import load_source
from fedsynth.errors import DataError

TIMEOUT = 5.0


def make_medmnist(path: Path, size: int = 64) -> bytes:
    r = np.random.default_rng(0)
    arrays = {}
    for name, n in (("train", 6), ("val", 2), ("test", 4)):
        arrays[f"{name}_images"] = r.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        arrays[f"{name}_labels"] = (np.arange(n) % 2).astype(np.uint8)[:, None]
    np.savez_compressed(path, **arrays)
    return path.read_bytes()


@dataclass
class Server:
    url: str
    payload: bytes
    md5: str
    requests: list[str] = field(default_factory=list)
    truncate: bool = False


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    payload = make_medmnist(tmp_path / "source.npz")
    state = Server(url="", payload=payload, md5=hashlib.md5(payload).hexdigest())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state.requests.append(self.path)
            if not self.path.startswith("/files/pneumoniamnist_64.npz"):
                self.send_error(404, "no such file")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(state.payload)))
            self.end_headers()
            body = state.payload[: len(state.payload) // 2] if state.truncate else state.payload
            self.wfile.write(body)

        def log_message(self, *args):  # keep test output quiet
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/pneumoniamnist_64.npz?download=1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_success_downloads_verifies_and_loads(server, tmp_path):
    out = tmp_path / "data"
    progress: list[tuple[int, int | None]] = []
    path = fetch_pneumoniamnist(
        64, out, url=server.url, md5=server.md5, timeout=TIMEOUT, on_progress=lambda d, t: progress.append((d, t))
    )
    assert path == out / "pneumoniamnist_64.npz"
    assert path.read_bytes() == server.payload
    assert hashlib.md5(path.read_bytes()).hexdigest() == server.md5
    assert [p.name for p in out.iterdir()] == ["pneumoniamnist_64.npz"]  # no temp file left
    assert len(server.requests) == 1
    assert progress and progress[-1] == (len(server.payload), len(server.payload))
    ds, rep = load_source(path, 64)
    assert len(ds) == 12 and rep.n_loaded == 12
    assert list(ds.split) == ["train"] * 6 + ["val"] * 2 + ["test"] * 4
    assert rep.class_counts == {"normal": 6, "pneumonia": 6}


def test_wrong_md5_leaves_nothing(server, tmp_path):
    out = tmp_path / "data"
    with pytest.raises(DataError, match="checksum mismatch") as info:
        fetch_pneumoniamnist(64, out, url=server.url, md5="0" * 32, timeout=TIMEOUT)
    assert server.md5 in str(info.value)  # says what it got
    assert len(server.requests) == 1  # it really downloaded
    assert list(out.iterdir()) == []  # neither the file nor a temp file


def test_truncated_download_is_rejected(server, tmp_path):
    server.truncate = True
    out = tmp_path / "data"
    with pytest.raises(DataError):
        fetch_pneumoniamnist(64, out, url=server.url, md5=server.md5, timeout=TIMEOUT)
    assert list(out.iterdir()) == []


def test_http_404_is_a_data_error(server, tmp_path):
    out = tmp_path / "data"
    url = server.url.replace("pneumoniamnist_64.npz", "missing.npz")
    with pytest.raises(DataError, match="404"):
        fetch_pneumoniamnist(64, out, url=url, md5=server.md5, timeout=TIMEOUT)
    assert list(out.iterdir()) == []


def test_unreachable_url_is_a_data_error(tmp_path):
    out = tmp_path / "data"
    url = f"http://127.0.0.1:{closed_port()}/pneumoniamnist_64.npz"
    with pytest.raises(DataError, match="download of .* failed"):
        fetch_pneumoniamnist(64, out, url=url, md5="0" * 32, timeout=TIMEOUT)
    assert not (out / "pneumoniamnist_64.npz").exists()
    assert list(out.iterdir()) == []


def test_malformed_url_is_a_data_error(tmp_path):
    out = tmp_path / "data"
    with pytest.raises(DataError):
        fetch_pneumoniamnist(64, out, url="not a url", md5="0" * 32, timeout=TIMEOUT)
    assert list(out.iterdir()) == []


def test_garbage_http_response_is_a_data_error(tmp_path):
    """A server (or proxy) that does not speak HTTP."""

    class Garbage(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.recv(4096)
            self.request.sendall(b"this is not HTTP at all\r\n\r\n")

    with socketserver.TCPServer(("127.0.0.1", 0), Garbage) as srv:
        thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            out = tmp_path / "data"
            with pytest.raises(DataError):
                fetch_pneumoniamnist(
                    64, out, url=f"http://127.0.0.1:{srv.server_address[1]}/x.npz", md5="0" * 32, timeout=TIMEOUT
                )
            assert list(out.iterdir()) == []
        finally:
            srv.shutdown()
            thread.join(timeout=5)


def test_existing_verified_file_is_not_downloaded_again(server, tmp_path):
    out = tmp_path / "data"
    first = fetch_pneumoniamnist(64, out, url=server.url, md5=server.md5, timeout=TIMEOUT)
    mtime = first.stat().st_mtime_ns
    second = fetch_pneumoniamnist(64, out, url=server.url, md5=server.md5, timeout=TIMEOUT)
    assert second == first
    assert len(server.requests) == 1
    assert first.stat().st_mtime_ns == mtime


def test_existing_file_with_other_checksum_is_kept_and_reported(server, tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    dest = out / "pneumoniamnist_64.npz"
    dest.write_bytes(b"something else")
    with pytest.raises(DataError, match="different checksum"):
        fetch_pneumoniamnist(64, out, url=server.url, md5=server.md5, timeout=TIMEOUT)
    assert dest.read_bytes() == b"something else"
    assert server.requests == []


@pytest.mark.parametrize("size", [0, 32, 65, 256])
def test_unknown_size(tmp_path, size):
    with pytest.raises(DataError, match="size must be one of"):
        fetch_pneumoniamnist(size, tmp_path / "data", url="http://127.0.0.1:9/x", md5="0" * 32)
    assert not (tmp_path / "data").exists()


def test_known_sizes_and_filenames():
    assert sorted(PNEUMONIAMNIST) == [28, 64, 128, 224]
    for size, (url, md5) in PNEUMONIAMNIST.items():
        assert url.startswith("https://zenodo.org/")
        assert pneumoniamnist_filename(size) in url
        assert len(md5) == 32 and int(md5, 16) >= 0
    assert pneumoniamnist_filename(28) == "pneumoniamnist.npz"
    assert pneumoniamnist_filename(224) == "pneumoniamnist_224.npz"


# ---- CLI ---------------------------------------------------------------------------------


def test_cli_fetch_success(server, tmp_path):
    out = tmp_path / "cli-data"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "fetch",
            "pneumoniamnist",
            "--size",
            "64",
            "--out",
            str(out),
            "--url",
            server.url,
            "--md5",
            server.md5,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "pneumoniamnist_64.npz").read_bytes() == server.payload
    assert "verified" in result.output
    assert len(server.requests) == 1


def test_cli_fetch_bad_md5(server, tmp_path):
    out = tmp_path / "cli-data"
    result = CliRunner().invoke(
        app,
        ["data", "fetch", "pneumoniamnist", "--size", "64", "--out", str(out), "--url", server.url, "--md5", "f" * 32],
    )
    assert result.exit_code == 2, result.output
    assert "checksum mismatch" in result.output
    assert "Traceback" not in result.output
    assert not (out / "pneumoniamnist_64.npz").exists()
    assert [p for p in out.iterdir()] == []


def test_cli_fetch_unknown_dataset(tmp_path):
    result = CliRunner().invoke(app, ["data", "fetch", "chestmnist", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "unknown dataset" in result.output
    assert not (tmp_path / "d").exists()
