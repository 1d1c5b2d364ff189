"""Command line: ``python -m dmdcore <command>``.

    teacher     train a toy EDM teacher              python -m dmdcore teacher --dataset 8gaussians --out runs/t1
    distill     distil a one-step DMD student        python -m dmdcore distill --teacher runs/t1 --out runs/s1
    experiment  teacher then student in one run      python -m dmdcore experiment --dataset moons --out runs/e1
    runs        list / show runs of a run index      python -m dmdcore runs list --root runs

plus the commands other modules register (``sweep`` from dmdcore.sweep, ``fetch`` from
dmdcore.checkpoints). ``--quick`` shrinks everything for tests. Bad arguments exit with code 2 and a
one-line ``error: <reason>``; a diverged or failed run exits 1; Ctrl-C / SIGTERM mark the run
``stopped`` and exit 130 / 143. Progress goes to stderr (tqdm, only on a terminal), results to stdout.
Printing is this module's job; the rest of dmdcore returns data.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

# --quick: small enough for tests (seconds on a shared CPU), still every phase and metric.
QUICK = {
    "data.n_samples": 2000,
    "teacher.width": 64,
    "teacher.depth": 2,
    "teacher.emb_dim": 16,
    "teacher.steps": 120,
    "teacher.batch": 256,
    "sampler.steps": 8,
    "distill.steps": 30,
    "distill.batch": 128,
    "distill.ratio": 2,
    "distill.n_reg_pairs": 256,
    "distill.reg_batch": 64,
    "eval.every": 15,
    "eval.n": 256,
    "eval.bootstrap": 20,
}

from dmdcore.runs import RunExistsError  # noqa: E402  (light: no torch import)

# flag dest -> dotted config field (only flags the user actually gives override the config)
_DATA_FLAGS = {
    "dataset": "data.dataset", "dim": "data.dim", "n_modes": "data.n_modes", "n_samples": "data.n_samples",
    "mode_scale": "data.mode_scale", "spread": "data.spread", "base": "data.base", "data_path": "data.path",
    "data_seed": "data.seed",
}
_TEACHER_FLAGS = {
    "width": "teacher.width", "depth": "teacher.depth", "teacher_batch": "teacher.batch", "lr": "teacher.lr",
    "ema": "teacher.ema", "teacher_seed": "teacher.seed", "teacher_steps": "teacher.steps", "twin": "teacher.twin",
    "twin_data": "teacher.twin_data", "family": "teacher.family", "solver": "sampler.solver",
}
_DISTILL_FLAGS = {
    "distill_steps": "distill.steps", "distill_batch": "distill.batch", "ratio": "distill.ratio",
    "lr_gen": "distill.lr_gen", "lr_fake": "distill.lr_fake", "init": "distill.init", "gan": "distill.gan",
    "regression": "distill.regression", "student_steps": "distill.student_steps", "warmup": "distill.warmup",
    "fake_sigma": "distill.fake_sigma", "distill_seed": "distill.seed", "method": "distill.method",
}
_COMMON_FLAGS = {
    "eval_every": "eval.every", "eval_n": "eval.n", "bootstrap": "eval.bootstrap", "eval_seed": "eval.seed",
    "sampler_steps": "sampler.steps", "name": "name",
}


class CLIError(ValueError):
    """A bad command-line value (reported as ``error: <reason>``, exit code 2)."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt so the run is finalized as ``stopped``."""


# ----------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr,
    ``<prog>: error: <reason> (see --help)``, and exit code 2 (no usage block). Subparsers made
    from it (``add_subparsers`` defaults ``parser_class`` to the parent's class) behave the same,
    including the ones other modules register."""

    def error(self, message: str):  # type: ignore[override]
        reason = " ".join(str(message).split())  # one line, whatever argparse put in it
        self.exit(2, f"{self.prog}: error: {reason} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not >= 1")
    return v


def _float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite")
    return v


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory to create (e.g. runs/t1)")
    g.add_argument("--runs-root", default=None, help="root of the run index (default: the parent of --out)")
    g.add_argument("--config", default=None,
                   help="start from this ExperimentConfig JSON or a run's config.json (re-runs it)")
    g.add_argument("--quick", action="store_true", help="tiny preset for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="compute device (default auto)")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads for this run (default: torch's)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (also off when stderr is not a terminal)")
    g.add_argument("--name", default=None, help="free-text run name")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-every", type=_positive_int, default=None, help="evaluate every N steps of a phase (default 100)")
    e.add_argument("--eval-n", type=_positive_int, default=None, help="fixed evaluation noises (default 1024, the standard n: ΔE at different n is not comparable)")
    e.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples for the ΔE CI (0 or >= 10; default 200)")
    e.add_argument("--eval-seed", type=int, default=None, help="seed of the evaluation noise (default 1234)")
    e.add_argument("--sampler-steps", type=_positive_int, default=None, help="EDM Heun levels of the teacher map T (default 18)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    from dmdcore.config import DATASETS, DATASETS_2D

    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, choices=DATASETS, help="data set (default 8gaussians)")
    g.add_argument("--dim", type=_positive_int, default=None, help="dimension (2 for the 2-D sets; mixture/embedded: any)")
    g.add_argument("--n-modes", type=_positive_int, default=None, help="mixture: number of modes (default 8)")
    g.add_argument("--n-samples", type=_positive_int, default=None, help="training points (default 20000)")
    g.add_argument("--mode-scale", type=_float, default=None, help="distance of mode means from 0 (default 2)")
    g.add_argument("--spread", type=_float, default=None, help="per-coordinate std of a mode (default 0.1)")
    g.add_argument("--base", default=None, choices=DATASETS_2D, help="embedded: the 2-D set to embed")
    g.add_argument("--data-path", default=None, help="user: .csv or .npy file of an (n, d) array")
    g.add_argument("--data-seed", type=int, default=None, help="data seed (default 0)")


def _add_teacher_options(p: argparse.ArgumentParser, *, steps_flag: str) -> None:
    from dmdcore.config import TEACHER_FAMILIES

    g = p.add_argument_group("teacher")
    g.add_argument(steps_flag, dest="teacher_steps", type=_positive_int, default=None, help="teacher training steps (default 3000)")
    g.add_argument("--width", type=_positive_int, default=None, help="MLP width (default 256)")
    g.add_argument("--depth", type=_positive_int, default=None, help="MLP hidden layers (default 3)")
    g.add_argument("--teacher-batch", type=_positive_int, default=None, help="batch size (default 512)")
    g.add_argument("--lr", type=_float, default=None, help="Adam learning rate (default 1e-3)")
    g.add_argument("--ema", type=_float, default=None, help="EMA decay (default 0.999)")
    g.add_argument("--teacher-seed", type=int, default=None, help="teacher init/training seed (default 0)")
    g.add_argument("--family", default=None, choices=TEACHER_FAMILIES,
                   help="teacher family: edm (default), fm (flow matching / rectified flow), otcfm (minibatch-OT CFM)")
    g.add_argument("--solver", default=None, choices=("heun", "euler"), help="flow teachers' ODE solver (default heun)")
    g.add_argument("--no-twin", dest="twin", action="store_const", const=False, default=None,
                   help="do not train the independent twin teacher (seed + 1) in the same job: faster, "
                        "but the ΔE controls ΔE(T′,T) and ΔE(S,T′) are then absent")
    g.add_argument("--twin-data", default=None, choices=("same", "disjoint"),
                   help="same (default): the twin trains on the teacher's data; disjoint: teacher and twin "
                        "each train on one of two disjoint halves of it (a stricter independent control)")


def _add_distill_options(p: argparse.ArgumentParser, *, steps_flag: str) -> None:
    from dmdcore.config import STUDENT_METHODS

    g = p.add_argument_group("distillation (DMD)")
    g.add_argument(steps_flag, dest="distill_steps", type=_positive_int, default=None, help="generator steps (default 1000)")
    g.add_argument("--distill-batch", type=_positive_int, default=None, help="batch size (default 256)")
    g.add_argument("--ratio", type=_positive_int, default=None, help="fake-score steps per generator step (TTUR; default 5)")
    g.add_argument("--lr-gen", type=_float, default=None, help="generator AdamW learning rate (default 1e-4)")
    g.add_argument("--lr-fake", type=_float, default=None, help="fake-score AdamW learning rate (default 1e-4 = --lr-gen, DMD2; 1e-3 = the older fast critic)")
    g.add_argument("--init", default=None, choices=("teacher", "random", "random_full"), help="generator init (default teacher; random_full: output layer not zero-initialised)")
    g.add_argument("--gan", action="store_const", const=True, default=None, help="add the DMD2 GAN head")
    g.add_argument("--regression", action="store_const", const=True, default=None, help="add the DMD regression loss")
    g.add_argument("--student-steps", type=_positive_int, default=None, help="1 = one-step student, 2..4 = few-step")
    g.add_argument("--warmup", type=int, default=None, help="learning-rate warm-up steps (default 50)")
    g.add_argument("--fake-sigma", default=None, choices=("karras", "lognormal"), help="fake-score sigma sampling")
    g.add_argument("--distill-seed", type=int, default=None, help="distillation seed (default 0)")
    g.add_argument("--method", default=None, choices=STUDENT_METHODS,
                   help="student method (default dmd): cd consistency distillation, fdistill-{rkl,js,fkl} f-distill, "
                        "sid score identity distillation, gan adversarial only, phased Phased DMD; "
                        "its settings: the config sections cd/fdistill/sid/adversarial/phased (--config)")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m dmdcore`` parser, with the commands registered by dmdcore.sweep and
    dmdcore.checkpoints when those modules exist and define ``register_cli``."""
    parser = _Parser(
        prog="python -m dmdcore",
        description="DMD Copying Lab engine: train toy teachers, distil DMD students, inspect runs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("teacher", help="train a toy teacher (EDM, flow matching or OT-CFM) into a run directory",
                       description="Train a toy EDM teacher (EDM loss, EMA) and save teacher.pt, "
                                   "metrics.csv (w2_data, eta_teacher) and samples.npz.")
    _add_data_options(p)
    _add_teacher_options(p, steps_flag="--steps")
    _add_run_options(p)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("distill", help="distil a one-step student (DMD or --method) from a teacher",
                       description="Distil a DMD student from --teacher (a run directory, a .pt file, or a shipped "
                                   "teacher name such as 8gaussians / manifest:8gaussians) and evaluate ΔE over steps.")
    p.add_argument("--teacher", default=None, help="run dir, .pt file, or shipped teacher name (see `runs teachers`)")
    _add_distill_options(p, steps_flag="--steps")
    _add_run_options(p)
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("experiment", help="train a teacher and distil a student in one run",
                       description="The whole pipeline in one run directory: teacher phase then student phase.")
    _add_data_options(p)
    _add_teacher_options(p, steps_flag="--teacher-steps")
    _add_distill_options(p, steps_flag="--distill-steps")
    _add_run_options(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("runs", help="list or show runs", description="Inspect run directories and the run index.")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION", parser_class=_Parser)
    rl = rsub.add_parser("list", help="list the runs of an index (marks interrupted runs failed)")
    rl.add_argument("--root", default="runs", help="run index root (default runs)")
    rl.add_argument("--kind", default=None, choices=("teacher", "distill", "experiment"))
    rl.add_argument("--status", default=None, choices=("running", "finished", "stopped", "diverged", "failed",
                                                      "abandoned", "unreadable"))
    rl.add_argument("--dataset", default=None)
    rl.add_argument("--sweep", default=None)
    rl.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rl.set_defaults(func=cmd_runs_list)
    rs = rsub.add_parser("show", help="show one run (a run directory or an index id)")
    rs.add_argument("run", help="run directory, or a run id of the index at --root")
    rs.add_argument("--root", default="runs", help="run index root for ids (default runs)")
    rs.add_argument("--rows", type=_positive_int, default=5, help="last metrics rows to print (default 5)")
    rs.add_argument("--json", action="store_true", help="print JSON instead of text")
    rs.set_defaults(func=cmd_runs_show)
    rt = rsub.add_parser("teachers", help="list the shipped toy teachers (checkpoints/manifest.json)")
    rt.set_defaults(func=cmd_runs_teachers)
    p.set_defaults(func=lambda args: _usage(p))

    for module in ("dmdcore.sweep", "dmdcore.checkpoints"):
        if importlib.util.find_spec(module) is not None:
            mod = importlib.import_module(module)  # an ImportError inside it propagates
            if hasattr(mod, "register_cli"):
                mod.register_cli(sub)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ----------------------------------------------------------------------------- config assembly

def _set_dotted(d: dict, key: str, value: Any) -> None:
    section, _, field = key.rpartition(".")
    target = d.setdefault(section, {}) if section else d
    target[field] = value


def _read_config_file(path: str) -> tuple[dict, dict]:
    """(experiment dict, run-level extras {"kind", "teacher_source"}) from a config JSON."""
    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--config: {path!r} is not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CLIError(f"--config: {path!r} is not valid JSON ({exc})") from None
    except RecursionError:
        raise CLIError(f"--config: {path!r} is nested too deeply to be a config") from None
    except UnicodeDecodeError as exc:
        raise CLIError(f"--config: {path!r} is not UTF-8 text (byte {exc.start})") from None
    if not isinstance(data, dict):
        raise CLIError(f"--config: {path!r} must hold a JSON object")
    if "experiment" in data:
        return dict(data["experiment"]), {k: data.get(k) for k in ("kind", "teacher_source")}
    return data, {}


def _assemble(args: argparse.Namespace, flags: dict[str, str], base: dict | None = None) -> "ExperimentConfig":
    """defaults ← ``base`` (teacher's own sections) ← --config ← --quick ← explicit flags."""
    from dmdcore.config import ExperimentConfig

    d = ExperimentConfig().to_dict()
    for section, values in (base or {}).items():
        if isinstance(values, dict):
            d[section].update(values)
        else:
            d[section] = values
    if args.config:
        cfg_d, _ = _read_config_file(args.config)
        for section, values in cfg_d.items():
            if isinstance(values, dict) and isinstance(d.get(section), dict):
                d[section].update(values)
            else:
                d[section] = values
    if args.quick:
        for key, value in QUICK.items():
            _set_dotted(d, key, value)
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            _set_dotted(d, key, value)
    data = d.get("data")
    if isinstance(data, dict) and data.get("dataset") == "user" and not data.get("path"):
        raise CLIError("--data-path: required with --dataset user (a .csv or .npy file of an (n, d) array)")
    return ExperimentConfig.from_dict(d)


# ----------------------------------------------------------------------------- running

@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Set torch's intra-op threads for the duration of a command (process-wide, restored)."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _stop_signals(flag: dict):
    """SIGTERM / SIGINT set ``flag["signal"]``; the run stops at the next step boundary (so no
    file is cut mid-write). A second signal interrupts at once."""
    def handler(signum, frame):
        if flag.get("signal") is not None:
            raise _Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        flag["signal"] = signum

    olds = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            olds[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. called from a test thread): leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in olds.items():
            signal.signal(sig, old)


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _summary_line(row: dict) -> str:
    if not row:
        return "no evaluation"
    if row.get("phase") == "student":
        ci = ""
        if row.get("delta_e_lo") is not None:
            ci = f" [{_fmt(row['delta_e_lo'], '.3f')}, {_fmt(row['delta_e_hi'], '.3f')}]"
        nd = f" n={_fmt(row.get('n_eval'))} d={_fmt(row.get('dim'))}" if row.get("n_eval") is not None else ""
        verdict = f" verdict={row['verdict']}" if row.get("verdict") else ""
        return (f"student step {row['step']}: delta_e={_fmt(row.get('delta_e'), '.4f')}{ci}{nd}{verdict} "
                f"w2={_fmt(row.get('w2'))} w2_data={_fmt(row.get('w2_data'))} "
                f"eta_T={_fmt(row.get('eta_teacher'))} eta_S={_fmt(row.get('eta_student'))} "
                f"copy_rate={_fmt(row.get('copy_rate'), '.3f')} retrieval={_fmt(row.get('retrieval'), '.3f')}")
    return (f"teacher step {row['step']}: loss={_fmt(row.get('loss'))} w2_data={_fmt(row.get('w2_data'))} "
            f"eta_T={_fmt(row.get('eta_teacher'))}")


def _verdict_lines(rows: list[dict]) -> list[str]:
    """The copy verdict of the last student evaluation (dmdcore.verdict_text), [] without one."""
    from dmdcore.verdict_text import cli_lines

    student = [r for r in rows if r.get("phase") == "student" and r.get("delta_e") is not None]
    if not student:
        return []
    return ["copy verdict (last student evaluation):"] + ["  " + x for x in cli_lines(student[-1])]


def _execute(args: argparse.Namespace, cfg, *, kind: str, phases: tuple[str, ...], teacher=None,
             teacher_source: str | None = None, twin=None) -> int:
    from tqdm import tqdm

    from dmdcore.device import pick_device
    from dmdcore.pipeline import Experiment
    from dmdcore.runs import RunIndex

    out = Path(args.out)
    root = Path(args.runs_root) if args.runs_root else out.parent
    if root.exists() and not root.is_dir():
        raise CLIError(f"--runs-root: {str(root)!r} exists and is not a directory")
    device = pick_device(args.device)
    # Validate (config, data, teacher, --out) before anything is written: Experiment raises
    # ValueError for a bad config before it creates the run directory, and the run index
    # (root/index.sqlite) is only opened once the run exists, so rejected input leaves no files.
    exp = Experiment(cfg, run_dir=out, index=None, teacher=teacher, device=device, phases=phases, kind=kind,
                     teacher_source=teacher_source, overwrite=args.overwrite, twin=twin)
    try:
        index = RunIndex(root)
        index.mark_interrupted()
        index.register(exp.rundir, kind=exp.kind, status="running")
    except BaseException as exc:
        # the run never started: leave no "running" orphan behind
        exp.finalize("failed", f"could not register the run in {root}: {_one_line(exc)}")
        raise
    exp.index = index  # from here on the run keeps its index row up to date (as Experiment(index=) does)
    show = not args.no_progress and sys.stderr.isatty()
    bar = tqdm(total=exp.total_steps, desc=f"{kind} {out.name}", unit="step", file=sys.stderr, disable=not show)
    t0 = time.perf_counter()

    flag: dict = {"signal": None}

    def on_step(info: dict) -> None:
        bar.update(1)
        if flag["signal"] is not None:  # a step boundary: safe to stop here
            raise _Terminated() if flag["signal"] == signal.SIGTERM else KeyboardInterrupt()
        landed = exp.view()["metrics"]  # the latest finished evaluation (computed off this thread)
        if landed:
            last = landed[-1]
            post = {"phase": last["phase"]}
            if last.get("delta_e") is not None:
                post["ΔE"] = f"{last['delta_e']:.3f}"
            elif last.get("w2_data") is not None:
                post["W2²(data)"] = f"{last['w2_data']:.3g}"
            bar.set_postfix(post, refresh=False)

    try:
        with _stop_signals(flag):
            row = exp.run(callback=on_step)
    except KeyboardInterrupt as exc:
        bar.close()
        print(f"stopped: {out} at step {exp.step_count} (run marked stopped)", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except Exception as exc:
        # The input was accepted and the run started: whatever goes wrong now (a ValueError
        # included) is a failed run (exit 1, status.json "failed"), not bad input (exit 2).
        bar.close()
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: run failed at step {exp.step_count}: {type(exc).__name__}"
              f"{': ' + msg if msg else ''} (run marked {exp.status}; {out})", file=sys.stderr)
        return 1
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    if exp.status == "diverged":
        print(f"error: {exp.message}; last good checkpoints kept in {out}", file=sys.stderr)
        print(f"diverged: {out} ({kind}, step {exp.step_count}, {wall:.1f} s); {_summary_line(row)}")
        return 1
    print(f"{exp.status}: {out} ({kind}, {exp.step_count} steps, {wall:.1f} s, device {device})")
    print(f"  {_summary_line(row)}")
    for line in _verdict_lines(exp.metrics):
        print(f"  {line}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    flags = {**_DATA_FLAGS, **_TEACHER_FLAGS, **_COMMON_FLAGS}
    cfg = _assemble(args, flags)
    return _execute(args, cfg, kind="teacher", phases=("teacher",))


def cmd_experiment(args: argparse.Namespace) -> int:
    flags = {**_DATA_FLAGS, **_TEACHER_FLAGS, **_DISTILL_FLAGS, **_COMMON_FLAGS}
    cfg = _assemble(args, flags)
    return _execute(args, cfg, kind="experiment", phases=("teacher", "student"))


def cmd_distill(args: argparse.Namespace) -> int:
    from dmdcore.device import pick_device
    from dmdcore.pipeline import load_teacher, resolve_teacher

    source = args.teacher
    if source is None and args.config:
        source = _read_config_file(args.config)[1].get("teacher_source")
    if source is None:
        raise CLIError("--teacher: required (a run directory, a .pt file or a shipped teacher name)")
    _, canonical = resolve_teacher(source)
    teacher = load_teacher(source, device=pick_device(args.device))  # with .twin when it has one
    base = {"teacher": teacher.teacher_config.to_dict()}
    if teacher.data_config is not None:
        base["data"] = teacher.data_config.to_dict()
    flags = {**_DISTILL_FLAGS, **_COMMON_FLAGS}
    cfg = _assemble(args, flags, base=base)
    # The data and teacher sections always describe the teacher actually used.
    cfg = cfg.replace(data=teacher.data_config or cfg.data, teacher=teacher.teacher_config)
    return _execute(args, cfg, kind="distill", phases=("student",), teacher=teacher, teacher_source=canonical)


# ----------------------------------------------------------------------------- runs

def _record_dict(rec) -> dict:
    from dataclasses import asdict

    return asdict(rec)


def cmd_runs_list(args: argparse.Namespace) -> int:
    from dmdcore.runs import RunIndex

    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"--root: {args.root!r} is not a directory")
    index = RunIndex(root)
    try:
        index.scan()
        index.mark_interrupted()
    except OSError as exc:  # disk full: list what the index holds, say why it is not refreshed
        print(f"warning: {exc}; listing the index without refreshing it", file=sys.stderr)
    recs = index.list(kind=args.kind, status=args.status, dataset=args.dataset, sweep=args.sweep)
    if args.json:
        print(json.dumps([_record_dict(r) for r in recs], indent=2, default=str))
        return 0
    if not recs:
        print(f"no runs in {root}")
        return 0
    header = f"{'id':>4}  {'status':<9} {'kind':<10} {'dataset':<12} {'dim':>4} {'step':>6} {'delta_e':>8}  path"
    print(header)
    for r in recs:
        try:
            path = os.path.relpath(r.path)
        except ValueError:
            path = r.path
        print(f"{r.id:>4}  {r.status:<9} {r.kind:<10} {str(r.dataset or '-'):<12} {str(r.dim or '-'):>4} "
              f"{r.step:>6} {_fmt(r.delta_e, '.3f'):>8}  {path}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from dmdcore.runs import RunDir, RunIndex

    target = args.run
    rec = None
    if target.isdigit() and not Path(target).exists():
        root = Path(args.root)
        if not (root / "index.sqlite").is_file():
            raise CLIError(f"--root: {args.root!r} holds no run index (index.sqlite)")
        index = RunIndex(root)
        index.mark_interrupted()
        try:
            rec = index.get(int(target))
        except KeyError:
            raise CLIError(f"run: id {target} is not in the index at {args.root!r}") from None
        run = RunDir(rec.path)
    else:
        run = RunDir(target)
        if not run.exists():
            raise CLIError(f"run: {target!r} is not a run directory (no config.json)")
        if (run.path.parent / "index.sqlite").is_file():
            index = RunIndex(run.path.parent)
            index.mark_interrupted()
            try:
                rec = index.get(run.path)
            except KeyError:
                rec = None
    cfg = run.read_config()
    status = run.read_status() or {}
    rows = run.read_metrics()
    files = {p.name: p.stat().st_size for p in sorted(run.path.iterdir()) if p.is_file() and not p.name.startswith(".")}
    if args.json:
        print(json.dumps({"path": str(run.path), "config": cfg, "status": status, "index": _record_dict(rec) if rec else None,
                          "metrics": rows[-args.rows:], "files": files}, indent=2, default=str))
        return 0
    exp = cfg.get("experiment", {})
    data = exp.get("data", {})
    print(f"run        {run.path}")
    if rec is not None:
        print(f"index id   {rec.id}")
    print(f"kind       {cfg.get('kind')}   teacher_source: {cfg.get('teacher_source')}")
    print(f"status     {status.get('status')} at step {status.get('step')}: {status.get('message')}")
    print(f"data       {data.get('dataset')} d={data.get('dim')} n={data.get('n_samples')}")
    t, dc = exp.get("teacher", {}), exp.get("distill", {})
    print(f"teacher    width {t.get('width')} depth {t.get('depth')} steps {t.get('steps')}")
    print(f"distill    steps {dc.get('steps')} ratio {dc.get('ratio')} gan {dc.get('gan')} regression {dc.get('regression')}")
    print(f"files      " + ", ".join(f"{k} ({v / 1024:.1f} KiB)" for k, v in files.items()))
    print(f"metrics    {len(rows)} evaluations; last {min(len(rows), args.rows)}:")
    for r in rows[-args.rows:]:
        print(f"  {_summary_line(r)}")
    for line in _verdict_lines(rows):
        print(line)
    return 0


def cmd_runs_teachers(args: argparse.Namespace) -> int:
    from dmdcore.pipeline import shipped_teachers

    entries = shipped_teachers()
    if not entries:
        print("no shipped toy teachers in checkpoints/manifest.json")
        return 0
    for e in entries:
        print(f"{e['name']:<16} {e.get('dataset', '-'):<12} d={e.get('dim', '-'):<4} {e.get('size', 0) / 1024:7.1f} KiB  "
              f"{e.get('description', '')}")
    return 0


# ----------------------------------------------------------------------------- entry point

_log = logging.getLogger("dmdcore.cli")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return (first[:497] + "…") if len(first) > 500 else first


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code: 2 for bad input (a ValueError raised while the
    arguments, config, data or teacher are checked, before a run starts; argparse usage errors
    exit 2 through ``_Parser.error``), 1 for a run that diverged or failed after it started.

    This is the CLI's one error boundary: any other exception is one line on stderr
    (``error: <Type>: <reason>``, exit 1) and its traceback goes to the log (logger
    ``dmdcore.cli``, shown with ``DMD_DEBUG=1``), never a Python traceback on the terminal."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        with _torch_threads(getattr(args, "threads", None)):
            rc = args.func(args)
    except RunExistsError as exc:
        print(f"error: --out: {_one_line(exc).split(': ', 1)[-1].replace('pass overwrite=True (CLI: --overwrite)', 'pass --overwrite')}",
              file=sys.stderr)
        return 2
    except (ValueError, RecursionError, MemoryError) as exc:
        # bad input: our ValueErrors name the field; a RecursionError / MemoryError can only come
        # from parsing an input before anything started
        _log.debug("bad input", exc_info=exc)
        msg = _one_line(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__} while reading the input"
        print(f"error: {msg or type(exc).__name__}", file=sys.stderr)
        return 2
    except OSError as exc:
        _log.debug("OS error", exc_info=exc)
        print(f"error: {_one_line(exc) or type(exc).__name__}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 — the boundary: one line, traceback in the log
        _log.error("command failed", exc_info=exc)
        print(f"error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    return int(rc or 0)
