"""The options commands share (Typer ``Annotated`` types), and the few helpers that turn them
into planner objects. One definition per option, so every command spells it alike."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Optional

import typer
from typer._click.types import ParamType  # the Click typer vendors: its ParamType


from planner.config import LlmplanError

MAX_COUNT = 2**20
"""Accelerators, parallel sizes, nodes, micro-batches: at most 1,048,576 (planner.setup.MAX_RANKS)."""
MAX_TOKENS_PER_SEQ = 2**30
"""Sequence lengths, prompt and answer lengths, batches of sequences: at most 1,073,741,824
(planner.config.MAX_CONTEXT)."""
MAX_TOKENS = 1e18
"""Training tokens: at most 10^18 (five orders above the largest published run)."""
MAX_FLOPS = 1e33
"""Compute budgets: at most 10^33 FLOPs."""
MAX_PARAMS = 1e16
"""Model sizes for scaling laws: at most 10^16 parameters."""


class OptionError(typer.BadParameter, LlmplanError):
    """A refused option value, whose message already names the option and the value
    (``--seq(-5) must be a positive integer``): tui.cli prints it as one
    ``llmplan: error:`` line and exits 2. Also an ``LlmplanError``, so code that parses
    options itself (the TUI's run screen) refuses it as it refuses the planner's errors."""

    def format_message(self) -> str:
        return self.message


def _name(param: Any) -> str:
    return param.opts[0] if getattr(param, "opts", None) else f"--{param.name}"


def _show(value: float) -> str:
    """A float as the user most likely typed it: -4194304, 1.5e+30, nan, inf."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


class Count:
    """An integer in [low, high]: the one rule for every count and size option (no
    negatives, no zero where zero means nothing, no sizes that overflow or hang); used as an
    option's ``callback`` (None, an option left out, passes)."""

    def __init__(self, low: int = 1, high: int = MAX_COUNT) -> None:
        self.low, self.high = low, high

    def rule(self) -> str:
        if self.low == 1:
            return f"must be a positive integer (at most {self.high:,})"
        return f"must be an integer from {self.low:,} to {self.high:,}"

    def check(self, name: str, value: Any) -> None:
        if not self.low <= value <= self.high:
            raise OptionError(f"{name}({value}) {self.rule()}")

    def callback(self, param: typer.CallbackParam, value: Any) -> Any:
        """The option's ``callback``: checks the value (each of a list), returns it unchanged."""
        for one in value if isinstance(value, (list, tuple)) else [value]:
            if one is not None:
                self.check(_name(param), one)
        return value


class Amount(Count):
    """A finite number in [low, high] (``positive``: low excluded; ``zero``: 0 allowed too,
    meaning "none"): no NaN, no infinity, no negative token counts or budgets, and no
    positive number so small that it underflows to zero in a formula."""

    def __init__(self, high: float, *, low: float = 0.0, positive: bool = False,
                 zero: bool = False) -> None:
        self.low, self.high, self.positive, self.zero = low, high, positive, zero

    def rule(self) -> str:
        if self.positive and self.low == 0:
            return f"must be a positive finite number (at most {_show(self.high)})"
        span = f"a finite number from {_show(self.low)} to {_show(self.high)}"
        return f"must be 0 (none) or {span}" if self.zero else f"must be {span}"

    def check(self, name: str, value: Any) -> None:
        if self.zero and value == 0:
            return
        below = value <= self.low if self.positive else value < self.low
        if not math.isfinite(value) or below or value > self.high:
            raise OptionError(f"{name}({_show(value)}) {self.rule()}")


SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12, "p": 10**15,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40, "pi": 2**50}
"""Size suffixes (case-insensitive): K M B/G T P are decimal (``--tokens 15T`` = 15e12,
``--gbs-tokens 4M`` = 4,000,000, ``--params 70B``), Ki Mi Gi Ti Pi binary (``--seq 32Ki`` =
32,768; ``--seq 32K`` is 32,000). One rule for every option: decimal unless the suffix says
``i``."""
SUFFIX_HELP = "K M B/G T P = 10^3..10^15, Ki Mi Gi Ti Pi = 2^10..2^50"


class Size(ParamType):
    """The Click type of every count or size option (``--tokens``, ``--compute``,
    ``--params``, ``--gbs-tokens``; as integers ``--seq``, ``--gbs``, ``--batch``, token
    lengths): a number (``4096``, ``1e24``, ``1.5``) with an optional size suffix
    (``SUFFIXES``), read exactly (decimal arithmetic: ``1.1K`` is 1100, not 1100.0000000000002).
    An integer option refuses a value that is not whole (``--seq 1.5``). It only reads the
    number: the bounds stay with the option's ``Count``/``Amount`` rule (its ``callback``),
    so ``--seq 2Gi`` is refused by ``SEQ_LEN`` like ``--seq 2147483648``. A word that is no
    number (``15X``) is one ``OptionError`` line naming the option and the text."""

    def __init__(self, integer: bool) -> None:
        self.integer = integer
        self.name = "integer" if integer else "number"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):  # a default, or a value set in Python
            return int(value) if self.integer and float(value).is_integer() else value
        return parse_size(str(value), _name(param) if param is not None else "value",
                          integer=self.integer)


def parse_size(text: str, name: str = "value", *, integer: bool = False) -> Any:
    """``text`` (``15T``, ``4M``, ``1e24``, ``32Ki``, ``nan``) as a float, or an int with
    ``integer``; ``OptionError`` naming ``name`` and the text when it is not one."""
    import decimal

    body, scale = text.strip(), 1
    match = re.fullmatch(r"(.*?\d\.?)\s*([a-zA-Z]{1,2})", body)
    if match and match[2].lower() in SUFFIXES:
        body, scale = match[1], SUFFIXES[match[2].lower()]
    context = decimal.Context(prec=60, Emax=10**6, Emin=-10**6, traps=[])
    try:
        number = context.multiply(decimal.Decimal(body), scale)
    except (decimal.InvalidOperation, ValueError):
        raise OptionError(f"{name}({text}) is not a number: write 4096, 1.5e24, or a size "
                          f"suffix ({SUFFIX_HELP})") from None
    if not integer:
        return float(number)
    if not number.is_finite() or number != number.to_integral_value():
        raise OptionError(f"{name}({text}) is not a whole number")
    if abs(number) > 10**30:  # far past every bound: its digits, not a 10^400 int
        raise OptionError(f"{name}({text}) is past every bound")
    return int(number)


POSITIVE = Count(1, MAX_COUNT)
"""Parallel sizes, accelerators, micro-batches, ranks of layouts shown."""
SEQ_LEN = Count(1, MAX_TOKENS_PER_SEQ)
BATCH = Count(1, MAX_TOKENS_PER_SEQ)
OPTIONAL_BATCH = Count(0, MAX_TOKENS_PER_SEQ)
"""A batch where 0 means "derive it" (``--gbs`` 0: mbs x dp; ``--concurrency`` 0: as many as fit)."""
OPTIONAL_COUNT = Count(0, MAX_COUNT)
POSITIVE_TOKENS = Amount(MAX_TOKENS, low=1.0)
"""Training tokens."""
GBS_TOKENS = Amount(float(2**50), low=1.0)
"""A global batch in tokens (the sequences it makes are bounded like ``--gbs``)."""
FLOPS = Amount(MAX_FLOPS, low=1e6)
"""A compute budget: 10^6 to 10^33 FLOPs."""
PARAMS = Amount(MAX_PARAMS, low=1.0)
DAYS = Amount(36_500.0, low=1e-3)
"""Days of training: a minute and a half to a century."""
MFU = Amount(1.0, low=1e-3)
"""A utilisation: 0.001 to 1."""
MS = Amount(3.6e6, low=1e-3, zero=True)
"""A latency target in milliseconds (0: none; a microsecond to an hour)."""
RATE = Amount(1e9, low=1e-6, zero=True)
"""Requests per second (0: none)."""
PRICE = Amount(1e6, low=1e-6, zero=True)
"""USD per GPU-hour (0: the preset's)."""
TOP = Count(1, 10_000)
"""How many ranked answers to show."""

INTEGER_SIZE, NUMBER_SIZE = Size(integer=True), Size(integer=False)


def sized(rule: Count, *decls: str, help: str) -> Any:
    """The ``typer.Option`` of a count or size option: read by ``Size`` (an integer for a
    ``Count`` rule, a float for an ``Amount`` one: suffixes allowed), bounded by ``rule``;
    the help says which suffixes it takes."""
    kind = NUMBER_SIZE if isinstance(rule, Amount) else INTEGER_SIZE
    return typer.Option(*decls, click_type=kind, callback=rule.callback,
                        help=f"{help} Suffixes: {SUFFIX_HELP}.")


FORMATS = ("table", "markdown", "csv", "json")


def _format_callback(param: typer.CallbackParam, value: str) -> str:
    if value not in FORMATS:
        raise OptionError(f"{_name(param)}({value}) must be one of {', '.join(FORMATS)}")
    return value


def output_format(json_mode: bool, fmt: str) -> str:
    """The one output format of ``--json`` and ``--format`` (``json`` when either says so);
    both given and disagreeing is an ``OptionError``."""
    if json_mode and fmt not in ("table", "json"):
        raise OptionError(f"--json and --format({fmt}) disagree: give one")
    return "json" if json_mode else fmt


def warn_context(cfg, seq: int) -> None:
    """One stderr line when ``seq`` is past the model's ``max_context``
    (max_position_embeddings): the numbers are still computed (they are the arithmetic of a
    longer sequence), but the model was not trained for it, so they extrapolate."""
    limit = getattr(cfg, "max_context", 0)
    if limit and seq > limit:
        import sys

        sys.stderr.write(f"llmplan: warning: seq({seq:,}) extrapolates past {cfg.name}'s "
                         f"max_position_embeddings({limit:,})\n")

ModelArg = Annotated[
    str, typer.Argument(help="Preset name, TOML model file, or Hugging Face config.json.")
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a model field: key=value (repeatable; V,h,L,a,g,d,f,E,k accepted)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
FormatOpt = Annotated[str, typer.Option("--format", callback=_format_callback, help="table (rich; piped: as wide as the table, no cell cut), markdown (GitHub tables with their titles, captions and notes), csv (each table's header and rows; notes left out; tables apart by a blank line) or json (as --json).")]
SeqOpt = Annotated[int, sized(SEQ_LEN, "--seq", help="Sequence length s (32Ki = 32,768; 32K = 32,000).")]
MbsOpt = Annotated[int, typer.Option("--mbs", callback=POSITIVE.callback, help="Micro-batch b (sequences per rank).")]
GbsOpt = Annotated[int, sized(OPTIONAL_BATCH, "--gbs", help="Global batch in sequences (default mbs*dp).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="bf16, fp16, fp32, or fp8 (the linears' GEMMs in fp8, the rest in bf16).")]
Fp8ScalingOpt = Annotated[str, typer.Option("--fp8-scaling", help="With --dtype fp8: tensor (one scale per tensor) or block (1x128 activation tiles, 128x128 weight blocks).")]
RecipeOpt = Annotated[str, typer.Option("--recipe", help="mixed (16 B/param), mixed_fp32_grads, fp32, runtime.")]
OptimOpt = Annotated[str, typer.Option("--optimizer", help="adamw, adafactor, sgd_momentum, adam8bit.")]
ZeroOpt = Annotated[int, typer.Option("--zero", callback=Count(0, 3).callback, help="ZeRO stage 0-3 over dp.")]
DpOpt = Annotated[int, typer.Option("--dp", callback=POSITIVE.callback, help="Data-parallel size.")]
TpOpt = Annotated[int, typer.Option("--tp", callback=POSITIVE.callback, help="Tensor-parallel size.")]
PpOpt = Annotated[int, typer.Option("--pp", callback=POSITIVE.callback, help="Pipeline-parallel size.")]
CpOpt = Annotated[int, typer.Option("--cp", callback=POSITIVE.callback, help="Context-parallel size: each sequence split over cp ranks (ring attention).")]
EpOpt = Annotated[int, typer.Option("--ep", callback=POSITIVE.callback, help="Expert-parallel size: the experts split over ep of the dp ranks (all-to-all).")]
VppOpt = Annotated[int, typer.Option("--vpp", callback=POSITIVE.callback, help="Virtual stages per pipeline rank (interleaved).")]
SpOpt = Annotated[bool, typer.Option("--sp/--no-sp", help="Sequence parallel.")]
RecomputeOpt = Annotated[str, typer.Option("--recompute", help="none, selective or full.")]
AttentionOpt = Annotated[str, typer.Option("--attention", help="flash (SDPA) or eager.")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="1f1b, gpipe or interleaved (default: interleaved when vpp > 1, else 1f1b).")]
DropoutOpt = Annotated[bool, typer.Option("--dropout/--no-dropout", help="Dropout masks (Korthikanti's setting).")]
HardwareOpt = Annotated[str, typer.Option("--hardware", help="Hardware preset (e.g. h100-sxm).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, or cuda on a CUDA machine.")]
MethodOpt = Annotated[str, typer.Option("--method", help="full, lora or qlora (adapters over a frozen base), dpo (preference pairs against a frozen reference) or ppo (actor, critic, reference and reward models).")]
PolicyOpt = Annotated[str, typer.Option("--policy", help="DPO / PPO: how the policy is trained: full, lora or qlora.")]
LoraRankOpt = Annotated[int, typer.Option("--lora-rank", callback=POSITIVE.callback, help="LoRA rank r.")]
LoraAlphaOpt = Annotated[float, typer.Option("--lora-alpha", help="LoRA alpha (B A is scaled by alpha / r).")]
LoraTargetsOpt = Annotated[Optional[list[str]], typer.Option("--lora-targets", help="Module names as peft names them (comma-separated or repeated; default: every attention and MLP projection).")]
LoraDropoutOpt = Annotated[float, typer.Option("--lora-dropout", help="Dropout on the adapters' input.")]
BaseBitsOpt = Annotated[Optional[int], typer.Option("--base-bits", callback=Count(1, 64).callback, help="Bits of the frozen base: 16 or 8 with lora, 4 (NF4) with qlora.")]
DoubleQuantOpt = Annotated[bool, typer.Option("--double-quant", help="QLoRA: quantise NF4's absmax constants to 8 bits (Dettmers et al. 2023).")]


def model(spec: str, sets: list[str] | None):
    """The ModelConfig a MODEL argument and its ``--set`` overrides name."""
    from presets import load_model, parse_overrides

    return load_model(spec, parse_overrides(sets))


def training(values: dict):
    """(TrainSetup, Parallel) of the shared training flags in a command's option values
    (``locals()``: seq, mbs, gbs, dtype, recipe, optimizer, zero, dp, tp, pp, vpp, sp, cp, ep,
    recompute, attention, schedule, dropout, and the fine-tuning flags where the command has
    them); the batch split by the layout contract's one
    rule (``planner.layout.micro_batches``)."""
    from planner import layout
    from planner.setup import Parallel, TrainSetup

    v = values
    par = Parallel(tp=v["tp"], pp=v["pp"], vpp=v["vpp"], dp=v["dp"], zero=v["zero"], sp=v["sp"],
                   schedule=v["schedule"], cp=v.get("cp", 1), ep=v.get("ep", 1))
    m = layout.micro_batches(global_batch=v["gbs"] or v["mbs"] * v["dp"], dp=v["dp"], mbs=v["mbs"])
    setup = TrainSetup(seq_len=v["seq"], micro_batch=v["mbs"], grad_accum=m, dtype=v["dtype"],
                       recipe=v["recipe"], optimizer=v["optimizer"], recompute=v["recompute"],
                       attention=v["attention"], dropout=v["dropout"],
                       fp8_scaling=v.get("fp8_scaling", ""),
                       adapters=adapters(v) if "method" in v else None,
                       objective=objective(v))
    return setup, par


def refuse_ppo(method: str, command: str) -> None:
    """PPO's four models are sized per phase by ``memory --method ppo`` (its FLOPs per step
    too); ``command`` does not treat them as one training run."""
    if method == "ppo":
        from planner.config import ConfigError

        raise ConfigError(f"{command} --method ppo: PPO's actor, critic, reference and reward "
                          "are sized per phase by `llmplan memory --method ppo` (with its "
                          "FLOPs per step)")


def objective(values: dict) -> str:
    from planner.finetune import objective_for

    return objective_for(values.get("method", "full"))


def adapters(values: dict):
    """The Adapters (None for full training) of the shared fine-tuning flags in a command's
    option values: method, lora_rank, lora_alpha, lora_targets, lora_dropout, base_bits,
    double_quant."""
    from planner.finetune import adapters_for

    v = values
    targets = tuple(t.strip() for arg in v.get("lora_targets") or [] for t in arg.split(",")
                    if t.strip())
    return adapters_for(v["method"], policy=v.get("policy", "full"), rank=v["lora_rank"],
                        alpha=v["lora_alpha"],
                        targets=targets, dropout=v["lora_dropout"], base_bits=v["base_bits"],
                        double_quant=v["double_quant"])


def accuracy(hardware: str):
    """The band put around estimates on ``hardware`` (the reference default without one)."""
    from planner.accuracy import DEFAULT_ACCURACY
    from presets import load_accuracy

    return load_accuracy(hardware) if hardware else DEFAULT_ACCURACY


def command_line(ctx) -> str:
    """The running command (``ctx``: its ``typer.Context``) as a user would type it:
    ``llmplan plan MODEL`` and each option whose value is not the default (written into
    exported files so they say how to reproduce them)."""
    import shlex

    words = ["llmplan", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value in ([], ()):
            continue
        if param.param_type_name == "argument":
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0] if value or not param.secondary_opts
                         else param.secondary_opts[0])
        else:
            for one in value if isinstance(value, (list, tuple)) else [value]:
                words += [param.opts[0], str(one)]
    return shlex.join(words)
