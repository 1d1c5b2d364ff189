"""Image sampling: per-image seeds (batch-size independence), student one-step formula, teacher
sampler = dmdcore.samplers.edm_sampler, churn determinism, cache keys/bounds/clear, metrics."""

import numpy as np
import pytest
import torch

from dmdcore.config import SamplerConfig
from dmdcore.images import (
    DEMO_CONFIG,
    IMAGENET_SAMPLER,
    ImageCache,
    digits16,
    generate_images,
    image_grid,
    image_noise,
    one_hot,
    optimize_for_inference,
    pair_metrics,
    sample_student,
    sample_teacher,
    to_uint8,
)
from dmdcore.networks import EDMPrecond
from dmdcore.samplers import edm_sampler

TINY = dict(img_resolution=8, img_channels=1, label_dim=4, model_channels=16, channel_mult=[1, 4],
            num_blocks=1, attn_resolutions=[4], dropout=0.0)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = EDMPrecond(**TINY).eval()
    with torch.no_grad():
        for p in n.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return n


def test_noise_is_per_seed():
    a = image_noise([3, 7, 11], (1, 8, 8))
    b = image_noise([11], (1, 8, 8))
    assert torch.equal(a[2], b[0])
    assert torch.equal(a[0], torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="seeds"):
        image_noise([-1], (1, 8, 8))


def test_one_hot_and_bad_class():
    assert torch.equal(one_hot([0, 3], 4), torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))
    assert one_hot([0], 0) is None
    with pytest.raises(ValueError, match=r"class_ids: 4 not an integer in \[0, 4\)"):
        one_hot([4], 4)


def test_student_is_one_step_at_sigma_80(net):
    x = sample_student(net, [1, 2], [5, 6])
    z = image_noise([5, 6], (1, 8, 8))
    with torch.no_grad():
        want = net(80.0 * z, torch.tensor(80.0), one_hot([1, 2], 4))
    assert torch.allclose(x, want, atol=1e-6)


def test_teacher_uses_edm_sampler_and_is_batch_independent(net):
    cfg = SamplerConfig(steps=4)
    x = sample_teacher(net, [0, 1, 2, 3], [10, 11, 12, 13], sampler=cfg)
    z = image_noise([10, 11, 12, 13], (1, 8, 8))
    want = edm_sampler(net, z, one_hot([0, 1, 2, 3], 4), steps=4)
    assert torch.allclose(x, want.float(), atol=1e-6)
    alone = torch.cat([sample_teacher(net, [c], [s], sampler=cfg) for c, s in zip([0, 1, 2, 3], [10, 11, 12, 13])])
    assert torch.allclose(x, alone, atol=1e-5)
    b1 = generate_images(net, [0, 1, 2, 3], [10, 11, 12, 13], sampler=cfg, batch_size=1)
    b3 = generate_images(net, [0, 1, 2, 3], [10, 11, 12, 13], sampler=cfg, batch_size=3)
    assert torch.allclose(b1, b3, atol=1e-5) and torch.allclose(b1, x, atol=1e-5)


def test_churn_sampling_is_deterministic_and_batch_independent(net):
    cfg = SamplerConfig(steps=3, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    a = sample_teacher(net, [0, 1], [1, 2], sampler=cfg)
    b = sample_teacher(net, [1], [2], sampler=cfg)
    c = sample_teacher(net, [0, 1], [1, 2], sampler=cfg)
    assert torch.equal(a, c)
    assert torch.allclose(a[1], b[0], atol=1e-6)
    d = sample_teacher(net, [0, 1], [1, 2], sampler=SamplerConfig(steps=3))
    assert not torch.allclose(a, d, atol=1e-3)  # churn does change the result
    assert IMAGENET_SAMPLER.steps == 256 and IMAGENET_SAMPLER.S_churn == 40.0


def test_fast_path_equal(net):
    import copy

    fast = optimize_for_inference(copy.deepcopy(net), channels_last=True)
    a = sample_student(net, [0, 1, 2], [1, 2, 3])
    b = sample_student(fast, [0, 1, 2], [1, 2, 3], channels_last=True)
    assert torch.allclose(a, b, atol=1e-5)


def test_cache_hits_keys_bound_and_clear(tmp_path, net):
    cache = ImageCache(tmp_path / "c", max_bytes=10_000)
    cfg = SamplerConfig(steps=2)
    calls = []
    x1 = generate_images(net, [0, 1], [1, 2], sampler=cfg, ckpt_hash="abc", cache=cache,
                         callback=lambda e: calls.append(e))
    assert cache.stats()["files"] == 2 and not calls[-1]["cached"]
    calls.clear()
    x2 = generate_images(net, [0, 1], [1, 2], sampler=cfg, ckpt_hash="abc", cache=cache,
                         callback=lambda e: calls.append(e))
    assert torch.equal(x1, x2) and len(calls) == 1 and calls[0]["cached"] and calls[0]["done"] == 2
    # every key component matters
    k = ImageCache.key("abc", 0, 1, cfg)
    assert len({k, ImageCache.key("abd", 0, 1, cfg), ImageCache.key("abc", 1, 1, cfg),
                ImageCache.key("abc", 0, 2, cfg), ImageCache.key("abc", 0, 1, SamplerConfig(steps=3)),
                ImageCache.key("abc", 0, 1, None)}) == 6
    # a poisoned cache entry is what comes back: proves reads really come from disk
    cache.put(k, np.full((1, 8, 8), 0.25, dtype=np.float32))
    x3 = generate_images(net, [0], [1], sampler=cfg, ckpt_hash="abc", cache=cache)
    assert torch.all(x3 == 0.25)
    # bound: ~384 B per file; a 1000-byte cache keeps at most 2
    small = ImageCache(tmp_path / "s", max_bytes=1000)
    for s in range(6):
        small.put(ImageCache.key("h", 0, s, None), np.zeros((1, 8, 8), np.float32))
    st = small.stats()
    assert st["bytes"] <= 1000 and 1 <= st["files"] <= 2
    assert small.get(ImageCache.key("h", 0, 5, None)) is not None  # newest survives
    assert cache.clear() == 2 and cache.stats()["files"] == 0


def test_stop_and_bad_input(net):
    with pytest.raises(InterruptedError):
        generate_images(net, [0, 1], [1, 2], sampler=None, should_stop=lambda: True)
    with pytest.raises(ValueError, match="class_ids/seeds"):
        generate_images(net, [0], [1, 2], sampler=None)
    with pytest.raises(ValueError, match="SamplerConfig.steps"):
        sample_teacher(net, [0], [1], sampler=SamplerConfig(steps=0))


def test_uint8_grid_and_metrics():
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 2.0]]]])
    assert to_uint8(x)[0, :, :, 0].tolist() == [[0, 128], [255, 255]]
    imgs = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2, 1)
    g = image_grid(imgs, ncols=2, pad=1, fill=0)
    assert g.shape == (7, 7, 1) and g[1:3, 4:6, 0].tolist() == imgs[1, :, :, 0].tolist()

    gen = torch.Generator().manual_seed(0)
    t = torch.randn(12, 1, 4, 4, generator=gen)
    m = pair_metrics(t, t.clone(), bootstrap=20)
    assert m.delta_e == pytest.approx(0.0, abs=1e-9) and m.retrieval == 1.0 and np.allclose(m.l2, 0)
    s = t[torch.roll(torch.arange(12), 1)]  # same set, shifted pairing
    m = pair_metrics(t, s, bootstrap=0)
    assert m.e_ot == pytest.approx(0.0, abs=1e-9) and m.delta_e > 0.5 and m.retrieval == 0.0
    want = (s - t).reshape(12, -1).norm(dim=1).numpy()
    assert np.allclose(m.l2, want) and m.absdiff.shape == (12, 4, 4)
    with pytest.raises(ValueError, match="at least 2"):
        pair_metrics(t[:1], t[:1])


def test_digits16_and_demo_config():
    x, y = digits16()
    assert x.shape == (1797, 1, 16, 16) and y.shape == (1797,)
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0 and set(y.tolist()) == set(range(10))
    with torch.device("meta"):
        n = EDMPrecond(**DEMO_CONFIG)
    assert n.label_dim == 10 and n.img_resolution == 16
