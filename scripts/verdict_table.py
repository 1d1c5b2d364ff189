#!/usr/bin/env python3
"""Measure the finite-n table of docs/metrics.md ("What ΔE can and cannot tell").

    python3 scripts/verdict_table.py                 # d ∈ {2, 8, 64} × n ∈ {256, 1024, 4096}

Two references with known population ΔE, measured with dmdcore.pairing.pairing_inefficiency:
* noisy copy: t ~ N(0, I_d), s = t + 0.5 ξ (population ΔE 0.106 in every d);
* within-mode remap: t from 8 modes (means at radius 2, per-coordinate std 0.1·√(64/d)·… so the
  within-mode share of the variance is the same in every d), s a new draw from t's own mode
  (population ΔE = within-mode variance / total variance).
Prints a markdown table (population → measured) and the resolution of dmdcore.verdict at each
(n, d) for the noisy-copy teacher.  Seeds fixed: the numbers are reproducible.
"""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from dmdcore.pairing import pairing_inefficiency  # noqa: E402
from dmdcore.verdict import copy_controls  # noqa: E402
from dmdcore.verdict_text import resolution_text  # noqa: E402

DIMS = (2, 8, 64)
NS = (256, 1024, 4096)
WITHIN_SHARE = 0.155  # within-mode variance / total variance of the within-mode reference


def noisy(n: int, d: int, rng) -> tuple[np.ndarray, np.ndarray]:
    t = rng.standard_normal((n, d))
    return t + 0.5 * rng.standard_normal((n, d)), t


def within_mode(n: int, d: int, rng) -> tuple[np.ndarray, np.ndarray, float]:
    c = rng.standard_normal((8, d))
    c *= 2.0 / np.linalg.norm(c, axis=1, keepdims=True)
    # per-coordinate std so that d·s² / (d·s² + 4) = WITHIN_SHARE (means at radius 2 → between-mode variance ≈ 4)
    s = np.sqrt(WITHIN_SHARE * 4.0 / ((1 - WITHIN_SHARE) * d))
    lab = rng.integers(0, 8, n)
    t = c[lab] + s * rng.standard_normal((n, d))
    x = c[lab] + s * rng.standard_normal((n, d))
    between = float(np.mean(np.sum((c[lab] - c[lab].mean(0)) ** 2, 1)))
    return x, t, d * s * s / (d * s * s + between)


def main() -> int:
    pop_noisy = (0.25 - (np.sqrt(1.25) - 1) ** 2) / (2.25 - (np.sqrt(1.25) - 1) ** 2)
    print(f"load {os.getloadavg()[0]:.2f}")
    print("| case | n | " + " | ".join(f"d={d}" for d in DIMS) + " |")
    print("|---|---|" + "---|" * len(DIMS))
    for case in ("noisy copy", "within-mode remap"):
        for n in NS:
            cells = []
            for d in DIMS:
                rng = np.random.default_rng(1000 * d + n)
                if case == "noisy copy":
                    s, t = noisy(n, d, rng)
                    pop = pop_noisy
                else:
                    s, t, pop = within_mode(n, d, rng)
                de = pairing_inefficiency(s, t, max_exact=4096).delta_e
                cells.append(f"{de:.3f} (pop. {pop:.3f})")
            print(f"| {case} | {n} | " + " | ".join(cells) + " |", flush=True)
    print("\nresolution (noisy-copy ladder of dmdcore.verdict on t ~ N(0, I_d)):")
    print("| n | " + " | ".join(f"d={d}" for d in DIMS) + " |")
    print("|---|" + "---|" * len(DIMS))
    for n in NS[:2]:
        res = [resolution_text(copy_controls(np.random.default_rng(d).standard_normal((n, d))).resolution) for d in DIMS]
        print(f"| {n} | " + " | ".join(res) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
