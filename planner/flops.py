"""FLOPs: exact matmul counts per component, and the 6N / PaLM conventions beside them.

A matmul of (m x k) by (k x n) is ``2*m*k*n`` FLOPs (one multiply and one add per MAC).
Per token of a sequence of length s, one layer's forward matmuls are:

* QKV projections ``2*h*(a*d + 2*g*d)``, output projection ``2*a*d*h``;
* scores ``Q K^T`` and ``A V``: ``2*a*d*keys`` each, where ``keys`` is the number of keys a
  query attends: ``s`` without causal halving (PaLM App. B, nanoGPT, torchtitan, FlopCounter),
  or the exact causal average ``(s + 1) / 2`` (Megatron and MaxText use ``s / 2``), capped by a
  sliding window;
* MLP ``2*h*f*(3 if gated else 2)``; an MoE layer runs the router ``2*h*E`` and ``k`` experts;
* the LM head ``2*h*V`` once per token; the embedding lookup is a gather (0 matmul FLOPs)
  unless ``count_embedding`` counts it as the one-hot matmul ``2*h*V`` that 6N implies.

Training = 3 x forward (input gradients and weight gradients each cost one forward;
Kaplan et al. 2020 §2.1). Recompute adds a layer forward (full) or the attention core
(selective); that is counted in HFU (hardware FLOPs), never in MFU (model FLOPs).
Elementwise work (norms, activations, softmax, RoPE) is not a matmul and is not counted.

Layer variants: each attention layer attends the keys of its own window (Gemma 2/3 alternate
local and global layers); MLA projects through its latents (``planner.mla``: scores over the
``nope + rope`` query/key dims, values of ``v_head_dim``); recurrent layers count their
projections and causal convolution in ``recurrent`` and their sequence-mixing core in
``scan`` (Mamba's selective scan by its authors' count, Mamba-2's SSD contractions, RWKV's
elementwise WKV not counted; ``planner.recurrent``). Soft-capping is elementwise. DeepSeek-V3's
multi-token-prediction modules are not in the forward counted here.

Conventions side by side (each a switch, as frameworks log them differently):
  6N (Kaplan; Chinchilla's C = 6ND) uses all active parameters;
  PaLM (Chowdhery et al. 2022, App. B) is ``6*N' + 12*L*a*d*s`` (non-causal), N' without an
  untied input embedding;
  exact is the per-component sum here. Llama-3-8B at s=8192: 48.2 / 57.9 / 51.5 GFLOP (causal).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.config import ModelConfig
from planner.params import count_params


@dataclass(frozen=True, kw_only=True, slots=True)
class FlopConventions:
    """Switches, each a published convention (see module docstring)."""

    causal: bool = True
    count_embedding: bool = False
    count_lm_head: bool = True


def attended_keys(seq_len: int, *, causal: bool, window: int = 0) -> float:
    """Mean number of keys one query attends in a sequence of ``seq_len`` tokens.

    Causal: query i (1-based) sees ``min(i, window)`` keys; the mean over i of ``min(i, w)``
    is ``(s + 1) / 2`` when ``w >= s``, else ``(w*(w+1)/2 + (s - w)*w) / s``.
    """
    s = seq_len
    if not causal:
        return float(s)
    w = window if 0 < window < s else s
    return (w * (w + 1) / 2 + (s - w) * w) / s


@dataclass(frozen=True, kw_only=True, slots=True)
class ForwardFlops:
    """Forward matmul FLOPs per token, by component (all layers summed)."""

    qkv: float
    scores: float
    attn_values: float
    out_proj: float
    mlp: float
    router: float
    lm_head: float
    embedding: float
    recurrent: float = 0.0
    """Recurrent mixers' projections and convolution (Mamba, Mamba-2, RWKV time mix)."""
    scan: float = 0.0
    """Recurrent mixers' sequence-mixing core (selective scan, SSD; module docstring)."""

    @property
    def attention_core(self) -> float:
        return self.scores + self.attn_values

    @property
    def layers(self) -> float:
        return (self.qkv + self.attention_core + self.out_proj + self.mlp + self.router
                + self.recurrent + self.scan)

    @property
    def total(self) -> float:
        return self.layers + self.lm_head + self.embedding

    def to_dict(self) -> dict[str, float]:
        return {"qkv": self.qkv, "scores": self.scores, "attn_values": self.attn_values,
                "out_proj": self.out_proj, "mlp": self.mlp, "router": self.router,
                "lm_head": self.lm_head, "embedding": self.embedding,
                "recurrent": self.recurrent, "scan": self.scan}


def mlp_flops_per_token(cfg: ModelConfig, ffn: int) -> int:
    """One MLP of width ``ffn``: ``2*h*f`` per matrix, 3 matrices gated, 2 otherwise; RWKV's
    channel mix ``2*(2*h*f + h*h)`` (key, value, receptance)."""
    if cfg.mlp == "rwkv":
        return 2 * (2 * cfg.hidden_size * ffn + cfg.hidden_size * cfg.hidden_size)
    return 2 * cfg.hidden_size * ffn * (3 if cfg.gated else 2)


def attention_groups(cfg: ModelConfig) -> list[tuple[int, int]]:
    """(attention layers, their window: 0 = global) for each window the model's attention
    layers use (one entry for uniform models)."""
    sliding = cfg.num_sliding_layers
    groups = [(cfg.num_attention_layers - sliding, 0), (sliding, cfg.sliding_window)]
    return [(n, w) for n, w in groups if n]


def forward_flops_per_token(cfg: ModelConfig, seq_len: int,
                            conv: FlopConventions = FlopConventions()) -> ForwardFlops:
    """Forward matmul FLOPs per token at sequence length ``seq_len`` (mean over positions)."""
    h, V = cfg.hidden_size, cfg.vocab_size
    qw, kvw = cfg.q_width, cfg.kv_width
    relative = cfg.position == "relative"
    L = cfg.num_attention_layers
    scores = attn_values = 0.0
    for n, window in attention_groups(cfg):
        keys = attended_keys(seq_len, causal=conv.causal, window=window)
        scores += n * 2 * qw * keys * (2 if relative else 1)
        attn_values += n * 2 * cfg.num_heads * cfg.v_dim * keys
    if cfg.attention == "mla":
        from planner.mla import mla_projection_flops_per_token

        proj, out = mla_projection_flops_per_token(cfg)
        qkv, out_proj = L * proj, L * out
    else:
        # Transformer-XL relative positions: project s relative encodings (2*h*a*d per token)
        # and score queries against them (another 2*a*d*keys).
        qkv = L * 2 * h * (qw + 2 * kvw + (qw if relative else 0))
        out_proj = L * 2 * qw * h
    recurrent = scan = 0.0
    for (mixer, _), n in cfg.layer_kinds().items():
        if mixer != "attention":
            from planner.recurrent import mixer_flops_per_token, scan_flops

            recurrent += n * mixer_flops_per_token(cfg, mixer)
            scan += n * scan_flops(cfg, mixer, seq_len)
    mlp = cfg.num_dense_layers * mlp_flops_per_token(cfg, cfg.ffn_hidden_size)
    router = 0
    if cfg.is_moe:
        per_expert = mlp_flops_per_token(cfg, cfg.moe_ffn_hidden_size)
        mlp += cfg.num_moe_layers * (cfg.experts_per_token + cfg.num_shared_experts) * per_expert
        router = cfg.num_moe_layers * 2 * h * cfg.num_experts
    return ForwardFlops(
        qkv=float(qkv), scores=float(scores), attn_values=float(attn_values),
        out_proj=float(out_proj), mlp=float(mlp), router=float(router),
        lm_head=float(2 * h * V) if conv.count_lm_head else 0.0,
        embedding=float(2 * h * V) if conv.count_embedding else 0.0,
        recurrent=float(recurrent), scan=float(scan),
    )


def recompute_flops_per_token(fwd: ForwardFlops, recompute: str) -> float:
    """Extra forward work of activation recomputation (HFU only): a layer forward for
    ``full`` (Korthikanti et al. 2022 §5: 4 forwards instead of 3), the attention core for
    ``selective`` (§4.2)."""
    if recompute == "full":
        return fwd.layers
    if recompute == "selective":
        return fwd.attention_core
    return 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class FlopsReport:
    seq_len: int
    forward: ForwardFlops
    forward_flops_per_token: float
    train_flops_per_token: float
    hardware_flops_per_token: float
    six_n_flops_per_token: float
    palm_flops_per_token: float
    head_train_flops_per_token: float = 0.0
    """Of ``train_flops_per_token``: the LM head and embedding (3 x forward, 2 x frozen)."""
    adapter_forward_flops_per_token: float = 0.0
    """Adapter fine-tuning: the adapters' forward (``planner.finetune``), in the forward."""
    reference_forward_flops_per_token: float = 0.0
    """DPO: the frozen reference's forward, in the training FLOPs."""

    def conventions(self) -> dict[str, float]:
        return {"six_n": self.six_n_flops_per_token, "palm": self.palm_flops_per_token,
                "exact": self.train_flops_per_token}


def flops_report(cfg: ModelConfig, seq_len: int, conv: FlopConventions = FlopConventions(),
                 *, recompute: str = "none", adapters=None,
                 objective: str = "lm") -> FlopsReport:
    """Training FLOPs per token: exact (MFU), with recompute (HFU), 6N and PaLM. With
    ``adapters`` (``planner.finetune.Adapters``) the base is frozen: its linears cost 2 x
    forward (no weight gradient), a frozen embedding lookup 1 x, the attention core and the
    adapters 3 x, less the first layer's skipped input gradient; 6N and PaLM stay the
    conventions for training every weight. DPO adds the frozen reference's forward over the
    same tokens (the base without its adapters, when there are adapters)."""
    fwd = forward_flops_per_token(cfg, seq_len, conv)
    counts = count_params(cfg)
    head = fwd.lm_head + fwd.embedding
    if adapters is None:
        lora, train, head_train = 0.0, 3 * fwd.total, 3 * head
    else:
        from planner.finetune import (adapter_forward_flops_per_token,
                                      skipped_input_gradient_flops_per_token)

        lora = adapter_forward_flops_per_token(cfg, adapters)
        frozen = fwd.total - fwd.attention_core - fwd.embedding
        train = 2 * frozen + fwd.embedding + 3 * fwd.attention_core + 3 * lora \
            - skipped_input_gradient_flops_per_token(
                cfg, adapters, keys=attended_keys(seq_len, causal=conv.causal,
                                                  window=cfg.sliding_window))
        head_train = 2 * fwd.lm_head + fwd.embedding
    reference = fwd.total if objective == "dpo" else 0.0
    train, head_train = train + reference, head_train + (fwd.lm_head if reference else 0.0)
    recomputed = recompute_flops_per_token(fwd, recompute)
    if recompute == "full":
        recomputed += lora
    return FlopsReport(
        seq_len=seq_len,
        forward=fwd,
        forward_flops_per_token=fwd.total + lora,
        train_flops_per_token=train,
        hardware_flops_per_token=train + recomputed,
        head_train_flops_per_token=head_train,
        adapter_forward_flops_per_token=lora, reference_forward_flops_per_token=reference,
        six_n_flops_per_token=6.0 * counts.active,
        # The input embedding is a lookup, not a matmul, unless tied to the LM head
        # (torchtitan's reading of PaLM App. B; PaLM itself ties them).
        palm_flops_per_token=6.0 * (counts.active - counts.position_embedding
                                    - (0 if cfg.tie_embeddings else counts.embedding))
        + 6.0 * cfg.num_attention_layers * cfg.num_heads * (cfg.head_dim + cfg.v_dim) * seq_len,
    )


def prefill_flops(cfg: ModelConfig, prompt_len: int, batch: int = 1) -> float:
    """Forward FLOPs to prefill ``batch`` prompts of ``prompt_len`` tokens (causal)."""
    per_token = forward_flops_per_token(cfg, prompt_len, FlopConventions(causal=True))
    return per_token.total * prompt_len * batch


def decode_flops_sum(cfg: ModelConfig, context: int, tokens: int) -> float:
    """``sum(decode_flops_per_token(cfg, context + t) for t in range(tokens))`` in closed
    form, so a million generated tokens cost no more to plan than ten: per token the FLOPs
    are linear in the keys attended, which grow with the context until a sliding window
    fills, so the sum splits at each window's fill point into linear pieces, each summed
    as count x (first + last) / 2."""
    if tokens <= 0:
        return 0.0
    lo, hi = context, context + tokens - 1
    cuts = sorted({w - 1 for _, w in attention_groups(cfg) if w and lo <= w - 1 < hi})
    total, start = 0.0, lo
    for end in [*cuts, hi]:
        total += (end - start + 1) * (decode_flops_per_token(cfg, start)
                                      + decode_flops_per_token(cfg, end)) / 2
        start = end + 1
    return total


def decode_flops_per_token(cfg: ModelConfig, context: int) -> float:
    """Forward FLOPs to generate one token with ``context`` tokens already cached: every
    linear once, and attention over ``context + 1`` keys (capped by each layer's sliding
    window); MLA with its up-projections absorbed (``planner.mla.mla_decode_flops``);
    recurrent layers one step of their recurrence (``planner.recurrent``)."""
    fwd = forward_flops_per_token(cfg, 1, FlopConventions(causal=False))
    total = fwd.total - fwd.attention_core - fwd.scan
    for (mixer, _), n in cfg.layer_kinds().items():
        if mixer != "attention":
            from planner.recurrent import scan_decode_flops

            total += n * scan_decode_flops(cfg, mixer)
    if cfg.attention == "mla":
        from planner.mla import mla_decode_flops

        total -= fwd.qkv + fwd.out_proj
        for n, window in attention_groups(cfg):
            total += n * mla_decode_flops(cfg, min(context + 1, window or context + 1))
        return total
    for n, window in attention_groups(cfg):
        keys = context + 1
        if 0 < window < keys:
            keys = window
        per_key = 2 * n * 2 * cfg.q_width  # scores + A.V for one key, these layers
        total += per_key * keys
    return total


def total_train_flops(cfg: ModelConfig, seq_len: int, tokens: float,
                      conv: FlopConventions = FlopConventions()) -> float:
    """Model FLOPs to train on ``tokens`` tokens of sequences of length ``seq_len``."""
    return 3 * forward_flops_per_token(cfg, seq_len, conv).total * tokens


def time_to_train_s(total_flops: float, *, accelerators: int, peak_flops: float,
                    mfu: float) -> float:
    """Wall time = FLOPs / (accelerators x dense peak x MFU)."""
    return total_flops / (accelerators * peak_flops * mfu)
