"""--weights official | URL | FILE (deployzoo.weights): downloads from a local HTTP server started here (Range
support written below, and a connection it can drop mid-file), resume, sha256 checks, the cache, one-line errors,
the official table and `deployzoo models`, and `deployzoo export ... --weights URL` end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, free_port, need_fixture
from deployzoo import weights as W
from deployzoo.errors import DeployzooError
from deployzoo.weights import WeightsSource, official_sources, resolve_weights

MNV1_PRETRAIN = FIXTURES / "retinaface" / "mobilenetV1X0.25_pretrain.tar"


# ---------------------------------------------------------------------------------------------------- the server
class _State:
    """What the server serves and what it saw."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict[str, str | None]] = []
        self.drop_after: int | None = None  # send this many body bytes of the next answer, then cut the connection
        self.ignore_range = False  # answer Range requests with the whole file (200), as some servers do
        self.base = ""

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def ranges(self) -> list[str | None]:
        return [r["range"] for r in self.requests]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        st: _State = self.server.state  # type: ignore[attr-defined]
        st.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = st.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and not st.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if st.drop_after is not None:  # once: part of the body, then the connection goes away
            n, st.drop_after = st.drop_after, None
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    st = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = st  # type: ignore[attr-defined]
    st.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield st
    httpd.shutdown()
    httpd.server_close()
    t.join(5)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """The deployzoo cache in tmp_path (DEPLOYZOO_CACHE), proxies out of the way of 127.0.0.1; its weights dir."""
    monkeypatch.setenv("DEPLOYZOO_CACHE", str(tmp_path / "cache"))
    for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path / "cache" / "weights"


@pytest.fixture(scope="module")
def ckpt() -> bytes:
    """A small real checkpoint (torch.save of a state dict, ~1.2 MB: more than one download chunk)."""
    g = torch.Generator().manual_seed(0)
    buf = io.BytesIO()
    torch.save({"fc.weight": torch.randn(300, 1000, generator=g), "fc.bias": torch.zeros(300)}, buf)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port_url(name: str = "x.pth") -> str:
    return f"http://127.0.0.1:{free_port()}/{name}"  # nothing listens there


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    from deployzoo.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("deployzoo: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------------- downloads
def test_url_download_is_checked_cached_and_reused_without_a_request(server, cache, ckpt):
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    p = resolve_weights("mobilenetv1", None, f"{url}#sha256={sha(ckpt)}")
    assert p == cache / "tiny.pth" and p.read_bytes() == ckpt
    assert server.ranges() == [None] and not (cache / "tiny.pth.part").exists()
    rec = json.loads((cache / ".meta" / "tiny.pth.json").read_text())
    assert rec["url"] == url and rec["sha256"] == sha(ckpt) and rec["size"] == len(ckpt)
    from deployzoo.checkpoint import load_state_dict

    assert torch.equal(load_state_dict(p)["fc.bias"], torch.zeros(300))  # a real checkpoint, whole
    # again, and with a hash prefix: the cached file is checked and used, the server is not asked
    assert resolve_weights("mobilenetv1", None, f"{url}#sha256={sha(ckpt)[:12]}") == p
    assert resolve_weights(None, None, url, sha256=sha(ckpt).upper()) == p
    assert len(server.requests) == 1


def test_no_published_hash_is_downloaded_unverified_with_its_sha256_said(server, cache, ckpt, caplog):
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    with caplog.at_level(logging.INFO, logger="deployzoo"):
        p = resolve_weights(None, None, url)
    assert p.read_bytes() == ckpt
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(sha(ckpt) in m and "not verified" in m for m in said), said
    assert resolve_weights(None, None, url) == p and len(server.requests) == 1  # as downloaded: reused
    # a cached file that changed since is not trusted: downloaded again
    p.write_bytes(ckpt[:-10] + b"0123456789")
    assert resolve_weights(None, None, url).read_bytes() == ckpt and len(server.requests) == 2
    # a cached file that does not match the expected hash is downloaded again too
    server.files["tiny.pth"] = ckpt + b"x"
    assert resolve_weights(None, None, f"{url}#sha256={sha(ckpt + b'x')}").read_bytes() == ckpt + b"x"
    assert len(server.requests) == 3
    # another cache root: its own weights directory
    other = resolve_weights(None, None, url, cache_dir=cache.parent.parent / "other")
    assert other == cache.parent.parent / "other" / "weights" / "tiny.pth" and len(server.requests) == 4


def test_dropped_connection_is_resumed_with_a_range_request(server, cache, ckpt):
    server.files["tiny.pth"] = ckpt
    cut = len(ckpt) // 3
    server.drop_after = cut
    p = resolve_weights(None, None, f"{server.url('tiny.pth')}#sha256={sha(ckpt)}")
    assert p.read_bytes() == ckpt
    assert server.ranges() == [None, f"bytes={cut}-"]
    assert not (cache / "tiny.pth.part").exists()


def test_partial_download_is_kept_and_the_next_run_continues_it(server, cache, ckpt, monkeypatch):
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    cut = len(ckpt) // 2
    server.drop_after = cut
    monkeypatch.setattr(W, "ATTEMPTS", 1)
    with pytest.raises(DeployzooError) as e:
        resolve_weights(None, None, url)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot download {url}: the connection dropped")
    assert f"{cut} bytes kept" in msg and msg.endswith("; download it elsewhere and pass --weights FILE")
    assert (cache / "tiny.pth.part").stat().st_size == cut and not (cache / "tiny.pth").exists()
    p = resolve_weights(None, None, f"{url}#sha256={sha(ckpt)}")
    assert p.read_bytes() == ckpt and server.ranges() == [None, f"bytes={cut}-"]


def test_a_part_that_is_already_whole_is_finished_from_the_servers_416(server, cache, ckpt, monkeypatch):
    """Killed after the last byte but before the rename: the range after the end is refused (416, `*/size`)."""
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    server.drop_after = len(ckpt) // 2
    monkeypatch.setattr(W, "ATTEMPTS", 1)
    with pytest.raises(DeployzooError):
        resolve_weights(None, None, url)
    (cache / "tiny.pth.part").write_bytes(ckpt)
    assert resolve_weights(None, None, f"{url}#sha256={sha(ckpt)}").read_bytes() == ckpt
    assert server.ranges()[1] == f"bytes={len(ckpt)}-"


def test_server_that_ignores_range_gets_the_download_restarted(server, cache, ckpt):
    server.files["tiny.pth"] = ckpt
    server.ignore_range = True
    server.drop_after = len(ckpt) // 2
    p = resolve_weights(None, None, f"{server.url('tiny.pth')}#sha256={sha(ckpt)}")
    assert p.read_bytes() == ckpt  # the whole file again from byte 0, not appended to the half
    assert server.ranges() == [None, f"bytes={len(ckpt) // 2}-"]


def test_hash_mismatch_is_one_line_and_leaves_no_file(server, cache, ckpt):
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    wrong = "0" * 64
    with pytest.raises(DeployzooError) as e:
        resolve_weights(None, None, f"{url}#sha256={wrong}")
    msg = str(e.value)
    assert "\n" not in msg and url in msg and wrong in msg and sha(ckpt) in msg and "mismatch" in msg
    assert not (cache / "tiny.pth").exists() and not (cache / "tiny.pth.part").exists()
    with pytest.raises(DeployzooError, match="--weights-sha256"):
        resolve_weights(None, None, url, sha256=sha(ckpt)[:8] + "f" * 8)
    assert not (cache / "tiny.pth").exists()


def test_hash_mismatch_through_the_cli_is_one_line(server, cache, ckpt, tmp_path, capsys):
    server.files["tiny.pth"] = ckpt
    url = server.url("tiny.pth")
    code, _, err = cli(["export", "mobilenetv1", "--weights", f"{url}#sha256={'ab' * 32}", "-o",
                        str(tmp_path / "m.onnx")], capsys)
    line = one_error_line(err)
    assert code == 2 and line.startswith(f"deployzoo: error: {url}: sha256 mismatch: expected {'ab' * 32}")
    assert sha(ckpt) in line and not (tmp_path / "m.onnx").exists() and not any(cache.glob("tiny.pth*"))


def test_offline_or_unreachable_is_one_line(cache, tmp_path, capsys):
    url = closed_port_url()
    with pytest.raises(DeployzooError) as e:
        resolve_weights("mobilenetv1", None, url)
    assert str(e.value) == f"cannot download {url}: Connection refused; download it elsewhere and pass --weights FILE"
    code, _, err = cli(["export", "mobilenetv1", "--weights", url, "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 2 and one_error_line(err) == f"deployzoo: error: {e.value}"


def test_http_errors_are_one_line(server, cache):
    url = server.url("missing.pth")
    with pytest.raises(DeployzooError) as e:
        resolve_weights(None, None, url)
    assert str(e.value) == f"cannot download {url}: HTTP 404 Not Found; download it elsewhere and pass --weights FILE"


def test_download_progress_bar_on_a_terminal(server, cache, ckpt, monkeypatch, capsys):
    server.files["tiny.pth"] = ckpt
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    resolve_weights(None, None, server.url("tiny.pth"))
    err = capsys.readouterr().err
    assert "download tiny.pth" in err and "MB" in err


# ---------------------------------------------------------------------------------------------------- other values
def test_none_and_local_paths_are_as_before(tmp_path, ckpt):
    assert resolve_weights("retinaface", None, None) is None
    assert resolve_weights("retinaface", None, "") is None
    assert resolve_weights("retinaface", None, "some/where.pth") == Path("some/where.pth")  # errors come at load
    f = tmp_path / "official"  # a file of the keyword's name is given as a path
    f.write_bytes(ckpt)
    assert resolve_weights("retinaface", None, f) == f
    assert resolve_weights("retinaface", None, str(f), sha256=sha(ckpt)) == f
    with pytest.raises(DeployzooError, match=f"{re.escape(str(f))}: sha256 {sha(ckpt)} does not match"):
        resolve_weights("retinaface", None, str(f), sha256="0" * 64)
    assert f.read_bytes() == ckpt  # the user's file is never deleted
    with pytest.raises(DeployzooError, match="--weights-sha256 needs --weights"):
        resolve_weights("retinaface", None, None, sha256="0" * 64)
    with pytest.raises(DeployzooError, match="expected a sha256"):
        resolve_weights("retinaface", None, str(f), sha256="xyz")


def test_unsupported_urls_are_refused(cache):
    with pytest.raises(DeployzooError, match="unsupported URL scheme 'ftp'"):
        resolve_weights(None, None, "ftp://example.org/w.pth")
    with pytest.raises(DeployzooError, match="unsupported URL fragment #md5=abc"):
        resolve_weights(None, None, "http://127.0.0.1:9/w.pth#md5=abc")
    with pytest.raises(DeployzooError, match="does not end in a file name"):
        resolve_weights(None, None, "http://127.0.0.1:9/models/")


# ---------------------------------------------------------------------------------------------------- official
MANUAL = [(m, v) for m, v, s in official_sources() if s.url is None]


@pytest.mark.parametrize("model,variant", MANUAL)
def test_official_without_a_direct_url_says_where_to_download_it(model, variant, cache):
    src = official_sources()[[(m, v) for m, v, _ in official_sources()].index((model, variant))][2]
    with pytest.raises(DeployzooError) as e:
        resolve_weights(model, variant, "official")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{model} {variant}: the official weights ({src.file})")
    assert src.manual in msg and msg.endswith("pass --weights FILE") and not cache.exists()


def test_official_manual_through_the_cli_is_one_line(cache, tmp_path, capsys):
    code, _, err = cli(["export", "retinaface", "--variant", "mobilenet0.25", "--weights", "official", "-o",
                        str(tmp_path / "m.onnx")], capsys)
    line = one_error_line(err)
    assert code == 2 and "mobilenet0.25_Final.pth" in line and "Google Drive" in line and "--weights FILE" in line


def test_official_url_with_its_published_hash_prefix_end_to_end(server, cache, ckpt, monkeypatch):
    """`--weights official` on a variant with a direct URL and a hash prefix in the file name, the URL pointed at
    the local server: downloaded, checked against the prefix, cached; a wrong prefix is refused."""
    from deployzoo.models import maskrcnn

    name = f"maskrcnn_tiny-{sha(ckpt)[:8]}.pth"
    server.files[name] = ckpt
    real = maskrcnn.OFFICIAL_WEIGHTS["tv_v1"]
    monkeypatch.setitem(maskrcnn.OFFICIAL_WEIGHTS, "tv_v1", dataclasses.replace(
        real, file=name, url=server.url(name), hash_prefix=sha(ckpt)[:8]))
    p = resolve_weights("maskrcnn", "tv_v1", "official")
    assert p == cache / name and p.read_bytes() == ckpt
    assert resolve_weights("maskrcnn", "tv_v1", "official") == p and len(server.requests) == 1  # cached
    # the official URL given as a URL carries the published hash too; a prefix the file does not have is refused
    bad = "deadbeef" if not sha(ckpt).startswith("deadbeef") else "beefdead"
    wrong = f"maskrcnn_wrong-{bad}.pth"
    server.files[wrong] = ckpt
    monkeypatch.setitem(maskrcnn.OFFICIAL_WEIGHTS, "tv_v2", dataclasses.replace(
        maskrcnn.OFFICIAL_WEIGHTS["tv_v2"], file=wrong, url=server.url(wrong), hash_prefix=bad))
    for value in ("official", server.url(wrong)):
        with pytest.raises(DeployzooError) as e:
            resolve_weights("maskrcnn", "tv_v2", value)
        assert f"expected {bad} (published sha256 prefix {bad}" in str(e.value) and sha(ckpt) in str(e.value)
        assert not (cache / wrong).exists()
    assert resolve_weights(None, None, server.url(wrong)) == cache / wrong  # no model: no official hash applies


def test_official_table_is_consistent():
    """Every variant has a source; direct URLs end in the published file name; a hash prefix is the one the file
    name carries (torch.hub's `-HEX.` convention, which torchvision and OpenMMLab follow)."""
    from deployzoo.registry import get_model, model_names

    for name in model_names():
        spec = get_model(name)
        assert set(spec.weights) == set(spec.variants), name
    srcs = {(m, v): s for m, v, s in official_sources()}
    for (m, v), s in srcs.items():
        assert isinstance(s, WeightsSource) and s.published, (m, v)
        if s.url:
            assert s.url.startswith("https://") and s.url.rsplit("/", 1)[1] == s.file, (m, v)
        if s.hash_prefix:
            assert re.search(r"-([a-f0-9]+)\.", s.file).group(1) == s.hash_prefix, (m, v)
    direct = sorted((m, v) for (m, v), s in srcs.items() if s.url)
    assert direct == [("maskrcnn", "mmdet_1x"), ("maskrcnn", "tv_v1"), ("maskrcnn", "tv_v2"),
                      ("volo_d2", "d1_224"), ("volo_d2", "d2_224")]
    assert srcs[("maskrcnn", "tv_v1")].hash_prefix == "bf2d0c1e"
    assert srcs[("maskrcnn", "mmdet_1x")].hash_prefix == "d4b0c5d6"
    assert all(s.expected is None for (m, _), s in srcs.items() if m == "volo_d2")  # none published


def test_official_maskrcnn_urls_are_torchvisions():
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

    srcs = {(m, v): s for m, v, s in official_sources()}
    assert srcs[("maskrcnn", "tv_v1")].url == MaskRCNN_ResNet50_FPN_Weights.COCO_V1.url
    assert srcs[("maskrcnn", "tv_v2")].url == MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url


def test_models_lists_url_and_hash_per_variant(capsys):
    code, out, _ = cli(["models"], capsys)
    assert code == 0 and "| download (--weights official) | sha256 |" in out
    for m, v, s in official_sources():
        row = next(ln for ln in out.splitlines() if ln.startswith(f"| {m} | {v}"))
        assert row.endswith(f"| {s.download_text()} | {s.hash_text()} |"), row
    assert ("| https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth | "
            "sha256 prefix bf2d0c1e (in the file name) |") in out
    assert "| https://github.com/sail-sg/volo/releases/download/volo_1/d2_224_85.2.pth.tar | none published |" in out
    assert "| manual download: Google Drive https://drive.google.com/" in out


# ---------------------------------------------------------------------------------------------------- wiring
def test_build_request_and_run_resolve_urls(server, cache, ckpt, tmp_path):
    from deployzoo.request import BuildRequest
    from deployzoo.run import RunConfig, plan_run

    server.files["tiny.pth"] = ckpt
    r = BuildRequest.create("mobilenetv1", weights=f"{server.url('tiny.pth')}#sha256={sha(ckpt)}")
    assert r.weights == cache / "tiny.pth"
    # run resolves once, before it makes any data: an unreachable URL stops it at once
    out = tmp_path / "run"
    url = closed_port_url()
    with pytest.raises(DeployzooError, match=f"cannot download {re.escape(url)}"):
        plan_run(RunConfig(model="mobilenetv1", out_dir=out, weights=url, precisions=("fp32",)))
    assert not (out / "data").exists()


@need_fixture(MNV1_PRETRAIN)
def test_cli_export_with_a_url_end_to_end(server, cache, tmp_path, capsys):
    """The real MobileNetV1 x0.25 pretrain, served locally: `deployzoo export mobilenetv1 --weights URL#sha256=`
    downloads, checks, loads and exports it; the graph records the file's sha256 and the cached path."""
    from deployzoo.export import read_onnx_meta

    data = MNV1_PRETRAIN.read_bytes()
    server.files[MNV1_PRETRAIN.name] = data
    out = tmp_path / "mnv1.onnx"
    code, stdout, err = cli(["export", "mobilenetv1", "--weights", f"{server.url(MNV1_PRETRAIN.name)}#sha256={sha(data)}",
                             "-o", str(out)], capsys)
    assert code == 0, err
    assert "wrote" in stdout and "random weights" not in err
    meta = read_onnx_meta(out)["weights"]
    assert meta["random"] is False and meta["sha256"] == sha(data)
    assert Path(meta["path"]) == (cache / MNV1_PRETRAIN.name).resolve()
    assert (cache / MNV1_PRETRAIN.name).read_bytes() == data and len(server.requests) == 1
    # the same command again (the hash given by --weights-sha256 this time): the cached file, no request
    out.unlink()
    code, _, err = cli(["export", "mobilenetv1", "--weights", server.url(MNV1_PRETRAIN.name),
                        "--weights-sha256", sha(data), "-o", str(out)], capsys)
    assert code == 0, err
    assert read_onnx_meta(out)["weights"]["sha256"] == sha(data) and len(server.requests) == 1
