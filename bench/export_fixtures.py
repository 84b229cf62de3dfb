"""Regenerate the option-name fixtures that exports are checked against, from each
framework's own source at a pinned commit (neither installs beside the project's pins:
Megatron-LM's parser lives outside the megatron-core wheel and imports GPU-only packages;
torchtitan 0.2.2 pins ``datasets<4.8``).

    python bench/export_fixtures.py megatron PATH/TO/Megatron-LM   # git checkout of the commit
    python bench/export_fixtures.py torchtitan PATH/TO/torchtitan  # git checkout of v0.2.2

Megatron-LM: ``add_megatron_arguments`` builds the real ``argparse`` parser; GPU-only modules
it imports at module level (triton, transformer_engine, apex, ...) are replaced by permissive
stand-ins that only have to survive import, since only the parser's option table is read.
torchtitan: the dataclass fields of ``torchtitan/config/job_config.py`` (each TOML section is
a ``JobConfig`` field), with the allowed values of ``Literal`` fields, read with ``ast``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.abc
import importlib.machinery
import json
import subprocess
import sys
import types
import typing
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "exports"
GPU_ONLY = ("triton", "transformer_engine", "apex", "einops", "nvtx", "tensorstore", "flash_attn",
            "mamba_ssm", "causal_conv1d", "nvidia_resiliency_ext", "modelopt", "wandb",
            "onelogger", "multistorageclient", "fla")


def _commit(repo: Path) -> str:
    return subprocess.check_output(["git", "-C", str(repo), "rev-parse", "HEAD"], text=True).strip()


class _Anything(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Anything(attr, (), {})

    def __call__(cls, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else _Anything("x", (), {})


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in GPU_ONLY:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__, module.__file__, module.__version__ = [], f"{spec.name}.py", "99.0.0"
        module.__getattr__ = lambda attr: _Anything(attr, (), {})
        return module

    def exec_module(self, module):
        pass


def megatron(repo: Path) -> None:
    import torch  # noqa: F401  (before the stand-ins: torch probes for a real triton)
    import torch._inductor.runtime.triton_compat  # noqa: F401

    sys.meta_path.insert(0, _StandIns())
    typing.override = getattr(typing, "override", lambda f: f)  # Python 3.12 in Megatron-LM
    sys.path.insert(0, str(repo))
    from megatron.training.arguments import add_megatron_arguments

    parser = add_megatron_arguments(argparse.ArgumentParser(allow_abbrev=False))
    options = {}
    for action in parser._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                choices = [getattr(c, "name", c) if not isinstance(c, (str, int, float)) else c
                           for c in action.choices] if action.choices else None
                options[opt] = {"dest": action.dest, "nargs": 0 if action.nargs == 0 else (action.nargs or 1),
                                "choices": choices}
    data = {"source": {"repository": "NVIDIA/Megatron-LM", "path": "megatron/training/arguments.py",
                       "commit": _commit(repo)}, "options": options}
    _write("megatron_options.json", data)


def torchtitan(repo: Path) -> None:
    path = repo / "torchtitan" / "config" / "job_config.py"
    tree = ast.parse(path.read_text())
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}

    def fields(cls: ast.ClassDef) -> dict[str, ast.AnnAssign]:
        return {n.target.id: n for n in cls.body if isinstance(n, ast.AnnAssign)
                and isinstance(n.target, ast.Name)}

    sections = {}

    def section(name: str, cls: ast.ClassDef) -> None:
        """One TOML table; a field whose type is another config class is a nested table
        (``[quantize.linear.float8]``), recorded under its dotted name."""
        table = {}
        for key, field in fields(cls).items():
            ann = field.annotation
            nested = classes.get(ast.unparse(ann))
            if nested is not None:
                section(f"{name}.{key}", nested)
            table[key] = {"type": ast.unparse(ann), "choices": _literal_choices(ann)}
        sections[name] = table

    for name, node in fields(classes["JobConfig"]).items():
        cls = classes.get(ast.unparse(node.annotation))
        if cls is not None:
            section(name, cls)
    data = {"source": {"repository": "pytorch/torchtitan", "path": "torchtitan/config/job_config.py",
                       "commit": _commit(repo)}, "sections": sections}
    _write("torchtitan_job_config.json", data)


def _literal_choices(ann: ast.expr) -> list | None:
    """The values of ``Literal[...]`` (or of ``Literal[...] | None``, None left out)."""
    if isinstance(ann, ast.BinOp) and ast.unparse(ann.right) == "None":
        ann = ann.left
    if isinstance(ann, ast.Subscript) and ast.unparse(ann.value) == "Literal":
        return list(ast.literal_eval(ann.slice))
    return None


def _write(name: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT / name}")


if __name__ == "__main__":
    which, repo = sys.argv[1], Path(sys.argv[2])
    {"megatron": megatron, "torchtitan": torchtitan}[which](repo)
