"""Data sets: shapes, dtypes, seeding, geometry against their definitions, user-array validation."""

import io

import numpy as np
import pytest
import torch

from dmdcore.config import DATASETS_2D, DataConfig
from dmdcore.data import load_user_array, make_dataset, make_sampler, random_frame


@pytest.mark.parametrize("name", DATASETS_2D)
def test_2d_suite_is_seeded_float32(name):
    cfg = DataConfig(dataset=name, n_samples=500, seed=3)
    a, b = make_dataset(cfg), make_dataset(cfg)
    c = make_dataset(cfg.replace(seed=4))
    assert a.x.dtype == torch.float32 and a.x.shape == (500, 2)
    assert torch.isfinite(a.x).all()
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    if a.labels is not None:
        assert a.labels.dtype == torch.int64 and a.labels.shape == (500,)
        assert int(a.labels.max()) < a.n_classes
        assert len(torch.unique(a.labels)) == a.n_classes
    assert 0.3 < float(a.x.std()) < 3.0


def test_8gaussians_geometry():
    d = make_dataset(DataConfig(dataset="8gaussians", n_samples=8000, mode_scale=2.0, spread=0.05))
    assert torch.allclose(d.centers.norm(dim=1), torch.full((8,), 2.0), atol=1e-6)
    resid = d.x - d.centers[d.labels]
    assert abs(float(resid.std()) - 0.05) < 0.003
    assert abs(float(resid.mean())) < 0.003


def test_mixture_weights_and_means():
    cfg = DataConfig(dataset="mixture", dim=10, n_modes=3, weights=(1.0, 1.0, 2.0), mode_scale=3.0, spread=0.2, n_samples=40000)
    d = make_dataset(cfg)
    assert d.x.shape == (40000, 10) and d.centers.shape == (3, 10)
    assert torch.allclose(d.centers.norm(dim=1), torch.full((3,), 3.0), atol=1e-5)
    freq = torch.bincount(d.labels, minlength=3).double() / 40000
    assert torch.allclose(freq, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64), atol=0.01)
    for k in range(3):
        xk = d.x[d.labels == k]
        assert torch.allclose(xk.mean(0), d.centers[k], atol=0.02)
        assert abs(float(xk.std(0).mean()) - 0.2) < 0.01


def test_embedded_lies_in_a_plane_plus_off_plane_noise():
    flat = make_dataset(DataConfig(dataset="embedded", dim=20, base="moons", n_samples=2000))
    # rank 2 exactly (up to float32 round-off)
    s = torch.linalg.svdvals(flat.x.double())
    assert s[2] / s[0] < 1e-5
    noisy = make_dataset(DataConfig(dataset="embedded", dim=20, base="moons", n_samples=2000, off_plane_noise=0.1))
    # the in-plane part is the same data (same seed), off-plane part has std 0.1 in 18 dims
    q = random_frame(20, torch.Generator().manual_seed(0))
    assert torch.allclose(q.T @ q, torch.eye(2), atol=1e-6)
    s2 = torch.linalg.svdvals(noisy.x.double() - noisy.x.double().mean(0))
    off = (s2[2:] ** 2).sum() / (2000 * 18)
    assert abs(float(off) - 0.01) < 0.001
    e8 = make_dataset(DataConfig(dataset="embedded", dim=5, base="8gaussians", n_samples=500))
    assert e8.centers.shape == (8, 5) and e8.n_classes == 8


def test_digits():
    d = make_dataset(DataConfig(dataset="digits", dim=64, n_samples=20000))
    assert d.x.shape == (1797, 64) and d.n_classes == 10
    assert float(d.x.min()) == -1.0 and float(d.x.max()) == 1.0
    sub = make_dataset(DataConfig(dataset="digits", dim=64, n_samples=500))
    assert sub.x.shape == (500, 64)


def test_sampler_is_seeded():
    x = torch.arange(200.0).reshape(100, 2)
    lab = torch.arange(100)
    a, b = make_sampler(x, lab, seed=1), make_sampler(x, lab, seed=1)
    xa, la = a(16)
    xb, lb = b(16)
    assert torch.equal(xa, xb) and torch.equal(la, lb)
    assert torch.equal(xa[:, 0] / 2, la.float())


def _csv(rows):
    return "\n".join(",".join(map(str, r)) for r in rows).encode()


def test_user_csv_with_header_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(150, 3)).astype(np.float32)
    text = b"a,b,c\n" + _csv(arr.tolist())
    out = load_user_array(text, "data.csv")
    assert out.dtype == np.float32 and out.shape == (150, 3)
    np.testing.assert_allclose(out, arr, rtol=1e-6)
    p = tmp_path / "x.npy"
    np.save(p, arr.astype(np.float64))
    np.testing.assert_array_equal(load_user_array(str(p)), arr)
    cfg = DataConfig(dataset="user", path=str(p), dim=3, n_samples=120)
    d = make_dataset(cfg)
    assert d.x.shape == (120, 3) and d.labels is None
    with pytest.raises(ValueError, match=r"DataConfig.dim: 2 not in \{3\}"):
        make_dataset(cfg.replace(dim=2))


def test_user_csv_errors_name_row_and_column():
    rows = [[1.0, 2.0, 3.0]] * 120
    rows = [list(r) for r in rows]
    rows[16][2] = "abc"
    with pytest.raises(ValueError, match=r"row 17, column 3: 'abc' is not a number"):
        load_user_array(_csv(rows), "d.csv")
    rows[16][2] = 1.0
    rows[4] = [1.0, 2.0]
    with pytest.raises(ValueError, match=r"row 5 has 2 columns, expected 3"):
        load_user_array(_csv(rows), "d.csv")
    rows[4] = [1.0, "nan", 2.0]
    with pytest.raises(ValueError, match=r"row 5, column 2: 'nan' is not finite"):
        load_user_array(_csv(rows), "d.csv")
    with pytest.raises(ValueError, match=r"at least 100 rows"):
        load_user_array(_csv([[1.0, 2.0]] * 50), "d.csv")


def test_user_npy_errors():
    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    a = np.zeros((200, 2))
    a[10, 1] = np.inf
    with pytest.raises(ValueError, match=r"row 11, column 2: inf is not finite"):
        load_user_array(npy(a), "a.npy")
    with pytest.raises(ValueError, match=r"columns d must be in \[1, 4096\]"):
        load_user_array(npy(np.zeros((200, 5000), np.float32)), "a.npy")
    with pytest.raises(ValueError, match="2-D array"):
        load_user_array(npy(np.zeros(300)), "a.npy")
    with pytest.raises(ValueError, match="not numeric"):
        load_user_array(npy(np.array([["a", "b"]] * 200)), "a.npy")
    with pytest.raises(ValueError, match="file type"):
        load_user_array(b"123", "a.xlsx")
    with pytest.raises(ValueError, match="not an existing file"):
        load_user_array("/nonexistent/file.csv")
