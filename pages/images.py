"""Image models: does a one-step DMD student reproduce its EDM teacher's noise→image pairing?

Pick a teacher and a student (shipped/downloaded manifest entries, a path, or an upload), classes
and seeds; images are generated on a background ``dmdcore.images.ImageGenerationJob`` (student
first, then the teacher batch by batch, shown as they finish) and compared pair by pair for the
same (noise, class): grids, |difference| maps, ΔE with CI, pair retrieval and per-pair L2.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from ui.errors import show_error

from ui.router import ensure_router
from ui.session import runs_root
from ui.verdict import render_verdict
from dmdcore.verdict_text import as_row

ensure_router()

import torch  # noqa: E402

from dmdcore import checkpoints as ckpts  # noqa: E402
from dmdcore import images as imgs  # noqa: E402
from dmdcore.config import SamplerConfig  # noqa: E402

S = st.session_state
JOB = "img_job"            # (ImageGenerationJob, meta dict) of the current/last generation
LOADED = "img_loaded"      # role -> (source key, LoadedCheckpoint) of the last good load
SOURCES = ("Manifest entry", "Path on disk", "Upload")

st.title("Image models")
st.caption("Teacher (EDM sampler) vs one-step DMD student (σ = 80) on the same noise and class: "
           "does the student copy the teacher's noise→image pairing?")


# ----------------------------------------------------------------------------------- helpers
@st.cache_resource(show_spinner="Loading checkpoint…", max_entries=4)
def _load(path: str, mtime: float, config_json: str | None):
    """Cached by path, mtime and config (an upload's path holds its content hash, so a different
    file under the same name is a different key)."""
    import json

    cfg = json.loads(config_json) if config_json else None
    ck = ckpts.load_checkpoint(path, config=cfg, device="auto")
    imgs.optimize_for_inference(ck.model)  # same math: fused attention, pooling resampling
    return ck


def _present_entries(role: str) -> list[dict]:
    try:
        entries = ckpts.read_manifest()["entries"]
    except ValueError as exc:
        st.error(f"checkpoints/manifest.json: {exc}")
        return []
    out = []
    for e in entries:
        if e.get("kind") != "image" or e.get("role") != role:
            continue
        try:
            if ckpts.entry_path(e).exists():
                out.append(e)
        except ValueError:
            continue
    return out


def _missing_downloads() -> list[dict]:
    try:
        entries = ckpts.read_manifest()["entries"]
    except ValueError:
        return []
    return [e for e in entries if e.get("kind") == "image" and e.get("url") and not ckpts.entry_path(e).exists()]


def _upload_dir() -> Path:
    d = runs_root() / "uploads"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _pick(role: str, col) -> tuple[str, str, dict | None] | None:
    """Widgets of one side; returns (source key, path, config override) or None."""
    with col:
        st.subheader("Teacher" if role == "teacher" else "Student")
        src = st.radio("Source", SOURCES, key=f"img_{role}_src", horizontal=True)
        if src == "Manifest entry":
            entries = _present_entries(role)
            if not entries:
                st.info(f"No {role} image checkpoint is present; use a path or an upload.")
                return None
            names = [e["name"] for e in entries]
            name = st.selectbox("Checkpoint", names, key=f"img_{role}_entry")
            e = entries[names.index(name)]
            st.caption(e.get("description", ""))
            # the manifest's config is used for state dicts; an EDM pickle carries its own
            cfg = e.get("config") if e.get("format") != "edm-pickle" else None
            return f"manifest:{name}", str(ckpts.entry_path(e)), cfg
        if src == "Path on disk":
            p = st.text_input("Path (.pkl EDM pickle, .pt/.pth/.bin state dict, .safetensors)",
                              key=f"img_{role}_path")
            return (f"path:{p}", p, None) if p else None
        up = st.file_uploader("Checkpoint file", type=["pkl", "pt", "pth", "bin", "safetensors"],
                              key=f"img_{role}_upload")
        if up is None:
            return None
        data = up.getvalue()
        sha = _upload_sha(up.file_id, data)
        # named by content: sessions share the upload folder, and two different files with the
        # same name must never overwrite each other (the loaded model is cached by this key)
        dest = _upload_dir() / f"{role}-{sha[:16]}-{Path(up.name).name}"
        if not dest.exists():  # atomic; a full disk says "disk full at …" and leaves no temp file
            from dmdcore.runs import atomic_write_bytes

            atomic_write_bytes(dest, data)
        return f"upload:{up.name}:{sha}", str(dest), None


def _upload_sha(file_id: str, data: bytes) -> str:
    """sha256 of an uploaded file, computed once per upload (the page reruns often)."""
    memo = S.setdefault("img_upload_sha", {})
    if file_id not in memo:
        while len(memo) >= 8:  # teacher and student uploads and a few replaced ones
            memo.pop(next(iter(memo)))
        memo[file_id] = hashlib.sha256(data).hexdigest()
    return memo[file_id]


def _resolve(role: str, choice) -> object | None:
    """Load the chosen checkpoint; on error show it and keep the last good one of this role."""
    loaded = S.setdefault(LOADED, {})
    if choice is None:
        return loaded.get(role, (None, None))[1]
    key, path, cfg = choice
    import json

    try:
        p = Path(path)
        if not p.is_file():
            raise ckpts.CheckpointError(f"path: {path!r} is not an existing file")
        ck = _load(str(p.resolve()), p.stat().st_mtime, json.dumps(cfg) if cfg else None)
    except Exception as exc:  # any failure of a hostile file: one line here, traceback in the log
        show_error(exc, prefix=f"{role}: ")
        prev = loaded.get(role)
        if prev is not None:
            st.caption(f"Keeping the last good {role}: {Path(prev[1].path).name}")
            return prev[1]
        return None
    loaded[role] = (key, ck)
    return ck


def _training_note(tr: dict | None) -> str | None:
    """One line saying how a shipped student was distilled (from its training record), or None."""
    if tr is None:
        return None
    if tr["regression"]:
        return (f"**Regression control** ({tr['name']}): distilled with the DMD regression loss (weight "
                f"{tr['reg_weight']} on {tr['n_reg_pairs']} teacher noise→image pairs), which pulls G(z) toward "
                f"the teacher's T(z) for the same noise; its pairing is tied by construction "
                f"(checkpoints/{tr['record']}).")
    return (f"**Free student** ({tr['name']}): distilled with the DMD loss alone (no regression pairs"
            f"{', no GAN' if not tr['gan'] else ', with the GAN loss'}; {tr['steps']} steps), so nothing ties "
            f"its noise→image pairing to the teacher's (checkpoints/{tr['record']}).")


def _class_names(ck) -> list[str]:
    n = int(ck.config.get("label_dim", 0))
    if n == 10 and int(ck.config.get("img_channels", 3)) == 1:
        return [f"digit {i}" for i in range(10)]
    if n == 1000:
        from dmdcore.imagenet_classes import IMAGENET_CLASSES

        return [f"{i}: {c}" for i, c in enumerate(IMAGENET_CLASSES)]
    return [f"class {i}" for i in range(n)]


def _heat(absdiff: np.ndarray, vmax: float) -> np.ndarray:
    """(n, H, W) |difference| -> (n, H, W, 3) uint8 with a black→red→yellow→white ramp."""
    t = np.clip(absdiff / max(vmax, 1e-12), 0, 1)
    r = np.clip(3 * t, 0, 1)
    g = np.clip(3 * t - 1, 0, 1)
    b = np.clip(3 * t - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def _rgb(u8: np.ndarray) -> np.ndarray:
    return np.repeat(u8, 3, axis=-1) if u8.shape[-1] == 1 else u8


def _png(arr: np.ndarray, scale: int = 1) -> bytes:
    from PIL import Image

    img = Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------- choose models
missing = _missing_downloads()
if missing:
    with st.expander("Real ImageNet-64 checkpoints (not downloaded)"):
        for e in missing:
            st.markdown(f"- **{e['name']}** ({e['role']}, {e.get('source', '')}; licence: {e.get('license', '?')}) — "
                        f"`python -m dmdcore fetch {e['name']}`")

c1, c2 = st.columns(2)
teacher = _resolve("teacher", _pick("teacher", c1))
student = _resolve("student", _pick("student", c2))
for ck, col in ((teacher, c1), (student, c2)):
    if ck is not None:
        col.caption(ckpts.describe(ck) + f" · sha256 {ck.sha256[:12]}…")
student_training = ckpts.student_training(student.sha256) if student is not None else None
if student_training is not None:
    c2.markdown(_training_note(student_training))

if teacher is None or student is None:
    st.info("Choose a teacher and a student to compare.")
    st.stop()
if (teacher.config.get("img_resolution"), teacher.config.get("img_channels"), teacher.config.get("label_dim")) != \
        (student.config.get("img_resolution"), student.config.get("img_channels"), student.config.get("label_dim")):
    st.error("teacher/student: image resolution, channels and number of classes must match "
             f"(teacher {teacher.config.get('img_resolution')}px×{teacher.config.get('img_channels')}, "
             f"{teacher.config.get('label_dim')} classes; student {student.config.get('img_resolution')}px×"
             f"{student.config.get('img_channels')}, {student.config.get('label_dim')} classes)")
    st.stop()

# ----------------------------------------------------------------------------------- settings
names = _class_names(teacher)
with st.form("img_settings"):
    f1, f2, f3, f4 = st.columns([3, 1, 1, 1])
    if names:
        default = names[: min(len(names), 10 if len(names) <= 10 else 4)]
        chosen = f1.multiselect("Classes", names, default=default, key="img_classes")
    else:
        chosen = []
        f1.caption("Unconditional model (no classes).")
    per_class = f2.number_input("Images per class", 1, 64, 2 if len(names) <= 10 else 1, key="img_per_class")
    seed0 = f3.number_input("First seed", 0, 2**31 - 1, 0, key="img_seed0")
    steps = f4.number_input("Teacher steps N", 1, 512, 18, key="img_steps",
                            help="EDM Heun sampler with N Karras levels: 2N−1 network evaluations per image.")
    g1, g2, g3 = st.columns(3)
    imagenet_setting = g1.checkbox("EDM ImageNet stochastic", key="img_churn",
                                   help="EDM's ImageNet-64 stochastic sampler setting: N = 256, S_churn 40, S_min 0.05, "
                                        "S_max 50, S_noise 1.003; overrides N. 511 NFE per image.")
    batch = g2.number_input("Batch size", 1, 64, 8, key="img_batch", help="Does not change the images (per-image seeds).")
    boot = g3.number_input("Bootstrap resamples (ΔE CI)", 0, 2000, 200, key="img_boot")
    go = st.form_submit_button("Generate", type="primary")

class_ids = [names.index(c) for c in chosen] if names else [0]
pairs = [(c, int(seed0) + k) for c in class_ids for k in range(int(per_class))]
sampler = imgs.IMAGENET_SAMPLER if imagenet_setting else SamplerConfig(steps=int(steps))
nfe = 2 * sampler.steps - 1
device = next(teacher.model.parameters()).device
if device.type == "cpu" and teacher.n_params > 50e6:
    st.warning(f"This teacher has {teacher.n_params / 1e6:.0f} M parameters and runs on the CPU: expect tens of "
               f"seconds per network evaluation for a batch, i.e. minutes per image at {nfe} NFE. Images are "
               "shown as they finish; keep N small (e.g. 18 or fewer) or use a CUDA machine.")

cache = imgs.ImageCache(runs_root() / "image_cache", max_bytes=512 * 2**20)
if go:
    old = S.get(JOB)
    if old is not None:
        old[0].stop()
    if len(pairs) < 2:
        st.error(f"Images: {len(pairs)} pair(s) requested; need at least 2 for the pair metrics.")
    elif len(pairs) > 512:
        st.error(f"Images: {len(pairs)} pairs requested; at most 512.")
    else:
        try:
            job = imgs.ImageGenerationJob(
                teacher.model, student.model, [p[0] for p in pairs], [p[1] for p in pairs], sampler=sampler,
                teacher_hash=teacher.sha256, student_hash=student.sha256, cache=cache, batch_size=int(batch))
        except ValueError as exc:
            st.error(str(exc))
        else:
            S[JOB] = (job.start(), {"pairs": pairs, "names": names, "sampler": sampler, "nfe": nfe,
                                    "teacher": Path(teacher.path).name, "student": Path(student.path).name,
                                    "training": student_training})

with st.sidebar:
    stats = cache.stats()
    st.caption(f"Image cache: {stats['files']} images, {stats['bytes'] / 2**20:.1f} / {stats['max_bytes'] / 2**20:.0f} MiB")
    if st.button("Clear image cache", key="img_clear_cache"):
        n = cache.clear()
        st.toast(f"Removed {n} cached images")


# ----------------------------------------------------------------------------------- results
def _results():
    entry = S.get(JOB)
    if entry is None:
        st.info("Press Generate. Student images (one step) come first, then the teacher's, batch by batch.")
        return
    job, meta = entry
    snap = job.snapshot()
    n = snap["total"]
    active = snap["state"] == "running"
    label = (f"Student {snap['done_student']}/{n} · Teacher {snap['done_teacher']}/{n} "
             f"({meta['nfe']} NFE per image)")
    partial = snap["progress_teacher"] - snap["done_teacher"]
    if active and partial > 0:
        label += f" · current batch {partial:.1f} images' worth done"
    if snap["per_image_s"] is not None and active:
        label += f" · {snap['per_image_s']:.2f} s per teacher image · ETA {snap['eta_s']:.0f} s"
    # the teacher part moves after every sampler step, not only when a batch finishes
    st.progress(min(1.0, (snap["done_student"] + snap["progress_teacher"]) / (2 * n)), text=label)
    if active and st.button("Stop", key="img_stop"):
        job.stop()
    if snap["state"] == "failed":
        st.error(f"Generation failed: {snap['error']}")
    elif snap["state"] == "stopped":
        st.warning("Generation stopped; showing what finished.")

    t, s = snap["teacher"], snap["student"]
    t_ok = ~torch.isnan(t).flatten(1).any(1)
    s_ok = ~torch.isnan(s).flatten(1).any(1)
    ncols = max(1, min(len(meta["pairs"]), int(np.ceil(np.sqrt(len(meta["pairs"]) * 1.5)))))
    blank = np.full((*t.shape[2:], t.shape[1]), 0, np.uint8)
    t8 = np.stack([imgs.to_uint8(t[i:i + 1])[0] if t_ok[i] else blank for i in range(n)])
    s8 = np.stack([imgs.to_uint8(s[i:i + 1])[0] if s_ok[i] else blank for i in range(n)])
    both = (t_ok & s_ok).numpy()
    absdiff = (s - t).abs().mean(1).nan_to_num(0.0).numpy()
    vmax = float(absdiff[both].max()) if both.any() else 1.0
    heat = _heat(absdiff, vmax)
    heat[~both] = 0
    scale = max(1, 96 // t.shape[-1])
    grids = [imgs.image_grid(_rgb(x), ncols) for x in (t8, s8, heat)]
    cols = st.columns(3)
    for col, g, cap in zip(cols, grids, ("Teacher T(z, c)", "Student S(z, c) = G(80·z; c)",
                                         f"|S − T| (mean over channels; white = {vmax:.2f})")):
        col.image(_png(g, scale), caption=cap, width="stretch")

    if both.sum() >= 2:
        idx = np.flatnonzero(both)
        try:
            m = imgs.pair_metrics(t[idx], s[idx], bootstrap=int(S.get("img_boot", 200)), seed=0)
        except ValueError as exc:
            st.error(f"Metrics: {exc}")
            return
        k1, k2, k3, k4 = st.columns(4)
        ci = f"95% CI [{m.ci_low:.3f}, {m.ci_high:.3f}]" if m.ci_low is not None else "no CI (bootstrap 0)"
        k1.metric("ΔE (pairing inefficiency)", f"{m.delta_e:.3f}", help=(
            "ΔE = (E_pair − E_OT)/(E_ind − E_OT) on flattened images: 0 = the student sends each noise where "
            "the teacher does (copying), ≈1 = pairing no better than chance. " + ci))
        k1.caption(ci)
        tr = meta.get("training")
        if tr is not None and tr["regression"]:
            k1.caption(f"⚠ Regression control: this student was trained **with the DMD regression loss** (weight "
                       f"{tr['reg_weight']} on {tr['n_reg_pairs']} teacher noise→image pairs), which pulls G(z) "
                       "toward the teacher's T(z) for the same noise. A low ΔE here is expected by construction, not "
                       "evidence that distribution matching alone copies the teacher's pairing "
                       f"(see checkpoints/{tr['record']}).")
        elif tr is not None:
            k1.caption("Free student: trained with the DMD loss alone (no regression), so this ΔE measures the "
                       "pairing distribution matching produced by itself; compare it with the regression control "
                       f"(see checkpoints/{tr['record']}).")
        k2.metric("Pair retrieval (top-1)", f"{m.retrieval:.1%}", help=f"chance = 1/n = {1 / m.n:.1%}")
        k3.metric("Mean per-pair L2", f"{m.l2.mean():.3f}")
        k4.metric("Pairs", f"{m.n}/{n}")
        if m.report is not None:
            # the copy verdict: ΔE with n, d, references and resolution (no image twin ships)
            render_verdict({**as_row(m.report), "retrieval": m.retrieval})
        rows = [{"pair": int(i), "class": meta["names"][c] if meta["names"] else "-", "seed": sd,
                 "l2": float(l2)} for i, (c, sd), l2 in zip(idx, [meta["pairs"][i] for i in idx], m.l2)]
        df = pd.DataFrame(rows)
        st.dataframe(df, hide_index=True, width="stretch", height=min(300, 35 * (len(df) + 1)))
        pick = st.selectbox("Show pair large", [r["pair"] for r in rows], key="img_pick",
                            format_func=lambda i: f"#{i}: {rows[[r['pair'] for r in rows].index(i)]['class']}, "
                                                  f"seed {meta['pairs'][i][1]}")
        b1, b2, b3 = st.columns(3)
        big = max(1, 256 // t.shape[-1])
        b1.image(_png(t8[pick], big), caption=f"Teacher #{pick}")
        b2.image(_png(s8[pick], big), caption=f"Student #{pick}")
        b3.image(_png(heat[pick], big), caption=f"|difference| #{pick} (L2 {float(df.set_index('pair').loc[pick, 'l2']):.3f})")

        verdict = "" if m.report is None else f"; n_eval={m.report.n}; dim={m.report.d}; verdict={m.report.verdict}; " \
            f"resolution={m.report.resolution}; delta_e_valid={int(m.report.valid)}"
        summary = pd.DataFrame([{"pair": "ALL", "class": f"delta_e={m.delta_e:.6f}; ci=[{m.ci_low}, {m.ci_high}]{verdict}; "
                                 f"retrieval={m.retrieval:.6f}; e_pair={m.e_pair:.6f}; e_ot={m.e_ot:.6f}; "
                                 f"e_ind={m.e_ind:.6f}; n={m.n}", "seed": "", "l2": float(m.l2.mean())}])
        csv = pd.concat([df, summary]).to_csv(index=False).encode()
        sep = np.full((grids[0].shape[0], 6, 3), 255, np.uint8)
        combo = np.concatenate([grids[0], sep, grids[1], sep, grids[2]], axis=1)
        d1, d2 = st.columns(2)
        d1.download_button("Download grid PNG (teacher | student | difference)", _png(combo, scale),
                           file_name="teacher_student_grid.png", mime="image/png", key="img_dl_png")
        d2.download_button("Download metrics CSV", csv, file_name="image_pair_metrics.csv", mime="text/csv",
                           key="img_dl_csv")
    if not active and S.get("img_was_active"):
        S["img_was_active"] = False
        st.rerun()
    S["img_was_active"] = active


_entry = S.get(JOB)
_active = _entry is not None and _entry[0].snapshot()["state"] == "running"
st.fragment(run_every=1.0 if _active else None)(_results)()
