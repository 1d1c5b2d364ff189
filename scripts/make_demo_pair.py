"""Train and save the shipped demo pair: a tiny class-conditional EDM teacher (DhariwalUNet family)
on scikit-learn's 8×8 digits upsampled to 16×16, and a one-step DMD student distilled from it with
the project's own ``dmdcore.distill.DMDTrainer``.

    nice -n 10 python scripts/make_demo_pair.py            # full recipe (CPU, ~15-25 min on 2 cores)
    python scripts/make_demo_pair.py --teacher-steps 50 --student-steps 5 --out /tmp/demo   # smoke run
    python scripts/make_demo_pair.py --free --threads 1    # the free student from the SHIPPED teacher

``--free`` (issue #11): load the shipped teacher (checkpoints/demo/digits16-teacher.pt, through the
safe loader, sha256 checked against the manifest) instead of training one, and distill a student
with the DMD loss alone (no regression pairs, GAN off), so its noise->image pairing is free. It
writes digits16-student-free.bin (+ sidecar), training-free.json (recipe, full loss curve, a ΔE
trajectory against fixed teacher samples, wall and CPU seconds) and training-free.log, and upserts
the manifest entry ``demo-digits16-student-free``; the regression student's files are untouched.

Outputs (in --out, default checkpoints/demo/):
  digits16-teacher.pt   plain state dict (torch.save) + digits16-teacher.pt.json sidecar (config)
  digits16-student.bin  DMD2-style plain state dict + digits16-student.bin.json sidecar
  training.json         the exact recipe, losses and timings
and, when --out is the default, upserts the two ``kind: "image"`` entries of checkpoints/manifest.json
(other entries are kept).

Recipe: data x ∈ [-1, 1] (pixel/16, bilinear 8→16, ·2−1), 1797 images, labels 0-9. Teacher:
EDM loss (ln σ ~ N(−1.2, 1.2²), λ(σ) weighting, σ_data 0.5), Adam, EMA 0.999 with warm-up;
student: DMD (teacher-initialised generator, 1:ratio fake-score steps, DMD regression loss on
teacher ODE pairs (z, T(z)) as in DMD, Yin et al. 2023). Seeds are fixed; one CPU thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmdcore.checkpoints import save_checkpoint  # noqa: E402
from dmdcore.config import DistillConfig  # noqa: E402
from dmdcore.distill import DMDTrainer  # noqa: E402
from dmdcore.images import DEMO_CONFIG, digits16  # noqa: E402
from dmdcore.losses import denoising_loss, edm_sigma  # noqa: E402
from dmdcore.networks import EDMPrecond  # noqa: E402
from dmdcore.samplers import edm_sampler  # noqa: E402

TEACHER_FILE = "digits16-teacher.pt"
STUDENT_FILE = "digits16-student.bin"
FREE_STUDENT_FILE = "digits16-student-free.bin"
FREE_RECORD = "training-free.json"
FREE_LOG = "training-free.log"


def train_teacher(x, y, *, steps, batch, lr, ema, seed, log):
    torch.manual_seed(seed)
    net = EDMPrecond(**DEMO_CONFIG)
    ema_net = EDMPrecond(**DEMO_CONFIG)
    ema_net.load_state_dict(net.state_dict())
    ema_net.requires_grad_(False).eval()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    params, ema_params = list(net.parameters()), list(ema_net.parameters())
    losses = []
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        # EDM Table 1: ln(sigma) ~ N(P_mean, P_std^2), weighted denoising loss
        sigma = edm_sigma(torch.randn(batch, generator=g))
        eps = torch.randn((batch, *x.shape[1:]), generator=g)
        labels = F.one_hot(y[idx], 10).float()
        loss = denoising_loss(net, x[idx], sigma, eps, DEMO_CONFIG["sigma_data"], labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # EMA with warm-up decay min(ema, (1+t)/(10+t))
        decay = min(ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log(f"teacher step {step + 1}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({time.time() - t0:.0f}s)")
    return ema_net, losses, time.time() - t0


def eval_set(teacher, n, seed, log):
    """Fixed teacher samples for the ΔE trajectory: classes i % 10, seeds seed+i, EDM sampler N=18."""
    from dmdcore.images import sample_teacher

    classes, seeds = [i % 10 for i in range(n)], [seed + i for i in range(n)]
    t0 = time.time()
    t = sample_teacher(teacher, classes, seeds)
    log(f"eval set: {n} teacher samples (N=18) in {time.time() - t0:.0f}s")
    return classes, seeds, t


def eval_delta_e(generator, ev) -> dict:
    """ΔE (and E terms) of the current generator against the fixed teacher samples ``ev``."""
    from dmdcore.images import sample_student
    from dmdcore.pairing import pairing_inefficiency

    classes, seeds, t = ev
    was_training = generator.training
    generator.eval()
    s = sample_student(generator, classes, seeds)
    generator.train(was_training)
    r = pairing_inefficiency(s.reshape(len(seeds), -1).double().numpy(), t.reshape(len(seeds), -1).double().numpy())
    return {"delta_e": float(r.delta_e), "e_pair": float(r.e_pair), "e_ot": float(r.e_ot), "e_ind": float(r.e_ind)}


def distill_student(teacher, x, cfg, *, reg_pairs, steps, log, ev=None, eval_every=0):
    """Run ``steps`` DMDTrainer steps; returns (generator, per-step log, ΔE trajectory, wall s, CPU s)."""
    trainer = DMDTrainer(teacher, cfg, sample_shape=tuple(x.shape[1:]), sigma_data=DEMO_CONFIG["sigma_data"],
                         label_dim=10, reg_pairs=reg_pairs, device="cpu")
    s_log, traj = [], []
    if ev is not None and eval_every > 0:
        traj.append({"step": 0, **eval_delta_e(trainer.generator, ev)})
        log(f"student step 0 delta_e {traj[-1]['delta_e']:.4f}")
    t2, c2 = time.time(), time.process_time()
    eval_s = 0.0
    for _ in range(steps):
        m = trainer.step()
        s_log.append(m)
        if m["step"] % 10 == 0 or m["step"] == steps:
            log(f"student step {m['step']}/{steps} " +
                " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "step") + f" ({time.time() - t2:.0f}s)")
        if ev is not None and eval_every > 0 and (m["step"] % eval_every == 0 or m["step"] == steps):
            te = time.time()
            traj.append({"step": m["step"], **eval_delta_e(trainer.generator, ev)})
            eval_s += time.time() - te
            log(f"student step {m['step']} delta_e {traj[-1]['delta_e']:.4f} (n={len(ev[1])})")
    wall, cpu = time.time() - t2, time.process_time() - c2
    return trainer.generator.eval(), s_log, traj, wall, cpu, eval_s


def load_shipped_teacher(out: Path):
    """The shipped teacher through the safe loader, its sha256 checked against the manifest."""
    from dmdcore.checkpoints import load_checkpoint, manifest_entry

    ck = load_checkpoint(out / TEACHER_FILE, device="cpu")
    want = manifest_entry("demo-digits16-teacher")["sha256"]
    if ck.sha256 != want:
        raise SystemExit(f"{TEACHER_FILE}: sha256 {ck.sha256} differs from the manifest's {want}")
    return ck.model.requires_grad_(False).eval(), ck.sha256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "checkpoints" / "demo"))
    ap.add_argument("--free", action="store_true",
                    help="load the shipped teacher from --out and distill a student with the DMD loss alone "
                         "(no regression, no GAN) into digits16-student-free.bin")
    ap.add_argument("--teacher-steps", type=int, default=1500)
    ap.add_argument("--teacher-batch", type=int, default=32)
    ap.add_argument("--teacher-lr", type=float, default=2e-3)
    ap.add_argument("--student-steps", type=int, default=150)
    ap.add_argument("--student-batch", type=int, default=32)
    ap.add_argument("--ratio", type=int, default=2)
    ap.add_argument("--lr-gen", type=float, default=2e-4)
    ap.add_argument("--lr-fake", type=float, default=5e-4)
    ap.add_argument("--reg-pairs", type=int, default=256, help="teacher ODE pairs for the regression loss (0 = none)")
    ap.add_argument("--reg-weight", type=float, default=0.005,
                    help="regression_loss sums over the 256 pixels while dmd_loss averages: 0.005 keeps both terms comparable")
    ap.add_argument("--eval-n", type=int, default=100, help="--free: teacher samples for the ΔE trajectory")
    ap.add_argument("--eval-every", type=int, default=25, help="--free: ΔE every this many steps (0 = never)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--manifest-only", action="store_true",
                    help="only (re)write the manifest entries for the files already in checkpoints/demo/")
    args = ap.parse_args(argv)
    if args.manifest_only:
        upsert_manifest(ROOT / "checkpoints" / "demo")
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.free:
        return main_free(args, out)
    log = lambda s: print(s, flush=True)  # noqa: E731

    x, y = digits16()
    log(f"data: {tuple(x.shape)}, range [{x.min():.2f}, {x.max():.2f}], std {x.std():.3f}")
    teacher, t_losses, t_time = train_teacher(x, y, steps=args.teacher_steps, batch=args.teacher_batch,
                                              lr=args.teacher_lr, ema=0.999, seed=args.seed, log=log)
    save_checkpoint(teacher, out / TEACHER_FILE, fmt="state-dict", config=DEMO_CONFIG, role="teacher",
                    meta={"dataset": "sklearn digits 8x8 -> 16x16", "steps": args.teacher_steps})

    reg_pairs = None
    if args.reg_pairs > 0:
        g = torch.Generator().manual_seed(args.seed + 100)
        z = torch.randn((args.reg_pairs, *x.shape[1:]), generator=g)
        lab = torch.arange(args.reg_pairs) % 10
        t1 = time.time()
        with torch.inference_mode():
            tz = edm_sampler(teacher, z, F.one_hot(lab, 10).float(), steps=18)
        log(f"regression pairs: {args.reg_pairs} teacher samples in {time.time() - t1:.0f}s")
        reg_pairs = (z, tz.float(), lab)
    cfg = DistillConfig(init="teacher", ratio=args.ratio, steps=args.student_steps, batch=args.student_batch,
                        lr_gen=args.lr_gen, lr_fake=args.lr_fake, regression=reg_pairs is not None,
                        reg_weight=args.reg_weight, n_reg_pairs=max(args.reg_pairs, 1),
                        reg_batch=min(args.student_batch, max(args.reg_pairs, 1)), seed=args.seed)
    student, s_log, _, s_time, _, _ = distill_student(teacher, x, cfg, reg_pairs=reg_pairs,
                                                      steps=args.student_steps, log=log)
    save_checkpoint(student, out / STUDENT_FILE, fmt="state-dict", config=DEMO_CONFIG, role="student",
                    meta={"distilled_from": TEACHER_FILE, "steps": args.student_steps})

    recipe = {"args": vars(args), "config": DEMO_CONFIG, "distill_config": cfg.to_dict(),
              "teacher_seconds": round(t_time, 1), "student_seconds": round(s_time, 1),
              "teacher_loss_last100": sum(t_losses[-100:]) / max(len(t_losses[-100:]), 1),
              "student_log_tail": s_log[-5:], "torch": torch.__version__}
    (out / "training.json").write_text(json.dumps(recipe, indent=1, default=str))

    if out.resolve() == (ROOT / "checkpoints" / "demo").resolve():
        upsert_manifest(out)
        log("manifest updated")
    for f in (TEACHER_FILE, STUDENT_FILE):
        log(f"{f}: {(out / f).stat().st_size / 1e6:.2f} MB")
    return 0


def main_free(args, out: Path) -> int:
    """--free: the shipped teacher, the DMD loss alone (no regression pairs, no GAN)."""
    logf = (out / FREE_LOG).open("w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    x, _ = digits16()
    teacher_dir = ROOT / "checkpoints" / "demo"
    teacher, teacher_sha = load_shipped_teacher(teacher_dir)
    log(f"teacher: {teacher_dir / TEACHER_FILE} sha256 {teacher_sha[:12]} (safe loader, manifest hash checked)")
    ev = eval_set(teacher, args.eval_n, 10_000, log) if args.eval_every > 0 else None
    cfg = DistillConfig(init="teacher", ratio=args.ratio, steps=args.student_steps, batch=args.student_batch,
                        lr_gen=args.lr_gen, lr_fake=args.lr_fake, regression=False, gan=False, seed=args.seed)
    student, s_log, traj, wall, cpu, eval_s = distill_student(teacher, x, cfg, reg_pairs=None,
                                                              steps=args.student_steps, log=log, ev=ev,
                                                              eval_every=args.eval_every)
    save_checkpoint(student, out / FREE_STUDENT_FILE, fmt="state-dict", config=DEMO_CONFIG, role="student",
                    meta={"distilled_from": TEACHER_FILE, "steps": args.student_steps, "regression": False,
                          "gan": False, "pairing": "free (DMD loss alone)", "training_record": FREE_RECORD})
    recipe = {"args": {k: v for k, v in vars(args).items() if k not in ("reg_pairs", "reg_weight", "teacher_steps",
                                                                          "teacher_batch", "teacher_lr")},
              "teacher": {"file": TEACHER_FILE, "sha256": teacher_sha},
              "config": DEMO_CONFIG, "distill_config": cfg.to_dict(), "regression": False, "gan": False,
              "student_seconds": round(wall, 1), "student_cpu_seconds": round(cpu, 1),
              "eval_seconds": round(eval_s, 1),
              "eval": {"n": args.eval_n, "classes": "i % 10", "seeds": "10000 + i", "teacher_sampler": "EDM Heun N=18"},
              "delta_e_trajectory": traj, "student_log": s_log, "student_log_tail": s_log[-5:],
              "torch": torch.__version__}
    (out / FREE_RECORD).write_text(json.dumps(recipe, indent=1, default=str))
    if out.resolve() == teacher_dir.resolve():
        upsert_manifest(out)
        log("manifest updated")
    log(f"{FREE_STUDENT_FILE}: {(out / FREE_STUDENT_FILE).stat().st_size / 1e6:.2f} MB; student {wall:.0f}s wall, "
        f"{cpu:.0f}s CPU (of which ΔE evaluation {eval_s:.0f}s wall)")
    logf.close()
    return 0


def upsert_manifest(out: Path) -> None:
    """Add/replace the demo entries (kind "image") in checkpoints/manifest.json, keeping others."""
    mpath = ROOT / "checkpoints" / "manifest.json"
    data = json.loads(mpath.read_text()) if mpath.exists() else {"version": 1, "entries": []}
    common = dict(kind="image", format="state-dict", url=None, dataset="digits16", config=DEMO_CONFIG,
                  source="trained by scripts/make_demo_pair.py (this repository)", license="MIT (this repository)",
                  classes="digits")
    new = []
    records = {STUDENT_FILE: "demo/training.json", FREE_STUDENT_FILE: f"demo/{FREE_RECORD}"}
    for name, role, fname, desc in [
        ("demo-digits16-teacher", "teacher", TEACHER_FILE,
         "Tiny class-conditional EDM teacher (DhariwalUNet, 16x16 grey digits, 10 classes)"),
        ("demo-digits16-student", "student", STUDENT_FILE,
         "One-step DMD student distilled from demo-digits16-teacher with the DMD regression loss "
         "(the pairing control: regression ties it to the teacher's pairs)"),
        ("demo-digits16-student-free", "student", FREE_STUDENT_FILE,
         "One-step DMD student distilled from demo-digits16-teacher with the DMD loss alone "
         "(no regression, no GAN): its pairing is free"),
    ]:
        p = out / fname
        if not p.exists():
            continue
        e = dict(common, name=name, role=role, file=f"demo/{fname}", size=p.stat().st_size,
                 sha256=hashlib.sha256(p.read_bytes()).hexdigest(), description=desc)
        if fname in records:  # students: where their recipe (regression or not) is recorded
            e["training_record"] = records[fname]
        if fname == FREE_STUDENT_FILE:
            e["source"] = "trained by scripts/make_demo_pair.py --free (this repository)"
        new.append(e)
    by_name = {e["name"]: e for e in new}  # replaced in place (a small diff); new names appended
    kept = [by_name.pop(e["name"], e) if e.get("name") in by_name else e for e in data["entries"]]
    data["entries"] = kept + list(by_name.values())
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(mpath)


if __name__ == "__main__":
    raise SystemExit(main())
