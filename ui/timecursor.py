"""Toy Lab's one time cursor: the selected student evaluation that every tile, panel, basin map
and curve shows, a slider labelled in student steps, and a play button that walks the
evaluations. Streamlit helpers (the page stays thin); the numbers come from the job's
metrics rows (metrics.csv) and saved snapshots.
"""

from __future__ import annotations

import math

import streamlit as st

from ui import plots
from ui.verdict import render_verdict

CURSOR_KEY = "toylab_cursor"          # the selected student step (a plain value; the widget is below)
NEXT_KEY = "toylab_cursor_next"       # a step to select on the next run (play, follow)
FOLLOW_KEY = "toylab_cursor_follow"   # True while the cursor sits on the newest evaluation
PLAY_KEY = "toylab_playing"
SHOWN_KEY = "toylab_cursor_shown"     # (unused since the widget key names the newest step; kept for reset)
WIDGET_PREFIX = CURSOR_KEY + "@"      # the slider's key: "toylab_cursor@<newest step>"
DRAWN_KEY = "toylab_cursor_drawn"     # the slider key drawn by the previous run


def widget_key(steps: list[int]) -> str:
    """The slider's widget key for these evaluations. It names the newest step, so each new
    evaluation draws a new widget: a browser that had not yet received the previous slider's
    new value (a fragment's timed rerun sends the widget values it holds) can only report a value
    for a widget that is gone, which Streamlit then ignores. With one key for all evaluations such
    a stale value read as a user's move and the cursor stopped following (e2e, under load)."""
    return f"{WIDGET_PREFIX}{steps[-1]}"


def reset(state) -> None:
    """Forget the cursor (another run is opened): its value, follow flag and slider widgets."""
    for k in [k for k in list(state.keys()) if str(k).startswith(WIDGET_PREFIX)]:
        del state[k]
    for k in (CURSOR_KEY, NEXT_KEY, FOLLOW_KEY, SHOWN_KEY, DRAWN_KEY):
        state.pop(k, None)


TILE_HELP = {
    "delta_e": plots.DELTA_E_HELP + " Chance level (a random pairing): 1.",
    "copy_rate": "Copy rate = fraction of noises z whose student sample S(z) falls in the same mode as "
                 "the teacher's T(z) (the diagonal mass of the mode-transition matrix). Chance level "
                 "(an independent pairing over K equally likely modes): 1/K.",
    "w2": "W₂² S↔T = exact optimal-transport cost between the student and teacher sample sets "
          "(min over pairings of mean‖S − T‖², = E_OT of ΔE). 0 = same distribution; it measures "
          "quality, not pairing (no chance level).",
    "eta_student": "η(S) = E‖S(z) − z‖² / W₂²(z, S(z)) − 1: how far the student's noise→sample map is "
                   "from the optimal transport of the noise (0 = optimal). Compare with η(T) of the teacher.",
    "retrieval": "Pair retrieval = fraction of i whose nearest teacher sample to S(z_i) is T(z_i) itself "
                 "(top-1). Chance level: 1/n.",
}
TILES = (("delta_e", "ΔE (pairing inefficiency)"), ("copy_rate", "copy rate"), ("w2", "W₂² S↔T"),
         ("eta_student", "η(S)"), ("retrieval", "pair retrieval"))


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def student_rows(metrics) -> list[dict]:
    return [r for r in metrics if r.get("phase", "student") == "student"]


def row_at(metrics, step: int | None) -> dict | None:
    """The student evaluation row at ``step`` (the newest one when step is None)."""
    rows = student_rows(metrics)
    if not rows:
        return None
    if step is None:
        return rows[-1]
    return next((r for r in reversed(rows) if int(r["step"]) == int(step)), None)


def cursor_slider(steps: list[int], *, total: int | None) -> int | None:
    """The time cursor over the saved student evaluations ``steps``: a slider in student steps
    and a play button. Follows the newest evaluation until moved. Returns the selected step."""
    if not steps:
        return None
    state = st.session_state
    pending = state.pop(NEXT_KEY, None)
    selected = state.get(CURSOR_KEY)
    if pending in steps:
        selected = pending
    elif selected not in steps or state.get(FOLLOW_KEY, True):
        selected = steps[-1]
    if len(steps) < 2:
        state[FOLLOW_KEY] = True
        state[CURSOR_KEY] = steps[-1]
        return steps[-1]
    key = widget_key(steps)
    if pending in steps or state.get(DRAWN_KEY) != key or state.get(key) not in steps:
        state[key] = selected  # a new widget (a new evaluation), play, or a widget drawn before
    state[DRAWN_KEY] = key
    c1, c2 = st.columns([8, 1], vertical_alignment="bottom")
    of = f" of {total}" if total else ""
    step = c1.select_slider(f"Time cursor — student step{of} (every panel, tile, basin map and curve "
                            "shows this evaluation)", options=steps, key=key, on_change=_moved, args=(key, steps[-1]))
    playing = bool(state.get(PLAY_KEY))
    if c2.button("Pause" if playing else "Play", key="toylab_play_btn",
                 icon=":material/pause:" if playing else ":material/play_arrow:"):
        state[PLAY_KEY] = not playing
        if not playing:
            state[NEXT_KEY] = steps[0]
        st.rerun()
    state[FOLLOW_KEY] = step == steps[-1] and not playing
    state[CURSOR_KEY] = step
    return step


def _moved(key: str, newest: int) -> None:
    """The user moved the slider ``key`` (a callback: Streamlit calls it for a value the browser
    changed, before the run). Kept even when the run it starts brings a new evaluation, and so a
    new slider: the step chosen on the old one is carried over."""
    value = st.session_state.get(key)
    st.session_state[CURSOR_KEY] = value
    st.session_state[FOLLOW_KEY] = value == newest


def cursor_widget(elements):
    """The time-cursor slider among AppTest select_sliders (its key names the newest step), or None."""
    return next((s for s in elements if str(s.key or "").startswith(WIDGET_PREFIX)), None)


def play_tick(steps: list[int]) -> None:
    """One animation frame (called from a fragment every ~0.8 s while playing): select the next
    evaluation, or stop at the newest."""
    if not st.session_state.get(PLAY_KEY) or not steps:
        return
    cur = st.session_state.get(CURSOR_KEY)
    i = steps.index(cur) if cur in steps else -1
    if i + 1 < len(steps):
        st.session_state[NEXT_KEY] = steps[i + 1]
    else:
        st.session_state[PLAY_KEY] = False
    st.rerun(scope="app")


CONVERGENCE_HELP = ("Plateau criterion (dmdcore.convergence, Docs → Metrics 'Convergence'): over the last 4 "
                    "student evaluations ΔE varies by ≤ 0.02 and W₂²(S,T) is within 1.5× its floor "
                    "(the larger of W₂²(T′,T) and W₂²(T(z),T(z′))). Until then the student is still "
                    "changing and its ΔE and verdict are not its final answer.")


def convergence_html(status) -> str | None:
    """The run's plateau state (a ``dmdcore.convergence.StudentStatus``) as HTML: green when
    converged, greyed otherwise."""
    if status is None:
        return None
    import html

    text, tip = html.escape(status.text()), html.escape(CONVERGENCE_HELP, quote=True)
    if status.converged:
        return (f"<span style='background:#1b7f3b;color:white;padding:2px 8px;border-radius:4px' "
                f"title=\"{tip}\">✓ {text}</span>")
    return f"<span style='color:#8a8a8a' title=\"{tip}\">○ {text}</span>"


def convergence_badge(status) -> None:
    """The plateau state on its own line (when there is no verdict to put it beside)."""
    html = convergence_html(status)
    if html:
        st.markdown(html, unsafe_allow_html=True, help=CONVERGENCE_HELP)


def headline(row: dict | None, *, n: int | None, d: int | None, modes=None, total: int | None = None,
             convergence=None) -> None:
    """Metric tiles of the selected evaluation row (each with its formula and chance level), the
    verdict, and the run's convergence state (``dmdcore.convergence.StudentStatus``) beside it."""
    cols = st.columns(len(TILES))
    if row is None or _num(row.get("delta_e")) is None:
        cols[0].metric(TILES[0][1], "—", help=TILE_HELP["delta_e"])
        convergence_badge(convergence)
        return
    for col, (key, label) in zip(cols, TILES):
        v = _num(row.get(key))
        col.metric(label, "—" if v is None else f"{v:.3f}", help=TILE_HELP[key])
    lo, hi = _num(row.get("delta_e_lo")), _num(row.get("delta_e_hi"))
    ci = f" · ΔE 95% CI [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    of = f" of {total}" if total else ""
    st.caption(f"Evaluation at student step {row.get('step')}{of} · n = {n or '—'} · d = {d or '—'}{ci}")
    # the copy verdict of the selected evaluation: ΔE with n, d, its controls (ui/verdict.py)
    render_verdict(row, n_modes=None if modes is None else int(modes.centers.shape[0]),
                   beside=convergence_html(convergence))  # the convergence state right under the verdict

