"""Why a number is what it is: the symbolic formula, the values substituted, the result.

sympy is imported lazily inside these functions (about 0.3 s), never at planner import.
Each explanation also carries the planner's own number; ``matches`` says the two agree, so
the explanation cannot drift from the code that computes the figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from planner.config import ConfigError, ModelConfig

from planner.scaling import DEFAULT_FIT
from planner.setup import Parallel, TrainSetup


@dataclass(frozen=True, kw_only=True)
class Explanation:
    quantity: str
    description: str
    formula: str            # sympy's text form, e.g. "2*L*b_kv*d*g"
    pretty: str             # sympy's pretty (unicode) form
    values: dict[str, Any]  # symbol -> value substituted
    result: float           # the formula evaluated
    planner_value: float    # what the planner computes
    source: str

    @property
    def matches(self) -> bool:
        return abs(self.result - self.planner_value) <= 1e-9 * max(1.0, abs(self.planner_value))

    def to_dict(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "description": self.description,
                "formula": self.formula, "values": self.values, "result": self.result,
                "planner_value": self.planner_value, "matches": self.matches,
                "source": self.source}


def _symbols(names: str):
    import sympy  # deferred: ~300 ms

    return sympy.symbols(names, positive=True)


def _build(quantity: str, description: str, expr: Any, values: dict[Any, Any],
           planner_value: float, source: str) -> Explanation:
    import sympy

    subs = {sym: sympy.nsimplify(val) for sym, val in values.items()}
    result = expr.subs(subs)
    return Explanation(
        quantity=quantity, description=description, formula=str(expr),
        pretty=sympy.pretty(expr, use_unicode=True),
        values={str(sym): val for sym, val in values.items()},
        result=float(result), planner_value=float(planner_value), source=source)


def attention_decoders_only(cfg: ModelConfig, quantity: str, see: str) -> None:
    """The closed forms of ``params`` and ``train_flops_per_token`` are those of a decoder of
    attention and MLP (or MoE) layers; anything else is refused in one line, pointing at the
    command that computes it (the planner's per-kind breakdown)."""
    kinds = [kind for on, kind in (
        (cfg.position == "relative", "relative positions"),
        (cfg.attention == "mla", "MLA attention"),
        (cfg.mixer != "attention", f"{cfg.mixer} layers"),
        (cfg.mlp == "rwkv", "RWKV channel mix")) if on]
    if kinds:
        raise ConfigError(f"explain {quantity} covers attention + MLP or MoE decoders, not "
                          f"{' or '.join(kinds)}; see `llmplan {see}` for the breakdown")


def explain_params(cfg: ModelConfig, **_: Any) -> Explanation:
    from planner.params import count_params, norm_params

    attention_decoders_only(cfg, "params", "params")
    V, h, L, a, g, d, f, n_norm, n_mlp = _symbols("V h L a g d f n_norm n_mlp")
    attn = h * a * d + 2 * h * g * d + a * d * h
    if cfg.qkv_bias:
        attn += a * d + 2 * g * d
    if cfg.out_bias:
        attn += h
    if cfg.qk_norm:  # one norm of d over every query head, one over every key head
        attn += 2 * n_norm * d
    mlp = n_mlp * h * f
    if cfg.mlp_bias:
        mlp += (n_mlp - 1) * f + h
    norm = n_norm * h
    per_layer = attn + cfg.norms_per_layer * norm
    expr = L * per_layer + V * h * (1 if cfg.tie_embeddings else 2)
    expr += norm * (int(cfg.final_norm) + int(cfg.embedding_norm))
    values = {V: cfg.vocab_size, h: cfg.hidden_size, L: cfg.num_layers, a: cfg.num_heads,
              g: cfg.num_kv_heads, d: cfg.head_dim, f: cfg.ffn_hidden_size,
              n_norm: norm_params(cfg) // cfg.hidden_size, n_mlp: 3 if cfg.gated else 2}
    if cfg.is_moe:  # L_moe layers of E routed and S shared experts of width f_e and a router
        L_d, L_m, E, S, f_e = _symbols("L_dense L_moe E S f_e")
        expr += L_d * mlp + L_m * ((E + S) * n_mlp * h * f_e + h * E)
        values.update({L_d: cfg.num_dense_layers, L_m: cfg.num_moe_layers,
                       E: cfg.num_experts, S: cfg.num_shared_experts,
                       f_e: cfg.moe_ffn_hidden_size})
    else:
        expr += L * mlp
    if cfg.position == "learned":
        P = _symbols("P")
        expr += P * h
        values[P] = cfg.max_context + cfg.position_offset
    return _build("params", "total parameters", expr, values, count_params(cfg).total,
                  "planner.params (exact; checked against transformers on the meta device)")


def explain_kv(cfg: ModelConfig, *, kv_dtype: str = "bf16", **_: Any) -> Explanation:
    """K and V of the attention layers (a hybrid's only), or MLA's latent and rotary key."""
    from planner.kv import kv_bits, kv_bytes_per_token

    if not cfg.num_attention_layers:
        raise ConfigError(f"{cfg.name} caches no K/V: its {cfg.mixer} layers hold a fixed "
                          "state per sequence; see `llmplan explain state_bytes_per_sequence "
                          f"{cfg.name}`")
    values: dict[Any, Any] = {}
    if cfg.attention == "mla":
        L, d_c, d_R, bits = _symbols("L d_c d_R bits")
        expr = L * (d_c + d_R) * bits / 8
        values = {d_c: cfg.kv_lora_rank, d_R: cfg.qk_rope_head_dim}
        what, source = "MLA cache bytes per token (latent and rotary key, all layers)", \
            "planner.kv (DeepSeek-V2 §2.1.3)"
    else:
        L, g, d, bits = _symbols("L g d bits")
        expr = 2 * L * g * d * bits / 8
        values = {g: cfg.num_kv_heads, d: cfg.head_dim}
        what, source = "KV-cache bytes per token (K and V, all attention layers)", "planner.kv"
    values.update({L: cfg.num_attention_layers, bits: kv_bits(kv_dtype)})
    return _build("kv_bytes_per_token", what, expr, values, kv_bytes_per_token(cfg, kv_dtype),
                  source)


def explain_state(cfg: ModelConfig, *, kv_dtype: str = "bf16", **_: Any) -> Explanation:
    """The recurrent layers' fixed state per sequence (``planner.recurrent.state_bytes``):
    convolution inputs at the cache dtype, the recurrent state in fp32."""
    from planner.kv import kv_bits, state_bytes_per_sequence

    kinds = {mixer for mixer, _moe in cfg.layer_kinds() if mixer != "attention"}
    if len(kinds) != 1:
        raise ConfigError(f"{cfg.name} has no recurrent layers: its cache is K/V per token; see "
                          f"`llmplan explain kv_bytes_per_token {cfg.name}`")
    (mixer,) = kinds
    L, d, h, N, K, G, bits = _symbols("L_r d h N K G bits")
    if mixer == "rwkv":
        per_layer = 2 * h * bits / 8 + 3 * 4 * d
    else:
        conv = d if mixer == "mamba" else d + 2 * G * N
        per_layer = conv * K * bits / 8 + 4 * d * N
    values = {L: cfg.num_layers - cfg.num_attention_layers, d: cfg.recurrent_width,
              bits: kv_bits(kv_dtype)}
    values.update({h: cfg.hidden_size} if mixer == "rwkv" else
                  {N: cfg.ssm_state_size, K: cfg.ssm_conv_kernel})
    if mixer == "mamba2":
        values[G] = cfg.ssm_groups
    return _build("state_bytes_per_sequence",
                  f"recurrent state bytes per sequence ({mixer} layers), whatever its length",
                  L * per_layer, values, state_bytes_per_sequence(cfg, kv_dtype),
                  "planner.recurrent (as transformers' caches hold it)")


def explain_train_flops(cfg: ModelConfig, *, setup: TrainSetup, causal: bool = True,
                        **_: Any) -> Explanation:
    from planner.flops import FlopConventions, attended_keys, attention_groups, flops_report

    attention_decoders_only(cfg, "train_flops_per_token", "flops")
    V, h, L, a, g, d, f, n_mlp, keys = _symbols("V h L a g d f n_mlp keys")
    forward = L * (2 * h * (a * d + 2 * g * d) + 2 * 2 * a * d * keys + 2 * a * d * h) + 2 * h * V
    moe: dict[Any, Any] = {}
    if cfg.is_moe:  # each token runs k routed and S shared experts, and the router
        L_d, L_m, E, k_e, S, f_e = _symbols("L_dense L_moe E k S f_e")
        forward += L_d * 2 * n_mlp * h * f + L_m * ((k_e + S) * 2 * n_mlp * h * f_e + 2 * h * E)
        moe = {L_d: cfg.num_dense_layers, L_m: cfg.num_moe_layers, E: cfg.num_experts,
               k_e: cfg.experts_per_token, S: cfg.num_shared_experts, f_e: cfg.moe_ffn_hidden_size}
    else:
        forward += L * 2 * n_mlp * h * f
    expr = 3 * forward
    # local and global layers attend different numbers of keys: their mean over the layers
    k = sum(n * attended_keys(setup.seq_len, causal=causal, window=window)
            for n, window in attention_groups(cfg)) / cfg.num_layers
    values = {V: cfg.vocab_size, h: cfg.hidden_size, L: cfg.num_layers, a: cfg.num_heads,
              g: cfg.num_kv_heads, d: cfg.head_dim, f: cfg.ffn_hidden_size,
              n_mlp: 3 if cfg.gated else 2, keys: k, **moe}
    report = flops_report(cfg, setup.seq_len, FlopConventions(causal=causal))
    return _build("train_flops_per_token",
                  "training FLOPs per token: 3 x forward matmuls (keys = mean keys per query)",
                  expr, values, report.train_flops_per_token, "planner.flops (Kaplan et al. 2020 §2.1)")


def explain_model_states(cfg: ModelConfig, *, setup: TrainSetup, par: Parallel,
                         **_: Any) -> Explanation:
    from planner.memory import memory_report
    from planner.states import (OPTIMIZER_STATE_BYTES, RECIPE_BYTES, STEP_COUNTER_BYTES,
                                runtime_counts, sharded_states)
    from planner.tensors import stage_tensors

    if setup.optimizer == "adafactor":
        raise ConfigError("explain model_states covers AdamW, 8-bit Adam and SGD-momentum")
    import sympy

    report = memory_report(cfg, setup, par)
    stage = report.per_gpu
    planner_value = stage.weights_bytes + stage.gradients_bytes + stage.optimizer_bytes
    z = par.zero
    if setup.recipe == "runtime" and (par.cp > 1 or par.ep > 1):
        raise ConfigError("explain model_states with cp or ep covers the frameworks' recipes "
                          "(--recipe mixed, mixed_fp32_grads or fp32)")
    if setup.recipe == "runtime":
        # what the runtime allocates, tensor by tensor: each tensor's dim-0 shard under FSDP2
        # (ZeRO-2/3) or its flat slice under ZeRO-1, fp32, and a step counter per tensor
        P_w, P_o, n, o, c = _symbols("Psi_w Psi_o n o c")
        counts = runtime_counts(stage_tensors(cfg, par, stage.stage, runtime=True), zero=z,
                                dp=par.dp)
        expr = 4 * P_w + 4 * P_w + o * P_o + c * n
        values = {P_w: counts.local, P_o: counts.stepped, n: counts.tensors,
                  o: OPTIMIZER_STATE_BYTES[setup.optimizer],
                  c: STEP_COUNTER_BYTES if setup.optimizer == "adamw" else 0}
        return _build("model_states_bytes",
                      f"weights + gradients + optimizer bytes llmplan's runtime allocates on the "
                      f"most loaded rank, ZeRO-{z}", expr, values, planner_value,
                      "torch.optim state layout; FSDP2 dim-0 shards; planner.memory")
    Psi, Psi_e, dp, cp, ep, w, gb, o, F = _symbols("Psi Psi_e dp cp ep w g_b o F_8")
    w_sharded, g_sharded, o_sharded = sharded_states(z, setup.recipe)

    def pool(params, ranks):  # sharded states are padded to a multiple of the ranks
        shard = sympy.ceiling(params / ranks)
        return ((shard if w_sharded else params) * w + (shard if g_sharded else params) * gb
                + (shard if o_sharded else params) * o)

    # ZeRO shards the dense weights over dp x cp, the routed experts over dp x cp / ep
    # (planner.ep_cp); an fp8 run holds its linears' fp8 copies too (planner.fp8)
    expr = pool(Psi - Psi_e, dp * cp) + pool(Psi_e, dp * cp / ep) if par.ep > 1 else \
        pool(Psi, dp * cp)
    wb, gbb, master = RECIPE_BYTES[setup.recipe]
    values = {Psi: stage.params, dp: par.dp, cp: par.cp, w: wb, gb: gbb,
              o: master + OPTIMIZER_STATE_BYTES[setup.optimizer]}
    if par.ep > 1:
        values.update({Psi_e: stage.expert_params, ep: par.ep})
    if setup.dtype == "fp8" and not (z >= 3 and par.dp * par.cp > 1):
        expr += F
        values[F] = stage.fp8_weight_bytes
    return _build("model_states_bytes",
                  f"weights + gradients + optimizer bytes on the most loaded rank, ZeRO-{z}",
                  expr, values, planner_value,
                  "Rajbhandari et al. 2020 (ZeRO) §5, Figure 1; planner.memory")


def explain_chinchilla(_cfg: ModelConfig | None = None, *, compute_flops: float = 5.76e23,
                       fit: str = DEFAULT_FIT, **_: Any) -> Explanation:
    from planner.scaling import FITS, optimal_for_compute

    C, A, B, alpha, beta = _symbols("C A B alpha beta")
    expr = (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * (C / 6) ** (beta / (alpha + beta))
    law = FITS[fit]
    values = {C: compute_flops, A: law.A, B: law.B, alpha: law.alpha, beta: law.beta}
    return _build("chinchilla_params", "compute-optimal parameters N*(C)", expr, values,
                  optimal_for_compute(compute_flops, fit).params, law.source)


def derive_chinchilla_optimum():
    """Derive N*(C) with sympy: minimise L(N, C/(6N)) over N. Returns (expr, symbols)."""
    import sympy

    N, C, E, A, B, alpha, beta = sympy.symbols("N C E A B alpha beta", positive=True)
    loss = E + A / N**alpha + B / (C / (6 * N)) ** beta
    (solution,) = sympy.solve(sympy.Eq(sympy.diff(loss, N), 0), N)
    return sympy.simplify(solution), (C, E, A, B, alpha, beta)


def explain_decode_roofline(cfg: ModelConfig, *, par: Parallel, hardware: Any = None,
                            batch: int = 1, context: int = 2048, kv_dtype: str = "bf16",
                            weight_bits: int = 16, **_: Any) -> Explanation:
    """One decode step's bandwidth roofline: the weights on a GPU and the batch's cache read
    once per generated token, over the HBM bandwidth (planner.serving)."""
    from planner.activations import kv_heads_per_rank
    from planner.kv import KV_BITS, cached_tokens, kv_bytes_per_sequence
    from planner.serving import ServeEstimator, weight_bytes_per_gpu

    if hardware is None:
        raise ConfigError("decode_roofline_s needs --hardware")
    tp = par.tp
    w = weight_bytes_per_gpu(cfg, weight_bits=weight_bits, tp=tp)
    tokens = cached_tokens(cfg, context)
    kv = kv_bytes_per_sequence(cfg, context, kv_dtype, tp) * batch
    W, c, b, B = _symbols("W c b B_hbm")
    values: dict[Any, Any] = {W: w, c: tokens, b: batch, B: hardware.hbm_bandwidth_gbps * 1e9}
    if cfg.attention == "mla" or cfg.mixer != "attention" or cfg.sliding_window_pattern:
        # MLA's latent, local layers' windows, recurrent state: the cache of one sequence
        # (``planner.kv.kv_bytes_per_sequence``; see explain kv_bytes_per_token and
        # state_bytes_per_sequence)
        S = _symbols("S_seq")
        expr = (W + S * b) / B
        values[S] = kv_bytes_per_sequence(cfg, context, kv_dtype, tp)
        del values[c]
    else:
        L, g, d, kb = _symbols("L g_r d b_kv")
        expr = (W + 2 * L * g * d * kb * c * b) / B
        values.update({L: cfg.num_layers, kb: KV_BITS[kv_dtype] / 8, d: cfg.head_dim,
                       g: kv_heads_per_rank(cfg, tp) if tp > 1 else cfg.num_kv_heads})
    planner_value = ServeEstimator(cfg, hardware).decode_roofline_s(weights_bytes=w, kv_bytes=kv)
    return _build("decode_roofline_s",
                  f"seconds per decode step at batch {batch}, context {tokens}, {weight_bits}-bit "
                  f"weights, tp {tp}, before the achieved fraction of bandwidth",
                  expr, values, planner_value,
                  "memory-bound decode: every weight and the cache read once per step "
                  "(Pope et al. 2022, Efficiently Scaling Transformer Inference, §2)")


QUANTITIES: dict[str, Callable[..., Explanation]] = {
    "params": explain_params,
    "kv_bytes_per_token": explain_kv,
    "state_bytes_per_sequence": explain_state,
    "train_flops_per_token": explain_train_flops,
    "model_states_bytes": explain_model_states,
    "chinchilla_params": explain_chinchilla,
    "decode_roofline_s": explain_decode_roofline,
}


def explain(quantity: str, cfg: ModelConfig, **context: Any) -> Explanation:
    if quantity not in QUANTITIES:
        raise ConfigError(f"unknown quantity {quantity!r} (one of {', '.join(QUANTITIES)})")
    return QUANTITIES[quantity](cfg, **context)
