"""Test-only: small Hugging Face model folders written by ``transformers`` itself.

One configuration per supported family (its own class and field names), random weights drawn
wide enough that every bias, norm scale and projection matters, ``save_pretrained`` (sharded
when asked, so the index path is exercised) and a byte-level BPE ``tokenizer.json`` trained
with ``tokenizers``. No hub: everything is built here.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=128)

CONFIGS = {
    "llama": ("LlamaConfig", dict(SMALL, intermediate_size=96, num_key_value_heads=2,
                                  attention_bias=True, rope_theta=500.0)),
    "mistral": ("MistralConfig", dict(SMALL, intermediate_size=96, num_key_value_heads=2,
                                      sliding_window=8)),
    "mixtral": ("MixtralConfig", dict(SMALL, intermediate_size=48, num_key_value_heads=2,
                                      num_local_experts=4, num_experts_per_tok=2)),
    "qwen2": ("Qwen2Config", dict(SMALL, intermediate_size=96, num_key_value_heads=2,
                                  tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", dict(SMALL, intermediate_size=96, num_key_value_heads=1,
                                  head_dim=24, hidden_activation="gelu_pytorch_tanh")),
    "gpt2": ("GPT2Config", dict(vocab_size=320, n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL, intermediate_size=128, rotary_pct=0.5,
                                       use_parallel_residual=True)),
    "opt": ("OPTConfig", dict(SMALL, ffn_dim=128, word_embed_proj_dim=64)),
    "bloom": ("BloomConfig", dict(vocab_size=320, hidden_size=64, n_layer=2, n_head=4)),
    "falcon": ("FalconConfig", dict(SMALL, multi_query=True, parallel_attn=True,
                                    new_decoder_architecture=False, alibi=False, bias=False)),
}
FAMILIES = tuple(CONFIGS)

TEXT = ("the quick brown fox jumps over the lazy dog. a planner ranks layouts; a runtime runs "
        "them. tensor, pipeline and data parallel ranks share one model. ") * 20


def write_tokenizer(folder: Path, vocab: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT], trainer)
    tok.save(str(folder / "tokenizer.json"))


def build_hf_model(family: str, *, seed: int = 0):
    import transformers

    cls_name, fields = CONFIGS[family]
    # no pad token: transformers would freeze its embedding row (padding_idx), which a
    # training run updates
    config = getattr(transformers, cls_name)(**fields, bos_token_id=0, eos_token_id=0,
                                             pad_token_id=None)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 / p.shape[-1] ** 0.5 if p.shape[-1] > 1 else 0.1)
            elif "norm" in name or "ln" in name:
                p.normal_(1.0 if family != "gemma" else 0.0, 0.1)
            else:
                p.normal_(0.0, 0.1)
    return model


def write_hf_folder(family: str, folder: Path, *, shard: str | None = None, seed: int = 0):
    """A folder as a user downloads it: config.json, safetensors (sharded with an index when
    ``shard`` is a size), generation settings and tokenizer.json; returns the model."""
    folder.mkdir(parents=True, exist_ok=True)
    model = build_hf_model(family, seed=seed)
    model.save_pretrained(folder, max_shard_size=shard or "5GB")
    write_tokenizer(folder, 300)
    return model
