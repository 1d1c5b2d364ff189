"""Measure the Toy Lab starter ("Start here") run: CPU seconds, the student step at which the
plateau criterion (dmdcore.convergence) fired, and ΔE / W₂²(S,T) / floor at the end.

    python scripts/measure_starter.py                 # the shipped START_HERE_VALUES
    python scripts/measure_starter.py lr=3e-4 batch=512 s_steps=1500   # overrides

CPU time is process CPU (user + system, all threads), not wall time: the figures stay
comparable on a machine that another job keeps busy. Writes the run under a temp directory.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui import toylab, urlstate  # noqa: E402


def main(argv: list[str]) -> None:
    import torch

    from dmdcore.pipeline import Experiment, load_teacher

    torch.set_num_threads(int(__import__("os").environ.get("THREADS", "1")))
    values = {**urlstate.defaults(), **toylab.START_HERE_VALUES}
    for arg in argv:
        k, v = arg.split("=", 1)
        values[k] = urlstate.check(k, v)
    teacher = load_teacher(f"manifest:{values['shipped_name']}")
    cfg = toylab.build_config(values, teacher=teacher)
    print("config:", {k: values[k] for k in ("s_steps", "batch", "lr", "lr_fake", "ratio", "eval_n",
                                             "eval_every", "init")},
          "stop:", cfg.eval.stop_when_converged, "window:", cfg.eval.plateau_window)
    with tempfile.TemporaryDirectory() as tmp:
        t0, w0 = time.process_time(), time.perf_counter()
        exp = Experiment(cfg, run_dir=Path(tmp) / "run", teacher=teacher)
        exp.set_phases(("student",))
        exp.run()
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        rows = [r for r in exp.metrics if r.get("phase") == "student"]
        for r in rows:
            print(f"  step {r['step']:>5}  ΔE {r.get('delta_e')!s:>22}  W2(S,T) {r.get('w2')!s:>22}  "
                  f"floor {r.get('w2_floor')!s:>22}  copy {r.get('copy_rate')}  conv {r.get('converged')}")
        from dmdcore.convergence import first_converged_step

        last = rows[-1]
        print(f"RESULT cpu_s={cpu:.1f} wall_s={wall:.1f} converged_at={first_converged_step(rows)} "
              f"last_step={last['step']} delta_e={last.get('delta_e')} w2={last.get('w2')} "
              f"w2_floor={last.get('w2_floor')} copy_rate={last.get('copy_rate')} stop={exp.stop_reasons}")


if __name__ == "__main__":
    main(sys.argv[1:])
