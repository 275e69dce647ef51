"""The Injection Model: MuDPT's cross-modal mapping from one tower's prompts to the other's."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN


def check_heads(width: int, num_heads: int) -> None:
    """Raise a `ValueError` unless `num_heads` divides `width`."""
    if num_heads < 1 or width % num_heads != 0:
        raise ValueError(f"The width {width} is not divisible by the number of heads {num_heads}.")


def multi_head_attention(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, num_heads: int, dropout: float = 0.0
) -> torch.Tensor:
    """Scaled dot-product attention with `num_heads` heads, per layer: `(layers, tokens, width)` in and out.

    Keys and values may have another token count than the queries; all three share the width.
    """
    layers, tokens, width = queries.shape

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(layers, x.shape[1], num_heads, width // num_heads).transpose(1, 2)

    q, k, v = split_heads(queries), split_heads(keys), split_heads(values)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    return out.transpose(1, 2).reshape(layers, tokens, width)


class InjectionAttention(nn.Module):
    """Multi-head self-attention over the prompt tokens of each layer (the layers are the batch axis).

    Written with `scaled_dot_product_attention` rather than `nn.MultiheadAttention`, whose inference fast path gives
    slightly different numbers than its training path.

    Args:
        width (`int`): Token width.
        num_heads (`int`): Number of heads; must divide `width`.
        dropout (`float`): Dropout on the attention weights (training only).
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        dropout: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_heads(width, num_heads)
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width, device=device, dtype=dtype)
        self.out_proj = nn.Linear(width, width, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the tokens of `x` (shape `(layers, tokens, width)`)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out_proj(multi_head_attention(q, k, v, self.num_heads, self.dropout if self.training else 0.0))


class InjectionBlock(nn.Module):
    """A pre-LayerNorm residual transformer block (attention + QuickGELU MLP), as in CLIP.

    Args:
        width (`int`): Token width.
        num_heads (`int`): Attention heads.
        mlp_ratio (`float`): MLP hidden size as a multiple of `width`.
        dropout (`float`): Dropout on the attention weights and on both residual branches.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = int(round(width * mlp_ratio))
        factory = {"device": device, "dtype": dtype}
        self.ln_1 = nn.LayerNorm(width, **factory)
        self.attn = InjectionAttention(width, num_heads, dropout, **factory)
        self.ln_2 = nn.LayerNorm(width, **factory)
        self.fc1 = nn.Linear(width, hidden, **factory)
        self.act = ACT2FN["quick_gelu"]
        self.fc2 = nn.Linear(hidden, width, **factory)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to `x` of shape `(layers, tokens, width)`."""
        x = x + self.dropout(self.attn(self.ln_1(x)))
        return x + self.dropout(self.fc2(self.act(self.fc1(self.ln_2(x)))))


class InjectionModel(nn.Module):
    """MuDPT's Injection Model for one direction: `proj(ln_post(blocks(ln_pre(prompts))))`.

    It maps the learned prompts of a source tower, shape `(layers, n_ctx, source_width)`, to the width of the target
    tower, `(layers, n_ctx, target_width)`; the result is added to the target tower's prompts of the same layers. The
    blocks treat each layer's prompt tokens as one sequence; `proj` is shared by all layers.

    Args:
        source_width (`int`): Width of the source tower's prompts.
        target_width (`int`): Width of the target tower's prompts.
        num_layers (`int`): Number of [`InjectionBlock`]s.
        num_heads (`int`): Attention heads of the blocks.
        mlp_ratio (`float`): MLP hidden size of the blocks as a multiple of `source_width`.
        dropout (`float`): Dropout inside the blocks.
        init_std (`float`): Standard deviation of the normal initialisation of the linear weights.
    """

    def __init__(
        self,
        source_width: int,
        target_width: int,
        num_layers: int = 1,
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        init_std: float = 0.02,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.ln_pre = nn.LayerNorm(source_width, **factory)
        self.blocks = nn.ModuleList(
            InjectionBlock(source_width, num_heads, mlp_ratio, dropout, **factory) for _ in range(num_layers)
        )
        self.ln_post = nn.LayerNorm(source_width, **factory)
        self.proj = nn.Linear(source_width, target_width, **factory)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        """Map `prompts` of shape `(layers, n_ctx, source_width)` to `(layers, n_ctx, target_width)`."""
        x = self.ln_pre(prompts)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.ln_post(x))
