"""One step's time as the parts that add up to it, and the alpha-beta collective models the
cost model (``planner.cost``) builds it from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class StepTime:
    """One step's time: the six parts that add up to it (``*_comm_s`` are the exposed part
    of each communication kind) and, beside them, what each part is made of (compute by
    kind, each communication's total before overlap, the per-step overheads)."""

    compute_s: float
    bubble_s: float
    tp_comm_s: float
    dp_comm_s: float
    pp_comm_s: float
    optimizer_s: float
    cp_comm_s: float = 0.0
    ep_comm_s: float = 0.0
    matmul_s: float = 0.0
    attention_s: float = 0.0
    elementwise_s: float = 0.0
    overhead_s: float = 0.0
    tp_comm_total_s: float = 0.0
    dp_comm_total_s: float = 0.0
    pp_comm_total_s: float = 0.0
    cp_comm_total_s: float = 0.0
    ep_comm_total_s: float = 0.0
    other_s: float = 0.0
    """Per-step framework time (within ``optimizer_s``): step and FSDP overheads."""

    @property
    def total_s(self) -> float:
        return (self.compute_s + self.bubble_s + self.tp_comm_s + self.dp_comm_s
                + self.pp_comm_s + self.cp_comm_s + self.ep_comm_s + self.optimizer_s)

    def to_dict(self) -> dict[str, float]:
        return {"compute_s": self.compute_s, "bubble_s": self.bubble_s,
                "tp_comm_s": self.tp_comm_s, "dp_comm_s": self.dp_comm_s,
                "pp_comm_s": self.pp_comm_s, "cp_comm_s": self.cp_comm_s,
                "ep_comm_s": self.ep_comm_s, "optimizer_s": self.optimizer_s,
                "total_s": self.total_s}

    def breakdown(self) -> dict[str, object]:
        """Compute by kind, each communication kind total and exposed, bubble, optimizer
        update, other (``plan --json``'s ``breakdown``; the TUI's plan detail)."""
        return {
            "compute": {"matmul_s": self.matmul_s, "attention_s": self.attention_s,
                        "elementwise_s": self.elementwise_s, "overhead_s": self.overhead_s,
                        "total_s": self.compute_s},
            "communication": {
                kind: {"total_s": total, "exposed_s": exposed}
                for kind, total, exposed in (("tp", self.tp_comm_total_s, self.tp_comm_s),
                                             ("dp", self.dp_comm_total_s, self.dp_comm_s),
                                             ("pp", self.pp_comm_total_s, self.pp_comm_s),
                                             ("cp", self.cp_comm_total_s, self.cp_comm_s),
                                             ("ep", self.ep_comm_total_s, self.ep_comm_s))},
            "bubble_s": self.bubble_s,
            "optimizer_s": self.optimizer_s - self.other_s,
            "other_s": self.other_s,
            "total_s": self.total_s,
        }


def allreduce_s(nbytes: float, n: int, bw_bytes_s: float, latency_s: float) -> float:
    """Ring all-reduce: ``2(n-1)`` latency steps and ``2(n-1)/n`` of the bytes per link."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) * latency_s + 2 * (n - 1) / n * nbytes / bw_bytes_s


def allgather_s(nbytes: float, n: int, bw_bytes_s: float, latency_s: float) -> float:
    """Ring all-gather or reduce-scatter of ``nbytes`` in total: half an all-reduce."""
    if n == 1:
        return 0.0
    return (n - 1) * latency_s + (n - 1) / n * nbytes / bw_bytes_s


def all_to_all_s(nbytes: float, n: int, bw_bytes_s: float, latency_s: float) -> float:
    """Pairwise all-to-all of ``nbytes`` per rank over n ranks: ``n - 1`` exchanges, each of
    ``nbytes / n`` (the rank's own share stays), all on the rank's link."""
    if n == 1:
        return 0.0
    return (n - 1) * latency_s + (n - 1) / n * nbytes / bw_bytes_s
