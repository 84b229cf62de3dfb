"""Decode tokens/s with the KV cache against recomputing the whole prefix for every token.

Both greedy-decode 512 new tokens after a 16-token prompt, in this process, with the same
model (tiny widened to h=256, 4 layers, context 1024), fp32 on CPU; the two must produce the
same tokens. Goal (issue 5): the cache at least 5x faster. With `--device cuda`, also prints
decode tokens/s as a fraction of the serving model's prediction (weights + cache read per token).
Run: `.venv/bin/python bench/generate.py [--new 512] [--device cpu]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presets import load_model  # noqa: E402
from runtime.generate import KVCache, _forward, predicted  # noqa: E402
from runtime.init import init_weights  # noqa: E402
from runtime.model import Decoder  # noqa: E402


@torch.no_grad()
def with_cache(model, cfg, prompt, new, device):
    caches = [KVCache(1, cfg.num_kv_heads, prompt.shape[1] + new, cfg.head_dim, window=0,
                      dtype=torch.float32, device=device) for _ in range(cfg.num_layers)]
    pos = torch.arange(prompt.shape[1], device=device)[None]
    logits = _forward(model, prompt, pos, caches)
    out = [int(logits[0, -1].argmax())]
    start = time.perf_counter()
    p = prompt.shape[1]
    for i in range(new - 1):
        tok = torch.tensor([[out[-1]]], device=device)
        logits = _forward(model, tok, torch.tensor([[p + i]], device=device), caches)
        out.append(int(logits[0, -1].argmax()))
    return out, (new - 1) / (time.perf_counter() - start)


@torch.no_grad()
def recompute(model, prompt, new, device):
    seq = prompt
    out = [int(model(seq)[0, -1].argmax())]
    start = time.perf_counter()
    for _ in range(new - 1):
        seq = torch.cat([seq, torch.tensor([[out[-1]]], device=device)], dim=1)
        out.append(int(model(seq)[0, -1].argmax()))
    return out, (new - 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    cfg = load_model("tiny", {"h": "256", "L": "4", "a": "8", "g": "4", "f": "704",
                              "max_context": "1024"})
    model = Decoder(cfg)
    init_weights(model, 0)
    model.to(device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0)).to(device)
    cached_tokens, cached = with_cache(model, cfg, prompt, args.new, device)
    full_tokens, full = recompute(model, prompt, args.new, device)
    same = cached_tokens == full_tokens
    print(f"recompute the prefix  {full:8.1f} tok/s")
    print(f"with the KV cache     {cached:8.1f} tok/s   (same tokens: {same})")
    print(f"ratio cache / recompute: {cached / full:.1f}x (goal >= 5x: {'met' if cached / full >= 5 else 'NOT met'})")
    if args.device == "cuda":
        roof = predicted(cfg, hardware="h100-sxm", tp=1, batch=1, prompt=16, max_new=args.new,
                         dtype="fp32")
        bound = roof["decode_tokens_per_s"]
        print(f"predicted {bound:,.0f} tok/s (planner.serving); measured is {cached / bound:.1%} of it")


if __name__ == "__main__":
    main()
