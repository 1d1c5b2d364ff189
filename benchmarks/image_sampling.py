"""Image sampling throughput of the ImageNet-64 EDMPrecond(DhariwalUNet) (~296 M parameters,
random weights) at batch 8: a one-step student call (σ = 80) and one teacher network evaluation
(NFE, σ = 2.5 on a float64 Heun state, as edm_sampler feeds it), for

  plain: eager float32, explicit softmax attention, depthwise-conv resampling, NCHW, no_grad
  fast : the project's path (dmdcore.images.optimize_for_inference + torch.inference_mode):
         fused scaled_dot_product_attention, pooling/nearest resampling, channels-last when asked

measured in the same process on the same weights and inputs; prints the ratio and the largest
output difference (target: ratio >= 1.3 with outputs equal within 1e-4), and one line per path:

  RESULT path=<plain|fast> student_img_s=<float> teacher_nfe_img_s=<float>

    python benchmarks/image_sampling.py [--reps 3] [--batch 8] [--device auto] [--channels-last auto|on|off]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmdcore.device import pick_device  # noqa: E402
from dmdcore.images import image_noise, one_hot, optimize_for_inference  # noqa: E402
from dmdcore.networks import DEMO_KWARGS, IMAGENET64_KWARGS, EDMPrecond, count_parameters, set_fast_attention  # noqa: E402


def _run(ctx, net, x, sigma, labels):
    with ctx():
        return net(x, sigma, labels)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--config", choices=("imagenet64", "demo"), default="imagenet64",
                    help="demo = the tiny 16x16 demo architecture (smoke run only)")
    args = ap.parse_args(argv)
    dev = pick_device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    torch.manual_seed(0)
    kw = IMAGENET64_KWARGS if args.config == "imagenet64" else DEMO_KWARGS
    C, R, K = kw["img_channels"], kw["img_resolution"], kw["label_dim"]
    net = EDMPrecond(**kw).eval().requires_grad_(False)
    with torch.no_grad():  # random weights everywhere (EDM zero-initialises some layers)
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    net.to(dev)
    B = args.batch
    seeds = list(range(B))
    z = image_noise(seeds, (C, R, R), dev)
    labels = one_hot([(7 * s) % K for s in seeds], K, dev)
    s80 = torch.full((B,), 80.0, device=dev)
    x_t = (z.double() * 2.5)  # a Heun state at sigma 2.5, float64 as in edm_sampler
    s_t = torch.full((B,), 2.5, dtype=torch.float64, device=dev)
    print(f"device={dev} params={count_parameters(net) / 1e6:.1f}M batch={B} reps={args.reps} "
          f"threads={torch.get_num_threads()}", flush=True)

    # ---- the two paths on the same weights (the fast one is a converted copy), timed interleaved
    # (plain, fast, plain, fast, ...) so that machine-load drift hits both alike.
    import copy

    set_fast_attention(net, False)
    fast = copy.deepcopy(net)
    cl = {"on": True, "off": False, "auto": None}[args.channels_last]
    optimize_for_inference(fast, channels_last=cl)
    use_cl = bool(cl) or (cl is None and dev.type == "cuda")
    zf = z.contiguous(memory_format=torch.channels_last) if use_cl else z
    xf = x_t.contiguous(memory_format=torch.channels_last) if use_cl else x_t

    calls = {
        ("plain", "student"): lambda: _run(torch.no_grad, net, z * 80.0, s80, labels),
        ("fast", "student"): lambda: _run(torch.inference_mode, fast, zf * 80.0, s80, labels),
        ("plain", "teacher"): lambda: _run(torch.no_grad, net, x_t, s_t, labels),
        ("fast", "teacher"): lambda: _run(torch.inference_mode, fast, xf, s_t, labels),
    }
    outs = {k: fn() for k, fn in calls.items()}  # warm-up + outputs for the equality check
    sync()
    times = {k: [] for k in calls}
    for _ in range(args.reps):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    t_plain_s, t_fast_s = med[("plain", "student")], med[("fast", "student")]
    t_plain_t, t_fast_t = med[("plain", "teacher")], med[("fast", "teacher")]
    diff = max(float((outs[("fast", r)] - outs[("plain", r)]).abs().max()) for r in ("student", "teacher"))
    print(f"plain: student {t_plain_s:.3f} s/batch, teacher NFE {t_plain_t:.3f} s/batch", flush=True)
    print(f"fast (sdpa + pooling resample{', channels-last' if use_cl else ''}, inference_mode): "
          f"student {t_fast_s:.3f} s/batch, teacher NFE {t_fast_t:.3f} s/batch", flush=True)
    print(f"speed-up student x{t_plain_s / t_fast_s:.2f}, teacher NFE x{t_plain_t / t_fast_t:.2f}; "
          f"max |fast - plain| = {diff:.2e} ({'OK' if diff <= 1e-4 else 'EXCEEDS'} 1e-4)")
    print(f"RESULT path=plain student_img_s={B / t_plain_s:.4f} teacher_nfe_img_s={B / t_plain_t:.4f}")
    print(f"RESULT path=fast student_img_s={B / t_fast_s:.4f} teacher_nfe_img_s={B / t_fast_t:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
