"""Toy Lab glue between widget values and the engine (no training logic here).

``build_config`` turns the flat control values of ``ui.urlstate`` into a
``dmdcore.config.ExperimentConfig``; ``request_autostart`` is how the Home page's
"start here" button hands a configuration to the Toy Lab.
"""

from __future__ import annotations

from typing import Any, MutableMapping

from ui import urlstate

# Session-state keys shared by Home and Toy Lab.
AUTOSTART_KEY = "toylab_autostart"
PENDING_VALUES_KEY = "toylab_pending_values"

# The Home page's one-click demo: shipped 8-gaussians teacher, a short distillation.
START_HERE_VALUES: dict[str, Any] = {
    "teacher_source": "shipped",
    "shipped_name": "8gaussians",
    "dataset": "8gaussians",
    "dim": 2,
    "s_steps": 300,
    "eval_n": 1000,
    "eval_every": 25,
}


def request_autostart(state: MutableMapping[str, Any], values: dict[str, Any]) -> None:
    """Ask the Toy Lab to load ``values`` (checked) into its controls and start distilling."""
    checked = {k: urlstate.check(k, v) for k, v in values.items()}
    state[PENDING_VALUES_KEY] = checked
    state[AUTOSTART_KEY] = True
