"""LoRA adapters on the runtime's decoder (Hu et al. 2021, arXiv 2106.09685 §4.1), in peft's
conventions so that an adapter moves between the two unchanged.

``y = W x + b + (alpha / r) B A dropout(x)`` with A (r x in) drawn as peft draws it
(``kaiming_uniform_(a=sqrt(5))``: U(-1/sqrt(in), 1/sqrt(in))) and B zero, so training starts
from the base model exactly. A targeted ``nn.Linear`` becomes a :class:`LoRALinear` holding
the same ``weight`` and ``bias`` (their names, and so checkpoint loading, do not change) and
two new modules ``lora_A`` and ``lora_B``; every other parameter is frozen.

Targets are peft's names, matched through the family's checkpoint names
(``runtime.hf_names``): the module whose checkpoint tensor is ``...self_attn.q_proj.weight``
is the target ``q_proj``. The saved adapter is peft's format (``adapter_config.json`` and
``adapter_model.safetensors`` keyed ``base_model.model.<module>.lora_A.weight``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from planner.config import ConfigError, ModelConfig
from planner.finetune import Adapters

ADAPTER_NAMES = (".lora_A.", ".lora_B.")
PEFT_PREFIX = "base_model.model."


def is_adapter(name: str) -> bool:
    return any(part in name for part in ADAPTER_NAMES)


class LoRALinear(nn.Linear):
    """A frozen linear map plus its trainable low-rank update (module docstring)."""

    def __init__(self, base: nn.Linear, adapters: Adapters) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, adapters.rank, bias=False, device=device)
        self.lora_B = nn.Linear(adapters.rank, base.out_features, bias=False, device=device)
        self.lora_dropout = nn.Dropout(adapters.dropout) if adapters.dropout else nn.Identity()
        self.scaling = adapters.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = frozen_linear(x, self.weight, self.bias)
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """W + (alpha / r) B A, whole (gathered from shards where they are sharded; a 4-bit
        W dequantised, as peft merges into a QLoRA base)."""
        def full(t):
            return t.full_tensor() if hasattr(t, "full_tensor") else t

        w = self.weight
        w = w.get_original_weight() if is_nf4(w) else full(w)
        return w + self.scaling * (full(self.lora_B.weight) @ full(self.lora_A.weight))


class NF4Linear(nn.Linear):
    """A frozen linear map whose weight is held in 4-bit NormalFloat (a QLoRA base's linears
    that carry no adapter)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return frozen_linear(x, self.weight, self.bias)


def is_nf4(t) -> bool:
    return type(t).__name__ == "NF4Tensor"


def frozen_linear(x, weight, bias):
    """x W^T + b; a 4-bit weight through torchao's ``linear_nf4`` (dequantised for the
    matmul and again for the input gradient, never a weight gradient)."""
    if is_nf4(weight):
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

        out = linear_nf4(x, weight)
        return out if bias is None else out + bias
    return F.linear(x, weight, bias)


NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256  # QLoRA §3, as planner.frozen_base counts them


@torch.no_grad()
def quantise_base(model: nn.Module, cfg: ModelConfig) -> None:
    """QLoRA: every block linear's weight to torchao's NF4 tensor (4-bit NormalFloat, block-64
    absmax, the absmax double-quantised per 256 blocks), as ``planner.frozen_base`` holds
    it; the embedding, LM head and norms stay as they are."""
    from planner.lora import linear_modules
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    names = {m.name for m in linear_modules(cfg) if m.part != "head"}
    for name in matching_modules(cfg, model, names):
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        module = getattr(holder, leaf)
        if not isinstance(module, LoRALinear):
            module.__class__ = NF4Linear
        module.weight = nn.Parameter(to_nf4(module.weight.detach(), NF4_BLOCK, NF4_SCALER_BLOCK),
                                     requires_grad=False)


def target_modules(cfg: ModelConfig, model: nn.Module, adapters: Adapters) -> dict[str, str]:
    """Our module path -> the checkpoint module path (``model.layers.0.self_attn.q_proj``) of
    every linear the adapters' targets name."""
    from planner.finetune import adapted

    return matching_modules(cfg, model, {m.name for m in adapted(cfg, adapters)})


def matching_modules(cfg: ModelConfig, model: nn.Module, wanted: set[str]) -> dict[str, str]:
    """Our module path -> checkpoint module path of every linear whose checkpoint name ends
    in one of ``wanted`` (peft's names). A fused or transposed checkpoint tensor is refused
    (``planner.layout.runtime_adapter_problems`` says so before launch)."""
    from runtime.hf_names import pieces

    linears = [name for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not name.endswith((".lora_A", ".lora_B"))]
    where = pieces(cfg, [f"{n}.weight" for n in linears])
    out = {}
    for name in linears:
        piece = where[f"{name}.weight"]
        theirs = piece.theirs.removesuffix(".weight")
        if theirs.rsplit(".", 1)[-1] not in wanted:
            continue
        if piece.rows is not None or piece.transposed:
            raise ConfigError(f"{cfg.family}: LoRA on {theirs.rsplit('.', 1)[-1]} is not run "
                              "(the checkpoint fuses or transposes it)")
        out[name] = theirs
    return out


def apply_lora(model: nn.Module, cfg: ModelConfig, adapters: Adapters) -> dict[str, str]:
    """Put adapters on the targeted linears of ``model`` (on any device, meta included) and
    freeze everything else; returns :func:`target_modules`."""
    targets = target_modules(cfg, model, adapters)
    model.adapters = adapters
    for p in model.parameters():
        p.requires_grad_(False)
    for name, theirs in targets.items():
        parent, _, leaf = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, leaf, LoRALinear(getattr(holder, leaf), adapters))
    model.lora_targets = targets
    return targets


def _local_rows(param) -> torch.Tensor | None:
    from runtime.init import global_indices

    return global_indices(param)[1][0]


@torch.no_grad()
def init_adapters(model: nn.Module, *, seed: int, source: str = "") -> None:
    """A from peft's rule and B zero (the same on every rank and layout: each A drawn whole
    from its own seeded generator), or both from a peft adapter folder ``source``; each rank
    writes only its shard."""
    from runtime.init import _seed, canonical_name

    tensors = read_adapter(source) if source else None
    for name, p in model.named_parameters():
        if not is_adapter(name):
            continue
        canon = canonical_name(name, False)
        if tensors is not None:
            module, _, kind = canon.rpartition(".lora_")
            key = f"{PEFT_PREFIX}{model.lora_targets[module]}.lora_{kind}"
            if key not in tensors:
                raise ConfigError(f"{source}: adapter has no tensor {key}")
            full = tensors[key].float()
            if tuple(full.shape) != tuple(p.shape):
                raise ConfigError(f"{source}: {key} has shape {list(full.shape)}, the model "
                                  f"needs {list(p.shape)}")
        elif ".lora_A." in name:
            bound = 1.0 / math.sqrt(p.shape[1])
            gen = torch.Generator().manual_seed(_seed(seed, canon, 0))
            full = torch.rand(tuple(p.shape), generator=gen) * 2 * bound - bound
        else:
            full = torch.zeros(tuple(p.shape))
        local = p.to_local() if hasattr(p, "to_local") else p
        rows = _local_rows(p)
        local.copy_((full if rows is None else full[rows]).to(local.dtype))


def read_adapter(folder: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(folder) / "adapter_model.safetensors"
    if not path.exists():
        raise ConfigError(f"{folder}: no adapter_model.safetensors (a peft adapter folder)")
    return load_file(str(path))


def check_adapter_folder(folder: str, adapters: Adapters) -> None:
    """Before launch: a peft LoRA folder whose rank and alpha are the run's."""
    path = Path(folder) / "adapter_config.json"
    if not path.exists():
        raise ConfigError(f"--init-adapter {folder}: no adapter_config.json (a peft adapter folder)")
    config = json.loads(path.read_text())
    r, alpha = config.get("r"), config.get("lora_alpha")
    if r != adapters.rank or alpha != adapters.alpha:
        raise ConfigError(f"--init-adapter {folder}: r({r}) and lora_alpha({alpha}) differ from "
                          f"--lora-rank({adapters.rank}) and --lora-alpha({adapters.alpha:g})")


@torch.no_grad()
def save_adapter(parts: list[nn.Module], cfg: ModelConfig, out: str, *, rank0: bool,
                 base: str = "") -> None:
    """peft's adapter folder: every rank gathers each adapter tensor (a collective for a
    sharded one), rank 0 writes them with the config peft reads back."""
    from safetensors.torch import save_file

    from runtime.init import canonical_name

    tensors: dict[str, torch.Tensor] = {}
    adapters = None
    for part in parts:
        adapters = part.adapters
        for name, p in part.named_parameters():
            if is_adapter(name):
                full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
                module, _, kind = canonical_name(name, False).rpartition(".lora_")
                tensors[f"{PEFT_PREFIX}{part.lora_targets[module]}.lora_{kind}"] = \
                    full.contiguous().clone()
    if not rank0 or adapters is None:
        return
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": adapters.rank,
              "lora_alpha": adapters.alpha, "lora_dropout": adapters.dropout,
              "target_modules": sorted({t.rsplit(".", 1)[-1] for t in parts[0].lora_targets.values()}),
              "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
              "base_model_name_or_path": base or None}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


@torch.no_grad()
def merge_adapters(parts: list[nn.Module]) -> None:
    """Fold each adapter into its weight, W <- W + (alpha / r) B A, on every rank's shard (the
    model then computes what it computed with the adapters); the adapters are zeroed."""
    for part in parts:
        for m in part.modules():
            if isinstance(m, LoRALinear):
                merged = m.merged_weight()
                w = m.weight
                if is_nf4(w):  # a QLoRA base merges into its dequantised weight
                    m.weight = nn.Parameter(merged, requires_grad=False)
                else:
                    local = w.to_local() if hasattr(w, "to_local") else w
                    rows = _local_rows(w)
                    local.copy_((merged if rows is None else merged[rows]).to(local.dtype))
                m.lora_B.weight.zero_()
            elif isinstance(m, NF4Linear):
                m.weight = nn.Parameter(m.weight.get_original_weight(), requires_grad=False)
