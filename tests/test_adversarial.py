"""The hostile-user catalogue: every case is (what a user runs) -> (exit code, a fragment of the one-line
message) -> (no file outside the command's output folder changed, no input changed).

Add a row to CASES for each new way the kit is found to mistreat input; the harness hashes every file
under the test's folder before and after, so a case also fails when it writes where it should not.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from derainkit.cli import main as cli_main
from derainkit.experiments.run_notebook import main as notebook_main
from derainkit.io import write_image
from derainkit.models.prenet import PReNet, PReNetConfig
from derainkit.weights import export_safetensors

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parent.parent
TINY = {"stages": 2, "channels": 8, "res_blocks": 1}


# ------------------------------------------------------------------------------ fixtures of a case

@dataclass
class World:
    """The files a case starts from: photos, a paired data set, tiny weights, a folder that must stay put."""

    root: Path
    photos: Path
    data: Path
    weights: Path
    nan_weights: Path
    outside: Path  # files a command must never touch

    def out(self, name: str = "out") -> Path:
        return self.root / name


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width × height (8-bit grey) with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def world(tmp_path, monkeypatch) -> World:
    monkeypatch.setenv("DERAINKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DERAINKIT_DATA", str(tmp_path / "dataroot"))
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    for name in ("a", "b"):
        write_image(photos / f"{name}.png", rng.random((40, 48, 3)))
    data = tmp_path / "pairs"
    for name in ("img-1", "img-2"):
        clean = rng.random((36, 44, 3)) * 0.8
        write_image(data / "norain" / f"{name}.png", clean)
        write_image(data / "rain" / f"{name}.png", np.clip(clean + 0.2 * rng.random(clean.shape), 0, 1))
    torch.manual_seed(0)
    net = PReNet(PReNetConfig(**TINY))
    weights = export_safetensors(net, tmp_path / "w" / "tiny.safetensors", {"model": "prenet", "model_config": TINY})
    with torch.no_grad():
        net.tail.weight.fill_(float("nan"))
    nan_weights = export_safetensors(net, tmp_path / "w" / "nan.safetensors", {"model": "prenet", "model_config": TINY})
    outside = tmp_path / "outside"
    (outside / "victim.txt").parent.mkdir(parents=True)
    (outside / "victim.txt").write_text("precious\n")
    (tmp_path / "dataroot").mkdir()
    return World(tmp_path, photos, data, weights, nan_weights, outside)


def _snapshot(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root (links recorded as links, never followed)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            rel = str(p.relative_to(root))
            out[rel] = "link:" + os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------------------ the catalogue

def derain(w: World, *extra: str, src: Path | None = None, out: Path | None = None) -> list[str]:
    return ["derain", str(src or w.photos), str(out or w.out()), "--model", "prenet", "--weights", str(w.weights),
            "--device", "cpu", *extra]


def evaluate(w: World, *extra: str, out: Path | None = None) -> list[str]:
    return ["evaluate", "--model", "prenet", "--weights", str(w.weights), "--data", str(w.data), "--device", "cpu",
            "--out", str(out or w.out()), *extra]


def train(w: World, *sets: str) -> list[str]:
    base = ["--set", "iterations=1", "--set", "crop=32", "--set", "batch=2", "--set", "val_data=null",
            "--set", "exemplar=none", "--set", f"model_config={json.dumps(TINY)}"]
    return ["train", "--model", "prenet", "--out", str(w.out()), "--device", "cpu", "--no-progress", *base,
            *[x for s in sets for x in ("--set", s)]]


def _link_log(w: World) -> list[str]:
    w.out().mkdir()
    (w.out() / "derain_log.json").symlink_to(w.outside / "victim.txt")
    return derain(w)


def _link_per_image(w: World) -> list[str]:
    w.out().mkdir()
    (w.out() / "per_image.csv").symlink_to(w.outside / "victim.txt")
    return evaluate(w)


def _link_output_image(w: World) -> list[str]:
    w.out().mkdir()
    (w.out() / "a.png").symlink_to(w.outside / "victim.txt")
    return derain(w)


def _user_file_in_output(w: World) -> list[str]:
    w.out().mkdir()
    (w.out() / "a.png").write_bytes(b"the user's own picture")
    return derain(w)


def _hard_link_output(w: World) -> list[str]:
    w.out().mkdir()
    os.link(w.photos / "a.png", w.out() / "a.png")  # the output name is the input file itself
    return derain(w)


def _bomb(w: World) -> list[str]:
    bombs = w.root / "bombs"
    bombs.mkdir()
    (bombs / "huge.png").write_bytes(_png_header(30000, 30000))
    return derain(w, src=bombs)


def _bomb_14k(w: World) -> list[str]:
    bombs = w.root / "bombs"
    bombs.mkdir()
    (bombs / "big.png").write_bytes(_png_header(14000, 14000))
    return derain(w, src=bombs)


def _read_only_output(w: World) -> list[str]:
    blocker = w.root / "blocker"
    blocker.write_text("a file where a folder is wanted")
    return derain(w, out=blocker / "out")  # cannot be created, whoever runs the test (root ignores chmod)


def _yaml_bomb(w: World) -> list[str]:
    cfg = w.root / "bomb.yaml"
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x]"] + [f"a{i}: &a{i} [*a{i-1}, *a{i-1}, *a{i-1}, *a{i-1}]"
                                                     for i in range(1, 12)]
    cfg.write_text("\n".join(lines + ["model: prenet"]) + "\n")
    return ["train", str(cfg)]


def _nb(w: World, *pairs: str) -> Callable[[], int]:
    nb = ROOT / "notebooks" / "table5_neighbours.ipynb"
    args = [str(nb), str(w.out() / "nb.ipynb"), "--profile", "smoke"]
    for p in pairs:
        name, _, value = p.partition("=")
        args += ["-p", name, value]
    return lambda: notebook_main(args)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[World], list[str] | Callable[[], int]]
    code: int
    message: str


CASES = [
    # 1. output folder = input folder
    Case("derain into its own input folder", lambda w: derain(w, out=w.photos), 2, "output folder is the input folder"),
    Case("derain a file onto itself", lambda w: derain(w, src=w.photos / "a.png", out=w.photos / "a.png"), 2,
         "never writes over an input"),
    Case("derain onto a hard link of an input", _hard_link_output, 2, "never writes over an input"),
    # 2. links and atomicity
    Case("derain log is a link to elsewhere", _link_log, 2, "symbolic link"),
    Case("evaluate per_image.csv is a link to elsewhere", _link_per_image, 2, "symbolic link"),
    Case("derain output image is a link to elsewhere", _link_output_image, 2, "not written by derainkit"),
    Case("a user's own file where an output goes", _user_file_in_output, 2, "not written by derainkit"),
    # 3. negative limits
    Case("evaluate --limit -1", lambda w: evaluate(w, "--limit", "-1"), 2, "-1 must be >= 0"),
    Case("notebook eval_limit=-1", lambda w: _nb(w, "eval_limit=-1"), 2, "eval_limit=-1 must be >= 0"),
    # 4. pixel bombs
    Case("30000² PNG header", _bomb, 2, "above the limit"),
    Case("14000² header (under the limit) with no pixel data", _bomb_14k, 2, "not a readable image"),
    # 7. one-line errors
    Case("--tile 0", lambda w: derain(w, "--tile", "0"), 2, "tile side must be at least 64"),
    Case("--tile 32", lambda w: derain(w, "--tile", "32"), 2, "tile side must be at least 64"),
    Case("--tile abc", lambda w: derain(w, "--tile", "abc"), 2, "expected auto, none or a tile side"),
    Case("--overlap too large for the tile", lambda w: derain(w, "--tile", "64", "--overlap", "40"), 2,
         "less than half"),
    Case("--config is a JSON list", lambda w: derain(w, "--config", "[1,2]"), 2, "must be a JSON object"),
    Case("--config is not JSON", lambda w: derain(w, "--config", "{k: 7"), 2, "not valid JSON"),
    Case("--set epochs=.inf", lambda w: train(w, "epochs=.inf", "iterations=null"), 2, "must be a finite number"),
    Case("--set lr=nan", lambda w: train(w, "lr=.nan"), 2, "must be a finite number"),
    Case("notebook model_config k=0", lambda w: _nb(w, 'model_config={"k": 0}'), 2, "MSGNNConfig.k=0 must be >= 1"),
    Case("read-only (uncreatable) output folder", _read_only_output, 2, "cannot write there"),
    # 8. silently wrong results
    Case("misspelt notebook parameter", lambda w: _nb(w, "evl_limit=3"), 2, "unknown parameter(s) ['evl_limit']"),
    Case("weights containing NaN", lambda w: [*derain(w)[:6], str(w.nan_weights), "--device", "cpu"], 2,
         "weights contain NaN/inf"),
    Case("notebook model_config of a wrong type", lambda w: _nb(w, "model_config=[1, 2]"), 2, "must be a mapping"),
    # 9. resources and confinement
    Case("train --set batch=100000", lambda w: train(w, "batch=100000"), 2, "lower batch or crop"),
    Case("--data data:../../../etc", lambda w: ["evaluate", "--data", "data:../../../etc"], 2, "no '..'"),
    Case("train data:../", lambda w: train(w, "train_data=data:../outside"), 2, "no '..'"),
    # beyond the report: bounded config sizes
    Case("YAML alias bomb as a run config", _yaml_bomb, 2, "aliases"),
    Case("a megabyte --config", lambda w: derain(w, "--config", "{" + " " * 70000 + "}"), 2, "too long"),
    # things that must work (exit 0), held to the same "nothing else changed" rule
    Case("derain a folder", lambda w: derain(w), 0, ""),
    Case("evaluate", lambda w: evaluate(w), 0, ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_catalogue(case: Case, world: World, capsys):
    command = case.make(world)
    out_dir = world.out()
    before = _snapshot(world.root)
    code = command() if callable(command) else cli_main(command)
    err = capsys.readouterr().err.strip()
    assert code == case.code, (code, err)
    if case.code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Executing", "["))]
        assert len(lines) == 1 and lines[0].startswith("derainkit: error:"), err
        assert case.message in lines[0], lines[0]
    after = _snapshot(world.root)
    allowed = (f"{out_dir.relative_to(world.root)}/", "cache/")  # the command's output, the kit's data cache
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith(allowed))
    assert changed == [], f"files outside the output folder changed: {changed}"
    assert (world.outside / "victim.txt").read_text() == "precious\n"


def test_the_catalogue_counts():
    assert len(CASES) >= 30  # the closing note of issue 10 quotes this count


# ------------------------------------------------------------------------------ behaviours beyond one command

def test_raising_the_pixel_limit_lets_a_large_header_through_to_decoding(world, monkeypatch, capsys):
    bombs = world.root / "bombs"
    bombs.mkdir()
    (bombs / "big.png").write_bytes(_png_header(30000, 30000))
    monkeypatch.setenv("DERAINKIT_MAX_PIXELS", str(1_000_000_000))
    assert cli_main(derain(world, src=bombs)) == 2  # past the limit check: the truncated file fails to decode
    assert "above the limit" not in capsys.readouterr().err


def test_two_derain_runs_into_one_folder_keep_both_logs(world):
    assert cli_main(derain(world, src=world.photos / "a.png")) == 0
    assert cli_main(derain(world, src=world.photos / "b.png")) == 0
    log = json.loads((world.out() / "derain_log.json").read_text())
    assert len(log["runs"]) == 2
    assert sorted(Path(r["input"]).name for r in log["images"]) == ["a.png", "b.png"]


def test_parallel_derain_runs_keep_every_entry(world):
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "derainkit.cli", *derain(world, src=world.photos / f"{n}.png")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for n in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    log = json.loads((world.out() / "derain_log.json").read_text())
    assert len(log["runs"]) == 2 and len(log["images"]) == 2
    assert all(r["status"] == "written" for r in log["images"])


def test_a_rerun_resumes_and_a_settings_change_redoes(world, capsys):
    assert cli_main(derain(world)) == 0
    first = {p.name: p.stat().st_mtime_ns for p in world.out().glob("*.png")}
    assert cli_main(derain(world)) == 0
    assert "2 image(s) already derained" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in world.out().glob("*.png")} == first  # nothing rewritten
    assert cli_main(derain(world, "--tile", "64", "--overlap", "8")) == 0  # other settings: done again
    log = json.loads((world.out() / "derain_log.json").read_text())
    assert [r["skipped"] for r in log["runs"]] == [0, 2, 0]


def test_a_derain_killed_mid_folder_resumes_without_partial_images(world):
    """Kill `derain` at random moments of a run over a folder; a rerun finishes the rest, and no
    partial or temporary image is ever left."""
    import subprocess
    import sys
    import time

    many = world.root / "many"
    rng = np.random.default_rng(3)
    for i in range(10):
        write_image(many / f"p{i}.png", rng.random((300, 320, 3)))
    cmd = [sys.executable, "-m", "derainkit.cli", *derain(world, src=many)]
    for delay in (2.5, 4.0):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        if not world.out().exists():
            continue  # killed before it started writing
        assert not [p for p in world.out().iterdir() if p.name.startswith(".") and "tmp" in p.name]
        for png in world.out().glob("*.png"):
            assert png.stat().st_size > 0
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    names = sorted(p.name for p in world.out().glob("*.png"))
    assert names == sorted(f"p{i}.png" for i in range(10))
    log = json.loads((world.out() / "derain_log.json").read_text())
    written = [r for r in log["images"] if r.get("status") == "written"]
    assert sorted(Path(r["output"]).name for r in written) >= names


def test_evaluate_killed_before_the_end_leaves_the_previous_results(world, monkeypatch):
    assert cli_main(evaluate(world)) == 0
    old = _snapshot(world.out())
    from derainkit.metrics import evaluate as ev

    def dies(*args, **kwargs):
        raise KeyboardInterrupt  # the process is stopped while it computes

    monkeypatch.setattr(ev, "score_image", dies)
    with pytest.raises(KeyboardInterrupt):
        cli_main(evaluate(world))
    assert _snapshot(world.out()) == old
    summary = json.loads((world.out() / "summary.json").read_text())
    assert summary["per_image_sha256"] == hashlib.sha256((world.out() / "per_image.csv").read_bytes()).hexdigest()


def test_identical_training_runs_export_identical_files(world):
    for name in ("one", "two"):
        argv = train(world)
        argv[argv.index("--out") + 1] = str(world.root / name)
        assert cli_main(argv) == 0
    a, b = sorted((world.root / "one").glob("*/model.safetensors")), sorted((world.root / "two").glob("*/model.safetensors"))
    assert len(a) == len(b) == 1
    da, db = a[0].read_bytes(), b[0].read_bytes()
    assert hashlib.sha256(da).hexdigest() == hashlib.sha256(db).hexdigest()
