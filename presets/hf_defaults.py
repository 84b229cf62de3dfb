"""What ``transformers`` fills in for a field a ``config.json`` leaves out, per family.

Each table is the keyword defaults of the family's ``<Family>Config.__init__``
(``transformers/models/<family>/configuration_<family>.py``, transformers 5.x), under the
config's own field names; a field whose default is computed from others (``head_dim`` =
hidden / heads, ``num_key_value_heads`` = heads where the class says so, ``n_inner`` = 4
hidden, ``ffn_hidden_size`` = 4 hidden) is computed by ``presets.hf`` instead. A field given
as ``null`` in the file keeps its ``None``, as the config class does.
``tests/oracle`` checks every value here against the installed ``transformers``.
"""

from __future__ import annotations

from typing import Any

_ROPE = {"rope_theta": 10000.0}

DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
              "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False, **_ROPE},
    "mistral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
                "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "sliding_window": 4096,
                **_ROPE},
    "mixtral": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                "hidden_act": "silu", "max_position_embeddings": 4096 * 32,
                "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "sliding_window": None,
                "num_experts_per_tok": 2, "num_local_experts": 8, "rope_theta": 1e6},
    "qwen2": {"vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
              "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "use_sliding_window": False, **_ROPE},
    "gemma": {"vocab_size": 256000, "hidden_size": 3072, "intermediate_size": 24576,
              "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 16,
              "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
              "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True, "attention_bias": False, **_ROPE},
    "gpt2": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12,
             "n_head": 12, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
             "tie_word_embeddings": True},
    "gpt_neox": {"vocab_size": 50432, "hidden_size": 6144, "num_hidden_layers": 44,
                 "num_attention_heads": 64, "intermediate_size": 24576, "hidden_act": "gelu",
                 "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
                 "tie_word_embeddings": False, "use_parallel_residual": True,
                 "attention_bias": True, "partial_rotary_factor": 0.25, **_ROPE},
    "opt": {"vocab_size": 50272, "hidden_size": 768, "num_hidden_layers": 12, "ffn_dim": 3072,
            "max_position_embeddings": 2048, "do_layer_norm_before": True,
            "num_attention_heads": 12, "activation_function": "relu", "enable_bias": True,
            "tie_word_embeddings": True},
    "bloom": {"vocab_size": 250880, "hidden_size": 64, "n_layer": 2, "n_head": 8,
              "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
    "falcon": {"vocab_size": 65024, "hidden_size": 4544, "num_hidden_layers": 32,
               "num_attention_heads": 71, "layer_norm_epsilon": 1e-5, "alibi": False,
               "new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
               "bias": False, "max_position_embeddings": 2048, "activation": "gelu",
               "tie_word_embeddings": True, **_ROPE},
}
