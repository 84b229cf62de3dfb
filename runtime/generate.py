"""Inference: prefill and decode with a preallocated KV cache, tensor-parallel over tp ranks.

``python -m torch.distributed.run ... -m runtime.generate --plan gen.toml``; rank 0 prints
events (``start``, ``token``, ``done``). The cache holds, per layer, K and V of shape
(batch, local kv heads, capacity, d) with capacity the tokens a sequence can attend to (the
sliding window when there is one, used as a ring buffer); ``done`` reports the bytes
allocated next to the planner's ``kv`` figure, which is computed without this code. Prompts of different lengths are right-padded; every cache slot
remembers the absolute position it holds (-1 for padding), and attention masks by position.
Under TP every rank samples from the same replicated logits with the same seeded generator,
so all ranks agree on every token.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from planner.activations import kv_heads_per_rank
from planner.config import ModelConfig
from planner.planfile import read_plan
from presets import default_hardware
from runtime import events
from runtime.launch_checks import check_generation
from runtime.tokenizer import load_tokenizer, prompt_ids

GEN_DEFAULTS: dict[str, Any] = {
    "prompts": ["Hello"], "max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
    "seed": 0, "device": "cpu", "dtype": "fp32", "checkpoint": "", "eos_token": -1,
    "weights_seed": 0, "weights": "", "tokenizer": "", "chat": False, "weight_bits": 16,
}


class KVCache:
    """One layer's cache: K, V (b, g_local, capacity, d) and the position in each slot."""

    def __init__(self, batch: int, kv_heads: int, capacity: int, head_dim: int, *,
                 window: int, dtype: torch.dtype, device: torch.device) -> None:
        self.k = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.capacity, self.window = capacity, window
        self.rows = torch.arange(batch, device=device)[:, None]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def clear(self) -> None:
        """Empty every slot (a slot with position -1 is never attended)."""
        self.pos.fill_(-1)

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """(b, 1, q, k) mask: a real key at or before the query, within the window."""
        qp, kp = q_pos[:, :, None], k_pos[:, None, :]
        ok = (kp >= 0) & (kp <= qp)
        if self.window:
            ok &= qp - kp < self.window
        return ok[:, None]

    def update(self, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store the new keys/values at their positions; return what the queries attend: keys,
        values, the (b, 1, q, k) mask and each key's position (ALiBi's bias)."""
        valid = positions >= 0
        store = torch.where(valid, positions, -1)
        if positions.shape[1] > 1:
            # Prefill: attend the fresh keys directly (a window may be shorter than the prompt),
            # then store each row's last `capacity` real positions (no two share a slot).
            mask = self.allowed(positions, store)
            last = positions.max(dim=1, keepdim=True).values
            keep = valid & (positions > last - self.capacity)
            rows, cols = keep.nonzero(as_tuple=True)
            slots = positions[rows, cols] % self.capacity
            self.k[rows, :, slots] = k[rows, :, cols].to(self.k.dtype)
            self.v[rows, :, slots] = v[rows, :, cols].to(self.v.dtype)
            self.pos[rows, slots] = positions[rows, cols]
            return k, v, mask, store
        self._write(positions.clamp(min=0), k, v, store)
        return self.k, self.v, self.allowed(positions, self.pos), self.pos

    def _write(self, positions, k, v, store) -> None:
        slots = positions % self.capacity
        self.k[self.rows, :, slots] = k.transpose(1, 2).to(self.k.dtype)
        self.v[self.rows, :, slots] = v.transpose(1, 2).to(self.v.dtype)
        self.pos[self.rows, slots] = store


def sample(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float,
           generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (b,) from logits (b, V): greedy at temperature 0; otherwise softmax at the
    temperature restricted to the k most likely (top_k > 0) and to the smallest set whose
    probability reaches top_p (the nucleus, Holtzman et al. 2020)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly before each token
        drop = before >= top_p                 # the top token is always kept
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_tp_inference(model, tp_mesh) -> None:
    """Training's tensor-parallel plan (one table, ``runtime.tensor_parallel.apply_tp``) without
    sequence parallelism, the logits gathered to every rank for sampling."""
    from runtime.tensor_parallel import apply_tp

    apply_tp(model, tp_mesh, sp=False, sharded_logits=False)


def build_model(cfg: ModelConfig, *, tp: int, device: torch.device, opts: dict[str, Any]):
    """The model on the meta device, split over tp ranks, then each rank's shard materialised:
    read from a Hugging Face folder's ``weights`` or initialised as training does."""
    from runtime.hf_weights import load_weights as load_hf
    from runtime.init import init_weights
    from runtime.model import Decoder

    with torch.device("meta"):
        model = Decoder(cfg)
    if tp > 1:
        from torch.distributed.device_mesh import init_device_mesh
        apply_tp_inference(model, init_device_mesh(device.type, (tp,), mesh_dim_names=("tp",)))
    model.to_empty(device=device)
    model.tie_weights()
    if opts["weights"]:
        load_hf(model, str(opts["weights"]), cfg)
    else:
        init_weights(model, int(opts["weights_seed"]), tied=cfg.tie_embeddings)
    model.reset_buffers()
    return model


def load_weights(model, ckpt_dir: str) -> int:
    """Model weights from a training checkpoint (any layout: DCP reshards on load)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         set_model_state_dict)

    from runtime.checkpoint import read_latest

    state = {"model": get_model_state_dict(model)}
    step = read_latest(state, ckpt_dir)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    return step


def checkpoint_model(cfg: ModelConfig, ckpt_dir: str, *, tp: int, device: torch.device,
                     opts: dict[str, Any]):
    """A training checkpoint's model on this rank and its step. A LoRA run's adapters are
    merged into the weights (one process: ``runtime.hf_weights.trained_model``, as ``export``
    writes it; ``runtime.inputs.checkpoint_folder`` refuses tp > 1 for one before launch), so
    the text is the trained model's, not the base's."""
    from runtime.hf_weights import checkpoint_run, trained_model

    _, adapters, run = checkpoint_run(ckpt_dir)
    if adapters is None:
        model = build_model(cfg, tp=tp, device=device, opts=opts)
        return model, load_weights(model, ckpt_dir)
    model, step = trained_model(cfg, adapters, ckpt_dir, run)
    return model.to(device), step


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new: int, caches: list[KVCache],
             temperature: float, top_k: int, top_p: float, seed: int, eos: list[int],
             on_tokens=None) -> dict[str, Any]:
    """Prefill the right-padded batch, then decode one token per row per step; a row stops
    after any of the ``eos`` ids. Timed after one untimed warm-up prefill and decode step on
    the same shapes (first calls allocate and pick kernels; a serving engine's steady state
    does not pay that), whose duration is reported as ``warmup_s``."""
    device = caches[0].k.device
    stop = torch.tensor(eos, dtype=torch.long, device=device)
    b = len(prompts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    s = int(lens.max())
    tokens = torch.zeros(b, s, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.tensor(p, device=device)
    positions = torch.arange(s, device=device)[None].expand(b, s)
    positions = torch.where(positions < lens[:, None], positions, -1)
    gen = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    start = time.perf_counter()
    warm = _forward(model, tokens, positions, caches)[torch.arange(b, device=device), lens - 1]
    _forward(model, warm.argmax(-1)[:, None], lens[:, None], caches)
    sync()
    for cache in caches:
        cache.clear()
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    logits = _forward(model, tokens, positions, caches)
    last = logits[torch.arange(b, device=device), lens - 1]
    out: list[list[int]] = [[] for _ in range(b)]
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    nxt = sample(last, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    sync()
    ttft = time.perf_counter() - start
    decode_start = time.perf_counter()
    decoded = 0
    pos = lens.clone()
    for step in range(max_new):
        for i in range(b):
            if not finished[i]:
                out[i].append(int(nxt[i]))
        if on_tokens is not None:
            on_tokens(step, [int(t) for t in nxt])
        finished |= torch.isin(nxt, stop)
        if bool(finished.all()) or step == max_new - 1:
            break
        logits = _forward(model, nxt[:, None], pos[:, None], caches)
        nxt = sample(logits[:, -1], temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        pos = pos + 1
        decoded += 1
    sync()
    decode_s = time.perf_counter() - decode_start
    return {"tokens": out, "ttft_s": ttft, "warmup_s": warmup_s,
            "prefill_tokens_per_s": float(lens.sum()) / ttft,
            "decode_tokens_per_s": decoded * b / decode_s if decoded else None,
            "tpot_s": decode_s / decoded if decoded else None}


def _forward(model, tokens, positions, caches):
    """The model with the cache: padding positions (-1) embed at 0 but are masked as keys."""
    logits = model(tokens, positions.clamp(min=0), kv_caches=_Positions(caches, positions))
    return logits.to_local() if hasattr(logits, "to_local") else logits


class _Positions(list):
    """Per-layer caches that see the real positions (with -1 padding), not the clamped ones
    the embeddings use."""

    def __init__(self, caches, positions):
        super().__init__(_Layer(c, positions) for c in caches)


class _Layer:
    def __init__(self, cache: KVCache, positions: torch.Tensor) -> None:
        self.cache, self.positions = cache, positions

    def update(self, _clamped, k, v):
        return self.cache.update(self.positions, k, v)


def quantise_int8(model, cfg: ModelConfig) -> None:
    """Int8 weight-only linears (torchao's ``Int8WeightOnlyConfig``: int8 rows, a float32
    scale and an int8 zero point per output row), every other weight as it is; a head tied
    to the embedding stays with it."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def linear(module, fqn: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not (cfg.tie_embeddings and fqn.endswith("output"))

    quantize_(model, Int8WeightOnlyConfig(), filter_fn=linear)


@torch.no_grad()
def prompt_logits(model, prompts: list[list[int]], device) -> torch.Tensor:
    """Each prompt's next-token logits (float32), one prompt at a time, without a cache."""
    rows = []
    for p in prompts:
        logits = model(torch.tensor([p], device=device))
        logits = logits.to_local() if hasattr(logits, "to_local") else logits
        rows.append(logits[0, -1].float())
    return torch.stack(rows)


def weights_nbytes(model) -> int:
    """Bytes the parameters hold, a quantised tensor by the tensors it is made of."""
    def nbytes(t) -> int:
        if hasattr(t, "to_local"):  # a tensor-parallel shard: this rank's part
            t = t.to_local()
        if hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            return sum(nbytes(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += nbytes(p)
    return total


def predicted(cfg: ModelConfig, *, hardware: str, tp: int, batch: int, prompt: int,
              max_new: int, dtype: str, weight_bits: int = 16) -> dict[str, float]:
    """The serving model's times for this very generation (``planner.serving``): the batch's
    prefill, and a decode step at the batch's mean context, with its weight bytes."""
    from planner.kv import cached_tokens, kv_bytes_per_token
    from planner.serving import ServeEstimator, weight_bytes_per_gpu
    from presets import load_cost_model, load_hardware

    est = ServeEstimator(cfg, load_hardware(hardware), load_cost_model(hardware, serving=True),
                         dtype=dtype)
    bits = 32 if dtype == "fp32" else weight_bits
    weights = weight_bytes_per_gpu(cfg, weight_bits=bits, tp=tp)
    context = prompt + max_new // 2
    kv = kv_bytes_per_token(cfg, "fp32" if dtype == "fp32" else "bf16", tp) * cached_tokens(cfg, context) * batch
    tpot = est.decode_step_s(batch, context, tp=tp, weights_bytes=weights, kv_bytes=kv)
    return {"weights_bytes": weights, "ttft_s": est.prefill_s(prompt, tp=tp, weights_bytes=weights, batch=batch),
            "tpot_s": tpot, "decode_tokens_per_s": batch / tpot}


def run(plan_path: str) -> int:
    import torch.distributed as dist

    from planner.kv import kv_report

    plan = read_plan(Path(plan_path), required=("model",))
    cfg = ModelConfig.from_dict(plan["model"], where=f"{plan_path} [model]")
    opts = {**GEN_DEFAULTS, **plan.get("generate", {})}
    tp = int(os.environ.get("WORLD_SIZE", "1"))
    max_new = int(opts["max_new_tokens"])
    tok = load_tokenizer(str(opts["tokenizer"]), model_vocab=cfg.vocab_size)
    chat = bool(opts["chat"])
    check_generation(cfg, tp=tp, prompts=list(opts["prompts"]), max_new=max_new, tokenizer=tok,
                     chat=chat)
    prompts = [prompt_ids(tok, p, chat=chat) for p in opts["prompts"]]
    eos = [int(opts["eos_token"])] if int(opts["eos_token"]) >= 0 else list(tok.eos)
    cuda = opts["device"] == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    say = events.emit if rank == 0 else (lambda ev: None)
    dtype = torch.bfloat16 if opts["dtype"] == "bf16" else torch.float32
    if opts["checkpoint"]:
        model, step = checkpoint_model(cfg, str(opts["checkpoint"]), tp=tp, device=device,
                                       opts=opts)
    else:
        model, step = build_model(cfg, tp=tp, device=device, opts=opts), None
    model.to(dtype=dtype).eval()
    weight_bits = int(opts["weight_bits"])
    logit_diff = None
    if weight_bits == 8:  # its accuracy cost: the prompts' next-token logits before and after
        reference = prompt_logits(model, prompts, device)
        quantise_int8(model, cfg)
        logit_diff = float((prompt_logits(model, prompts, device) - reference).abs().max())

    total = max(len(p) for p in prompts) + max_new
    # a ring buffer needs a slot per token a query can see: the window, else every token
    capacity = min(total, cfg.sliding_window) if cfg.sliding_window else total
    kv_local = kv_heads_per_rank(cfg, tp)
    caches = [KVCache(len(prompts), kv_local, capacity, cfg.head_dim, window=cfg.sliding_window,
                      dtype=dtype, device=device) for _ in range(cfg.num_layers)]
    kv_dtype = "fp32" if opts["dtype"] == "fp32" else "bf16"
    predicted_kv = kv_report(cfg, seq_len=total, batch=len(prompts), kv_dtype=kv_dtype, tp=tp).total_bytes
    hardware = plan.get("cluster", {}).get("hardware") or default_hardware(device.type)
    roof = predicted(cfg, hardware=hardware, tp=tp, batch=len(prompts),
                     prompt=max(len(p) for p in prompts), max_new=max_new, dtype=opts["dtype"],
                     weight_bits=weight_bits)
    say(events.GenerationStart(
        model=cfg.name, world=tp, device=device.type, checkpoint_step=step, batch=len(prompts),
        max_new_tokens=max_new, predicted_kv_cache_bytes=predicted_kv,
        predicted_weights_bytes=roof["weights_bytes"],
        predicted_decode_tokens_per_s=roof["decode_tokens_per_s"],
        predicted_ttft_s=roof["ttft_s"], predicted_tpot_s=roof["tpot_s"]))
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def on_tokens(i: int, toks: list[int]) -> None:
        say(events.Token(index=i, tokens=toks, text=[tok.decode([t]) for t in toks]))

    result = generate(model, prompts, max_new=max_new, caches=caches,
                      temperature=float(opts["temperature"]), top_k=int(opts["top_k"]),
                      top_p=float(opts["top_p"]), seed=int(opts["seed"]),
                      eos=eos, on_tokens=on_tokens)
    texts = [tok.decode(p + t) for p, t in zip(prompts, result["tokens"])]
    peak = torch.cuda.max_memory_allocated() if cuda else None
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    say(events.GenerationDone(
        tokens=result["tokens"], texts=texts, text=texts[0] if len(texts) == 1 else None,
        ttft_s=result["ttft_s"], warmup_s=result["warmup_s"],
        prefill_tokens_per_s=result["prefill_tokens_per_s"],
        decode_tokens_per_s=result["decode_tokens_per_s"], tpot_s=result["tpot_s"],
        predicted_decode_tokens_per_s=roof["decode_tokens_per_s"],
        predicted_ttft_s=roof["ttft_s"], predicted_tpot_s=roof["tpot_s"],
        predicted_kv_cache_bytes=predicted_kv,
        measured_kv_cache_bytes=sum(c.nbytes() for c in caches), peak_memory_bytes=int(peak),
        predicted_weights_bytes=roof["weights_bytes"], measured_weights_bytes=weights_nbytes(model),
        prompt_tokens=max(len(p) for p in prompts), quantisation_logit_max_abs_diff=logit_diff))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    from runtime.support import entry_point

    return entry_point("runtime.generate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
