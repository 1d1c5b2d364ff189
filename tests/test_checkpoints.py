"""Checkpoint loading: every format round-trips, the restricted unpickler refuses hostile pickles
(and never runs embedded source), clear errors, architecture inference, manifest, fetch against a
local HTTP server with Range support."""

import hashlib
import http.server
import json
import os
import pickle
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from dmdcore.checkpoints import (
    CheckpointError,
    ShapeMismatchError,
    UnsafePickleError,
    entry_path,
    fetch,
    infer_config,
    load_checkpoint,
    read_manifest,
    register_cli,
    save_checkpoint,
    strip_prefixes,
)
from dmdcore.networks import DEMO_KWARGS, EDMPrecond
from tests.helpers_edm_pickle import write_edm_pickle, write_hostile_pickle

SMALL = dict(img_resolution=8, img_channels=2, label_dim=3, model_channels=64, channel_mult=[1, 2],
             channel_mult_emb=2, num_blocks=1, attn_resolutions=[4], dropout=0.0)


def _net(cfg=SMALL, seed=0):
    torch.manual_seed(seed)
    net = EDMPrecond(**cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return net


def _same_output(a, b, cfg=SMALL):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, cfg["img_channels"], cfg["img_resolution"], cfg["img_resolution"], generator=g)
    lab = torch.eye(cfg["label_dim"])[:2]
    with torch.no_grad():
        return torch.equal(a(x, torch.tensor([0.3, 7.0]), lab), b(x, torch.tensor([0.3, 7.0]), lab))


@pytest.fixture
def marker(tmp_path, monkeypatch):
    m = tmp_path / "EXECUTED"
    monkeypatch.setenv("DMD_TEST_MARKER", str(m))
    return m


def test_edm_pickle_fixture_loads_without_running_module_src(tmp_path, marker):
    net = _net()
    kwargs = dict(SMALL, sigma_data=np.float64(0.5), use_fp16=False, model_type="DhariwalUNet")
    p = tmp_path / "edm.pkl"
    write_edm_pickle(p, net, kwargs)
    ck = load_checkpoint(p, device="cpu")
    assert ck.format == "edm-pickle" and ck.config_source == "pickle"
    assert not ck.model.training
    assert ck.config["sigma_data"] == 0.5 and type(ck.config["sigma_data"]) is float
    assert ck.n_params == sum(p.numel() for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    assert _same_output(net, ck.model)
    assert not marker.exists(), "embedded module_src was executed"
    assert ck.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_edm_pickle_protocol2_and_dataset_kwargs(tmp_path, marker):
    net = _net(seed=1)
    p = tmp_path / "edm2.pkl"
    write_edm_pickle(p, net, dict(SMALL), protocol=2, dataset_kwargs={"resolution": 8})
    ck = load_checkpoint(p, device="cpu")
    assert _same_output(net, ck.model)
    assert ck.extra["dataset_kwargs"] == {"resolution": 8}
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_hostile_pickle_is_refused_and_command_never_runs(tmp_path):
    flag = tmp_path / "pwned"
    for i, inside in enumerate([True, False]):
        p = tmp_path / f"evil{i}.pkl"
        write_hostile_pickle(p, f"touch {flag}", inside_edm_dict=inside)
        # the payload really references os.system (posix.system / nt.system) in its opcodes
        assert b"system" in p.read_bytes()
        with pytest.raises(UnsafePickleError, match="system"):
            load_checkpoint(p, device="cpu")
        assert not flag.exists()
    # The same payload in a .pt file goes through torch's weights-only loader and is refused too.
    p = tmp_path / "evil.pt"
    write_hostile_pickle(p, f"touch {flag}", inside_edm_dict=False)
    with pytest.raises(UnsafePickleError):
        load_checkpoint(p, device="cpu")
    assert not flag.exists()


def test_hostile_payload_nested_in_edm_state_is_refused(tmp_path, marker):
    net = _net()

    class Eval:
        def __reduce__(self):
            return (eval, ("__import__('os').system('true')",))

    p = tmp_path / "nested.pkl"
    write_edm_pickle(p, net, dict(SMALL, sneaky=Eval()))
    with pytest.raises(UnsafePickleError, match="eval"):
        load_checkpoint(p, device="cpu")


@pytest.mark.parametrize("fmt,suffix", [("dmdcore.image.v1", ".pt"), ("state-dict", ".bin"),
                                        ("safetensors", ".safetensors")])
def test_round_trip_every_format(tmp_path, fmt, suffix):
    net = _net(seed=2)
    cfg = dict(SMALL, sigma_data=0.7)
    net.sigma_data = 0.7
    p = save_checkpoint(net, tmp_path / f"m{suffix}", fmt=fmt, config=cfg, role="teacher")
    ck = load_checkpoint(p, device="cpu")
    assert ck.config["sigma_data"] == 0.7 and ck.model.sigma_data == 0.7
    assert ck.format == ("state-dict" if fmt == "state-dict" else fmt)
    assert _same_output(net, ck.model)


def test_dmd2_style_state_dict_with_prefixes_and_inference(tmp_path):
    net = _net(seed=3)
    sd = OrderedDict(("module._orig_mod." + k, v) for k, v in net.state_dict().items())
    p = tmp_path / "pytorch_model.bin"
    torch.save(sd, p)
    ck = load_checkpoint(p, device="cpu")
    assert ck.config_source == "inferred"
    for key in ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult",
                "channel_mult_emb", "num_blocks", "attn_resolutions"):
        assert ck.config[key] == SMALL[key], key
    assert _same_output(net, ck.model)
    # explicit config overrides inference
    ck2 = load_checkpoint(p, config=dict(SMALL, sigma_data=0.25), device="cpu")
    assert ck2.config_source == "explicit" and ck2.model.sigma_data == 0.25


def test_infer_config_demo_and_imagenet_meta():
    from dmdcore.networks import IMAGENET64_KWARGS

    cfg = infer_config(EDMPrecond(**DEMO_KWARGS).state_dict())
    for k in ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult",
              "num_blocks", "attn_resolutions", "channel_mult_emb"):
        assert cfg[k] == DEMO_KWARGS[k], k
    with torch.device("meta"):
        sd = EDMPrecond(**IMAGENET64_KWARGS).state_dict()
    cfg = infer_config(sd)
    for k in ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult",
              "num_blocks", "attn_resolutions", "channel_mult_emb"):
        assert cfg[k] == IMAGENET64_KWARGS[k], k


def test_strip_prefixes():
    sd = strip_prefixes({"module.model.a": 1, "_orig_mod.module.model.b": 2, "enc.x": 3})
    assert list(sd) == ["model.a", "model.b", "model.enc.x"]


def test_shape_mismatch_names_first_key(tmp_path):
    net = _net()
    sd = net.state_dict()
    sd["model.map_layer1.weight"] = torch.zeros(3, 3)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(ShapeMismatchError, match=r"model\.map_layer1\.weight"):
        load_checkpoint(p, config=SMALL, device="cpu")
    sd = net.state_dict()
    del sd["model.out_conv.bias"]
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(p, config=SMALL, device="cpu")


def test_truncated_corrupt_and_unknown_files(tmp_path, marker):
    net = _net()
    good = {}
    for name, fmt in [("a.pt", "dmdcore.image.v1"), ("b.safetensors", "safetensors")]:
        good[name] = save_checkpoint(net, tmp_path / name, fmt=fmt, config=SMALL)
    write_edm_pickle(tmp_path / "c.pkl", net, dict(SMALL))
    good["c.pkl"] = tmp_path / "c.pkl"
    for name, p in good.items():
        data = p.read_bytes()
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(cut, device="cpu")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_checkpoint(junk, device="cpu")
    with pytest.raises(CheckpointError, match="not an existing file"):
        load_checkpoint(tmp_path / "nope.pt")
    toy = tmp_path / "toy.pt"
    torch.save({"format": "dmdcore.toy.v1", "state_dict": {}}, toy)
    with pytest.raises(CheckpointError, match="toy"):
        load_checkpoint(toy, device="cpu")
    assert not marker.exists()


# ------------------------------------------------------------------------------ manifest + fetch
def test_shipped_manifest_is_valid():
    m = read_manifest()
    names = [e["name"] for e in m["entries"]]
    assert len(names) == len(set(names))
    images = [e for e in m["entries"] if e.get("kind") == "image"]
    assert any(e["role"] == "teacher" and e.get("url") for e in images)
    assert any(e["role"] == "student" and e.get("url") for e in images)
    for e in images:
        for key in ("name", "role", "kind", "format", "file", "url", "size", "sha256", "source", "license"):
            assert key in e, (e["name"], key)
        if e["url"] is None:  # shipped: present, right size and checksum
            p = entry_path(e)
            assert p.exists(), p
            assert p.stat().st_size == e["size"]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == e["sha256"]


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    honour_range = True
    truncate_at: int | None = None  # send only this many body bytes, then close (Content-Length unchanged)
    requests: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        data = path.read_bytes()
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):  # RFC 9110: range not satisfiable, with the full length
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.truncate_at is not None:
            body = body[:self.truncate_at]
            self.close_connection = True
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    payload = np.random.default_rng(0).bytes(300_000)
    (root / "model.bin").write_bytes(payload)
    _RangeHandler.requests = []
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(root), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/model.bin"
    yield url, payload
    httpd.shutdown()
    httpd.server_close()


def _manifest(url, payload, sha=None):
    return {"version": 1, "entries": [{
        "name": "remote", "role": "teacher", "kind": "image", "format": "state-dict", "file": "dl/model.bin",
        "url": url, "size": len(payload), "sha256": sha or hashlib.sha256(payload).hexdigest(),
        "source": "test", "license": "test"}]}


def test_fetch_downloads_with_progress_and_checksum(tmp_path, server):
    url, payload = server
    seen = []
    out = fetch("remote", tmp_path / "dest", manifest=_manifest(url, payload), callback=lambda d, t: seen.append((d, t)))
    assert out.read_bytes() == payload
    assert seen[-1] == (len(payload), len(payload)) and len(seen) > 2
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_fetch_resumes_with_range(tmp_path, server):
    url, payload = server
    dest = tmp_path / "dest" / "dl"
    dest.mkdir(parents=True)
    (dest / "model.bin.part").write_bytes(payload[:123_456])
    out = fetch("remote", tmp_path / "dest", manifest=_manifest(url, payload))
    assert out.read_bytes() == payload
    assert _RangeHandler.requests == ["bytes=123456-"]
    assert not (dest / "model.bin.part").exists()


def test_fetch_accepts_a_complete_part_file_the_server_answers_416_for(tmp_path, server):
    # a fetch killed after the last byte but before the rename leaves a complete .part; with no
    # size/sha256 in the manifest (as for the real entries) the next Range request gets 416
    url, payload = server
    entry = _manifest(url, payload)
    entry["entries"][0].update(size=None, sha256=None)
    dest = tmp_path / "dest" / "dl"
    dest.mkdir(parents=True)
    (dest / "model.bin.part").write_bytes(payload)
    out, sha = fetch("remote", tmp_path / "dest", manifest=entry, with_sha256=True)
    assert out.read_bytes() == payload and sha == hashlib.sha256(payload).hexdigest()
    assert _RangeHandler.requests == [f"bytes={len(payload)}-"]
    # a .part longer than the file is not "complete": the 416 is an error
    (dest / "model.bin").unlink()
    (dest / "model.bin.part").write_bytes(payload + b"extra")
    with pytest.raises(CheckpointError, match="HTTP 416"):
        fetch("remote", tmp_path / "dest", manifest=entry)


def test_fetch_restarts_when_server_ignores_range(tmp_path, server, monkeypatch):
    url, payload = server
    monkeypatch.setattr(_RangeHandler, "honour_range", False)
    dest = tmp_path / "dest" / "dl"
    dest.mkdir(parents=True)
    (dest / "model.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: must be discarded
    out = fetch("remote", tmp_path / "dest", manifest=_manifest(url, payload))
    assert out.read_bytes() == payload


def test_fetch_checksum_mismatch_and_unknown_name(tmp_path, server):
    url, payload = server
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        fetch("remote", tmp_path / "d", manifest=_manifest(url, payload, sha="0" * 64))
    assert not (tmp_path / "d" / "dl" / "model.bin").exists()
    assert not (tmp_path / "d" / "dl" / "model.bin.part").exists()
    with pytest.raises(ValueError, match="not in the manifest"):
        fetch("nope", tmp_path / "d", manifest=_manifest(url, payload))


def test_cli_fetch(tmp_path, server, capsys):
    import argparse

    url, payload = server
    mpath = tmp_path / "manifest.json"
    mpath.write_text(json.dumps(_manifest(url, payload)))
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["fetch", "remote", "--dest", str(tmp_path / "c"), "--manifest", str(mpath)])
    assert args.func(args) == 0
    assert (tmp_path / "c" / "dl" / "model.bin").read_bytes() == payload
    assert f"sha256 {hashlib.sha256(payload).hexdigest()}  size {len(payload)}" in capsys.readouterr().out
    args = parser.parse_args(["fetch", "missing", "--manifest", str(mpath)])
    assert args.func(args) == 2


def test_fetch_refuses_truncated_download_without_manifest_size_and_resumes(tmp_path, server, monkeypatch):
    # real manifest entries have no size/sha256: only the server's Content-Length can tell
    url, payload = server
    m = _manifest(url, payload)
    m["entries"][0].update(size=None, sha256=None)
    part = tmp_path / "d" / "dl" / "model.bin.part"
    monkeypatch.setattr(_RangeHandler, "truncate_at", 100_000)
    with pytest.raises(CheckpointError, match=r"expected 300000 bytes, received 100000.*run fetch again"):
        fetch("remote", tmp_path / "d", manifest=m)
    assert not (tmp_path / "d" / "dl" / "model.bin").exists()
    assert part.read_bytes() == payload[:100_000]
    # the resumed request is truncated too: the Content-Range total (not the entry) gives the size
    with pytest.raises(CheckpointError, match=r"expected 300000 bytes, received 200000"):
        fetch("remote", tmp_path / "d", manifest=m)
    assert part.read_bytes() == payload[:200_000]
    monkeypatch.setattr(_RangeHandler, "truncate_at", None)
    out, sha = fetch("remote", tmp_path / "d", manifest=m, with_sha256=True)
    assert out.read_bytes() == payload and sha == hashlib.sha256(payload).hexdigest()
    assert _RangeHandler.requests == [None, "bytes=100000-", "bytes=200000-"]
    assert not part.exists()


def test_pickle_module_unused_by_loader_for_torch_files(tmp_path):
    # A .pt containing a plain pickled state dict (legacy torch format) still loads weights-only.
    net = _net()
    p = tmp_path / "legacy.pt"
    torch.save(net.state_dict(), p, _use_new_zipfile_serialization=False)
    ck = load_checkpoint(p, config=SMALL, device="cpu")
    assert _same_output(net, ck.model)
    assert pickle.HIGHEST_PROTOCOL >= 4 and os.path.exists(p)


def test_shipped_free_student_loads_safely_and_its_record_says_no_regression():
    """The free digits16 student (issue #11): a manifest entry beside the regression student, loaded
    through the safe loader, sha256 as listed; its training record says DMD loss alone."""
    from dmdcore.checkpoints import load_checkpoint, manifest_entry, student_training

    free, reg = manifest_entry("demo-digits16-student-free"), manifest_entry("demo-digits16-student")
    for e in (free, reg):
        assert e["role"] == "student" and e["kind"] == "image" and e["url"] is None
        p = entry_path(e)
        assert p.stat().st_size <= 10 * 10**6 and p.stat().st_size == e["size"]
        ck = load_checkpoint(p, device="cpu")  # weights_only torch.load: no code runs
        assert ck.sha256 == e["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    assert free["sha256"] != reg["sha256"]
    rec = json.loads(entry_path({"name": "r", "file": free["training_record"]}).read_text())
    dc = rec["distill_config"]
    assert dc["regression"] is False and dc["gan"] is False and rec["regression"] is False
    assert rec["teacher"]["sha256"] == manifest_entry("demo-digits16-teacher")["sha256"]
    assert len(rec["student_log"]) == dc["steps"] and all("loss_reg" not in m for m in rec["student_log"])
    assert student_training(free["sha256"])["regression"] is False
    tr = student_training(reg["sha256"])
    assert tr["regression"] is True and tr["reg_weight"] == 0.005 and tr["n_reg_pairs"] == 256


def test_student_training_reads_the_record_not_the_name(tmp_path):
    from dmdcore.checkpoints import student_training

    (tmp_path / "a.json").write_text(json.dumps({"distill_config": {"regression": True, "reg_weight": 0.1,
                                                                    "n_reg_pairs": 8, "gan": False, "steps": 3}}))
    (tmp_path / "b.json").write_text(json.dumps({"distill_config": {"regression": False, "gan": True, "steps": 5}}))
    (tmp_path / "c.json").write_text("{not json")
    man = {"version": 1, "entries": [
        # named "free" but its record says regression: the record wins
        {"name": "x-free", "role": "student", "sha256": "aa", "file": "a.bin", "training_record": "a.json"},
        {"name": "y", "role": "student", "sha256": "bb", "file": "b.bin", "training_record": "b.json"},
        {"name": "z", "role": "student", "sha256": "cc", "file": "c.bin", "training_record": "c.json"},
        {"name": "t", "role": "teacher", "sha256": "dd", "file": "t.bin", "training_record": "a.json"},
        {"name": "u", "role": "student", "sha256": "ee", "file": "u.bin"},
    ]}
    a = student_training("aa", man, tmp_path)
    assert a["regression"] is True and a["reg_weight"] == 0.1 and a["n_reg_pairs"] == 8 and a["name"] == "x-free"
    b = student_training("bb", man, tmp_path)
    assert b["regression"] is False and b["gan"] is True and b["reg_weight"] is None and b["steps"] == 5
    for sha in ("cc", "dd", "ee", "ff", ""):  # unreadable record, a teacher, no record, unknown hash
        assert student_training(sha, man, tmp_path) is None
    bad = {"version": 1, "entries": [{"name": "v", "role": "student", "sha256": "aa", "file": "a.bin",
                                      "training_record": "../a.json"}]}
    assert student_training("aa", bad, tmp_path) is None  # a record outside the root is never read


@pytest.mark.parametrize("fmt", ["dmdcore.image.v1", "state-dict"])
def test_save_checkpoint_bytes_depend_only_on_the_weights(tmp_path, fmt):
    """Same weights -> same file bytes (so a retrained shipped file can be checked by sha256),
    whatever the destination name or process; different weights -> different bytes."""
    from dmdcore.networks import EDMPrecond

    cfg = dict(img_resolution=8, img_channels=1, label_dim=0, model_channels=16, channel_mult=[1, 2],
               num_blocks=1, attn_resolutions=[], dropout=0.0)
    torch.manual_seed(0)
    net = EDMPrecond(**cfg)
    a = save_checkpoint(net, tmp_path / "a.pt", fmt=fmt).read_bytes()
    b = save_checkpoint(net, tmp_path / "other-name.bin", fmt=fmt).read_bytes()
    assert a == b
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert save_checkpoint(net, tmp_path / "c.pt", fmt=fmt).read_bytes() != a
    assert load_checkpoint(tmp_path / "other-name.bin", device="cpu").n_params > 0
