"""How one tower's prompts are coupled to the other tower's: the fusion modules of each method.

A fusion module belongs to a *target* tower. Given that tower's learned prompts `own` (or `None` when the method
derives them entirely from the other tower) and the other tower's learned prompts `other` (or `None`), both of shape
`(depth, n_ctx, width)`, it returns the prompts the target tower uses. The methods:

| fusion | text tower uses | vision tower uses |
| --- | --- | --- |
| `"none"` (IVLP, CoOp, VPT) | `T_j` | `V_j` |
| `"injection"` (MuDPT, `uumudpt.py`) | `T_0`; `T_j + V2T(V)_j`, `j >= 1` | `V_j + T2V(T)_j` |
| `"shared_linear"` (`mudpt.py`) | `T_0`; `T_j + L^v2t(V_j)`, `j >= 1` | `V_0 + L^t2v_0(T_0)`; `V_j + L^t2v(T_j)` |
| `"linear"` (early `mudpt.py`) | `T_0`; `T_j + L^v2t_j(V_j)`, `j >= 1` | `V_0`; `V_j + L^t2v_j(T_j)` |
| `"text_to_vision"` (MaPLe) | `T_j` | `Linear_j(T_j)` (no own vision prompts) |
| `"cross_attention"` | `T_j + CrossAttn(q=T_j, kv=V_j)` | `V_j + CrossAttn(q=V_j, kv=T_j)` |
| `"meta_net"` (CoCoOp) | `T_0 + π(x)` per image `x`; `T_j`, `j >= 1` | (not prompted) |

`"shared_linear"` has one map per direction for all deep layers (`j >= 1`) and a text-to-vision map at layer 0;
`"linear"` one map per deep layer and direction. `"meta_net"` couples the *image features* to the text prompts:
`π(x) = Linear(ReLU(Linear(x)))` of each image's L2-normalised projected features `x` is added to every layer-0 text
prompt token ([`MetaNetFusion`]), so the class prompts differ per image (the tower reads `π(x)` per text row from
`mudpt_peft.layer.MuDPTTextTower.conditioned`). Coupling applies to the layers both towers prompt (`j <
min(text_depth, vision_depth)`); deeper layers use their learned prompts alone.

Each `fusion` name is a [`Fusion`] in [`FUSIONS`]: a small class that declares what the method needs of the config
(both towers prompted, one visual token per text token, vision prompts derived from the text ones, attention heads
that divide a width) and builds the module of each target tower. The config's checks and the tuner's construction
are loops over these declarations (modelled on peft's `LoraVariant`), so a new coupling is one class here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .injection import InjectionModel, check_heads, multi_head_attention

if TYPE_CHECKING:
    from .config import MuDPTConfig


def _add_to_layers(own: torch.Tensor, delta: torch.Tensor, start: int) -> torch.Tensor:
    """`own` with `delta` added to layers `start .. start + len(delta) - 1`."""
    stop = start + delta.shape[0]
    return torch.cat([own[:start], own[start:stop] + delta.to(own.dtype), own[stop:]], dim=0)


class NoFusion(nn.Module):
    """The tower uses its learned prompts as they are (IVLP, CoOp, VPT, and MaPLe's text tower)."""

    def forward(self, own: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        """Return `own`."""
        return own


class InjectionFusion(InjectionModel):
    """MuDPT's Injection Model feeding a target tower (see [`InjectionModel`]).

    Args:
        skip_first (`bool`): Leave layer 0 alone and read only the other tower's deep prompts (the text tower in
            the official UUMuDPT code).
        **kwargs: The [`InjectionModel`] arguments.
    """

    def __init__(self, *, skip_first: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.skip_first = skip_first

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Add the injection of `other`'s layers to `own`'s layers of the same index."""
        start = 1 if self.skip_first else 0
        common = min(own.shape[0], other.shape[0])
        if common <= start:
            return own
        return _add_to_layers(own, super().forward(other[start:common]), start)


class LinearFusion(nn.Module):
    """The early official `mudpt.py` variant: one linear map per deep layer and direction, no coupling at layer 0.

    `own_j + projections[j-1](other_j)` for the deep layers `1 <= j < min(depths)`; layer 0 uses the learned prompts
    alone (that code builds a layer-0 projection but never uses it). `MuDPTConfig(fusion="linear")`, the preset
    `"mudpt-linear-v1"`.

    Args:
        source_width (`int`): Width of the other tower's prompts.
        target_width (`int`): Width of this tower's prompts.
        num_layers (`int`): Number of deep layers shared by both towers (one linear map each).
    """

    def __init__(
        self,
        source_width: int,
        target_width: int,
        num_layers: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Linear(source_width, target_width, device=device, dtype=dtype) for _ in range(num_layers)
        )

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Add each deep layer's mapped `other` prompts to `own`."""
        delta = torch.stack([projection(other[j + 1]) for j, projection in enumerate(self.projections)], dim=0)
        return _add_to_layers(own, delta, 1)


class SharedLinearFusion(nn.Module):
    """The current official `mudpt.py` variant: one linear map shared by all deep layers, and a layer-0 map.

    `own_0 + first_projection(other_0)` at layer 0 (when `first_layer`), `own_j + deep_projection(other_j)` for the
    deep layers `1 <= j < min(depths)` (when `deep`). The official code has the layer-0 map on the vision side only
    (`embed_projection`, text -> vision). `MuDPTConfig(fusion="shared_linear")`, the preset `"mudpt-linear"`.

    Args:
        source_width (`int`): Width of the other tower's prompts.
        target_width (`int`): Width of this tower's prompts.
        first_layer (`bool`): Couple layer 0 with its own map `first_projection`.
        deep (`bool`): Couple the deep layers with the shared map `deep_projection` (`False` where the towers share
            no deep layer, so that no parameter goes unused).
    """

    def __init__(
        self,
        source_width: int,
        target_width: int,
        *,
        first_layer: bool,
        deep: bool,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not (first_layer or deep):
            raise ValueError("SharedLinearFusion needs `first_layer` or `deep`; use NoFusion to couple nothing.")
        factory = {"device": device, "dtype": dtype}
        self.first_projection = nn.Linear(source_width, target_width, **factory) if first_layer else None
        self.deep_projection = nn.Linear(source_width, target_width, **factory) if deep else None

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Add the mapped `other` prompts of layer 0 and of the common deep layers to `own`."""
        if self.first_projection is not None:
            own = _add_to_layers(own, self.first_projection(other[:1]), 0)
        common = min(own.shape[0], other.shape[0])
        if self.deep_projection is not None and common > 1:
            own = _add_to_layers(own, self.deep_projection(other[1:common]), 1)
        return own


class TextToVisionFusion(nn.Module):
    """MaPLe's coupling: the vision prompts of layer j are `Linear_j(T_j)`; there are no independent vision prompts.

    Args:
        source_width (`int`): Width of the text prompts.
        target_width (`int`): Width of the vision prompts.
        depth (`int`): Number of prompted layers (one linear map each).
    """

    def __init__(
        self,
        source_width: int,
        target_width: int,
        depth: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.projections = nn.ModuleList(
            nn.Linear(source_width, target_width, device=device, dtype=dtype) for _ in range(depth)
        )

    def forward(self, own: torch.Tensor | None, other: torch.Tensor) -> torch.Tensor:
        """Map each text layer's prompts with its own linear map."""
        return torch.stack([projection(other[j]) for j, projection in enumerate(self.projections)], dim=0)


class CrossAttentionFusion(nn.Module):
    """Cross-modal attention: `own_j + Attn(q=LN(own_j), k=v=LN(other_j))`, per layer j.

    Keys and values come from the other tower (their width projected to this tower's); the output projection starts
    at zero, so training starts from the uncoupled prompts.

    Args:
        target_width (`int`): Width of this tower's prompts (queries and output).
        source_width (`int`): Width of the other tower's prompts (keys and values).
        num_heads (`int`): Attention heads; must divide `target_width`.
        dropout (`float`): Dropout on the attention weights.
    """

    def __init__(
        self,
        target_width: int,
        source_width: int,
        num_heads: int,
        dropout: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_heads(target_width, num_heads)
        factory = {"device": device, "dtype": dtype}
        self.num_heads = num_heads
        self.dropout = dropout
        self.ln_query = nn.LayerNorm(target_width, **factory)
        self.ln_context = nn.LayerNorm(source_width, **factory)
        self.query = nn.Linear(target_width, target_width, **factory)
        self.key_value = nn.Linear(source_width, 2 * target_width, **factory)
        self.out_proj = nn.Linear(target_width, target_width, **factory)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Add the attention of `own`'s tokens over `other`'s tokens of the same layer."""
        common = min(own.shape[0], other.shape[0])
        queries, context = own[:common], other[:common].to(own.dtype)
        keys, values = self.key_value(self.ln_context(context)).chunk(2, dim=-1)
        dropout = self.dropout if self.training else 0.0
        attended = multi_head_attention(self.query(self.ln_query(queries)), keys, values, self.num_heads, dropout)
        return _add_to_layers(own, self.out_proj(attended), 0)


class MetaNetFusion(nn.Module):
    """CoCoOp's meta-net: a shift `π(x) = linear2(relu(linear1(x)))` per image, added to every context token.

    `x` is an image's L2-normalised projected feature (what CLIP compares with the text features); the hidden layer is
    `feature_dim // 16` wide, as in the official `trainers/cocoop.py`. The tower's learned prompts pass through
    `forward` unchanged; the tower adds [`~MetaNetFusion.shift`] of each text row's image to its layer-0 prompts.
    `MuDPTConfig(fusion="meta_net")`, the preset `"cocoop"`.

    Args:
        feature_dim (`int`): Width of the image features (CLIP's projection dim).
        target_width (`int`): Width of the text prompts.
        reduction (`int`, defaults to 16): `feature_dim // reduction` is the hidden width.
    """

    #: The text tower needs a shift per text row from [`~MetaNetFusion.shift`] (see `MuDPTTextTower.conditioned`).
    conditions_on_image = True

    def __init__(
        self,
        feature_dim: int,
        target_width: int,
        reduction: int = 16,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden = feature_dim // reduction
        if hidden < 1:
            raise ValueError(
                f"CoCoOp's meta-net has `feature_dim // {reduction}` hidden units, but the image features are "
                f"{feature_dim} wide (at least {reduction} needed)."
            )
        factory = {"device": device, "dtype": dtype}
        self.linear1 = nn.Linear(feature_dim, hidden, **factory)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, target_width, **factory)

    def forward(self, own: torch.Tensor, other: torch.Tensor | None) -> torch.Tensor:
        """Return `own`: the per-image shift is added by the tower (see [`~MetaNetFusion.shift`])."""
        return own

    def shift(self, image_features: torch.Tensor) -> torch.Tensor:
        """`π(x)` of L2-normalised image features `(images, feature_dim)`: `(images, target_width)`."""
        return self.linear2(self.relu(self.linear1(image_features.to(self.linear1.weight.dtype))))


# ---------------------------------------------------------------------------------------------------------------------
# the fusions a config can name


def default_heads(width: int) -> int:
    """The default attention head count for a width: `width // 64`, at least 1 (CLIP's head width)."""
    return max(1, width // 64)


@dataclass(frozen=True)
class FusionSide:
    """What building the fusion module of one target tower needs.

    Args:
        target (`str`): `"text"` or `"vision"`, the tower whose prompts the module returns.
        source_width (`int`): Width of the other tower's prompts.
        target_width (`int`): Width of the target tower's prompts.
        shared_depth (`int`): Number of layers both towers prompt.
        target_depth (`int`): Number of layers the target tower prompts.
        factory (`dict`): `device` and `dtype` of the target tower's weights.
        image_feature_dim (`int`, *optional*): Width of the model's (projected) image features.
    """

    target: str
    source_width: int
    target_width: int
    shared_depth: int
    target_depth: int
    factory: dict[str, Any]
    image_feature_dim: int | None = None


class Fusion:
    """A coupling of the two towers' prompts, as `MuDPTConfig(fusion=name)` names it.

    Subclasses declare what they need of a config and build one module per prompted tower (see [`FusionSide`]);
    [`MuDPTConfig`] checks the declarations, the tuner calls [`Fusion.build`].
    """

    #: The `fusion` value.
    name: ClassVar[str]
    #: Whether both towers must have prompts.
    couples: ClassVar[bool] = True
    #: Whether text token i feeds visual token i, so that `vision_n_ctx` must equal `n_ctx`.
    maps_tokens: ClassVar[bool] = False
    #: Whether the vision prompts are computed from the text prompts (no learned vision prompts; vision depth = text
    #: depth).
    derives_vision_prompts: ClassVar[bool] = False
    #: Whether the text prompts depend on each image (CoCoOp): then the text tower needs text prompts, and the class
    #: features are encoded per image (never cached).
    conditions_on_image: ClassVar[bool] = False

    @classmethod
    def head_counts(cls, config: MuDPTConfig, widths: dict[str, int]) -> list[tuple[str, int, int]]:
        """`(config field, heads, width)` for each attention over a width that the heads must divide."""
        return []

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        """The fusion module of `side.target`."""
        raise NotImplementedError


class NoCoupling(Fusion):
    """Independent prompts: IVLP with both towers, CoOp (text only), VPT (vision only)."""

    name = "none"
    couples = False

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        return NoFusion()


class Injection(Fusion):
    """MuDPT's Injection Model per direction (a transformer block and a linear head); text layer 0 gets none."""

    name = "injection"
    maps_tokens = True

    @classmethod
    def head_counts(cls, config: MuDPTConfig, widths: dict[str, int]) -> list[tuple[str, int, int]]:
        if config.injection_layers == 0:
            return []
        return [("injection_heads", config.injection_heads or default_heads(w), w) for w in widths.values()]

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        if side.target == "text" and side.shared_depth <= 1:
            # nothing to fuse: a parameter without gradient would also break DDP without find_unused_parameters
            return NoFusion()
        return InjectionFusion(
            skip_first=side.target == "text",
            source_width=side.source_width,
            target_width=side.target_width,
            num_layers=config.injection_layers,
            num_heads=config.injection_heads or default_heads(side.source_width),
            mlp_ratio=config.injection_mlp_ratio,
            dropout=config.injection_dropout,
            init_std=config.injection_init_std,
            **side.factory,
        )


class SharedLinear(Fusion):
    """The current official `mudpt.py`: one linear map per direction shared by the deep layers, and a text-to-vision
    map at layer 0."""

    name = "shared_linear"
    maps_tokens = True

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        first_layer, deep = side.target == "vision", side.shared_depth > 1
        if not (first_layer or deep):
            return NoFusion()
        return SharedLinearFusion(
            side.source_width, side.target_width, first_layer=first_layer, deep=deep, **side.factory
        )


class PerLayerLinear(Fusion):
    """The early official `mudpt.py`: one linear map per deep layer and direction, layer 0 uncoupled."""

    name = "linear"
    maps_tokens = True

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        if side.shared_depth <= 1:
            return NoFusion()
        return LinearFusion(side.source_width, side.target_width, side.shared_depth - 1, **side.factory)


class TextToVision(Fusion):
    """MaPLe: the vision prompts of each layer are a linear map of that layer's text prompts."""

    name = "text_to_vision"
    maps_tokens = True
    derives_vision_prompts = True

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        if side.target == "text":
            return NoFusion()
        return TextToVisionFusion(side.source_width, side.target_width, side.target_depth, **side.factory)


class CrossAttention(Fusion):
    """Cross-modal attention per layer: each tower's prompts attend over the other tower's (zero-initialised output,
    so training starts from the uncoupled prompts)."""

    name = "cross_attention"

    @classmethod
    def head_counts(cls, config: MuDPTConfig, widths: dict[str, int]) -> list[tuple[str, int, int]]:
        return [
            ("cross_attention_heads", config.cross_attention_heads or default_heads(w), w) for w in widths.values()
        ]

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        heads = config.cross_attention_heads or default_heads(side.target_width)
        return CrossAttentionFusion(
            side.target_width, side.source_width, heads, config.cross_attention_dropout, **side.factory
        )


class MetaNet(Fusion):
    """CoCoOp: a meta-net maps each image's features to a shift of the layer-0 text prompts."""

    name = "meta_net"
    couples = False
    conditions_on_image = True

    @classmethod
    def build(cls, config: MuDPTConfig, side: FusionSide) -> nn.Module:
        if side.target != "text":
            return NoFusion()
        if side.image_feature_dim is None:  # the tuner always gives it
            raise ValueError("The meta-net needs the width of the image features (`FusionSide.image_feature_dim`).")
        return MetaNetFusion(side.image_feature_dim, side.target_width, **side.factory)


#: Every `fusion` a config can name, by name.
FUSIONS: dict[str, type[Fusion]] = {
    fusion.name: fusion
    for fusion in (Injection, SharedLinear, PerLayerLinear, TextToVision, NoCoupling, CrossAttention, MetaNet)
}
