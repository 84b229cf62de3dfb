"""One readable decoder built from ``planner.config.ModelConfig``.

The model says *what* is computed; ``runtime.parallel`` says how it is split. Heads are
reshaped with ``-1`` so the same code runs on a tensor-parallel shard. Its parameter count
equals ``planner.params.count_params`` for every configuration it supports (tests check this
on the ``meta`` device), and the tensors it saves for backward are the ones
``planner.memory.layer_activation_terms`` lists.

Shapes: b batch, s sequence, h hidden, a/g query/kv heads (local to a TP rank), d head dim,
f ffn hidden, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.config import ModelConfig



class _RMSNormFn(torch.autograd.Function):
    """RMSNorm that saves only its input and 1/rms, like the fused kernels (PyTorch's CPU
    composite saves the normalised tensor too)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return x * rstd * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight, rstd = ctx.saved_tensors
        gw = grad * weight
        # d/dx of x * r(x) * w with r = (mean x^2 + eps)^-1/2:  r gw - x r^3 mean(gw x)
        dx = rstd * gw - x * rstd.pow(3) * (gw * x).mean(-1, keepdim=True)
        dw = (grad * x * rstd).sum(dim=tuple(range(grad.dim() - 1)))
        return dx, dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RMSNormFn.apply(x, self.weight, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.hidden_size, cfg.norm_eps)
    return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm == "layernorm")


def rope_inv_freq(cfg: ModelConfig, seq_len: int = 0) -> torch.Tensor:
    """Inverse frequencies for the rotated part of each head, with context scaling as
    ``transformers`` computes it (``modeling_rope_utils``):

    - linear: position interpolation (Chen et al. 2023), every frequency / factor;
    - ntk: dynamic NTK-aware scaling, plain RoPE up to the model's context M and, for a
      sequence of L > M, base theta * (factor L / M - (factor - 1))^(r / (r - 2));
    - yarn (Peng et al. 2023 §3.2): per rotary dimension, extrapolate (keep) the dimensions
      that turn more than beta_fast = 32 times over the original context, interpolate (/ factor)
      those turning less than beta_slow = 1 time, a linear ramp between (bounds floored and
      ceiled); the attention factor is ``rope_attention_factor``;
    - llama3: the Llama 3.1 wavelength ramp (low_freq_factor 1, high_freq_factor 4)."""
    rot = int(cfg.head_dim * cfg.rope_fraction) // 2 * 2
    theta = cfg.rope_theta
    factor = cfg.rope_scaling_factor
    original = cfg.rope_original_context or cfg.max_context
    if cfg.rope_scaling == "ntk" and seq_len > cfg.max_context:
        theta = theta * (factor * seq_len / cfg.max_context - (factor - 1)) ** (rot / (rot - 2))
    inv = 1.0 / theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    if cfg.rope_scaling == "linear":
        inv = inv / factor
    elif cfg.rope_scaling == "yarn":
        def dim_of(rotations: float) -> float:  # the rotary dimension turning that many times
            return rot * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))
        low = max(math.floor(dim_of(32.0)), 0)
        high = min(math.ceil(dim_of(1.0)), rot - 1)
        ramp = ((torch.arange(rot // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        inv = inv / factor * ramp + inv * (1 - ramp)
    elif cfg.rope_scaling == "llama3":
        wavelen = 2 * math.pi / inv
        low, high = original / 1.0, original / 4.0
        smooth = (((original / wavelen) - 1.0) / (4.0 - 1.0)).clamp(0, 1)
        scaled = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > low, inv / factor, torch.where(wavelen < high, inv, scaled))
    return inv.float()


def rope_attention_factor(cfg: ModelConfig) -> float:
    """YaRN's scale on cos and sin (Peng et al. 2023 §3.4, sqrt(1/t) = 0.1 ln(factor) + 1);
    1 for every other scheme."""
    if cfg.rope_scaling == "yarn" and cfg.rope_scaling_factor > 1:
        return 0.1 * math.log(cfg.rope_scaling_factor) + 1.0
    return 1.0


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022 §3; BLOOM's ``build_alibi_tensor``): the geometric
    sequence 2^(-8 i / n) for the closest power of two n <= heads, then every other slope of
    the sequence for 2n to fill the remaining heads."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** i for i in range(1, closest + 1)]
    if closest != num_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** i for i in range(1, 2 * (num_heads - closest) + 1, 2)]
    return torch.tensor(slopes, dtype=torch.float32)


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al. 2017 §3.5: sin on even, cos on odd dims, wavelengths 2pi..10000*2pi
    (GPT-style absolute positions that train nothing)."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    inv = 1.0 / 10_000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)[:, : dim // 2]
    return table.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of each head (NeoX half-split layout).
    ``cos``/``sin`` are the shared (s, rot) tables: multiplying by them keeps no per-token
    tensor for backward, only the one table every layer shares."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = x_rot * cos + torch.cat((-x2, x1), dim=-1) * sin
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated


class AttentionCore(nn.Module):
    """Softmax attention of projected q, k, v (the part selective recompute re-runs,
    Korthikanti et al. 2022 §4.2: ``runtime.parallel.apply_recompute`` wraps this module).
    ``mask`` (b or 1, 1, q, k) bool, or None for plain causal; with ALiBi ``slopes`` times
    the key position is added (the query's own position is a per-row constant that softmax
    removes, as BLOOM does)."""

    def forward(self, q, k, v, mask=None, k_pos=None, slopes=None):
        gqa = q.shape[1] != k.shape[1]
        if slopes is None:
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        if mask is None:
            i = torch.arange(q.shape[2], device=q.device)
            mask = (i[None, :] <= i[:, None])[None, None]
        bias = slopes.to(q.dtype)[None, :, None, None] * k_pos[:, None, None, :].to(q.dtype)
        bias = bias.masked_fill(~mask, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=gqa)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, qw, kvw = cfg.hidden_size, cfg.q_width, cfg.kv_width
        qkv_bias = cfg.qkv_bias
        self.head_dim = cfg.head_dim
        self.window = cfg.sliding_window
        self.wq = nn.Linear(h, qw, bias=qkv_bias)
        self.wk = nn.Linear(h, kvw, bias=qkv_bias)
        self.wv = nn.Linear(h, kvw, bias=qkv_bias)
        self.wo = nn.Linear(qw, h, bias=cfg.out_bias)
        # ALiBi: one slope per query head; tensor parallelism keeps its heads' slopes
        self.heads = (0, cfg.num_heads)  # the query heads this module computes (TP narrows it)
        self.register_buffer("alibi", alibi_slopes(cfg.num_heads) if cfg.position == "alibi"
                             else None, persistent=False)
        self.core = AttentionCore()

    def forward(self, x, cos, sin, kv_cache=None, positions=None):
        b, s, _ = x.shape
        d = self.head_dim
        q = self.wq(x).view(b, s, -1, d).transpose(1, 2)   # b, a, s, d
        k = self.wk(x).view(b, s, -1, d).transpose(1, 2)   # b, g, s, d
        v = self.wv(x).view(b, s, -1, d).transpose(1, 2)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, k_pos = None, positions
        if kv_cache is not None:  # inference: the cache returns what to attend and the mask
            k, v, mask, k_pos = kv_cache.update(positions, k, v)
        elif self.window and s > self.window:
            i = torch.arange(s, device=x.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < self.window)
        out = self.core(q, k, v, mask, k_pos, self.alibi)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class MLP(nn.Module):
    """Gated (w2(act(w1 x) * w3 x)) or two-matrix (w2(act(w1 x)))."""

    def __init__(self, cfg: ModelConfig, ffn: int) -> None:
        super().__init__()
        h, bias = cfg.hidden_size, cfg.mlp_bias
        self.gated = cfg.gated
        self.w1 = nn.Linear(h, ffn, bias=bias)
        self.w3 = nn.Linear(h, ffn, bias=bias) if cfg.gated else None
        self.w2 = nn.Linear(ffn, h, bias=bias)
        kind = cfg.mlp
        form = cfg.gelu_approximate
        self.act = (F.silu if kind == "swiglu" else F.relu if kind in ("relu", "reglu")
                    else lambda t: F.gelu(t, approximate=form))

    def forward(self, x):
        up = self.act(self.w1(x))
        if self.w3 is not None:
            up = up * self.w3(x)
        return self.w2(up)


def _same(chosen: torch.Tensor) -> torch.Tensor:
    return chosen


class MoE(nn.Module):
    """Top-k routed experts (softmax over the k selected logits, as Mixtral) + shared experts.
    Experts run on the tokens routed to them; there is no capacity limit (dropless)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.k = cfg.experts_per_token
        self.router = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg, cfg.moe_ffn_hidden_size) for _ in range(cfg.num_experts))
        self.shared = nn.ModuleList(MLP(cfg, cfg.moe_ffn_hidden_size)
                                    for _ in range(cfg.num_shared_experts))
        self.agree = _same  # ranks that split the experts must route alike (runtime.parallel)

    def forward(self, x):
        b, s, h = x.shape
        flat = x.reshape(-1, h)
        logits = self.router(flat)
        chosen = self.agree(logits.topk(self.k, dim=-1).indices)
        weights = logits.gather(-1, chosen).float().softmax(dim=-1).to(x.dtype)
        out = self.routed(flat, chosen, weights)
        for expert in self.shared:
            out = out + expert(flat)
        return out.view(b, s, h)

    def routed(self, flat, chosen, weights):
        """sum_j weights[t, j] expert_{chosen[t, j]}(flat[t]) for every token t (T, h), the
        experts in ascending order. Expert parallelism replaces this on the instance with
        the same sum over experts held by other ranks (``runtime.expert_parallel``)."""
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            # an expert no token chose still runs (on zero rows): its gradient is then zeros,
            # not missing, so every data-parallel rank reduces the same set of gradients
            token, slot = torch.where(chosen == e)
            out = out.index_add(0, token, expert(flat[token]) * weights[token, slot, None])
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, moe: bool) -> None:
        super().__init__()
        self.kind = cfg.block
        self.attention_norm = make_norm(cfg)
        two_norms = cfg.block != "parallel" or cfg.parallel_norms == 2
        self.ffn_norm = make_norm(cfg) if two_norms else None
        self.attention = Attention(cfg)
        self.feed_forward = MoE(cfg) if moe else MLP(cfg, cfg.ffn_hidden_size)

    def forward(self, x, cos, sin, kv_cache=None, positions=None):
        if self.kind == "parallel":
            a_in = self.attention_norm(x)
            f_in = self.ffn_norm(x) if self.ffn_norm is not None else a_in
            return x + self.attention(a_in, cos, sin, kv_cache, positions) + self.feed_forward(f_in)
        if self.kind == "post_norm":
            x = self.attention_norm(x + self.attention(x, cos, sin, kv_cache, positions))
            return self.ffn_norm(x + self.feed_forward(x))
        x = x + self.attention(self.attention_norm(x), cos, sin, kv_cache, positions)
        return x + self.feed_forward(self.ffn_norm(x))


class Decoder(nn.Module):
    """Embedding -> L blocks -> final norm -> LM head. Under pipeline parallelism a stage
    keeps only its own parts: missing ones are ``None`` and skipped."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        check_supported(cfg)
        self.cfg = cfg
        h = cfg.hidden_size
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, h)
        self.pos_embeddings = (nn.Embedding(cfg.max_context + cfg.position_offset, h)
                               if cfg.position == "learned" else None)
        self.register_buffer("pos_table", sinusoidal_table(cfg.max_context + cfg.position_offset, h)
                             if cfg.position == "sinusoidal" else None, persistent=False)
        self.embedding_norm = make_norm(cfg) if cfg.embedding_norm else None
        self.layers = nn.ModuleDict({
            str(i): Block(cfg, moe=cfg.is_moe and i >= cfg.first_dense_layers)
            for i in range(cfg.num_layers)})
        self.norm = make_norm(cfg) if cfg.final_norm else None
        self.output = nn.Linear(h, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.register_buffer("inv_freq", rope_inv_freq(cfg) if cfg.position == "rope" else None,
                             persistent=False)

    def tie_weights(self) -> None:
        """A tied LM head is the embedding matrix itself (when this part holds both ends)."""
        if self.cfg.tie_embeddings and self.tok_embeddings is not None and self.output is not None:
            self.output.weight = self.tok_embeddings.weight

    def reset_buffers(self) -> None:
        """Recompute the derived (non-persistent) buffers: after ``to_empty`` from the meta
        device they hold garbage. Sharded copies (ALiBi slopes under TP) keep their shape."""
        cfg = self.cfg
        for name, buf in self.named_buffers():
            if name == "inv_freq":
                value = rope_inv_freq(cfg)
            elif name == "pos_table":
                value = sinusoidal_table(cfg.max_context + cfg.position_offset, cfg.hidden_size)
            else:
                continue
            with torch.no_grad():
                buf.copy_(value.to(buf.device))
        for module in self.modules():
            if isinstance(module, Attention) and module.alibi is not None:
                first, last = module.heads
                with torch.no_grad():
                    module.alibi.copy_(alibi_slopes(cfg.num_heads)[first:last].to(module.alibi.device))

    def rope(self, positions: torch.Tensor):
        """cos/sin tables (b or 1, 1, s, rot) for ``positions`` (b or 1, s), shared by all layers."""
        if self.inv_freq is None:
            return None, None
        inv = self.inv_freq
        if self.cfg.rope_scaling == "ntk":  # dynamic: rescaled past the model's context
            longest = int(positions.max()) + 1
            if longest > self.cfg.max_context:
                inv = rope_inv_freq(self.cfg, longest).to(inv.device)
        freqs = positions.float()[..., None] * inv
        freqs = torch.cat((freqs, freqs), dim=-1)[:, None]
        scale = rope_attention_factor(self.cfg)
        return freqs.cos() * scale, freqs.sin() * scale

    def forward(self, tokens_or_hidden: torch.Tensor, positions: torch.Tensor | None = None,
                kv_caches=None):
        """``positions`` (b or 1, s): absolute positions (default 0..s-1); ``kv_caches`` one
        cache per layer (runtime.generate) for prefill and decode."""
        x = tokens_or_hidden
        if positions is None:
            positions = torch.arange(x.shape[1], device=x.device)[None]
        if self.tok_embeddings is not None:
            x = self.tok_embeddings(x)
            if self.cfg.embedding_multiplier != 1.0:
                x = x * self.cfg.embedding_multiplier
            if self.pos_embeddings is not None:
                x = x + self.pos_embeddings(positions + self.cfg.position_offset)
            if self.pos_table is not None:
                x = x + self.pos_table[positions + self.cfg.position_offset].to(x.dtype)
            if self.embedding_norm is not None:
                x = self.embedding_norm(x)
        cos, sin = self.rope(positions)
        if cos is not None and cos.dtype != x.dtype:  # computed in fp32, applied in the
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # compute dtype (as transformers does)
        for name, layer in self.layers.items():
            cache = kv_caches[int(name)] if kv_caches is not None else None
            x = layer(x, cos, sin, cache, positions)
        if self.norm is not None:
            x = self.norm(x)
        if self.output is not None:
            x = self.output(x)
        return x


def check_supported(cfg: ModelConfig) -> None:
    from runtime.support import check_runtime_model

    check_runtime_model(cfg)
