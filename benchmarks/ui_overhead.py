"""UI overhead of the Toy Lab, measured end to end.

1. first_render_s: Debian's chromium opens the Toy Lab with a shipped teacher selected; time
   from navigation start to the first *complete* render (the pairing figure drawn, the script
   idle). Measured (a) on a freshly started `streamlit run app.py` (printed; includes the
   server's own first imports) and (b) in a new session of the running server with a
   configuration not rendered before (reported). Target ≤ 3 s.
2. ui_ratio: training throughput (student steps/s) of the same distillation job
   (a) headless: `TrainingJob` over `Experiment` in this process, nobody polling (baseline);
   (b) from the browser: the same configuration started with the page's Distill button, the page
       polling `snapshot()` at 2 Hz in its live status fragment and redrawing every figure at
       each evaluation, chromium rendering it.
   Both throughputs are read the same way, from the run's timing.csv: student steps between
   the first and last evaluation divided by the difference of its `wall_s` column (seconds
   spent inside `Experiment.step`, which includes any time the step waits for the GIL or a
   CPU while the UI works). Target ≥ 0.8.

Usage: python3 benchmarks/ui_overhead.py [--steps 300] [--teacher 8gaussians]
Last line: RESULT ui_ratio=<float> first_render_s=<float> (first_render_s: a new session on a
running server opening a configuration not rendered before; the cold-server figure, which adds
the server process's own imports, is printed above it).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The headless baseline runs under the same threading policy as the server (app.py sets
# OMP_NUM_THREADS=1 before torch is imported), so the ratio measures the page's overhead only.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tests.e2e.harness import browser_page, streamlit_server, wait_app_idle  # noqa: E402
from ui import toylab, urlstate  # noqa: E402


def throughput_from_run(run_dir: Path) -> tuple[float, int]:
    """Student steps/s between the first and last student evaluation of a run's timing.csv."""
    from dmdcore.runs import RunDir

    rows = [r for r in RunDir(run_dir).read_timing() if r.get("phase") == "student"]
    rows = [r for r in rows if r.get("wall_s") is not None]
    if len(rows) < 2:
        raise RuntimeError(f"{run_dir}: fewer than two student evaluations in timing.csv")
    s0, s1 = float(rows[0]["step"]), float(rows[-1]["step"])
    w0, w1 = float(rows[0]["wall_s"]), float(rows[-1]["wall_s"])
    return (s1 - s0) / (w1 - w0), int(s1 - s0)


def headless(values: dict, root: Path) -> Path:
    from dmdcore.jobs import JobManager, TrainingJob
    from dmdcore.pipeline import Experiment, load_teacher
    from dmdcore.runs import RunIndex

    teacher = load_teacher(f"manifest:{values['shipped_name']}")
    cfg = toylab.build_config(values, teacher=teacher)
    run_dir = toylab.new_run_dir(root, "bench-headless")
    exp = Experiment(cfg, run_dir=run_dir, index=RunIndex(root), teacher=teacher)
    job = TrainingJob(exp, phases=("student",), manager=JobManager(max_concurrent=2))
    job.start()
    if not job.wait(timeout=900):
        job.stop()
        raise RuntimeError("headless job did not finish in 900 s")
    snap = job.snapshot()
    if snap.state != "finished":
        raise RuntimeError(f"headless job ended {snap.state}: {snap.message}")
    return Path(snap.run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150, help="student steps per job")
    ap.add_argument("--teacher", default="8gaussians", help="shipped toy teacher (manifest name)")
    ap.add_argument("--every", type=int, default=25, help="evaluation period (steps)")
    args = ap.parse_args()

    values = urlstate.defaults()
    # stop_plateau off: the page's default now ends a run at its plateau, and a throughput
    # comparison needs every job to run its --steps
    values.update(teacher_source="shipped", shipped_name=args.teacher, s_steps=args.steps,
                  eval_every=args.every, stop_plateau=False)
    query = "&".join(f"{k}={v}" for k, v in urlstate.encode(values).items())

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # ---- browser: first render, then the same job driven from the page
        with streamlit_server(root) as (url, _proc), browser_page() as page:
            t0 = time.monotonic()
            page.goto(f"{url}/toy_lab?{query}", wait_until="commit")
            page.locator(".js-plotly-plot").first.wait_for(timeout=60000)
            wait_app_idle(page, timeout_ms=60000)
            cold_render = time.monotonic() - t0
            print(f"first render of Toy Lab (cold server, shipped teacher {args.teacher}): "
                  f"{cold_render:.2f} s")
            # warm server, new session, a configuration nobody rendered yet (other seed → other
            # evaluation noise): what a new visitor sees; the cold number includes the server's
            # own imports (torch, plotly, POT) on its first request
            context = page.context.browser.new_context(viewport={"width": 1600, "height": 1000})
            page2 = context.new_page()
            q2 = "&".join(f"{k}={v}" for k, v in urlstate.encode({**values, "seed": 1}).items())
            t0 = time.monotonic()
            page2.goto(f"{url}/toy_lab?{q2}", wait_until="commit")
            page2.locator(".js-plotly-plot").first.wait_for(timeout=60000)
            wait_app_idle(page2, timeout_ms=60000)
            warm_render = time.monotonic() - t0
            context.close()
            print(f"first render of Toy Lab (running server, new session, new config): "
                  f"{warm_render:.2f} s")
            page.get_by_role("button", name="Distill").click()
            page.locator('[data-testid="stProgress"]', has_text="· finished").wait_for(
                timeout=900_000)
        runs = sorted(p for p in root.glob("toylab-*") if p.is_dir())
        if not runs:
            raise RuntimeError("the page did not create a run directory")
        ui_rate, ui_steps = throughput_from_run(runs[-1])
        print(f"with page polling at 2 Hz: {ui_rate:.2f} student steps/s over {ui_steps} steps")
        # ---- headless baseline in this process
        base_dir = headless(values, root)
        base_rate, base_steps = throughput_from_run(base_dir)
        print(f"headless baseline:         {base_rate:.2f} student steps/s over {base_steps} steps")
    ratio = ui_rate / base_rate
    print(f"ratio (page / headless) = {ratio:.3f} (target >= 0.8); first render target <= 3 s")
    print(f"RESULT ui_ratio={ratio:.3f} first_render_s={warm_render:.2f}")


if __name__ == "__main__":
    main()
