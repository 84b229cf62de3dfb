"""Presets: real models and accelerators as TOML data, plus the user's own.

A MODEL argument is a preset name (``llama-3-8b``), a TOML model file, or a Hugging Face
``config.json``. User presets live in ``<config dir>/presets/models/*.toml`` and
``<config dir>/presets/hardware/*.toml``; the config dir is ``$LLMPLAN_CONFIG_DIR`` or the
platformdirs user config folder for ``llmplan``. A user preset with a built-in's name wins.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from planner.config import ConfigError, LlmplanError, ModelConfig

from planner.hardware import Hardware
from planner.tomlio import read_toml

BUILTIN_DIR = Path(__file__).resolve().parent
KINDS = ("models", "hardware")


class PresetError(LlmplanError):
    """Unknown preset, unreadable or malformed preset file."""


def config_dir() -> Path:
    """The user's llmplan config folder (``$LLMPLAN_CONFIG_DIR`` overrides)."""
    override = os.environ.get("LLMPLAN_CONFIG_DIR")
    if override:
        return Path(override)
    import platformdirs  # deferred: only needed when user presets are consulted (~5 ms)

    return platformdirs.user_config_path("llmplan")


def _preset_dirs(kind: str) -> list[Path]:
    return [BUILTIN_DIR / kind, config_dir() / "presets" / kind]


def preset_files(kind: str) -> dict[str, Path]:
    """Name -> file for every preset of ``kind`` (later folders override earlier ones)."""
    if kind not in KINDS:
        raise PresetError(f"unknown preset kind {kind!r} (use model or hardware)")
    found: dict[str, Path] = {}
    for folder in _preset_dirs(kind):
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found[path.stem] = path
    return found


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, PresetError)


def _model_from_toml(path: Path, default_name: str) -> ModelConfig:
    data = _read_toml(path)
    table = data.get("model", data)  # a bare file or one with a [model] table
    if not isinstance(table, dict):
        raise PresetError(f"{path}: [model] must be a table")
    table = {"name": default_name, **table}
    return ModelConfig.from_dict(table, where=str(path))


def _model_from_json(path: Path) -> ModelConfig:
    from presets.hf import from_hf_config

    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise PresetError(f"{path}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise PresetError(f"{path}: malformed JSON ({err.msg} at line {err.lineno})") from None
    name = path.parent.name if path.name == "config.json" else path.stem
    return from_hf_config(data, name=name or "hf", where=str(path))


def _file_version(path: Path) -> tuple[int, int]:
    """What changes when a file is edited (modification time in ns, size): the cache key, so
    a model file edited while the TUI runs is read again."""
    try:
        st = path.stat()
    except OSError:
        return (0, 0)  # read (and reported) by the loader itself
    return (st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=256)
def _load_model_file(kind: str, path: Path, name: str, version: tuple[int, int]) -> ModelConfig:
    return _model_from_json(path) if kind == "json" else _model_from_toml(path, name)


def load_model(spec: str, overrides: Mapping[str, str] | None = None) -> ModelConfig:
    """Resolve a MODEL argument (preset name, .toml file, HF config.json or model folder) and
    apply overrides.
    Files are cached by path and version, so an edited file is never read stale."""
    if spec.endswith(".json"):
        kind, path, name = "json", Path(spec), ""
    elif Path(spec).is_dir():  # a Hugging Face model folder
        path = Path(spec) / "config.json"
        if not path.exists():
            raise PresetError(f"{spec}: a model folder needs a config.json")
        kind, name = "json", Path(spec).resolve().name
    elif spec.endswith(".toml"):
        kind, path, name = "toml", Path(spec), Path(spec).stem
    else:
        files = preset_files("models")
        if spec not in files:
            raise PresetError(f"unknown model preset {spec!r} ({_suggest(spec, files)})")
        kind, path, name = "toml", files[spec], spec
    cfg = _load_model_file(kind, path, name, _file_version(path))
    return cfg.with_overrides(overrides) if overrides else cfg


HARDWARE_ALIASES: dict[str, str] = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb": "h100-sxm",
    "a100": "a100-80gb", "a100-sxm": "a100-80gb", "a100-80g": "a100-80gb",
    "a100-40g": "a100-40gb", "h800-sxm": "h800", "h200-sxm": "h200", "gb200-nvl72": "gb200",
    "4090": "rtx-4090", "rtx4090": "rtx-4090", "v5p": "tpu-v5p",
}
"""The one table of accelerator aliases (alias -> hardware preset), read wherever a hardware
name is (``--hardware``, profiles, fitted constants) and listed by ``llmplan presets``. Case
does not matter; a preset file of the same name (a user's own ``h100.toml``) wins over it."""


def canonical_hardware(name: str) -> str:
    """The hardware preset a name means: itself when a preset (or a ``.toml`` file) has that
    name, else the alias's target, else the name unchanged (the caller reports it)."""
    if name.endswith(".toml"):
        return name
    files = preset_files("hardware")
    if name in files:
        return name
    target = HARDWARE_ALIASES.get(name.lower())
    if target is not None and target in files:
        return target
    return name.lower() if name.lower() in files else name


def load_hardware(name: str) -> Hardware:
    """A hardware preset by name or alias, or a TOML file describing one (cached by file
    version)."""
    if name.endswith(".toml"):
        path = Path(name)
    else:
        files = preset_files("hardware")
        resolved = canonical_hardware(name)
        if resolved not in files:
            raise PresetError(f"unknown hardware preset {name!r} "
                              f"({_suggest(name, {**files, **HARDWARE_ALIASES})})")
        path = files[resolved]
    return _load_hardware_file(path, _file_version(path))


@lru_cache(maxsize=64)
def _load_hardware_file(path: Path, version: tuple[int, int]) -> Hardware:
    data = _read_toml(path)
    table = {k: v for k, v in data.get("hardware", data).items() if k not in FITTED_TABLES}
    return Hardware.from_dict({"name": path.stem, **table}, where=str(path))


FITTED_TABLES = ("cost_model", "accuracy")
"""Tables a hardware preset may carry beside its fields: the cost-model constants fitted to
published runs of its chip and the held-out error they leave (``llmplan validate
--published --write``), each with its provenance."""


def preset_fit(hardware: str) -> dict[str, Any]:
    """The ``[cost_model]`` and ``[accuracy]`` tables of a hardware preset ({} without)."""
    files = preset_files("hardware")
    path = Path(hardware) if hardware.endswith(".toml") else files.get(canonical_hardware(hardware))
    if path is None or not path.exists():
        return {}
    data = _read_toml(path)
    return {k: data[k] for k in FITTED_TABLES if isinstance(data.get(k), dict)}


def _suggest(name: str, files: Mapping[str, Path]) -> str:
    import difflib  # deferred: only on the error path

    close = difflib.get_close_matches(name, list(files), n=3)
    if close:
        return "did you mean " + ", ".join(close) + "?"
    return "see `llmplan presets`"


def default_hardware(device: str) -> str:
    """The hardware preset a run's predictions use when none is named: the nominal ``cpu``
    preset for CPU processes, an H100 SXM for CUDA."""
    return "cpu" if device == "cpu" else "h100-sxm"


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` from ``--set`` -> dict, with a clear error for a missing ``=``."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = value
    return out


def profile_path(hardware: str) -> Path:
    """Where `llmplan calibrate` keeps the fitted constants for an accelerator (an alias
    shares its preset's profile)."""
    return config_dir() / "profiles" / f"{canonical_hardware(hardware)}.toml"


def load_profile(hardware: str) -> dict:
    """The saved calibration for ``hardware`` ({} when there is none)."""
    path = profile_path(hardware)
    if not path.exists():
        return {}
    return _read_toml(path)


def save_profile(hardware: str, accuracy, cost_model: Mapping[str, Any] | None = None) -> Path:
    """Record ``accuracy`` (and fitted constants, when given) in the hardware's profile,
    keeping whatever else it holds; the planner's bands and cost model read it from there."""
    from planner.tomlio import write_toml

    profile = load_profile(hardware)
    profile["hardware"] = hardware
    if cost_model is not None:
        profile["cost_model"] = dict(cost_model)
    profile["accuracy"] = accuracy.to_dict()
    return write_toml(profile_path(hardware), profile)


def load_accuracy(hardware: str):
    """How far the planner has been from real runs on ``hardware``: the profile's record
    (written by `llmplan calibrate` / `llmplan validate`), else the reference default."""
    from planner.accuracy import DEFAULT_ACCURACY, Accuracy

    record = load_profile(hardware).get("accuracy") or preset_fit(hardware).get("accuracy", {})
    if "step_time_ratio" not in record:
        return DEFAULT_ACCURACY
    try:
        return Accuracy.from_dict(record)
    except (KeyError, TypeError, ValueError) as err:
        raise PresetError(f"{profile_path(hardware)}: accuracy: {err}") from None


def load_cost_model(hardware: str, *, fused: bool = False, serving: bool = False):
    """The planner's cost model for ``hardware``: the constants a calibration on this machine
    fitted (its profile), else those fitted to published runs of its chip (the preset's
    ``[cost_model]``), else the uncalibrated defaults. Element-wise work runs as eager
    PyTorch kernels (llmplan's runtime, torchtitan and accelerate without compile) unless
    ``fused`` (Megatron-LM's fused kernels). ``serving``: with the constants ``validate
    --serving`` fitted for generation on this machine (its profile's ``[serving]``) on top."""
    from planner.cost import CostModel

    profile = load_profile(hardware)
    fitted = dict(profile.get("cost_model") or preset_fit(hardware).get("cost_model", {}))
    if serving:
        fitted.update(profile.get("serving", {}))
    known = {k: v for k, v in fitted.items() if k in CostModel.__dataclass_fields__}  # not provenance
    try:
        return CostModel(**known).replace(eager=not fused)
    except TypeError as err:
        raise PresetError(f"{profile_path(hardware)}: {err}") from None


def write_fit(chip: str, peak_tflops_bf16: float, cost_model: Mapping[str, Any],
              accuracy: Mapping[str, Any], provenance: str) -> list[Path]:
    """Write the constants fitted to published runs of ``chip`` (and the held-out error they
    leave) into every built-in hardware preset of that chip with the same bf16 peak (the
    fitted efficiencies are fractions of it), keeping each file's other fields."""
    import tomlkit  # deferred: only this writer needs it

    written = []
    for path in sorted((BUILTIN_DIR / "hardware").glob("*.toml")):
        hw = _load_hardware_file(path, _file_version(path))
        if hw.chip != chip or hw.peak_tflops_bf16 != peak_tflops_bf16:
            continue
        doc = tomlkit.parse(path.read_text())
        doc["cost_model"] = {"provenance": provenance, **cost_model}
        doc["accuracy"] = dict(accuracy)
        path.write_text(tomlkit.dumps(doc))
        written.append(path)
    return written


# ---- one preset's file: show it, copy it into the user's folder ---------------------------
PRESET_KINDS = {"model": "models", "hardware": "hardware"}
"""The ``--kind`` values and the preset folders they name."""

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def find_preset(name: str, kind: str = "") -> tuple[str, str, Path]:
    """``(kind, name, path)`` of the model or hardware preset ``name`` (a hardware alias
    resolves to its preset); ``kind`` ("model" or "hardware", "" for either) picks one when
    both have a preset of that name."""
    if kind and kind not in PRESET_KINDS:
        raise PresetError(f"--kind {kind!r}: use model or hardware")
    found = []
    for k in ([kind] if kind else list(PRESET_KINDS)):
        files = preset_files(PRESET_KINDS[k])
        resolved = canonical_hardware(name) if k == "hardware" else name
        if resolved in files:
            found.append((k, resolved, files[resolved]))
    if len(found) > 1:
        raise PresetError(f"{name!r} names a model and a hardware preset: add --kind model "
                          "or --kind hardware")
    if not found:
        every = {n: Path() for k in ([kind] if kind else list(PRESET_KINDS))
                 for n in preset_files(PRESET_KINDS[k])}
        what = f"{kind} preset" if kind else "preset"
        raise PresetError(f"unknown {what} {name!r} ({_suggest(name, every)})")
    return found[0]


def read_toml_text(path: Path) -> tuple[str, str]:
    """A preset file's text and its ``source`` field (checked to parse)."""
    data = _read_toml(path)
    table = data.get("model", data.get("hardware", data))
    source = table.get("source", "") if isinstance(table, dict) else ""
    try:
        return path.read_text(), str(source)
    except OSError as err:
        raise PresetError(f"{path}: cannot read ({err.strerror})") from None


def is_user_preset(path: Path) -> bool:
    """Whether ``path`` is in the user's preset folder (not a built-in)."""
    return path.resolve().parent.parent == (config_dir() / "presets").resolve()


def new_user_preset(source: str, name: str = "", kind: str = "") -> tuple[str, Path]:
    """Copy the preset ``source`` into ``<config dir>/presets/<kind>/<name>.toml`` (``name``
    defaults to the source's, which then overrides the built-in), with its ``name`` field
    set to ``name`` and its comments kept; refuses to overwrite a user preset. Written
    atomically (``planner.outputs.write_text``). Returns ``(kind, path)``."""
    import tomlkit  # deferred: only this writer needs it

    from planner.outputs import writable_file, write_text

    kind, resolved, path = find_preset(source, kind)
    name = name or resolved
    if name != name.strip() or not name or not set(name) <= _NAME_CHARS or \
            name.startswith((".", "-")) or name.endswith((".toml", ".json")):
        raise PresetError(f"--name {name!r}: use letters, digits, '.', '_' and '-' "
                          "(no extension)")
    dest = config_dir() / "presets" / PRESET_KINDS[kind] / f"{name}.toml"
    if dest.exists():
        raise PresetError(f"user preset {dest} exists: remove it or choose another --name")
    writable_file(dest, "user preset", overwrite=False)
    try:
        doc = tomlkit.parse(path.read_text())
    except OSError as err:
        raise PresetError(f"{path}: cannot read ({err.strerror})") from None
    table = doc["model"] if kind == "model" and isinstance(doc.get("model"), dict) else doc
    if kind == "hardware":
        table = doc["hardware"] if isinstance(doc.get("hardware"), dict) else doc
    table["name"] = name
    header = f"# {name}: a user preset copied from {path} (llmplan presets new)\n"
    write_text(dest, header + tomlkit.dumps(doc), "user preset")
    return kind, dest
