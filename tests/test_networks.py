"""EDM-compatible networks: key names/shapes from the documented naming rule, parameter count,
and the forward pass against an independent functional re-implementation of the documented
formulas (written here from edm-format.md, sharing no code with dmdcore.networks)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmdcore.networks import (
    DEMO_KWARGS,
    IMAGENET64_KWARGS,
    DhariwalUNet,
    EDMPrecond,
    PositionalEmbedding,
    count_parameters,
    set_fast_attention,
)


# ---------------------------------------------------------------- expected keys (naming rule)
def expected_keys(res, cin, label_dim, mc, mult, mult_emb, nblocks, attn, augment_dim=0):
    """The ordered (key, shape) list of EDMPrecond(DhariwalUNet) built from the documented rule."""
    E = mc * mult_emb
    out = []

    def lin(name, i, o, bias=True):
        out.append((f"{name}.weight", (o, i)))
        if bias:
            out.append((f"{name}.bias", (o,)))

    def conv(name, i, o, k, resample=False):
        if k:
            out.append((f"{name}.weight", (o, i, k, k)))
            out.append((f"{name}.bias", (o,)))
        if resample:
            out.append((f"{name}.resample_filter", (1, 1, 2, 2)))

    def norm(name, c):
        out.append((f"{name}.weight", (c,)))
        out.append((f"{name}.bias", (c,)))

    def block(name, i, o, att=False, up=False, down=False):
        norm(f"{name}.norm0", i)
        conv(f"{name}.conv0", i, o, 3, resample=up or down)
        lin(f"{name}.affine", E, 2 * o)
        norm(f"{name}.norm1", o)
        conv(f"{name}.conv1", o, o, 3)
        if i != o or up or down:
            conv(f"{name}.skip", i, o, 1 if i != o else 0, resample=up or down)
        if att and o // 64 >= 1:  # heads = out // 64; zero heads means no attention layers
            norm(f"{name}.norm2", o)
            conv(f"{name}.qkv", o, 3 * o, 1)
            conv(f"{name}.proj", o, o, 1)
        return o

    if augment_dim:
        lin("model.map_augment", augment_dim, mc, bias=False)
    lin("model.map_layer0", mc, E)
    lin("model.map_layer1", E, E)
    if label_dim:
        lin("model.map_label", label_dim, E, bias=False)
    c, skips = cin, []
    for lvl, m in enumerate(mult):
        r = res >> lvl
        if lvl == 0:
            conv(f"model.enc.{r}x{r}_conv", c, mc * m, 3)
            c = mc * m
        else:
            c = block(f"model.enc.{r}x{r}_down", c, c, down=True)
        skips.append(c)
        for b in range(nblocks):
            c = block(f"model.enc.{r}x{r}_block{b}", c, mc * m, att=r in attn)
            skips.append(c)
    for lvl in reversed(range(len(mult))):
        r = res >> lvl
        if lvl == len(mult) - 1:
            block(f"model.dec.{r}x{r}_in0", c, c, att=True)
            block(f"model.dec.{r}x{r}_in1", c, c)
        else:
            block(f"model.dec.{r}x{r}_up", c, c, up=True)
        for b in range(nblocks + 1):
            c = block(f"model.dec.{r}x{r}_block{b}", c + skips.pop(), mc * mult[lvl], att=r in attn)
    norm("model.out_norm", c)
    conv("model.out_conv", c, cin, 3)
    return out


def test_imagenet64_keys_shapes_and_count_on_meta():
    with torch.device("meta"):
        net = EDMPrecond(**IMAGENET64_KWARGS)
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    want = expected_keys(64, 3, 1000, 192, [1, 2, 3, 4], 4, 3, [32, 16, 8])
    assert [k for k, _ in got] == [k for k, _ in want]
    assert got == want
    # Spot checks straight from the facts list.
    d = dict(got)
    assert d["model.enc.64x64_conv.weight"] == (192, 3, 3, 3)
    assert d["model.enc.32x32_down.conv0.resample_filter"] == (1, 1, 2, 2)
    assert d["model.enc.32x32_block0.qkv.weight"] == (3 * 384, 384, 1, 1)
    assert "model.enc.64x64_block0.qkv.weight" not in d
    assert d["model.map_label.weight"] == (768, 1000) and "model.map_label.bias" not in d
    assert d["model.out_conv.weight"] == (3, 192, 3, 3)
    n_params = count_parameters(net)
    buffers = sum(math.prod(s) for k, s in want if k.endswith("resample_filter"))
    assert n_params == sum(math.prod(s) for _, s in want) - buffers
    assert 295e6 < n_params < 297e6  # "about 296 M"


@pytest.mark.parametrize(
    "cfg",
    [
        dict(res=16, cin=1, label_dim=10, mc=32, mult=[1, 2], mult_emb=4, nblocks=1, attn=[8]),
        dict(res=32, cin=3, label_dim=0, mc=64, mult=[1, 2, 2], mult_emb=2, nblocks=2, attn=[16, 8],
             augment_dim=9),
        dict(res=8, cin=2, label_dim=5, mc=16, mult=[2, 3], mult_emb=4, nblocks=0, attn=[]),
    ],
)
def test_keys_match_rule_for_other_configs(cfg):
    with torch.device("meta"):
        net = EDMPrecond(img_resolution=cfg["res"], img_channels=cfg["cin"], label_dim=cfg["label_dim"],
                         model_channels=cfg["mc"], channel_mult=cfg["mult"], channel_mult_emb=cfg["mult_emb"],
                         num_blocks=cfg["nblocks"], attn_resolutions=cfg["attn"],
                         augment_dim=cfg.get("augment_dim", 0))
    got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    assert got == expected_keys(**cfg)


# ---------------------------------------------------------------- independent reference forward
def ref_forward(sd, x, sigma, labels, *, res, mult, nblocks, attn, sigma_data=0.5):
    """Functional D(x; σ) from the documented formulas, using only the state-dict tensors."""
    P = lambda k: sd["model." + k]  # noqa: E731
    mc = P("map_layer0.weight").shape[1]

    def gn(h, name):
        C = h.shape[1]
        return F.group_norm(h, min(32, C // 4), P(name + ".weight"), P(name + ".bias"), eps=1e-5)

    def conv(h, name, up=False, down=False):
        filt = torch.full((1, 1, 2, 2), 0.25)
        if up:
            h = F.conv_transpose2d(h, (4 * filt).repeat(h.shape[1], 1, 1, 1), stride=2, groups=h.shape[1])
        if down:
            h = F.conv2d(h, filt.repeat(h.shape[1], 1, 1, 1), stride=2, groups=h.shape[1])
        if "model." + name + ".weight" in sd:
            w = P(name + ".weight")
            h = F.conv2d(h, w, P(name + ".bias"), padding=w.shape[-1] // 2)
        return h

    def block(h, name, emb, up=False, down=False):
        orig = h
        h = conv(F.silu(gn(h, name + ".norm0")), name + ".conv0", up, down)
        p = emb @ P(name + ".affine.weight").T + P(name + ".affine.bias")
        scale, shift = p[:, : h.shape[1], None, None], p[:, h.shape[1]:, None, None]
        h = F.silu(shift + gn(h, name + ".norm1") * (scale + 1))
        h = conv(h, name + ".conv1")
        if "model." + name + ".skip.weight" in sd or up or down:
            orig = conv(orig, name + ".skip", up, down)
        h = h + orig
        if "model." + name + ".qkv.weight" in sd:
            B, C, H, W = h.shape
            nh = C // 64
            qkv = conv(gn(h, name + ".norm2"), name + ".qkv").reshape(B * nh, C // nh, 3, H * W)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
            w = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(C // nh), dim=-1)  # (N, Lq, Lk)
            a = v @ w.transpose(1, 2)  # (N, c, Lq)
            h = h + conv(a.reshape(B, C, H, W), name + ".proj")
        return h

    sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1, 1, 1, 1)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
    c_noise = (sigma.log() / 4).flatten()
    k = torch.arange(mc // 2, dtype=torch.float32)
    f = (1 / 10000) ** (k / (mc // 2))
    e = torch.cat([torch.cos(c_noise[:, None] * f), torch.sin(c_noise[:, None] * f)], dim=1)
    e = F.silu(e @ P("map_layer0.weight").T + P("map_layer0.bias")) @ P("map_layer1.weight").T + P("map_layer1.bias")
    emb = F.silu(e + labels @ P("map_label.weight").T)

    h, skips = c_in * x, []
    for lvl in range(len(mult)):
        r = res >> lvl
        h = conv(h, f"enc.{r}x{r}_conv") if lvl == 0 else block(h, f"enc.{r}x{r}_down", emb, down=True)
        skips.append(h)
        for b in range(nblocks):
            h = block(h, f"enc.{r}x{r}_block{b}", emb)
            skips.append(h)
    for lvl in reversed(range(len(mult))):
        r = res >> lvl
        if lvl == len(mult) - 1:
            h = block(block(h, f"dec.{r}x{r}_in0", emb), f"dec.{r}x{r}_in1", emb)
        else:
            h = block(h, f"dec.{r}x{r}_up", emb, up=True)
        for b in range(nblocks + 1):
            h = block(torch.cat([h, skips.pop()], dim=1), f"dec.{r}x{r}_block{b}", emb)
    Fx = conv(F.silu(gn(h, "out_norm")), "out_conv")
    return c_skip * x + c_out * Fx


def _random_demo_net(seed=0):
    torch.manual_seed(seed)
    net = EDMPrecond(**DEMO_KWARGS).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.2 if p.ndim > 1 else 0.1) + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return net


def test_forward_matches_independent_reference():
    net = _random_demo_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 16, 16, generator=g)
    sigma = torch.tensor([0.02, 1.3, 80.0])
    labels = F.one_hot(torch.tensor([0, 4, 9]), 10).float()
    with torch.no_grad():
        got = net(x, sigma, labels)
        want = ref_forward(net.state_dict(), x, sigma, labels, res=16, mult=[1, 4], nblocks=1, attn=[8])
    assert got.shape == (3, 1, 16, 16) and got.dtype == torch.float32
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    # The output is not trivially c_skip·x (F contributes).
    c_skip = 0.25 / (sigma**2 + 0.25)
    assert (got - c_skip.view(-1, 1, 1, 1) * x).abs().max() > 1e-2


def test_zero_output_layer_gives_c_skip_x_and_scalar_sigma_and_missing_labels():
    net = EDMPrecond(**DEMO_KWARGS).eval()  # out_conv is zero-initialised, so F == 0
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = net(x, 2.0)
    assert torch.allclose(d, x * 0.25 / (4.0 + 0.25), atol=1e-7)
    net = _random_demo_net()
    with torch.no_grad():
        a = net(x, torch.tensor(2.0), None)
        b = net(x, torch.full((2,), 2.0), torch.zeros(2, 10))
    assert torch.allclose(a, b, atol=1e-5)


def test_positional_embedding_closed_form():
    pe = PositionalEmbedding(8)
    c = torch.tensor([0.0, 0.5, -1.25])
    f = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    want = torch.cat([torch.cos(c[:, None] * f), torch.sin(c[:, None] * f)], 1)
    assert torch.allclose(pe(c), want, atol=1e-7)


def test_batch_independence_fast_attention_and_channels_last():
    net = _random_demo_net(3)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 16, 16, generator=g)
    s = torch.tensor([0.5, 1.0, 5.0, 80.0])
    y = F.one_hot(torch.tensor([1, 2, 3, 4]), 10).float()
    with torch.no_grad():
        full = net(x, s, y)
        single = torch.cat([net(x[i:i + 1], s[i:i + 1], y[i:i + 1]) for i in range(4)])
        set_fast_attention(net, True)
        fast = net(x.contiguous(memory_format=torch.channels_last), s, y)
        set_fast_attention(net, False)
    assert torch.allclose(full, single, atol=1e-5)
    assert torch.allclose(full, fast, atol=1e-5)


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="model_type"):
        EDMPrecond(16, 1, model_type="SongUNet")
    with pytest.raises(ValueError, match="img_resolution"):
        DhariwalUNet(img_resolution=10, in_channels=1, out_channels=1, channel_mult=[1, 2, 2])
    with pytest.raises(ValueError, match="sigma_data"):
        EDMPrecond(16, 1, sigma_data=0.0, model_channels=32, channel_mult=[1])


def test_forward_and_features_consistent():
    net = _random_demo_net(4)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    s = torch.tensor([0.7, 3.0])
    y = F.one_hot(torch.tensor([2, 5]), 10).float()
    with torch.no_grad():
        d, h = net.forward_and_features(x, s, y)
        assert torch.allclose(d, net(x, s, y), atol=1e-6)
        assert torch.allclose(h, net.features(x, s, y), atol=1e-6)
    assert h.shape[:2] == (2, net.feature_dim) and h.ndim == 4 and net.feature_dim == 64 and net.feature_spatial


def test_image_gan_head_uses_spatial_layout():
    from dmdcore.distill import GANHead

    torch.manual_seed(0)
    head = GANHead(64, spatial=True)
    h = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(1))
    flipped = h.flip(-1)  # same spatial mean, different layout
    with torch.no_grad():
        a, b = head(h), head(flipped)
    assert a.shape == (3,) and not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="spatial"):
        head(h.mean(dim=(2, 3)))


@pytest.mark.slow
def test_dmd2_gan_step_on_an_image_net_uses_the_spatial_head():
    from dmdcore.config import DistillConfig
    from dmdcore.distill import DMDTrainer

    net = _random_demo_net(4)
    g = torch.Generator().manual_seed(2)
    sampler = lambda n: (torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g))  # noqa: E731
    dmd = DMDTrainer(net, DistillConfig(gan=True, batch=2, ratio=1, steps=2), sample_shape=(1, 16, 16),
                     sigma_data=net.sigma_data, label_dim=10, data_sampler=sampler, device="cpu")
    assert dmd.gan_head.spatial
    out = dmd.step()
    assert math.isfinite(out["loss_gan_g"]) and math.isfinite(out["loss_gan_d"])
