"""Issue 15, part 1: tiny hostile files are refused before allocation, in <= 5 s and < 1 GB of
peak RSS over the loading process's baseline (measured in a subprocess with resource.getrusage;
the subprocess runs with RLIMIT_AS = baseline + 3 GiB and a 20 s alarm per file, so a loader
without budgets fails these tests instead of taking the machine down)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_files  # noqa: E402

EXPECTED = [
    "expand_mc768", "expand_mc192", "mc768_budget", "billion_laughs", "cyclic_kwargs", "num_blocks_pkl",
    "num_blocks_safetensors", "num_blocks_pt", "config_list", "npy_huge_shape", "npy_empty", "csv_huge_field",
    "csv_10M_rows", "csv_3M_rows", "toy_passwd", "toy_random_bytes", "toy_dim3", "toy_no_arch", "toy_width60000",
    "toy_budget",
]


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    files = hostile_files.make_all(folder)
    assert sorted(files) == sorted(EXPECTED)
    return files, hostile_files.run_bombs(files)


@pytest.mark.parametrize("name", EXPECTED)
def test_bomb_refused_quickly_and_small(bombs, name):
    files, results = bombs
    r = results[name]
    expect = files[name][2]
    assert r["is_value_error"], f"{name}: {r['type']}: {r['message']}"
    assert expect in r["message"], r["message"]
    assert "Traceback" not in r["message"]
    assert r["seconds"] <= 5.0, r
    assert r["rss_mb"] < 1024, r


def test_bomb_files_are_tiny(bombs):
    files, _ = bombs
    for name, (_, path, _) in files.items():
        if name.startswith(("expand", "num_blocks", "billion", "cyclic", "mc768", "npy_huge")):
            assert Path(path).stat().st_size < 200_000, name


def test_budget_is_configurable(tmp_path, monkeypatch):
    """A lower DMD_MAX_MODEL_BYTES refuses the demo teacher; the default accepts it."""
    from dmdcore.checkpoints import load_checkpoint
    from dmdcore.limits import BudgetError

    demo = Path(__file__).resolve().parent.parent / "checkpoints" / "demo" / "digits16-teacher.pt"
    ck = load_checkpoint(demo, device="cpu", hash_file=False)
    monkeypatch.setenv("DMD_MAX_MODEL_BYTES", str(ck.n_params * 4 - 1))
    with pytest.raises(BudgetError, match="DMD_MAX_MODEL_BYTES"):
        load_checkpoint(demo, device="cpu", hash_file=False)
    monkeypatch.setenv("DMD_MAX_UPLOAD_ROWS", "150")
    from dmdcore.data import load_user_array

    with pytest.raises(BudgetError, match="DMD_MAX_UPLOAD_ROWS"):
        load_user_array(b"1,2\n" * 200, filename="x.csv")
    assert load_user_array(b"1,2\n" * 120, filename="x.csv").shape == (120, 2)


def test_parse_deadline(monkeypatch):
    """A CSV parse past DMD_PARSE_TIMEOUT_S is stopped with a message naming the budget."""
    from dmdcore.data import load_user_array

    monkeypatch.setenv("DMD_PARSE_TIMEOUT_S", "1e-9")
    with pytest.raises(ValueError, match="DMD_PARSE_TIMEOUT_S"):
        load_user_array(b"1,2\n" * 10_000, filename="slow.csv")


def test_shared_but_finite_structures_still_load():
    """The structure walker refuses cycles and explosions, not ordinary sharing."""
    from dmdcore.limits import BudgetError, plain_structure

    shared = [1, 2, 3]
    assert plain_structure({"a": shared, "b": shared}, "x") == {"a": [1, 2, 3], "b": [1, 2, 3]}
    deep: list = []
    cur = deep
    for _ in range(100):
        cur.append([])
        cur = cur[0]
    with pytest.raises(BudgetError, match="nesting"):
        plain_structure(deep, "x")


def test_overlapping_tensors_refused():
    import torch

    from dmdcore.limits import BudgetError, check_tensors

    base = torch.zeros(10)
    with pytest.raises(BudgetError, match="overlaps"):
        check_tensors({"a": base[:8], "b": base[2:]}, "f.pt")
    strided = torch.as_strided(torch.zeros(4), (1000, 4), (0, 1))
    with pytest.raises(BudgetError, match="stride 0"):
        check_tensors({"a": strided}, "f.pt")
    check_tensors({"a": torch.zeros(3, 4), "b": torch.zeros(2)[1:]}, "f.pt")  # honest views pass


# ------------------------------------------------------------------ fetch: streamed size caps
class _Endless:
    """An HTTP server that streams without Content-Length until the client hangs up."""

    def __enter__(self):
        import http.server
        import threading

        class H(http.server.BaseHTTPRequestHandler):
            sent = [0]

            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * 65536)
                        H.sent[0] += 65536
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.handler = H
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/big.bin"
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _entry(url, size=None):
    e = {"name": "big", "file": "dl/big.bin", "url": url}
    if size is not None:
        e["size"] = size
    return {"version": 1, "entries": [e]}


def test_fetch_stops_at_the_manifest_size(tmp_path):
    from dmdcore.checkpoints import CheckpointError, fetch

    seen = []
    with _Endless() as srv:
        with pytest.raises(CheckpointError, match="more than the manifest size 1000"):
            fetch("big", tmp_path, manifest=_entry(srv.url, 1000), callback=lambda d, t: seen.append(d))
    assert max(seen) <= 1000
    assert not list((tmp_path / "dl").iterdir())  # partial file removed


def test_fetch_caps_a_download_without_size(tmp_path, monkeypatch):
    from dmdcore.checkpoints import CheckpointError, fetch

    monkeypatch.setenv("DMD_MAX_CHECKPOINT_BYTES", str(300_000))
    with _Endless() as srv:
        with pytest.raises(CheckpointError, match="DMD_MAX_CHECKPOINT_BYTES"):
            fetch("big", tmp_path, manifest=_entry(srv.url))
    assert not list((tmp_path / "dl").iterdir())
