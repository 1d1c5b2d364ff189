"""Image sampling: per-image seeds (batch-size independence), student one-step formula, teacher
sampler = dmdcore.samplers.edm_sampler, churn determinism and its own noise stream, cache
keys/bounds/clear (model fingerprint included), metrics, per-step progress, the background job."""

import numpy as np
import pytest
import torch

from dmdcore.config import SamplerConfig
from dmdcore.images import (
    DEMO_CONFIG,
    IMAGENET_SAMPLER,
    ImageCache,
    ImageGenerationJob,
    churn_generator,
    churn_seed,
    digits16,
    generate_images,
    image_grid,
    image_noise,
    model_fingerprint,
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
    fp = model_fingerprint(net)
    k = ImageCache.key("abc", 0, 1, cfg, fp)
    assert len({k, ImageCache.key("abd", 0, 1, cfg, fp), ImageCache.key("abc", 1, 1, cfg, fp),
                ImageCache.key("abc", 0, 2, cfg, fp), ImageCache.key("abc", 0, 1, SamplerConfig(steps=3), fp),
                ImageCache.key("abc", 0, 1, None, fp), ImageCache.key("abc", 0, 1, cfg, "other")}) == 7
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


# ------------------------------------------------------------------------------ audit fixes
def test_churn_noise_is_its_own_stream_and_batch_independent(net, monkeypatch):
    import dmdcore.images as images

    shape = (1, 8, 8)
    for s in (0, 1, 41):
        churn = torch.randn(shape, generator=churn_generator(s))
        assert not torch.equal(churn, image_noise([s + 1], shape)[0])  # not the next image's z
        assert not torch.equal(churn, image_noise([s], shape)[0])
    assert churn_seed(5) != churn_seed(6) and churn_seed(5) == churn_seed(5)
    # sample_teacher really hands edm_sampler these generators (not Generator(seed + 1))
    seen = []
    real = images.edm_sampler

    def spy(*a, generator=None, **k):
        seen.append(generator.get_state())
        return real(*a, generator=generator, **k)

    monkeypatch.setattr(images, "edm_sampler", spy)
    cfg = SamplerConfig(steps=3, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)
    sample_teacher(net, [0, 1], [7, 8], sampler=cfg)
    assert [torch.equal(st, churn_generator(s).get_state()) for st, s in zip(seen, [7, 8])] == [True, True]
    assert not torch.equal(seen[0], torch.Generator().manual_seed(8).get_state())
    monkeypatch.undo()
    b1 = generate_images(net, [0, 1, 2], [7, 8, 9], sampler=cfg, batch_size=1)
    b2 = generate_images(net, [0, 1, 2], [7, 8, 9], sampler=cfg, batch_size=2)
    assert torch.allclose(b1, b2, atol=1e-6)


def test_cache_key_covers_config_overrides_dtype_and_loaded_config(tmp_path, net):
    import copy

    from dmdcore.checkpoints import load_checkpoint, save_checkpoint

    cache = ImageCache(tmp_path / "c")
    calls = []
    run = lambda n: generate_images(n, [0, 1], [1, 2], sampler=None, ckpt_hash="abc", cache=cache,  # noqa: E731
                                    callback=calls.append)
    x1 = run(net)
    assert [e["cached"] for e in calls] == [False]
    run(net)
    assert [e["cached"] for e in calls] == [False, True]  # same model: hit
    other = copy.deepcopy(net)
    other.sigma_data = 0.7  # what load_checkpoint(config={..., "sigma_data": 0.7}) builds
    x2 = run(other)
    assert calls[-1]["cached"] is False and not torch.allclose(x1, x2, atol=1e-4)
    run(copy.deepcopy(net).double())
    assert calls[-1]["cached"] is False  # dtype is part of the key
    # the config used by load_checkpoint (explicit override included) is part of the fingerprint
    p = save_checkpoint(net, tmp_path / "n.pt")
    a = load_checkpoint(p, device="cpu").model
    b = load_checkpoint(p, config=dict(TINY, sigma_data=0.7), device="cpu").model
    assert a.init_kwargs["img_resolution"] == 8 and b.init_kwargs["sigma_data"] == 0.7
    assert model_fingerprint(a) != model_fingerprint(b)
    assert model_fingerprint(a) == model_fingerprint(load_checkpoint(p, device="cpu").model)


def test_teacher_progress_moves_within_a_batch(net):
    cfg = SamplerConfig(steps=3)
    prog, done = [], []
    generate_images(net, [0, 1], [1, 2], sampler=cfg, batch_size=2, progress=prog.append, callback=done.append)
    assert len(done) == 1  # one batch ...
    assert [round(e["fraction"], 6) for e in prog] == [round(x / 5, 6) for x in (2, 4, 5)]  # ... 2N-1 = 5 NFE
    assert all(e["done"] == 0 and e["indices"] == [0, 1] for e in prog)
    # churn: images run one at a time; the fraction covers the whole batch
    churn = SamplerConfig(steps=2, S_churn=10.0)
    prog.clear()
    generate_images(net, [0, 1], [1, 2], sampler=churn, batch_size=2, progress=prog.append)
    assert [round(e["fraction"], 6) for e in prog] == [round(x, 6) for x in (1 / 3, 0.5, 0.5 + 1 / 3, 1.0)]


class _Gated(torch.nn.Module):
    """Wraps a net; the ``block_at``-th forward waits for ``gate`` (or raises ``exc`` when set)."""

    def __init__(self, inner, block_at=None, exc=None):
        super().__init__()
        self.inner, self.block_at, self.exc, self.calls = inner, block_at, exc, 0
        self.img_channels, self.img_resolution, self.label_dim = inner.img_channels, inner.img_resolution, inner.label_dim
        import threading

        self.gate, self.reached = threading.Event(), threading.Event()

    def forward(self, *a, **k):
        self.calls += 1
        if self.exc is not None:
            raise self.exc
        if self.calls == self.block_at:
            self.reached.set()
            assert self.gate.wait(60)
        return self.inner(*a, **k)


def test_job_snapshot_reports_progress_and_eta_within_one_batch(net):
    teacher = _Gated(net, block_at=4)  # N = 3: 5 NFE per batch; block during step 2
    job = ImageGenerationJob(teacher, net, [0, 1, 2], [1, 2, 3], sampler=SamplerConfig(steps=3), batch_size=3)
    job.start()
    try:
        assert teacher.reached.wait(60)
        snap = job.snapshot()
        assert snap["state"] == "running" and snap["phase"] == "teacher" and snap["done_teacher"] == 0
        assert snap["progress_teacher"] == pytest.approx(3 * 2 / 5)  # step 1 (2 of 5 NFE) of the one batch
        assert snap["per_image_s"] is not None and snap["per_image_s"] > 0
        assert snap["eta_s"] == pytest.approx(snap["per_image_s"] * (3 - 1.2))
    finally:
        teacher.gate.set()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap["state"] == "finished" and snap["progress_teacher"] == 3 and snap["eta_s"] == 0


@pytest.mark.parametrize("exc", [TypeError("bad argument"), KeyError("sigma")])
def test_job_fails_cleanly_on_any_exception(net, exc):
    job = ImageGenerationJob(_Gated(net, exc=exc), net, [0, 1], [1, 2], sampler=SamplerConfig(steps=2)).start()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap["state"] == "failed" and snap["error"].startswith(type(exc).__name__)
    assert "sigma" in snap["error"] or "bad argument" in snap["error"]
