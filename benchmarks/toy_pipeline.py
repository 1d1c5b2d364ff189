"""Toy pipeline benchmark: wall time of the reference workload, optimised trainers vs a plain eager loop.

Workload (issue 2): 2-D 8 gaussians, MLP 3x256, EDM teacher 3000 steps at batch 512, then DMD 1000
generator steps at batch 256 with ratio 5, evaluating the student every 100 steps on 1000 fixed
noises. Both implementations run in this process on the same data, seeds and thread count:

- baseline: a plain eager PyTorch loop of the same algorithm (default Adam/AdamW, EMA by a Python
  loop over parameters, one generator forward per fake-score step, ``.item()`` per loss);
- dmdcore: ``TeacherTrainer`` / ``DMDTrainer`` (fused Adam(W), ``_foreach_lerp_`` EMA, the ratio
  fake-score batches from one batched generator forward, random numbers drawn once per step).

Quality: W2^2 (exact OT, dmdcore.pairing) between the 1000 student samples and 1000 held-out data
points, for both. The last line is machine readable:
``RESULT teacher_s=<float> distill_s=<float> total_s=<float> w2_data=<float>`` (dmdcore figures).

Student methods (``--methods``): one line per method of dmdcore.students, steps/s of the
dmdcore trainer against a plain eager loop of the same method (benchmarks/methods_baselines.py),
in this process, on a teacher trained for the occasion (``--method-steps`` generator steps each).

Usage: python benchmarks/toy_pipeline.py [--threads 2] [--scale 1.0] [--skip-baseline] [--methods]
(--scale multiplies the step counts, for quick checks; the reference figures use 1.0.)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmdcore.config import DataConfig, DistillConfig, TeacherConfig  # noqa: E402
from dmdcore.data import make_dataset  # noqa: E402
from dmdcore.device import tune_allocator  # noqa: E402
from dmdcore.distill import DMDTrainer, TeacherTrainer  # noqa: E402
from dmdcore.losses import denoising_loss, dmd_loss, edm_sigma  # noqa: E402
from dmdcore.pairing import wasserstein2_squared  # noqa: E402
from dmdcore.samplers import karras_sigmas  # noqa: E402
from dmdcore.toy import build_denoiser  # noqa: E402


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def baseline_teacher(cfg: TeacherConfig, data: torch.Tensor, sigma_data: float):
    """Plain eager EDM training loop (same model, loss, seeds)."""
    torch.manual_seed(cfg.seed)
    net = build_denoiser(2, cfg.width, cfg.depth, cfg.emb_dim, 0, sigma_data)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    for t in range(cfg.steps):
        idx = torch.randint(0, data.shape[0], (cfg.batch,), generator=g)
        x = data[idx]
        sigma = edm_sigma(torch.randn(cfg.batch, generator=g), cfg.P_mean, cfg.P_std)
        eps = torch.randn(x.shape, generator=g)
        loss = denoising_loss(net, x, sigma, eps, sigma_data)
        opt.zero_grad()
        loss.backward()
        if not torch.isfinite(loss).item():
            raise RuntimeError("baseline teacher diverged")
        opt.step()
        decay = min(cfg.ema, (1 + t) / (10 + t))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(decay).add_(p, alpha=1 - decay)
    return ema.eval()


def baseline_dmd(real, cfg: DistillConfig, sigma_data: float, z_eval: torch.Tensor, every: int):
    """Plain eager DMD loop: per generator step, ratio fake-score steps (each with its own generator
    forward), then the distribution-matching generator step."""
    gen = copy.deepcopy(real).requires_grad_(True).train()
    fake = copy.deepcopy(real).requires_grad_(True).train()
    opt_g = torch.optim.AdamW(gen.parameters(), lr=cfg.lr_gen, betas=cfg.betas, weight_decay=cfg.weight_decay)
    opt_f = torch.optim.AdamW(fake.parameters(), lr=cfg.lr_fake, betas=cfg.betas, weight_decay=cfg.weight_decay)
    karras = karras_sigmas(1000, 0.002, 80.0, 7.0, dtype=torch.float32).flip(0)
    g = torch.Generator().manual_seed(cfg.seed)
    b = cfg.batch
    evals = []
    for step in range(cfg.steps):
        for _ in range(cfg.ratio):
            with torch.no_grad():
                z = torch.randn(b, 2, generator=g)
                x = gen(80.0 * z, torch.full((b,), 80.0))
            sigma = karras[torch.randint(0, 1000, (b,), generator=g)]
            loss_f = denoising_loss(fake, x, sigma, torch.randn(x.shape, generator=g), sigma_data)
            opt_f.zero_grad()
            loss_f.backward()
            torch.nn.utils.clip_grad_norm_(fake.parameters(), cfg.grad_clip)
            if not torch.isfinite(loss_f).item():
                raise RuntimeError("baseline fake score diverged")
            opt_f.step()
        z = torch.randn(b, 2, generator=g)
        x = gen(80.0 * z, torch.full((b,), 80.0))
        sigma = karras[torch.randint(20, 980, (b,), generator=g)]
        with torch.no_grad():
            x_noisy = x.detach() + sigma[:, None] * torch.randn(x.shape, generator=g)
            d_real = real(x_noisy, sigma)
            d_fake = fake(x_noisy, sigma)
        loss = dmd_loss(x, d_real, d_fake)
        opt_g.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
        if not torch.isfinite(loss).item():
            raise RuntimeError("baseline generator diverged")
        opt_g.step()
        if (step + 1) % every == 0:
            with torch.no_grad():
                evals.append(gen(80.0 * z_eval, torch.full((z_eval.shape[0],), 80.0)))
    with torch.no_grad():
        return gen(80.0 * z_eval, torch.full((z_eval.shape[0],), 80.0)), evals


def run_dmdcore(t_cfg, d_cfg, data, z_eval, every):
    t0 = time.perf_counter()
    tr = TeacherTrainer(t_cfg, data, device="cpu")
    for _ in range(t_cfg.steps):
        tr.step()
    teacher = tr.teacher()
    t1 = time.perf_counter()
    dmd = DMDTrainer(teacher.denoiser, d_cfg, sample_shape=(2,), sigma_data=tr.sigma_data, device="cpu")
    evals = []
    for step in range(d_cfg.steps):
        dmd.step()
        if (step + 1) % every == 0:
            evals.append(dmd.student(z_eval))
    x = dmd.student(z_eval)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, x, teacher


def bench_methods(steps: int, threads: int) -> list[str]:
    """One line per student method: steps/s of dmdcore's trainer vs the plain loop (same process)."""
    from benchmarks.methods_baselines import PlainLoop
    from dmdcore.config import STUDENT_METHODS, ExperimentConfig
    from dmdcore.data import make_sampler
    from dmdcore.students import make_student, needs_data

    data = make_dataset(DataConfig(n_samples=20000)).x
    t_cfg = TeacherConfig(width=256, depth=3, steps=100, batch=512)  # speed only: a short teacher
    lines = []
    with torch_threads(threads):
        tt = TeacherTrainer(t_cfg, data)
        for _ in range(t_cfg.steps):
            tt.step()
        real = tt.teacher().denoiser
        for method in STUDENT_METHODS:
            cfg = ExperimentConfig(distill=DistillConfig(method=method, batch=256, ratio=5))
            tr = make_student(real, cfg, sample_shape=(2,), sigma_data=tt.sigma_data, device="cpu",
                              data_sampler=make_sampler(data, seed=3) if needs_data(method) else None)
            plain = PlainLoop(method, real, data, batch=256, ratio=5, sigma_data=tt.sigma_data)
            rates = []
            for runner in (plain, tr):
                runner.step()  # warm-up
                t0 = time.perf_counter()
                for _ in range(steps):
                    runner.step()
                rates.append(steps / (time.perf_counter() - t0))
            lines.append(f"method {method:13s}: dmdcore {rates[1]:7.2f} steps/s, plain loop {rates[0]:7.2f} steps/s, "
                         f"ratio x{rates[1] / rates[0]:.2f} ({steps} generator steps, batch 256, ratio 5)")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads for both runs")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply step counts (quick checks)")
    ap.add_argument("--skip-baseline", action="store_true", help="time only the dmdcore trainers")
    ap.add_argument("--methods", action="store_true", help="only the per-method lines (student methods vs plain loops)")
    ap.add_argument("--method-steps", type=int, default=20, help="timed generator steps per method (default 20)")
    args = ap.parse_args(argv)
    if args.methods:
        for line in bench_methods(args.method_steps, args.threads):
            print(line, flush=True)
        return
    # The trainers tune glibc's allocator on construction (dmdcore.device.tune_allocator); do it
    # before the baseline too, so the comparison measures the training code, not the allocator.
    allocator = tune_allocator()

    t_cfg = TeacherConfig(width=256, depth=3, steps=max(1, int(3000 * args.scale)), batch=512, seed=0)
    d_cfg = DistillConfig(steps=max(1, int(1000 * args.scale)), batch=256, ratio=5, seed=0)
    every = 100
    dataset = make_dataset(DataConfig(dataset="8gaussians", n_samples=20000, seed=0))
    heldout = make_dataset(DataConfig(dataset="8gaussians", n_samples=1000, seed=1)).x
    z_eval = torch.randn(1000, 2, generator=torch.Generator().manual_seed(1234))

    print(f"workload: 8gaussians, MLP {t_cfg.depth}x{t_cfg.width}, teacher {t_cfg.steps} steps @ {t_cfg.batch}, "
          f"DMD {d_cfg.steps} steps @ {d_cfg.batch} ratio {d_cfg.ratio}, eval every {every} on 1000 noises; "
          f"threads={args.threads}, torch {torch.__version__}, allocator tuning {'on' if allocator else 'off'}, "
          f"load avg {os.getloadavg()[0]:.1f}")
    with torch_threads(args.threads):
        base = None
        if not args.skip_baseline:
            sigma_data = float(dataset.x.double().std())
            t0 = time.perf_counter()
            real = baseline_teacher(t_cfg, dataset.x, sigma_data)
            t1 = time.perf_counter()
            x_base, _ = baseline_dmd(real, d_cfg, sigma_data, z_eval, every)
            t2 = time.perf_counter()
            w2_base = wasserstein2_squared(x_base, heldout)
            base = (t1 - t0, t2 - t1, w2_base)
            print(f"baseline (plain eager): teacher {base[0]:.2f} s, distill {base[1]:.2f} s, total {base[0] + base[1]:.2f} s, "
                  f"W2^2(student, data) {w2_base:.4f}")
        teacher_s, distill_s, x, teacher = run_dmdcore(t_cfg, d_cfg, dataset.x, z_eval, every)
        w2 = wasserstein2_squared(x, heldout)
        w2_teacher = wasserstein2_squared(teacher.sample(z_eval), heldout)
        w2_ref = wasserstein2_squared(make_dataset(DataConfig(dataset="8gaussians", n_samples=1000, seed=2)).x, heldout)
    total = teacher_s + distill_s
    print(f"dmdcore:                teacher {teacher_s:.2f} s, distill {distill_s:.2f} s, total {total:.2f} s, "
          f"W2^2(student, data) {w2:.4f}")
    print(f"reference: W2^2(teacher T(z), data) {w2_teacher:.4f}; W2^2 between two independent 1000-point data samples {w2_ref:.4f}")
    if base is not None:
        print(f"speed-up vs baseline: teacher x{base[0] / teacher_s:.2f}, distill x{base[1] / distill_s:.2f}, "
              f"total x{(base[0] + base[1]) / total:.2f}; quality ratio W2^2 dmdcore/baseline {w2 / base[2]:.3f}")
    print(f"RESULT teacher_s={teacher_s:.3f} distill_s={distill_s:.3f} total_s={total:.3f} w2_data={w2:.5f}")


if __name__ == "__main__":
    main()
