"""How the decoder is parallelised: mesh, pipeline split, expert parallel
(``runtime.expert_parallel``), tensor/sequence parallel (``runtime.tensor_parallel``), context
parallel (``runtime.context_parallel``), activation checkpointing, data parallel (FSDP2 or
replicated), in torchtitan's order (build, PP split, EP, TP, CP, AC, FSDP). The model file
says *what*; this file says *how*.

Mesh: ``init_device_mesh(device, (pp, dp / ep, ep, cp, tp), ("pp", "edp", "ep", "cp", "tp"))``
-- tp innermost, so a TP group is adjacent ranks (one node / NVLink domain), as every
framework does; then cp (torchtitan's order pp, dp, cp, tp). The data-parallel index is
edp x ep + ep rank, so an expert-parallel group is ep consecutive dp indices and, for ep = 1,
the ranks are where the 3-D mesh (pp, dp, tp) had them. Flattened from it (torchtitan's
``_flatten``, bookkept by :class:`Mesh`): ``dp`` (edp, ep) for the data split,
``dp_cp`` (edp, ep, cp) over which dense weights are replicated (gradients averaged, ZeRO and
FSDP sharded: torchtitan's dp_shard_cp), and ``expert_dp_cp`` (edp, cp) over which each
expert is replicated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from planner.config import ModelConfig

from planner.setup import Parallel, TrainSetup
from planner.cost import DP_BUCKET_BYTES
from runtime.model import Decoder, MoE


BF16_COMPUTE = ("bf16", "fp8")
"""Run dtypes computing in bf16 over fp32 master weights (fp8: all but the block linears'
GEMMs, ``runtime.fp8``)."""
MESH_DIMS = ("pp", "edp", "ep", "cp", "tp")
FLATTENED = {"dp": ("edp", "ep"), "dp_cp": ("edp", "ep", "cp"), "expert_dp_cp": ("edp", "cp")}


class Mesh:
    """The run's device mesh (``root``, dims ``MESH_DIMS``) and its named 1-D meshes:
    ``mesh["tp"]``, ``mesh["dp_cp"]``, ... (the flattened ones kept here, as torch asks of
    ``_flatten``'s results)."""

    def __init__(self, root) -> None:
        self.root = root
        self.dims = {name: root[name] for name in MESH_DIMS}
        for name, dims in FLATTENED.items():
            self.dims[name] = root[dims]._flatten(name)

    def __getitem__(self, name: str):
        return self.dims[name]


def build_mesh(par: Parallel, device_type: str, replicas: int = 1) -> Mesh:
    """The layout's mesh; with ``replicas`` > 1 the world holds that many copies of it
    (``runtime.matrix`` runs a narrow layout in a wide world)."""
    from torch.distributed.device_mesh import init_device_mesh

    shape = (par.pp, par.dp // par.ep, par.ep, par.cp, par.tp)
    if replicas == 1:
        return Mesh(init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIMS))
    whole = init_device_mesh(device_type, (replicas, *shape),
                             mesh_dim_names=("replica", *MESH_DIMS))
    return Mesh(whole[MESH_DIMS])


def stage_ids(par: Parallel, pp_rank: int) -> list[int]:
    """Looped placement: rank r holds stages r, r + pp, ... (Megatron's interleaving)."""
    return [pp_rank + k * par.pp for k in range(par.vpp)]


def split_stage(model: Decoder, stage: int, n_stages: int) -> Decoder:
    """A copy of ``model`` keeping only the layers (and ends) that ``stage`` owns; layer names
    keep their global indices so checkpoints reshard across layouts. Called on the meta
    device, where the copy costs nothing."""
    part = copy.deepcopy(model)
    chunk = model.cfg.num_layers // n_stages
    keep = {str(i) for i in range(stage * chunk, (stage + 1) * chunk)}
    for name in list(part.layers.keys()):
        if name not in keep:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
        part.pos_embeddings = None
        part.pos_table = None
        part.embedding_norm = None
    if stage != n_stages - 1:
        part.norm = None
        part.output = None
    return part


def apply_recompute(part: Decoder, recompute: str) -> None:
    """full: checkpoint every block (keep its input only); selective: recompute the attention
    core (Korthikanti et al. 2022 §4.2)."""
    if recompute == "full":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for name in list(part.layers.keys()):
            part.layers[name] = checkpoint_wrapper(part.layers[name], preserve_rng_state=False)
    elif recompute == "selective":
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for block in part.layers.values():
            block.attention.core = checkpoint_wrapper(block.attention.core,
                                                      preserve_rng_state=False)


def apply_fsdp(part: Decoder, dp_mesh, *, zero: int, dtype: str, expert_mesh=None,
               expert_divide: int = 1) -> None:
    """FSDP2 per block and then the root; ZeRO-3 reshards after forward, ZeRO-2 keeps the
    unsharded parameters until backward (``reshard_after_forward=False``). ``dp_mesh`` is the
    dense weights' replicas (dp x cp). Under expert parallelism each local expert is its own
    FSDP unit over ``expert_mesh`` (its replicas, dp x cp / ep), its gradient summed there and
    divided by ``expert_divide`` = dp x cp instead of averaged (torchtitan's
    ``set_gradient_divide_factor`` on the experts over the dp-mod-ep mesh; see
    ``runtime.expert_parallel`` for the factor)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    param_dtype = torch.bfloat16 if dtype in BF16_COMPUTE else torch.float32
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    reshard = zero == 3
    for block in part.layers.values():
        if expert_mesh is not None and isinstance(block.feed_forward, MoE):
            for expert in block.feed_forward.experts.values():
                fully_shard(expert, mesh=expert_mesh, mp_policy=mp, reshard_after_forward=reshard)
                expert.set_gradient_divide_factor(float(expert_divide))
                if expert_mesh.size() > 1:
                    # sum, then divide: a custom factor is otherwise NCCL's PREMUL_SUM, which
                    # gloo lacks (on one rank torch 2.13 divides by the factor itself, and
                    # forcing the sum there would divide twice)
                    expert.set_force_sum_reduction_for_comms(True)
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(part, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)


@dataclass
class Built:
    parts: list[Decoder]
    stages: list[int]
    n_stages: int
    mesh: object
    fsdp: bool
    tied_group: object = None
    """Under pipelining with tied embeddings: the two ranks (first and last stage) that each
    hold a copy of the shared weight, whose gradients are summed (Megatron's embedding group)."""
    tp_summed: list = field(default_factory=list)
    """K/V projections replicated over TP (tp > kv heads): gradients summed over the group."""
    experts: list = field(default_factory=list)
    """Under expert parallelism: this rank's experts' parameters, replicated over
    ``mesh["expert_dp_cp"]`` (every other parameter over ``mesh["dp_cp"]``)."""


def tied_embedding_group(mesh, par: Parallel):
    """A process group joining this rank with its pipeline peer holding the other copy of the
    tied embedding (pipeline ranks 0 and pp - 1 at the same (dp, cp, tp) coordinate;
    Megatron's embedding group). ``new_group`` is collective over the world, so every rank
    learns every pair (the world may hold several replicas of this mesh) and creates them in
    order."""
    coordinate = mesh.root.get_coordinate()  # (pp, edp, ep, cp, tp) of this rank
    peer = list(coordinate)
    peer[0] = par.pp - 1 if coordinate[0] == 0 else 0
    mine = tuple(sorted({dist.get_rank(), int(mesh.root.mesh[tuple(peer)])}))
    pairs: list = [None] * dist.get_world_size()
    dist.all_gather_object(pairs, mine if coordinate[0] in (0, par.pp - 1) else None)
    group = None
    for pair in sorted({p for p in pairs if p is not None}):
        made = dist.new_group(list(pair))
        if pair == mine:
            group = made
    return group


def build(cfg: ModelConfig, setup: TrainSetup, par: Parallel, *, device: torch.device,
          seed: int, mesh: Mesh | None = None, weights: str = "",
          adapter_init: str = "") -> Built:
    """The model parts this rank runs, parallelised, built on the meta device and then
    materialised shard by shard: no rank ever allocates the whole model, and the weights are
    the same in every layout (``runtime.init``, or a Hugging Face folder's ``weights`` read
    slice by slice, ``runtime.hf_weights``); LoRA adapters (``runtime.lora``) go on before
    any sharding and start from peft's initialisation or a peft adapter folder."""
    from runtime.context_parallel import apply_cp
    from runtime.expert_parallel import apply_ep, expert_params
    from runtime.hf_weights import load_weights
    from runtime.init import init_weights
    from runtime.tensor_parallel import apply_tp, replicated_kv_params, shard_embedding_grad

    mesh = mesh if mesh is not None else build_mesh(par, device.type)
    with torch.device("meta"):
        model = Decoder(cfg)
    if setup.adapters is not None:  # before any sharding: FSDP shards what exists then
        from runtime.lora import apply_lora

        apply_lora(model, cfg, setup.adapters)
    if setup.dtype == "fp8":  # before any sharding, as torchtitan converts
        from runtime.fp8 import apply_fp8, emulated

        apply_fp8(model, emulate=emulated(device))
    pp_rank = mesh["pp"].get_local_rank()
    n_stages = par.pp * par.vpp
    ids = stage_ids(par, pp_rank) if par.pp > 1 else [0]
    parts = [split_stage(model, s, n_stages) for s in ids] if par.pp > 1 else [model]
    fsdp = par.shard_ranks > 1 and par.zero >= 2
    for part in parts:
        if par.ep > 1:
            apply_ep(part, mesh["ep"])
        if par.tp > 1:
            apply_tp(part, mesh["tp"], sp=par.sp)
        if par.cp > 1:
            apply_cp(part, mesh["cp"], setup.seq_len)
        apply_recompute(part, setup.recompute)
        if fsdp:
            apply_fsdp(part, mesh["dp_cp"], zero=par.zero, dtype=setup.dtype,
                       expert_mesh=mesh["expert_dp_cp"] if par.ep > 1 else None,
                       expert_divide=par.shard_ranks)
        part.to_empty(device=device)
        part.tie_weights()  # to_empty gives each module its own tensor
        if par.tp > 1 and not fsdp:  # FSDP reduce-scatters the gradient to its shard itself
            shard_embedding_grad(part)
        if weights:
            load_weights(part, weights, cfg)
        else:
            init_weights(part, seed, tied=cfg.tie_embeddings)
        if setup.adapters is not None:
            from runtime.lora import init_adapters

            init_adapters(part, seed=seed, source=adapter_init)
            if setup.adapters.base_bits == 4:
                from runtime.lora import quantise_base

                quantise_base(part, cfg)
        part.reset_buffers()
    tied = tied_embedding_group(mesh, par) if cfg.tie_embeddings and par.pp > 1 else None
    summed = [p for part in parts for p in replicated_kv_params(part, par.tp)]
    experts = [p for part in parts for p in expert_params(part)] if par.ep > 1 else []
    return Built(parts=parts, stages=ids, n_stages=n_stages, mesh=mesh, fsdp=fsdp,
                 tied_group=tied, tp_summed=summed, experts=experts)


def tied_weight(part: Decoder):
    """The copy of the shared embedding this pipeline part holds, if any."""
    if part.tok_embeddings is not None:
        return part.tok_embeddings.weight
    return part.output.weight if part.output is not None else None


def local_grad(param) -> torch.Tensor:
    """This rank's piece of ``param``'s gradient, laid out like its piece of the parameter.
    DTensor's embedding backward may leave a replicated gradient on a vocab-sharded weight:
    it is taken to the weight's sharding first (a local slice, no communication)."""
    grad = param.grad
    if hasattr(grad, "placements"):
        if grad.placements != param.placements:
            grad = param.grad = grad.redistribute(param.device_mesh, param.placements)
        return grad.to_local()
    return grad


def sync_tied_grads(built: Built) -> None:
    """Sum the shared embedding's gradient over its two pipeline copies (Megatron's
    ``_allreduce_embedding_grads``), so both take the single-model step."""
    if built.tied_group is None:
        return
    for part in built.parts:
        w = tied_weight(part)
        if w is not None and w.grad is not None:
            g = local_grad(w)
            flat = g.contiguous()  # gloo reduces contiguous buffers only
            dist.all_reduce(flat, group=built.tied_group)
            if flat.data_ptr() != g.data_ptr():
                g.copy_(flat)


def clip_params(built: Built) -> tuple[list, list]:
    """(parameters counted in the gradient norm, copies left out of it): the last stage's
    copy of a tied embedding is the first stage's, so it is counted there only (as Megatron
    does) but clipped like every other gradient."""
    counted, copies = [], []
    for part in built.parts:
        skip = part.output.weight if (built.tied_group is not None and part.output is not None
                                      and part.tok_embeddings is None) else None
        counted.extend(p for p in part.parameters() if p is not skip)
        copies.extend([skip] if skip is not None else [])
    return counted, copies


def replicated_params(built: Built) -> list[tuple[list, object]]:
    """(parameters, the group of ranks holding the same ones) of this rank: the dense
    weights over dp x cp, the experts under expert parallelism over dp x cp / ep."""
    mesh = built.mesh
    experts = {id(p) for p in built.experts}
    dense = [p for part in built.parts for p in part.parameters() if id(p) not in experts]
    groups = [(dense, mesh["dp_cp"].get_group())]
    if built.experts:
        groups.append((list(built.experts), mesh["expert_dp_cp"].get_group()))
    return groups


def allreduce_grads(params: list, group, *, divide_by: int,
                    bucket_bytes: int = DP_BUCKET_BYTES) -> None:
    """Replicated data parallelism (ZeRO-0/1): sum gradients over ``group`` and divide by
    ``divide_by`` (the group's size for an average; dp x cp for experts, which sum the tokens
    of a whole expert-parallel group: ``runtime.expert_parallel``).

    Gradients travel in flat buckets of at most ``bucket_bytes`` (DDP's 25 MiB), one
    collective per bucket rather than one per tensor: a call's fixed cost (about 2 ms for gloo
    on a CPU host) otherwise dominates a small model's step."""
    size = divide_by
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
             for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []

    def flush() -> None:
        if not bucket:
            return
        flat = torch._utils._flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)
        flat.div_(size)
        for g, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
            g.copy_(synced)
        bucket.clear()

    filled = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if bucket and (filled + nbytes > bucket_bytes or g.dtype != bucket[0].dtype):
            flush()
            filled = 0
        bucket.append(g)
        filled += nbytes
    flush()


def _square_norm(params: list) -> torch.Tensor:
    """Sum of squared gradient entries of ``params``: DTensor grads give their full norm, one
    group per device mesh (TP weights live on dp x tp under FSDP, norm scales on dp alone,
    and one norm cannot mix meshes); plain-tensor grads (replicated norms under TP without
    SP) give their local one."""
    groups: dict = {}
    for p in params:
        if p.grad is not None:
            mesh = p.grad.device_mesh if hasattr(p.grad, "full_tensor") else None
            groups.setdefault(mesh, []).append(p)
    sq = torch.zeros((), dtype=torch.float32)
    for group in groups.values():
        n = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0, False, True)
        n = n.full_tensor() if hasattr(n, "full_tensor") else n
        sq = sq.to(n.device) + n.float().pow(2)
    return sq


def clip_grad_norm_(params: list, max_norm: float, pp_group, pp: int, *,
                    also: list | tuple = (), experts: list | tuple = (),
                    ep_group=None) -> torch.Tensor:
    """Total gradient norm over every rank's parameters, then clip (torchtitan's recipe),
    each parameter counted once: every rank of a replica group holds the same reduced
    gradient, so its local squares are the group's; the ``experts`` of an expert-parallel
    group are spread over its ranks, so their squares add up over ``ep_group``; squares add
    up across pipeline stages."""
    held = {id(p) for p in experts}
    sq = _square_norm([p for p in params if id(p) not in held])
    if experts:
        spread = _square_norm([p for p in params if id(p) in held]).to(sq.device)
        dist.all_reduce(spread, group=ep_group)
        sq = sq + spread
    if pp > 1:
        dist.all_reduce(sq, group=pp_group)
    norm = sq.sqrt()
    coef = min(1.0, max_norm / (float(norm) + 1e-6))  # as clip_grads_with_norm_
    if coef < 1.0:  # ``also``: copies left out of the norm (a tied weight's) are clipped too
        for p in [*params, *also]:
            if p.grad is not None:
                p.grad.mul_(coef)  # a Python scalar: DTensor and plain grads alike
    return norm
