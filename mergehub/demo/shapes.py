"""Llama-shaped model dimensions chosen to hit a parameter count, and the tensors they imply.

Proportions follow the Llama family: depth L ≈ hidden/128, FFN width ≈ 8/3·hidden (rounded up
to a multiple of 64, or 256 from hidden 1024 on), head_dim 64 (128 from hidden 2048 on),
grouped-query attention with about 4 query heads per key/value head (exactly 4 when the
hidden size is chosen here: it is rounded to a multiple of 4 heads). The vocabulary absorbs
the rounding, so the total lands within one 64-token slice of embeddings of the target.

Parameters per layer:  2·h² (q, o) + 2·h·kv (k, v) + 3·h·I (gate, up, down) + 2·h (norms);
outside the layers:    V·h (embed) + V·h (lm_head, unless tied) + h (final norm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mergehub.engine.api import ConfigError

MIN_VOCAB = 256
VOCAB_MULTIPLE = 64
EMBEDDING_SHARE = 0.2  # target share of embeddings in the total before the vocabulary fit


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        return layer_params(self.hidden, self.kv_dim, self.intermediate)

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.params_per_layer + embeddings + self.hidden

    def as_dict(self) -> dict:
        return asdict(self) | {"params": self.params}


def layer_params(hidden: int, kv_dim: int, intermediate: int) -> int:
    return 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate + 2 * hidden


def head_dim_for(hidden: int) -> int:
    if hidden >= 2048 and hidden % 128 == 0:
        return 128
    if hidden % 64 == 0:
        return 64
    raise ConfigError(f"hidden size {hidden} must be a multiple of 64")


def kv_heads_for(heads: int) -> int:
    """The largest divisor of ``heads`` that is at most heads/4 (at least 1): GQA about 4:1."""
    limit = max(1, heads // 4)
    return max(d for d in range(1, limit + 1) if heads % d == 0)


def intermediate_for(hidden: int) -> int:
    multiple = 256 if hidden >= 1024 else 64
    return -(-(8 * hidden) // (3 * multiple)) * multiple


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _auto_hidden(raw: float) -> int:
    """Round to a multiple of 4 heads (so GQA is exactly 4:1), or of 64 below 256."""
    if raw < 256:
        return _round_to(raw, 64)
    return _round_to(raw, 4 * (128 if raw >= 2048 else 64))


def choose_shape(params: int, *, tied_embeddings: bool = False, hidden: int | None = None,
                 layers: int | None = None, vocab: int | None = None) -> LlamaShape:
    """Dimensions whose parameter count is close to ``params``; any given dimension is kept."""
    if params <= 0:
        raise ConfigError(f"parameter count must be positive, got {params}")
    for what, value in (("hidden", hidden), ("layers", layers), ("vocab", vocab)):
        if value is not None and value <= 0:
            raise ConfigError(f"{what} must be positive, got {value}")
    if hidden is None:
        # L ≈ h/128 and ~10.5·h² per layer put (1 − share)·P ≈ 10.5·h³/128.
        hidden = _auto_hidden(((1 - EMBEDDING_SHARE) * params * 128 / 10.5) ** (1 / 3))
    head_dim = head_dim_for(hidden)
    heads = hidden // head_dim
    kv_heads = kv_heads_for(heads)
    intermediate = intermediate_for(hidden)
    per_layer = layer_params(hidden, kv_heads * head_dim, intermediate)
    per_token = hidden * (1 if tied_embeddings else 2)

    def fitted_vocab(n_layers: int) -> int:
        rest = params - n_layers * per_layer - hidden
        return max(MIN_VOCAB, _round_to(rest / per_token, VOCAB_MULTIPLE))

    if layers is None:
        if vocab is not None:
            layers = max(1, round((params - vocab * per_token - hidden) / per_layer))
        else:
            layers = max(1, round((1 - EMBEDDING_SHARE) * params / per_layer))
            while layers > 1 and params - layers * per_layer - hidden < MIN_VOCAB * per_token:
                layers -= 1
    if vocab is None:
        vocab = fitted_vocab(layers)
    return LlamaShape(hidden, layers, intermediate, heads, kv_heads, head_dim, vocab,
                      tied_embeddings)


def tensor_shapes(shape: LlamaShape) -> list[tuple[str, tuple[int, ...]]]:
    """Every weight of the model with its shape, in the order HF Llama checkpoints store them."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for n in range(shape.layers):
        p = f"model.layers.{n}."
        out += [
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    out.append(("model.norm.weight", (h,)))
    if not shape.tied_embeddings:
        out.append(("lm_head.weight", (shape.vocab, h)))
    return out


def llama_config(shape: LlamaShape, dtype_name: str) -> dict:
    """A config.json that transformers reads as a LlamaConfig."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": shape.tied_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype_name,
        "use_cache": True,
    }
