"""The step's memory timeline on one rank: the per-GPU total is its peak, not a sum.

Within an optimizer step what a rank holds changes: activations pile up through the
forward and are freed layer by layer in the backward while gradients appear; the loss keeps
two fp32 logit-sized tensors for a moment; the optimizer step allocates its own
temporaries. Adding every category's largest value (what most calculators do) counts
tensors that never coexist, and misses the transients that set the real peak. The phases,
each the sum of what is alive in it:

* ``backward_start`` (the turn from the last forward to the first backward, where the most
  activations are in flight): weights W + optimizer states O + the gradients carried from
  earlier micro-batches + the saved activations + on the last stage the loss's backward
  temporaries (the fp32 gradient of the log-probabilities and of the logits, ``8 s b V/t``
  bytes: ``F.cross_entropy`` on fp32 logits).
* ``after_loss``: the loss's temporaries and the logits are freed; the LM head's weight
  gradient exists (on a tied head, held by autograd until the embedding's half arrives);
  the first recomputed layer's working set is allocated (full or selective recompute); a
  quantised frozen base dequantises one weight for a block's input gradient (QLoRA); the
  runtime's fp8 linears cast one weight to fp8 at a time (``planner.fp8``).
* ``backward_end`` (first stage): every gradient exists; the embedding's backward adds its
  own dense ``V h / t`` gradient, and with a tied head the two halves and their sum.
* ``optimizer_step``: W + gradients + O + the optimizer's temporaries (``torch.optim``'s
  foreach AdamW holds one fp32 tensor the size of what it steps; single-tensor SGD and
  Adafactor one the size of their largest tensor).

Gradients are carried into ``backward_start`` when the rank runs more micro-batches than it
holds in flight (accumulation, or 1F1B's steady state), and always for recipes other than
``runtime``, whose frameworks keep persistent gradient buffers (Megatron-LM's ``main_grad``,
DeepSpeed's); llmplan's runtime sets gradients to None at each step, as torch does by
default.

Under FSDP (llmplan's ZeRO-2/3) a rank also holds, unsharded in the compute dtype: the root
unit (embedding, final norm, LM head: FSDP2 never reshards the root between forward and
backward), the blocks gathered at that moment (ZeRO-3: the running block and the one
prefetched; ZeRO-2: every block from its forward to its backward), and during a block's
backward its unsharded gradients with their fp32 reduce-scatter input.

Checked against ``torch.distributed._tools.mem_tracker.MemTracker`` measuring llmplan's own
model and training step under ``FakeTensorMode`` at real size (tests/oracle).
"""

from __future__ import annotations

from dataclasses import dataclass

PHASES = ("backward_start", "after_loss", "backward_end", "optimizer_step")


@dataclass(frozen=True, kw_only=True, slots=True)
class StepBytes:
    """What one rank holds, by kind, for the timeline (bytes)."""

    weights: int
    gradients: int          # resident at the end of the backward
    optimizer: int
    activations: int        # saved tensors in flight at the turn, with the last stage's tail
    running_extra: int = 0  # a recomputed layer's working set beyond what it keeps
    tail: int = 0           # of ``activations``: the last stage's logits and head inputs
    carry: bool = False     # gradients from earlier micro-batches exist at the turn
    loss_temp: int = 0      # last stage: the loss backward's fp32 temporaries
    head_grad: int = 0      # last stage: the LM head's weight gradient as it is created
    embedding_end: int = 0  # first stage: the embedding backward's extra at the end
    optimizer_temp: int = 0
    unsharded_start: int = 0  # FSDP: gathered parameters at the turn (root unit + blocks)
    unsharded_block: int = 0  # FSDP: + a block's gradients and reduce-scatter input
    unsharded_end: int = 0    # FSDP: the root unit and its gradients at the end
    block_temp: int = 0       # one weight dequantised (QLoRA) or cast to fp8 in a block's backward

    def parts(self) -> tuple[tuple[int, int, int], ...]:
        """(gradients, activations, temporaries) alive in each phase of :data:`PHASES`,
        besides the weights and optimizer states every phase holds."""
        carried = self.gradients if self.carry else 0
        return (
            (carried, self.activations, self.loss_temp + self.unsharded_start),
            (carried, self.activations - self.tail + self.running_extra,
             self.head_grad + self.unsharded_start + self.unsharded_block + self.block_temp),
            (self.gradients, 0, self.embedding_end + self.unsharded_end),
            (self.gradients, 0, self.optimizer_temp),
        )

    def phases(self) -> dict[str, int]:
        states = self.weights + self.optimizer
        return {name: states + g + a + t for name, (g, a, t) in zip(PHASES, self.parts())}

    def peak(self) -> tuple[int, str]:
        """(bytes, phase) of the largest phase (the first of equals, in timeline order)."""
        best, name = -1, PHASES[0]
        for phase, (g, a, t) in zip(PHASES, self.parts()):
            if g + a + t > best:
                best, name = g + a + t, phase
        return best + self.weights + self.optimizer, name
