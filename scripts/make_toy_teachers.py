#!/usr/bin/env python3
"""Train the shipped toy teachers and list them in checkpoints/manifest.json.

    nice -n 10 python3 scripts/make_toy_teachers.py            # all of TEACHERS (CPU, ~minutes each)
    python3 scripts/make_toy_teachers.py --only moons --steps 200 --out-dir /tmp/ck   # a quick try

Each teacher is an ordinary teacher run (``dmdcore.pipeline.Experiment`` with phases ("teacher",))
written to ``--work`` (default: ``runs/toy-teachers``, git-ignored);
its ``teacher.pt`` is copied to ``<out-dir>/toy/<name>.pt`` and a manifest entry (size, sha256,
the full ExperimentConfig, final evaluation metrics) replaces any earlier entry of that name.
Entries of other kinds (image checkpoints) are kept as they are.

Settings (recorded here and in every manifest entry's "config"): MLP width 128 (192 for
mixture-d128), depth 3, Fourier embedding 32 (≈ 40–130 k parameters, 0.16–0.53 MB), EDM loss with
P_mean −1.2, P_std 1.2, Adam lr 1e-3, batch 512, EMA 0.999, 4000 steps (24000 for mixture-d128), seed 0; data seed 0, 20000 points; T(z) is the
EDM Heun sampler with 18 levels. Everything on CPU with one torch thread, so the files are
reproducible bit for bit on the same torch build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dmdcore.config import DataConfig, EvalConfig, ExperimentConfig, TeacherConfig  # noqa: E402
from dmdcore.runs import atomic_write_json  # noqa: E402

TEACHER = dict(width=128, depth=3, emb_dim=32, steps=4000, batch=512, lr=1e-3, ema=0.999, seed=0)
# The independent-teacher control ("twin", docs/metrics.md): same data, same settings, this
# teacher seed; shipped as <name>-twin (role "twin", "twin_of": <name>).
TWIN_SEED = 1
EVAL = dict(every=1000, n=1000, bootstrap=0, seed=1234)

# name -> (data config, description, teacher overrides)
# mixture-d128 is wider (192) and trains 6x longer: at width 128 / 4000 steps its samples were ~2x
# too spread around the mode means (median distance 2.23 vs 1.13 for data; 2.07 after 16000 steps;
# width 192: 1.74 after 12000, 1.58 after 24000 steps, W2 to data 3.24 vs 2.26 between two data draws).
TEACHERS = {
    "8gaussians": (dict(dataset="8gaussians", dim=2), "8 Gaussians on a circle of radius 2 (std 0.1), 2-D", {}),
    "moons": (dict(dataset="moons", dim=2), "two interleaved half-moons, 2-D", {}),
    "mixture-d8": (dict(dataset="mixture", dim=8, n_modes=8), "8-mode Gaussian mixture in R^8 (means at radius 2, std 0.1)", {}),
    "mixture-d32": (dict(dataset="mixture", dim=32, n_modes=8), "8-mode Gaussian mixture in R^32 (means at radius 2, std 0.1)", {}),
    "mixture-d128": (dict(dataset="mixture", dim=128, n_modes=8), ("8-mode Gaussian mixture in R^128 (means at radius 2, std 0.1); not fully converged: "
                      "median distance of T(z) (18-step Heun) to the nearest mode mean is 1.58 vs 1.13 for data"),
                     {"steps": 24000, "width": 192}),
}
MAX_BYTES = 1_000_000


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def train_one(name: str, data: dict, steps: int | None, work: Path, out_dir: Path, twin: bool = False) -> dict:
    import torch

    from dmdcore.pipeline import Experiment

    tc = {**TEACHER, **TEACHERS[name][2]}
    if steps is not None:
        tc["steps"] = steps
    base = name
    if twin:
        tc["seed"] = TWIN_SEED
        name = f"{name}-twin"
    cfg = ExperimentConfig(
        data=DataConfig(**data),
        teacher=TeacherConfig(**tc),
        eval=EvalConfig(**{**EVAL, "every": min(EVAL["every"], tc["steps"])}),
        name=f"shipped {'twin of ' + base if twin else 'teacher ' + name}",
    )
    run_dir = work / name
    t0 = time.perf_counter()
    exp = Experiment(cfg, run_dir=run_dir, device="cpu", phases=("teacher",), overwrite=True)
    last = exp.run()
    if exp.status != "finished":
        raise RuntimeError(f"{name}: teacher run ended {exp.status}: {exp.message}")
    wall = time.perf_counter() - t0
    dest = out_dir / "toy" / f"{name}.pt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "teacher.pt", dest)
    size = dest.stat().st_size
    if size >= MAX_BYTES:
        raise RuntimeError(f"{name}: {size} bytes is not under {MAX_BYTES}")
    saved = torch.load(dest, weights_only=True)
    entry = {
        "name": name,
        "role": "twin" if twin else "teacher",
        "kind": "toy",
        "format": saved["format"],
        "file": f"toy/{name}.pt",
        "url": None,
        "size": size,
        "sha256": sha256(dest),
        "source": "trained by scripts/make_toy_teachers.py (this repository)",
        "license": "same as this repository",
        "description": (f"independent twin of {base} (teacher seed {TWIN_SEED}, same data): the control for ΔE"
                        if twin else data_description(name)),
        "dataset": data["dataset"],
        "dim": int(saved["dim"]),
        "n_params": int(sum(v.numel() for v in saved["state_dict"].values())),
        "sigma_data": float(saved["sigma_data"]),
        "teacher_step": int(saved["step"]),
        "config": cfg.to_dict(),
        "teacher_config": saved["config"],
        "metrics": {k: last.get(k) for k in ("loss", "w2_data", "eta_teacher")},
        "train_wall_s": round(wall, 1),
        "torch": torch.__version__,
    }
    if twin:
        entry["twin_of"] = base
    return entry


def data_description(name: str) -> str:
    return TEACHERS[name][1]


def update_manifest(path: Path, new_entries: list[dict]) -> None:
    manifest = {"version": 1, "entries": []}
    if path.exists():
        manifest = json.loads(path.read_text())
    new = {e["name"]: e for e in new_entries}
    entries = [new.pop(e.get("name"), e) for e in manifest.get("entries", [])]  # replaced in place
    manifest["entries"] = entries + list(new.values())
    atomic_write_json(path, manifest)


def measure_twins(out_dir: Path, only: list[str] | None) -> int:
    """ΔE(T', T) of each shipped teacher against its twin on the standard evaluation noise
    (dmdcore.verdict.twin_control), stored in the teacher's entry as "twin"."""
    from dmdcore.verdict import twin_control

    manifest = json.loads((out_dir / "manifest.json").read_text())
    twins = {e["twin_of"]: e for e in manifest["entries"] if e.get("role") == "twin"}
    for e in manifest["entries"]:
        if e.get("role") != "teacher" or e.get("kind") != "toy" or (only and e["name"] not in only):
            continue
        tw = twins.get(e["name"])
        if tw is None:
            continue
        e["twin"] = twin_control(out_dir / e["file"], out_dir / tw["file"], name=tw["name"])
        print(f"{e['name']}: {e['twin']}", flush=True)
    atomic_write_json(out_dir / "manifest.json", manifest)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", choices=sorted(TEACHERS), help="train only these (default: all)")
    ap.add_argument("--steps", type=int, default=None, help=f"override the teacher steps (default {TEACHER['steps']})")
    ap.add_argument("--out-dir", default=str(REPO / "checkpoints"), help="checkpoints folder (default: the repository's)")
    ap.add_argument("--twins", action="store_true", help=f"train the twins (teacher seed {TWIN_SEED}) instead of the teachers")
    ap.add_argument("--measure-twins", action="store_true",
                    help="only measure ΔE(T', T) of every shipped teacher/twin pair and store it in the teacher's entry")
    ap.add_argument("--work", default=str(REPO / "runs" / "toy-teachers"), help="where the teacher runs go (default: runs/toy-teachers, git-ignored)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # a script process: one thread, reproducible and polite on shared CPUs
    out_dir = Path(args.out_dir)
    work = Path(args.work)
    if args.measure_twins:
        return measure_twins(out_dir, args.only)
    for name in args.only or list(TEACHERS):
        data = TEACHERS[name][0]
        entry = train_one(name, data, args.steps, work, out_dir, twin=args.twins)
        update_manifest(out_dir / "manifest.json", [entry])  # after each teacher: partial progress is kept
        print(f"{name}: {entry['size']} bytes, {entry['n_params']} params, w2_data={entry['metrics']['w2_data']:.4g}, "
              f"{entry['train_wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
