"""Sweep specs: parsing and validation of a spec, shipped presets, expansion of the grid into cells.

A *sweep spec* is a dict (JSON / YAML file, shipped preset, or built in Python)::

    {"name": "dimension", "description": "...", "claim": "...",
     "base":  {<partial ExperimentConfig dict, nested or dotted keys>},
     "grid":  {"data.dim": [2, 4, 8], "distill.gan": [false, true], "seed": [0, 1, 2]},
     "quick": {<dotted overrides applied with --quick, e.g. shorter training>},
     "full":  {"grid": {...}, "base": {...}}}  # optional larger variant ("name:full"); null drops an axis

Dotted keys address nested config fields (``data.dim``, ``distill.gan``); the special axis
``seed`` sets ``data.seed``, ``teacher.seed`` and ``distill.seed`` together (a replicate of the
whole pipeline). An axis given as a mapping instead of a list is a *named-level* axis: its key is
a free label and each level names a set of dotted overrides, e.g.
``"loss": {"dmd": {}, "dmd+gan": {"distill.gan": true}, "dmd+reg": {"distill.regression": true}}``.
Every cell of the grid is validated (``ExperimentConfig.validate``) before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
SPEC_FORMAT = "dmdcore.sweep.v1"
SPEC_KEYS = ("name", "description", "claim", "base", "grid", "quick", "full", "plot", "resources")
# Optional per-task resources of a spec ("resources": {...}); used by the ray backend.
RESOURCE_KEYS = ("cpus_per_cell", "gpus_per_cell", "max_retries")
SEED_AXIS = "seed"
SEED_FIELDS = ("data.seed", "teacher.seed", "distill.seed")


def is_replicate_axis(axis: str) -> bool:
    """True for axes whose values are replicates, not conditions: ``seed`` and any ``*.seed``."""
    return axis == SEED_AXIS or axis.endswith(".seed")


class SweepSpecError(ValueError):
    """A sweep spec that cannot run: unknown key, bad value, empty axis, unknown preset."""


# ----------------------------------------------------------------------------------------------
# Spec parsing and validation
# ----------------------------------------------------------------------------------------------

def _experiment_config_cls():
    from dmdcore.config import ExperimentConfig

    return ExperimentConfig


def config_fields() -> list[str]:
    """All dotted field names of ExperimentConfig (``data.dim``, ``distill.gan``, ``name`` …)."""
    cfg = _experiment_config_cls()()
    names: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            names.extend(f"{f.name}.{g.name}" for g in dataclasses.fields(value))
        else:
            names.append(f.name)
    return names


def _sections() -> set[str]:
    return {k.split(".")[0] for k in config_fields() if "." in k}


def _flatten(d: dict, where: str) -> dict[str, Any]:
    """Nested or dotted partial config dict → flat {dotted key: value}; keys checked."""
    if not isinstance(d, dict):
        raise SweepSpecError(f"{where}: must be a mapping of config fields, got {type(d).__name__}")
    sections = _sections()
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if k in sections and isinstance(v, dict):
            for kk, vv in v.items():
                flat[f"{k}.{kk}"] = vv
        else:
            flat[str(k)] = v
    _check_keys(flat, where, allow_seed=False)
    return flat


def _check_keys(keys, where: str, *, allow_seed: bool) -> None:
    valid = config_fields()
    allowed = set(valid) | ({SEED_AXIS} if allow_seed else set())
    for k in keys:
        if k not in allowed:
            listing = ", ".join(([SEED_AXIS] if allow_seed else []) + valid)
            raise SweepSpecError(f"{where}: unknown config key {k!r}; valid keys: {listing}")


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep specification (see module docstring). ``grid`` preserves axis order."""

    name: str
    grid: dict                       # dotted key (or "seed", or a label) -> list of values, in axis order
    levels: dict = field(default_factory=dict)  # named-level axes: label -> {level: {dotted overrides}}
    base: dict = field(default_factory=dict)    # flat dotted overrides shared by all cells
    quick: dict = field(default_factory=dict)   # flat dotted overrides applied with quick=True
    description: str = ""
    claim: str = ""                  # the claim the sweep tests (shown in the page and docs)
    full: dict = field(default_factory=dict)    # {"grid": {...}, "base": {...}} larger variant
    plot: dict = field(default_factory=dict)    # optional hints: {"x": axis, "log_x": bool}
    resources: dict = field(default_factory=dict)  # optional: cpus_per_cell, gpus_per_cell, max_retries

    @classmethod
    def from_dict(cls, d: dict) -> "SweepSpec":
        """Parse and validate a spec dict; raises SweepSpecError naming the bad key/value."""
        if not isinstance(d, dict):
            raise SweepSpecError(f"spec: must be a mapping, got {type(d).__name__}")
        unknown = [k for k in d if k not in SPEC_KEYS]
        if unknown:
            raise SweepSpecError(f"spec: unknown top-level key(s) {unknown}; allowed: {list(SPEC_KEYS)}")
        name = d.get("name", "")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
            raise SweepSpecError(f"spec.name: {name!r} must be 1-64 characters of letters, digits, _ . - ")
        grid = d.get("grid")
        if not isinstance(grid, dict) or not grid:
            raise SweepSpecError("spec.grid: must be a non-empty mapping {config key: [values, ...]}")
        norm_grid: dict[str, list] = {}
        levels: dict[str, dict] = {}
        for k, vals in grid.items():
            if isinstance(vals, dict):
                # A named-level axis: {"level name": {dotted overrides}, ...} (e.g. loss variants).
                if k == SEED_AXIS or k in config_fields():
                    raise SweepSpecError(f"spec.grid[{k!r}]: a named-level axis needs a free label, not a config key")
                if not vals:
                    raise SweepSpecError(f"spec.grid[{k!r}]: must name at least one level")
                levels[k] = {str(name): _flatten(ov or {}, f"spec.grid[{k!r}][{name!r}]") for name, ov in vals.items()}
                norm_grid[k] = list(levels[k])
                continue
            _check_keys([k], "spec.grid", allow_seed=True)
            if not isinstance(vals, (list, tuple)) or len(vals) == 0:
                raise SweepSpecError(f"spec.grid[{k!r}]: must be a non-empty list of values, got {vals!r}")
            keys = [json.dumps(v, sort_keys=True) for v in vals]
            if len(set(keys)) != len(keys):
                raise SweepSpecError(f"spec.grid[{k!r}]: repeated values in {list(vals)}")
            norm_grid[k] = list(vals)
        if SEED_AXIS in norm_grid and any(f in norm_grid for f in SEED_FIELDS):
            raise SweepSpecError(f"spec.grid: axis 'seed' already sets {list(SEED_FIELDS)}; do not sweep them too")
        base = _flatten(d.get("base", {}) or {}, "spec.base")
        quick = _flatten(d.get("quick", {}) or {}, "spec.quick")
        full = d.get("full", {}) or {}
        if not isinstance(full, dict) or any(k not in ("grid", "base") for k in full):
            raise SweepSpecError("spec.full: must be a mapping with optional keys 'grid' and 'base'")
        plot = d.get("plot", {}) or {}
        if not isinstance(plot, dict) or any(k not in ("x", "log_x") for k in plot):
            raise SweepSpecError("spec.plot: must be a mapping with optional keys 'x' and 'log_x'")
        if "x" in plot and plot["x"] not in norm_grid:
            raise SweepSpecError(f"spec.plot.x: {plot['x']!r} is not a grid axis ({list(norm_grid)})")
        for key in ("description", "claim"):
            if not isinstance(d.get(key, ""), str):
                raise SweepSpecError(f"spec.{key}: must be a string")
        spec = cls(name=name, grid=norm_grid, levels=levels, base=base, quick=quick,
                   description=d.get("description", ""), claim=d.get("claim", ""), full=dict(full),
                   plot=dict(plot), resources=_check_resources(d.get("resources", {}) or {}))
        expand(spec, quick=False)   # validates every cell's config
        if spec.quick:
            expand(spec, quick=True)
        return spec

    def to_dict(self) -> dict:
        """JSON-able dict that ``from_dict`` reads back to an equal spec."""
        d = {"name": self.name, "description": self.description, "claim": self.claim,
             "base": dict(self.base),
             "grid": {k: (copy.deepcopy(self.levels[k]) if k in self.levels else list(v)) for k, v in self.grid.items()},
             "quick": dict(self.quick)}
        if self.full:
            d["full"] = copy.deepcopy(self.full)
        if self.plot:
            d["plot"] = dict(self.plot)
        if self.resources:
            d["resources"] = dict(self.resources)
        return d

    def variant(self, name: str) -> "SweepSpec":
        """The named variant: "default" (self) or "full" (grid/base replaced by ``self.full``)."""
        if name in ("", "default"):
            return self
        if name != "full":
            raise SweepSpecError(f"spec variant: {name!r} not in ['default', 'full']")
        if not self.full:
            raise SweepSpecError(f"spec variant: sweep {self.name!r} has no 'full' variant")
        d = self.to_dict()
        d.pop("full")
        d["name"] = f"{self.name}{FULL_SUFFIX}"
        # full.grid adds or replaces axes; an axis set to null is removed.
        d["grid"] = {k: v for k, v in {**d["grid"], **self.full.get("grid", {})}.items() if v is not None}
        d["base"] = {**d["base"], **_flatten(self.full.get("base", {}), "spec.full.base")}
        return SweepSpec.from_dict(d)

    @property
    def n_cells(self) -> int:
        return math.prod(len(v) for v in self.grid.values())


def _check_resources(res) -> dict:
    """spec.resources: per-task CPUs/GPUs and retries of the ray backend, each checked."""
    if not isinstance(res, dict) or any(k not in RESOURCE_KEYS for k in res):
        raise SweepSpecError(f"spec.resources: must be a mapping with optional keys {list(RESOURCE_KEYS)}")
    for k, v in res.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if k == "max_retries":
            ok = ok and isinstance(v, int) and 0 <= v <= 100
        elif k == "cpus_per_cell":
            ok = ok and 0 < v <= 1024
        else:
            ok = ok and 0 <= v <= 64
        if not ok:
            raise SweepSpecError(f"spec.resources.{k}: {v!r} is out of range "
                                 "(cpus_per_cell in (0, 1024], gpus_per_cell in [0, 64], max_retries in 0..100)")
    return dict(res)


FULL_SUFFIX = "-full"  # SweepSpec.variant("full") names the sweep "<preset>-full"


def preset_of(sweep_name: str) -> str:
    """The preset a sweep was made from: "dimension" for "dimension", "dimension:full" (the CLI
    argument) and "dimension-full" (the name ``SweepSpec.variant("full")`` writes to sweep.json)."""
    name = str(sweep_name).partition(":")[0]
    return name[: -len(FULL_SUFFIX)] if name.endswith(FULL_SUFFIX) else name


def list_presets() -> list[str]:
    """Names of the presets shipped in ``dmdcore/presets/*.json`` (sorted)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name: str) -> SweepSpec:
    """A shipped preset by name; ``"name:full"`` selects its larger variant."""
    base_name, _, variant = name.partition(":")
    path = PRESETS_DIR / f"{base_name}.json"
    if not path.is_file():
        raise SweepSpecError(f"preset: {base_name!r} not found; available presets: {list_presets()}")
    return SweepSpec.from_dict(json.loads(path.read_text())).variant(variant or "default")


def load_spec(spec: "str | os.PathLike | dict | SweepSpec") -> SweepSpec:
    """A SweepSpec from a spec object, a dict, a JSON/YAML file path, or a preset name."""
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, dict):
        return SweepSpec.from_dict(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise SweepSpecError(f"spec: expected a preset name, a path or a dict, got {type(spec).__name__}")
    path = Path(spec)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise SweepSpecError(f"spec: file {str(path)!r} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise SweepSpecError("spec: YAML specs need PyYAML (pip install pyyaml); "
                                     "or write the spec as JSON") from exc
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SweepSpecError(f"spec: {path.name} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SweepSpecError(f"spec: {path.name} is not valid JSON: {exc}") from exc
        return SweepSpec.from_dict(data)
    return load_preset(str(spec))


# ----------------------------------------------------------------------------------------------
# Grid expansion
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One grid point: ``overrides`` are the grid values, ``config`` the full validated config."""

    key: str                 # stable directory name: readable values + config hash
    index: int               # position in grid order
    overrides: dict          # axis -> value for this cell
    config: Any              # ExperimentConfig
    teacher_key: str         # hash of the (data, teacher) config: cells sharing it share a teacher


def _set_dotted(d: dict, key: str, value) -> None:
    parts = key.split(".")
    node = d
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = copy.deepcopy(value)


def _get_dotted(d: dict, key: str):
    node = d
    for p in key.split("."):
        node = node[p]
    return node


def _stable_hash(obj, n: int = 10) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _slug(v) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9.=-]+", "", s)[:24]


def teacher_key(config_dict: dict) -> str:
    """Hash identifying the teacher a config trains: its data and teacher sections only."""
    return _stable_hash({"data": config_dict["data"], "teacher": config_dict["teacher"]}, 12)


def cell_config_dict(spec: SweepSpec, overrides: dict, *, quick: bool = False) -> dict:
    """Default config dict ← spec.base ← spec.quick (if quick) ← this cell's grid values."""
    d = _experiment_config_cls()().to_dict()
    for k, v in spec.base.items():
        _set_dotted(d, k, v)
    if quick:
        for k, v in spec.quick.items():
            _set_dotted(d, k, v)
    for k, v in overrides.items():
        if k == SEED_AXIS:
            for f in SEED_FIELDS:
                _set_dotted(d, f, v)
        elif k in spec.levels:
            for kk, vv in spec.levels[k][v].items():
                _set_dotted(d, kk, vv)
        else:
            _set_dotted(d, k, v)
    d["name"] = f"{spec.name}/" + ",".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
    return d


def _check_runnable(cfg) -> None:
    """Cross-field limits that ``pipeline.Experiment`` enforces at construction, checked here so a
    bad spec fails before anything runs (same messages)."""
    if 0 < cfg.eval.bootstrap < 10:
        raise ValueError(f"EvalConfig.bootstrap: {cfg.eval.bootstrap} not in {{0}} ∪ [10, 100000]")
    if cfg.eval.n > cfg.data.n_samples:
        raise ValueError(f"EvalConfig.n: {cfg.eval.n} not in [2, DataConfig.n_samples={cfg.data.n_samples}]")


def expand(spec: SweepSpec, *, quick: bool = False) -> list[Cell]:
    """All cells of the grid (product in axis order), each config validated.

    Raises SweepSpecError naming the cell and the config error when a value is out of range.
    """
    ExperimentConfig = _experiment_config_cls()
    axes = list(spec.grid)
    cells: list[Cell] = []
    for i, values in enumerate(itertools.product(*(spec.grid[a] for a in axes))):
        overrides = dict(zip(axes, values))
        d = cell_config_dict(spec, overrides, quick=quick)
        where = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
        try:
            cfg = ExperimentConfig.from_dict(d)
            cfg.validate()
            _check_runnable(cfg)
        except (ValueError, TypeError, KeyError) as exc:
            raise SweepSpecError(f"spec cell [{where}]: {exc}") from exc
        d = cfg.to_dict()
        readable = "_".join(f"{a.split('.')[-1]}={_slug(v)}" for a, v in overrides.items())
        key = f"{readable[:80]}-{_stable_hash(d, 8)}"
        cells.append(Cell(key=key, index=i, overrides=overrides, config=cfg, teacher_key=teacher_key(d)))
    keys = [c.key for c in cells]
    if len(set(keys)) != len(keys):
        raise SweepSpecError("spec.grid: two cells have identical configurations")
    return cells
