"""data_scripts: the real download code against a local HTTP mirror on 127.0.0.1 (no outside network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from data_scripts import fetch, link_shared, record_checksums  # noqa: E402
from derainkit.data import discover_pairs  # noqa: E402
from derainkit.errors import DatasetError  # noqa: E402


# ------------------------------------------------------------------------------------------------
# a local mirror: http.server in a thread, with Range support and a switch to cut transfers short

class _Handler(http.server.SimpleHTTPRequestHandler):
    server_version = "TestMirror/1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.honour_range:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # promise the whole body, send only part of it, hang up
            self.wfile.write(body[:srv.cut_after])
            srv.cut_after = None
            self.close_connection = True
            return
        self.wfile.write(body)


class Mirror:
    def __init__(self, root: Path):
        self.root = root
        handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.requests = []
        self.httpd.honour_range = True
        self.httpd.cut_after = None
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    @property
    def requests(self):
        return self.httpd.requests

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def mirror(tmp_path):
    m = Mirror(tmp_path / "mirror")
    (tmp_path / "mirror").mkdir()
    yield m
    m.close()


def _png(value: int, h=8, w=12) -> bytes:
    rng = np.random.default_rng(value)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _registry(tmp_path: Path, datasets: dict) -> dict:
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"schema": 1, "datasets": datasets}))
    return fetch.load_registry(path)


def _put(mirror: Mirror, rel: str, data: bytes) -> None:
    p = mirror.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _quiet(ds, dest, **kw):
    return fetch.fetch_dataset(ds, dest, quiet=True, log=lambda s: None, **kw)


# ------------------------------------------------------------------------------------------------
# success paths

def test_per_file_dataset_downloads_verifies_and_lays_out(tmp_path, mirror):
    files = []
    for i in (1, 2, 10):
        for folder, value in (("rain", 100 + i), ("norain", i)):
            data = _png(value)
            _put(mirror, f"toy/{folder}/norain-{i}.png", data)
            files.append({"filename": f"{folder}/norain-{i}.png", "url": None, "sha256": _sha(data)})
    reg = _registry(tmp_path, {"toy": {"dest": "toy/test", "layout": "rain100", "pairs": 3, "files": files}})
    out = _quiet(reg["toy"], tmp_path / "data", mirror=mirror.url)
    assert out == tmp_path / "data" / "toy" / "test"
    pairs = discover_pairs(out)
    assert [p.id for p in pairs] == ["norain-1", "norain-2", "norain-10"]
    assert (out / "rain" / "norain-10.png").read_bytes() == (mirror.root / "toy/rain/norain-10.png").read_bytes()
    assert not list((tmp_path / "data" / "toy").glob(".staging-*"))  # staging cleaned up
    n = len(mirror.requests)
    _quiet(reg["toy"], tmp_path / "data", mirror=mirror.url)  # already there: nothing fetched
    assert len(mirror.requests) == n


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_zip_archive_in_prenet_layout(tmp_path, mirror):
    entries = {f"Toy100L/rainy/rain-{i}.png": _png(50 + i) for i in (1, 2, 3)}
    entries.update({f"Toy100L/norain-{i}.png": _png(i) for i in (1, 2, 3)})
    entries["__MACOSX/Toy100L/._norain-1.png"] = b"junk"  # macOS zips carry these; ignored
    data = _zip_bytes(entries)
    _put(mirror, "toyzip/Toy100L.zip", data)
    reg = _registry(tmp_path, {"toyzip": {"dest": "toy100l/test", "layout": "prenet", "pairs": 3, "files": [
        {"filename": "Toy100L.zip", "url": None, "sha256": _sha(data), "archive": "zip"}]}})
    out = _quiet(reg["toyzip"], tmp_path / "data", mirror=mirror.url)
    pairs = discover_pairs(out, layout="prenet")
    assert [p.id for p in pairs] == ["norain-1", "norain-2", "norain-3"]
    assert (tmp_path / "data" / ".downloads" / "toyzip" / "Toy100L.zip").read_bytes() == data  # kept for reuse


def test_tar_archive_with_map_rules_and_split_checks(tmp_path, mirror):
    entries = {}
    for split, n in (("train", 2), ("test", 1)):
        for k in range(1, n + 1):
            entries[f"Rain200X/{split}/norain/norain-{k}.png"] = _png(k)
            entries[f"Rain200X/{split}/rain/X2/norain-{k}x2.png"] = _png(10 + k)
    data = _tar_bytes(entries)
    _put(mirror, "rain200x/Rain200X.tar.gz", data)
    reg = _registry(tmp_path, {"rain200x": {
        "dest": "rain200x",
        "checks": [{"path": "train", "layout": "rain100", "pairs": 2}, {"path": "test", "layout": "rain100", "pairs": 1}],
        "files": [{"filename": "Rain200X.tar.gz", "url": None, "sha256": _sha(data), "archive": "tar.gz",
                   "map": [{"from": "**/train", "to": "train"}, {"from": "**/test", "to": "test"}]}]}})
    out = _quiet(reg["rain200x"], tmp_path / "data", mirror=mirror.url)
    assert len(discover_pairs(out / "train")) == 2 and len(discover_pairs(out / "test")) == 1


def test_original_url_is_used_without_a_mirror(tmp_path, mirror):
    data = _zip_bytes({"set/rainy_image/1_1.jpg": _png(1), "set/rainy_image/1_2.jpg": _png(2),
                       "set/ground_truth/1.jpg": _png(3)})
    _put(mirror, "somewhere/else/ddn.zip", data)
    reg = _registry(tmp_path, {"ddn": {"dest": "ddn", "layout": "rain1400", "pairs": 2, "files": [
        {"filename": "ddn.zip", "url": f"{mirror.url}/somewhere/else/ddn.zip", "sha256": _sha(data), "archive": "zip"}]}})
    out = _quiet(reg["ddn"], tmp_path / "data")
    assert [p.id for p in discover_pairs(out)] == ["1_1", "1_2"]
    assert mirror.requests[-1][0] == "/somewhere/else/ddn.zip"


# ------------------------------------------------------------------------------------------------
# verification

def test_checksum_mismatch_is_rejected_and_nothing_is_left(tmp_path, mirror):
    data = _png(1)
    _put(mirror, "bad/rain/a.png", data)
    _put(mirror, "bad/norain/a.png", data)
    wrong = _sha(b"something else")
    reg = _registry(tmp_path, {"bad": {"dest": "bad", "layout": "rain100", "pairs": 1, "files": [
        {"filename": "rain/a.png", "url": None, "sha256": wrong},
        {"filename": "norain/a.png", "url": None, "sha256": _sha(data)}]}})
    with pytest.raises(fetch.ChecksumError) as err:
        _quiet(reg["bad"], tmp_path / "data", mirror=mirror.url)
    msg = str(err.value)
    assert f"expected {wrong}" in msg and f"got {_sha(data)}" in msg and "rain/a.png" in msg and "deleted" in msg
    cache = tmp_path / "data" / ".downloads" / "bad"
    assert [p for p in cache.rglob("*") if p.is_file()] == []  # neither the file nor its .part
    assert not (tmp_path / "data" / "bad").exists()


def test_unverified_files_are_refused_unless_allowed(tmp_path, mirror):
    data = _zip_bytes({"x/a.png": _png(1), "x/b.png": _png(2)})
    _put(mirror, "real/photos.zip", data)
    reg = _registry(tmp_path, {"real": {"dest": "real", "layout": "unpaired", "pairs": 2, "files": [
        {"filename": "photos.zip", "url": None, "sha256": None, "archive": "zip"}]}})
    with pytest.raises(DatasetError, match="no sha256 is recorded for photos.zip.*--allow-unverified"):
        _quiet(reg["real"], tmp_path / "data", mirror=mirror.url)
    assert mirror.requests == []  # refused before any download
    lines = []
    out = fetch.fetch_dataset(reg["real"], tmp_path / "data", mirror=mirror.url, allow_unverified=True, quiet=True,
                              log=lines.append)
    assert len(discover_pairs(out)) == 2
    assert any(f"UNVERIFIED photos.zip sha256 {_sha(data)}" in line for line in lines)


def test_no_url_and_no_mirror_explains_the_manual_route(tmp_path, mirror):
    data = _png(1)
    reg = _registry(tmp_path, {"drive": {"dest": "drive", "layout": "unpaired", "pairs": 1,
                                         "official": ["https://example.org/project-page"], "files": [
        {"filename": "a.png", "url": None, "sha256": _sha(data)}]}})
    with pytest.raises(DatasetError) as err:
        _quiet(reg["drive"], tmp_path / "data")
    msg = str(err.value)
    assert "no direct download URL" in msg and "https://example.org/project-page" in msg
    manual = tmp_path / "data" / ".downloads" / "drive" / "a.png"
    assert str(manual) in msg and "--mirror" in msg
    manual.parent.mkdir(parents=True)
    manual.write_bytes(data)  # the user downloads it by hand: it is verified and used
    out = _quiet(reg["drive"], tmp_path / "data")
    assert [p.id for p in discover_pairs(out)] == ["a"]
    manual.write_bytes(_png(2))
    with pytest.raises(fetch.ChecksumError, match="a.png: sha256 mismatch"):
        _quiet(reg["drive"], tmp_path / "data", force=True)


# ------------------------------------------------------------------------------------------------
# resuming

def test_interrupted_download_resumes_with_a_range_request(tmp_path, mirror):
    data = os.urandom(300_000)
    _put(mirror, "big/blob.bin", data)
    url = f"{mirror.url}/big/blob.bin"
    dest = tmp_path / "dl" / "blob.bin"
    mirror.httpd.cut_after = 100_000
    with pytest.raises(fetch.DownloadError, match="rerun to resume"):
        fetch.download(url, dest, _sha(data), quiet=True)
    part = dest.with_name("blob.bin.part")
    assert part.stat().st_size == 100_000 and not dest.exists()
    fetch.download(url, dest, _sha(data), quiet=True)
    assert dest.read_bytes() == data and not part.exists()
    assert mirror.requests[-1] == ("/big/blob.bin", "bytes=100000-")


def test_resume_when_the_server_ignores_ranges_starts_over(tmp_path, mirror):
    data = os.urandom(50_000)
    _put(mirror, "big/blob.bin", data)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes(b"garbage that is not the file's start")
    mirror.httpd.honour_range = False
    fetch.download(f"{mirror.url}/big/blob.bin", dest, _sha(data), quiet=True)
    assert dest.read_bytes() == data


def test_complete_part_file_is_verified_without_refetching(tmp_path, mirror):
    data = os.urandom(10_000)
    _put(mirror, "big/blob.bin", data)
    dest = tmp_path / "dl" / "blob.bin"
    dest.parent.mkdir()
    dest.with_name("blob.bin.part").write_bytes(data)  # interrupted just before the rename
    fetch.download(f"{mirror.url}/big/blob.bin", dest, _sha(data), quiet=True)
    assert dest.read_bytes() == data and mirror.requests[-1][1] == "bytes=10000-"


def test_http_errors_name_the_url(tmp_path, mirror):
    with pytest.raises(fetch.DownloadError, match=r"/nope\.zip: HTTP 404"):
        fetch.download(f"{mirror.url}/nope.zip", tmp_path / "x.zip", None, quiet=True)
    with pytest.raises(fetch.DownloadError, match="cannot connect"):
        fetch.download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", None, quiet=True, timeout=5)


# ------------------------------------------------------------------------------------------------
# archives and layouts that do not fit

def test_archive_escaping_its_folder_is_refused(tmp_path, mirror):
    data = _zip_bytes({"../evil.png": _png(1), "ok/a.png": _png(2)})
    _put(mirror, "evil/evil.zip", data)
    reg = _registry(tmp_path, {"evil": {"dest": "evil", "layout": "unpaired", "files": [
        {"filename": "evil.zip", "url": None, "sha256": _sha(data), "archive": "zip"}]}})
    with pytest.raises(DatasetError, match=r"evil\.zip: refusing archive member '\.\./evil\.png'"):
        _quiet(reg["evil"], tmp_path / "data", mirror=mirror.url)
    assert not (tmp_path / "data" / "evil.png").exists() and not (tmp_path / "evil.png").exists()


def test_wrong_pair_count_keeps_files_for_inspection(tmp_path, mirror):
    data = _zip_bytes({"s/rain/1.png": _png(1), "s/norain/1.png": _png(2)})
    _put(mirror, "short/s.zip", data)
    reg = _registry(tmp_path, {"short": {"dest": "short", "layout": "rain100", "pairs": 5, "files": [
        {"filename": "s.zip", "url": None, "sha256": _sha(data), "archive": "zip"}]}})
    with pytest.raises(DatasetError, match="expected 5 pairs, found 1") as err:
        _quiet(reg["short"], tmp_path / "data", mirror=mirror.url)
    assert "left in" in str(err.value)
    assert not (tmp_path / "data" / "short").exists()  # never renamed into place


def test_registry_is_validated(tmp_path):
    with pytest.raises(DatasetError, match="unknown archive type 'rar'"):
        _registry(tmp_path, {"x": {"dest": "x", "files": [{"filename": "a.rar", "url": None, "sha256": None,
                                                            "archive": "rar"}]}})
    with pytest.raises(DatasetError, match="64 lowercase hex"):
        _registry(tmp_path, {"x": {"dest": "x", "files": [{"filename": "a", "url": None, "sha256": "abc"}]}})
    with pytest.raises(DatasetError, match="without '..'"):
        _registry(tmp_path, {"x": {"dest": "x", "files": [{"filename": "../a", "url": None, "sha256": None}]}})
    with pytest.raises(DatasetError, match="missing the key 'dest'"):
        _registry(tmp_path, {"x": {"files": []}})


# ------------------------------------------------------------------------------------------------
# the shipped registry

def test_shipped_registry_loads_and_covers_the_benchmarks():
    reg = fetch.load_registry()
    for name in ("rain100l-test", "raintrainl", "rain100h-test", "raintrainh", "rain200h", "rain200l",
                 "rain1400-test", "rain12600", "rain12", "spa-test", "nlcl-realrain", "internet-data", "realrain-1k"):
        assert name in reg and reg[name].official, name
    assert {n for n, d in reg.items() if d.verified} == {"rain100l-test", "raintrainl", "nlcl-realrain",
                                                         "spanet-weights", "drn-weights", "prenet-weights",
                                                         "nlcl-weights"}
    assert len(reg["rain100l-test"].files) == 200 and len(reg["raintrainl"].files) == 400
    assert fetch.main(["--list"]) == 0


def test_shipped_checksums_match_shared_sha256sums(shared):
    sums = {}
    for line in shared("SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.removeprefix("./")] = digest
    reg = fetch.load_registry()
    for name, prefix in (("rain100l-test", "data/rain100l/test/"), ("raintrainl", "data/rain100l/train/"),
                         ("nlcl-realrain", "data/nlcl_realrain/rainy/"), ("spanet-weights", "weights/spanet/"),
                         ("drn-weights", "weights/drn/"), ("nlcl-weights", "weights/nlcl/")):
        for f in reg[name].files:
            assert f.sha256 == sums[prefix + f.filename], f.filename
    compared = [f for f in reg["prenet-weights"].files if f"weights/prenet/{f.filename}" in sums]
    assert len(compared) == 2  # PReNet6 on Rain100L and Rain100H; the variants' files are not in ../shared
    for f in compared:
        assert f.sha256 == sums[f"weights/prenet/{f.filename}"], f.filename


def test_shipped_rain100l_entry_through_a_local_mirror_of_shared(shared, tmp_path, mirror):
    (mirror.root / "rain100l-test").symlink_to(shared("data", "rain100l", "test"), target_is_directory=True)
    out = _quiet(fetch.load_registry()["rain100l-test"], tmp_path / "data", mirror=mirror.url)
    assert out == tmp_path / "data" / "rain100l" / "test"
    assert len(discover_pairs(out)) == 100
    assert len(mirror.requests) == 200


def test_cli_exit_codes(tmp_path, mirror, capsys):
    assert fetch.main(["no-such-set", "--dest", str(tmp_path)]) == 2
    assert "unknown data set" in capsys.readouterr().err
    assert fetch.main(["rain12", "--dest", str(tmp_path), "--mirror", mirror.url]) == 1  # refused: unverified
    assert "--allow-unverified" in capsys.readouterr().err and mirror.requests == []


# ------------------------------------------------------------------------------------------------
# the other scripts

def test_record_checksums_writes_per_file_entries(tmp_path):
    (tmp_path / "set" / "rain").mkdir(parents=True)
    (tmp_path / "set" / "rain" / "norain-10.png").write_bytes(_png(10))
    (tmp_path / "set" / "rain" / "norain-2.png").write_bytes(_png(2))
    (tmp_path / "set" / "notes.txt").write_text("not an image")
    sources = tmp_path / "sources.json"
    sources.write_text(json.dumps({"schema": 1, "datasets": {"s": {"dest": "s", "layout": "unpaired", "files": []}}}))
    assert record_checksums.main(["s", str(tmp_path / "set"), "--sources", str(sources),
                                  "--url-template", "https://host/{path}"]) == 0
    files = fetch.load_registry(sources)["s"].files
    assert [f.filename for f in files] == ["rain/norain-2.png", "rain/norain-10.png"]
    assert files[1].sha256 == _sha(_png(10)) and files[1].url == "https://host/rain/norain-10.png"


def test_link_shared_links_and_validates(shared, tmp_path):
    shared_root = shared()
    lines = []
    made = link_shared.link_shared(shared_root, tmp_path / "data", log=lines.append)
    assert {p.name for p in made} >= {"rain100l", "nlcl_realrain"}
    assert (tmp_path / "data" / "rain100l").is_symlink()
    found = link_shared.check_known(tmp_path / "data", log=lines.append)
    assert set(found) >= {"rain100l-test", "raintrainl", "nlcl-realrain"}
    assert any("rain100l-test: 100 pairs (rain100)" in line for line in lines)
    link_shared.link_shared(shared_root, tmp_path / "data", log=lines.append)  # idempotent
    with pytest.raises(DatasetError, match="already exists"):
        (tmp_path / "d2" / "rain100l").mkdir(parents=True)
        link_shared.link_shared(shared_root, tmp_path / "d2", log=lines.append)
