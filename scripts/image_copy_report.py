"""The copy report of the shipped digits16 students (regression control and free student) against
the shipped teacher, computed the way the Image page computes it, for docs/images.md.

    python scripts/image_copy_report.py --threads 1                  # page defaults + n = 250
    python scripts/image_copy_report.py --per-class 2 --json out.json

Page defaults: all 10 classes, 2 images per class (seeds 0, 1), teacher EDM Heun N = 18,
bootstrap 200 (seed 0), i.e. n = 20 pairs of d = 256 pixels. ``--per-class`` adds larger n
(same classes, seeds 0..k-1). Besides the pooled copy report it gives the within-class ΔE (mean
over classes of ΔE computed on each class's pairs), since the pooled E_ind mixes digits of
different classes. Models are loaded through the safe loader, their sha256 checked against the
manifest. Same seeds → same numbers on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dmdcore.checkpoints import entry_path, load_checkpoint, manifest_entry, student_training  # noqa: E402
from dmdcore.config import SamplerConfig  # noqa: E402
from dmdcore.images import pair_metrics, sample_student, sample_teacher  # noqa: E402
from dmdcore.pairing import pairing_inefficiency  # noqa: E402
from dmdcore.verdict_text import resolution_text  # noqa: E402

STUDENTS = ("demo-digits16-student", "demo-digits16-student-free")


def _load(name):
    e = manifest_entry(name)
    ck = load_checkpoint(entry_path(e), device="cpu")
    if ck.sha256 != e["sha256"]:
        raise SystemExit(f"{name}: sha256 {ck.sha256} differs from the manifest's {e['sha256']}")
    return ck


def report(per_class: int, *, steps: int = 18, bootstrap: int = 200, teacher=None, students=None) -> dict:
    classes = [c for c in range(10) for _ in range(per_class)]
    seeds = [k for _ in range(10) for k in range(per_class)]
    t0 = time.time()
    t = sample_teacher(teacher.model, classes, seeds, sampler=SamplerConfig(steps=steps))
    out = {"per_class": per_class, "n": len(seeds), "teacher_steps": steps, "bootstrap": bootstrap,
           "teacher_seconds": round(time.time() - t0, 1), "students": {}}
    for name, ck in students.items():
        s = sample_student(ck.model, classes, seeds)
        m = pair_metrics(t, s, bootstrap=bootstrap, seed=0)
        r = m.report
        lab = torch.tensor(classes)
        within = []
        if per_class >= 2:
            for c in range(10):
                idx = (lab == c).nonzero().flatten()
                within.append(float(pairing_inefficiency(s[idx].reshape(len(idx), -1).double().numpy(),
                                                         t[idx].reshape(len(idx), -1).double().numpy()).delta_e))
        tr = student_training(ck.sha256)
        out["students"][name] = {
            "regression": tr["regression"] if tr else None, "sha256": ck.sha256,
            "delta_e": r.delta_e, "ci": [r.ci_low, r.ci_high], "n": r.n, "d": r.d,
            "resolution": r.resolution, "resolution_text": resolution_text(r.resolution),
            "verdict": r.verdict, "basis": r.basis, "valid": r.valid,
            "references": {k: v for k, v in r.references.items()},
            "e_pair": r.e_pair, "e_ot": r.e_ot, "e_ind": r.e_ind,
            "retrieval": m.retrieval, "mean_l2": float(m.l2.mean()),
            "within_class_delta_e_mean": (sum(within) / len(within)) if within else None,
            "within_class_delta_e": within,
        }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, nargs="+", default=[2, 25])
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher = _load("demo-digits16-teacher")
    students = {n: _load(n) for n in STUDENTS}
    res = [report(k, bootstrap=args.bootstrap, teacher=teacher, students=students) for k in args.per_class]
    for r in res:
        print(f"n = {r['n']} ({r['per_class']} per class, teacher N={r['teacher_steps']}, "
              f"bootstrap {r['bootstrap']}; teacher sampling {r['teacher_seconds']}s)")
        for name, s in r["students"].items():
            refs = ", ".join(f"{k} {v:.3f}" for k, v in s["references"].items() if isinstance(v, (int, float)))
            wc = s["within_class_delta_e_mean"]
            print(f"  {name} (regression {s['regression']}): ΔE {s['delta_e']:.3f} "
                  f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}], d {s['d']}, resolution {s['resolution_text']}, "
                  f"verdict {s['verdict']} ({s['basis']}); refs: {refs}; retrieval {s['retrieval']:.1%}, "
                  f"mean L2 {s['mean_l2']:.3f}, within-class ΔE " + ("—" if wc is None else f"{wc:.3f}"))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
