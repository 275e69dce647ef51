"""The MuDPT tuner: injects the MuDPT wrappers into a CLIP-like model."""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any

import torch
from peft.tuners.tuners_utils import (
    BaseTuner,
    BaseTunerLayer,
    _filter_state_dict_by_key_prefixes,
    _get_submodules,
    _get_tuner_state_dict_key_prefixes,
)
from peft.utils.integrations import init_empty_weights
from torch import nn

from ._peft_type import MUDPT_PREFIX
from ._utils import first_float_parameter
from .adapter_files import (
    adapter_fingerprint,
    loaded_from,
    recorded_for_load,
    spend_fingerprints,
    verify_tensors,
    weights_description,
)
from .compat import base_model_record, check_base_model
from .config import MAX_N_CTX, MuDPTConfig, short_repr
from .families import FamilySpec, get_family_spec
from .fusion import FUSIONS, FusionSide
from .layer import (
    MuDPTDeepPromptLayer,
    MuDPTLayer,
    MuDPTTextTokenEmbedding,
    MuDPTTextTower,
    MuDPTTower,
    MuDPTVisionEmbeddings,
    MuDPTVisionTower,
    refuse_merge,
)
from .methods import card_tags
from .names import check_adapter_name


class MuDPTModel(BaseTuner):
    """Creates a MuDPT model (multi-modal deep prompt tuning with an Injection Model) from a CLIP-like model.

    The method is described in "Multi-modal Deep-symphysis Prompt Tuning for Large Pre-trained Vision-Language
    Models" (Miao et al., ICME 2023, https://arxiv.org/abs/2306.11400). Use it through `peft.get_peft_model`; the
    backbone stays frozen, only the prompts and the Injection Models train.

    Args:
        model (`transformers.PreTrainedModel`): A model with a registered [`FamilySpec`] (e.g. `CLIPModel`).
        peft_config ([`MuDPTConfig`]): The adapter configuration.
        adapter_name (`str`, defaults to `"default"`): The name of the adapter.
        low_cpu_mem_usage (`bool`, defaults to `False`): Create the adapter weights on the meta device (for loading).

    Example:

        ```py
        >>> import mudpt_peft
        >>> from peft import get_peft_model
        >>> from transformers import CLIPModel

        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = get_peft_model(clip, mudpt_peft.MuDPTConfig(depth=9, n_ctx=2))
        >>> model.print_trainable_parameters()
        ```
    """

    prefix: str = MUDPT_PREFIX
    tuner_layer_cls = MuDPTLayer
    target_module_mapping: dict[str, list[str]] = {}

    def __init__(
        self,
        model: nn.Module,
        peft_config: MuDPTConfig | dict[str, MuDPTConfig],
        adapter_name: str,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        # checked before BaseTuner.__init__, which would otherwise write into the wrapped model's `peft_config`
        refuse_wrapped(model)
        for name in [adapter_name, *(peft_config if isinstance(peft_config, dict) else ())]:
            check_adapter_name(name, "`adapter_name`")
        super().__init__(model, peft_config, adapter_name, low_cpu_mem_usage=low_cpu_mem_usage, state_dict=state_dict)

    # ----------------------------------------------------------------------------------------------------------------
    # injection

    def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("MuDPT places its wrappers from the family spec, see `MuDPTModel.inject_adapter`.")

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Add the adapter `adapter_name` (its config is `self.peft_config[adapter_name]`) to `model`.

        Everything is validated before any weight is created, the adapter name first (it becomes a folder name when
        the adapter is saved, see [`~mudpt_peft.names.check_adapter_name`]). The first adapter wraps the towers, the
        input embeddings and the encoder layers that get deep prompts; later adapters reuse the wrappers (and wrap
        more layers if they are deeper).

        With `low_cpu_mem_usage=True` (`inject_adapter_in_model`, `PeftModel.add_adapter`, `load_adapter`), the
        adapter's prompts and fusion weights are created on the meta device, as peft creates LoRA's: nothing is
        allocated or initialised (a `ctx_init` embedding is not read), and loading them with
        `set_peft_model_state_dict(..., low_cpu_mem_usage=True)` assigns the tensors read from the file.
        """
        check_adapter_name(adapter_name, "`adapter_name`")
        config: MuDPTConfig = self.peft_config[adapter_name]
        if not isinstance(config, MuDPTConfig):
            raise ValueError(f"Expected a MuDPTConfig for adapter '{adapter_name}', got {type(config).__name__}.")
        # a loaded adapter records the base model it was saved from: refuse another family or geometry up front
        check_base_model(config, model)
        spec = get_family_spec(model)
        init_ids = _resolve_ctx_init(config, model, spec)  # may set n_ctx from the word count
        geometry = validate_against_model(config, model, spec)

        towers = self._wrap_towers(model, spec, config)
        first_adapter = not any(tower.mudpt_fusion for tower in towers.values())
        requires_grad_before = {} if first_adapter else {id(p): p.requires_grad for p in model.parameters()}

        # on meta, as peft's BaseTuner does for LoRA; the context also catches a parameter that a fusion creates
        # without the device it is given
        with init_empty_weights() if low_cpu_mem_usage else contextlib.nullcontext():
            learned = _init_prompts(config, geometry, towers, init_ids, on_meta=low_cpu_mem_usage)
            fusions = _make_fusions(config, geometry, towers, on_meta=low_cpu_mem_usage, model=model)
            for modality, tower in towers.items():
                tower.update_layer(
                    adapter_name, learned[modality], fusions[modality], inference_mode=config.inference_mode
                )
        if "text" in towers:
            self._wrap_deep_layers(towers["text"], spec.text_layers, config.resolved_text_depth)
        if "vision" in towers:
            self._wrap_deep_layers(towers["vision"], spec.vision_layers, config.resolved_vision_depth)

        config.record_base_model(base_model_record(model))
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)
        if first_adapter:
            self._mark_only_adapters_as_trainable(model)
        else:  # adding an adapter never changes the trainability of what was there
            for parameter in model.parameters():
                if id(parameter) in requires_grad_before:
                    parameter.requires_grad = requires_grad_before[id(parameter)]
        self.targeted_module_names = sorted(
            name for name, module in model.named_modules() if isinstance(module, MuDPTLayer)
        )
        self._post_injection_hook(model, config, adapter_name)

    def _post_injection_hook(self, model: nn.Module, config: MuDPTConfig, adapter_name: str) -> None:
        """Tag the base model (`add_model_tags`): peft's model card lists the base model's `model_tags`, so a plain
        `save_pretrained` of a MuDPT adapter is tagged too (transformers' `push_to_hub` card takes only `tags=`)."""
        add_model_tags = getattr(model, "add_model_tags", None)
        if callable(add_model_tags):
            add_model_tags(card_tags(model, [config]))

    def _wrap_towers(self, model: nn.Module, spec: FamilySpec, config: MuDPTConfig) -> dict[str, MuDPTTower]:
        """Wrap the towers this adapter prompts (and their input embeddings); return them by modality."""
        towers: dict[str, MuDPTTower] = {}
        if config.text_prompts:
            text = towers["text"] = _wrap(model, spec.text_tower, lambda base: MuDPTTextTower(base, spec))
            _wrap(text.base_layer, spec.text_token_embedding, lambda b: MuDPTTextTokenEmbedding(b, text.slot))
        if config.vision_prompts:
            vision = towers["vision"] = _wrap(model, spec.vision_tower, lambda base: MuDPTVisionTower(base, spec))
            _wrap(vision.base_layer, spec.vision_embeddings, lambda b: MuDPTVisionEmbeddings(b, vision.slot))
        text, vision = model.get_submodule(spec.text_tower), model.get_submodule(spec.vision_tower)
        if isinstance(text, MuDPTTower) and isinstance(vision, MuDPTTower):
            text.partner, vision.partner = vision, text
        return towers

    @staticmethod
    def _wrap_deep_layers(tower: MuDPTTower, layers_path: str, depth: int) -> None:
        layers = tower.base_layer.get_submodule(layers_path)
        for index in range(1, depth):
            if not isinstance(layers[index], MuDPTDeepPromptLayer):
                layers[index] = MuDPTDeepPromptLayer(layers[index], tower.slot, index)

    # ----------------------------------------------------------------------------------------------------------------
    # unloading and merging

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            refuse_merge()
        wrappers = [(name, module) for name, module in self.model.named_modules() if isinstance(module, MuDPTLayer)]
        # innermost first, so that every parent path still resolves when its child is replaced
        for name, module in sorted(wrappers, key=lambda item: item[0].count("."), reverse=True):
            parent, _, child_name = _get_submodules(self.model, name)
            setattr(parent, child_name, module.base_layer)
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Not supported: prompts have no weight delta to merge. Raises `NotImplementedError`."""
        refuse_merge()

    def unmerge_adapter(self) -> None:
        """Nothing is ever merged, so there is nothing to unmerge."""

    # ----------------------------------------------------------------------------------------------------------------
    # saving and loading

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """Drop the adapter name that follows a `mudpt_*` container, e.g. `mudpt_fusion.default.proj.weight`."""
        return re.sub(rf"(\.{re.escape(MUDPT_PREFIX)}[A-Za-z0-9_]+)\.{re.escape(adapter_name)}(?=\.|$)", r"\1", key)

    @classmethod
    def _get_adapter_state_dict(
        cls,
        model: nn.Module,
        config: MuDPTConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
        unwanted_adapter_names: list[str],
    ) -> dict[str, torch.Tensor]:
        """peft's selection of the adapter's tensors; their fingerprint is handed to the config, which records it when
        peft saves the config beside the weights written from them (see [`MuDPTConfig.save_pretrained`])."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        if isinstance(config, MuDPTConfig):
            saved = {cls._remove_adapter_name_from_key(key, adapter_name): value for key, value in selected.items()}
            config.record_saved_tensors(adapter_fingerprint(saved))
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls,
        model: nn.Module,
        config: MuDPTConfig,
        adapter_name: str,
        state_dict: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Check the tensors about to be loaded, then map them to the model's keys.

        Every peft loading path ends here with the tensors it read (`PeftModel.from_pretrained` with or without
        `config=`, `load_adapter`, `set_peft_model_state_dict`; not transformers' own `load_adapter`, whose loader
        calls no peft code with the tensors). The tensors must be floating point and finite; when the adapter's
        config was read from a save, they must be the tensors of that save and the config's fields those they were
        saved with (the fingerprints, see `mudpt_peft.adapter_files`); and they must fit the model's shapes.
        Otherwise a `ValueError` is raised before any tensor is loaded, and an adapter created from a saved config
        for this load is removed (the base model unwrapped if it was the only one); an adapter that existed before
        keeps its values.
        """
        # a config read from a save (by MuDPTConfig.from_pretrained, or by peft's reader: then only its fingerprints
        # say so) made an adapter for these tensors; both records are spent by this check
        from_file = loaded_from(config)
        created_for_this_load = from_file is not None or recorded_for_load(config) != (None, None)
        try:
            verify_tensors(state_dict, config, weights_description(config, adapter_name))
        except ValueError as error:
            if created_for_this_load:
                _discard_adapter(model, adapter_name)
            if created_for_this_load and from_file is None:  # a config from a save, given other tensors
                hint = " To load other weights into an adapter made from this config, set `config.auto_mapping = None`."
                raise ValueError(f"{error}{hint}") from None
            raise
        finally:
            if isinstance(config, MuDPTConfig) and created_for_this_load:
                spend_fingerprints(config)
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        prefixes = _get_tuner_state_dict_key_prefixes(model, adapter_name=adapter_name)
        expected = _filter_state_dict_by_key_prefixes(model.state_dict(), prefixes)
        if not any(key.startswith("base_model.model.") for key in expected):
            remapped = {key.removeprefix("base_model.model."): value for key, value in remapped.items()}
        problems = []
        missing = sorted(set(expected) - set(remapped))
        unexpected = sorted(set(remapped) - set(expected))
        if missing:
            names = [cls._remove_adapter_name_from_key(k, adapter_name) for k in missing]
            problems.append(f"missing tensors: {_some(names)}")
        if unexpected:
            problems.append(f"unexpected tensors: {_some(unexpected)}")
        shapes = [
            f"{short_repr(cls._remove_adapter_name_from_key(key, adapter_name))} has shape "
            f"{tuple(remapped[key].shape)} in the checkpoint but {tuple(expected[key].shape)} in this model"
            for key in sorted(set(expected) & set(remapped))
            if tuple(expected[key].shape) != tuple(remapped[key].shape)
        ]
        problems += shapes[:_LISTED]
        if len(shapes) > _LISTED:
            problems.append(f"{len(shapes) - _LISTED} more tensors have other shapes")
        if problems:
            if created_for_this_load:
                _discard_adapter(model, adapter_name)
            raise ValueError(
                f"The MuDPT adapter '{adapter_name}' does not fit this base model ({'; '.join(problems)}). "
                "Was it trained on a base model with other widths or layer counts? Load it on the base model it "
                "was trained for (see `base_model_name_or_path` in adapter_config.json)."
            )
        return remapped


# --------------------------------------------------------------------------------------------------------------------
# helpers

#: How many tensor names an error message lists (an adapter config can describe thousands of tensors).
_LISTED = 5


def _some(names: list[str]) -> str:
    """The first `_LISTED` of `names` for an error message (each cut short), and how many more there are."""
    listed = ", ".join(short_repr(name) for name in names[:_LISTED])
    return f"[{listed}" + (f", ... and {len(names) - _LISTED} more]" if len(names) > _LISTED else "]")


def refuse_wrapped(model: nn.Module) -> None:
    """Raise a `ValueError` if `model` is already wrapped by peft (MuDPT wraps plain base models only)."""
    from peft import PeftModel

    if isinstance(model, (PeftModel, BaseTuner)) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError(
            "This model is already wrapped by peft. To add another MuDPT adapter, call "
            "`peft_model.add_adapter(name, config)`; to start over, use `peft_model.unload()` first."
        )


def _wrap(root: nn.Module, path: str, make_wrapper: Any) -> Any:
    """Replace the module at `path` under `root` by `make_wrapper(module)` unless it is wrapped already."""
    module = root.get_submodule(path)
    if isinstance(module, MuDPTLayer):
        return module
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    wrapper = make_wrapper(module)
    setattr(parent, name, wrapper)
    return wrapper


def validate_against_model(config: MuDPTConfig, model: nn.Module, spec: FamilySpec) -> dict[str, int]:
    """Check `config`'s depths, head counts and token count against `model`; return the model's geometry."""
    geometry = spec.geometry(model)
    for tower, depth, field_name in (
        ("text", config.resolved_text_depth, "text_depth" if config.text_depth is not None else "depth"),
        ("vision", config.resolved_vision_depth, "vision_depth" if config.vision_depth is not None else "depth"),
    ):
        if depth > geometry[f"{tower}_layers"]:
            raise ValueError(
                f"`{field_name}`={depth} is larger than the {tower} tower's {geometry[f'{tower}_layers']} layers; "
                f"allowed: 1..{geometry[f'{tower}_layers']}."
            )
    widths = {"text": geometry["text_width"], "vision": geometry["vision_width"]}
    for field_name, heads, width in FUSIONS[config.fusion].head_counts(config, widths):
        if width % heads != 0:
            modality = "text" if width == widths["text"] else "vision"
            raise ValueError(
                f"`{field_name}`={heads} does not divide the {modality} width {width}; choose a head count that "
                f"divides both widths ({geometry['text_width']} and {geometry['vision_width']})."
            )
    max_positions = spec.text_config(model).max_position_embeddings
    if config.text_prompts and config.n_ctx + spec.text_prompt_start + 1 > max_positions:
        raise ValueError(
            f"`n_ctx`={config.n_ctx} leaves no room for text in the text tower's {max_positions} positions; "
            f"allowed: 1..{max_positions - spec.text_prompt_start - 1}."
        )
    return geometry


def _resolve_ctx_init(config: MuDPTConfig, model: nn.Module, spec: FamilySpec) -> list[int] | None:
    """The token ids that initialise the layer-0 text prompts (tokenizing `ctx_init` once, then kept in the config)."""
    if config.ctx_init_token_ids is None and config.ctx_init is not None:
        _tokenize_ctx_init(config, model)
    token_ids = config.ctx_init_token_ids
    vocab_size = spec.text_config(model).vocab_size
    if token_ids is not None and max(token_ids) >= vocab_size:
        raise ValueError(
            f"`ctx_init_token_ids` {short_repr(token_ids)} contain ids outside the text vocabulary of {vocab_size} "
            f"tokens (allowed: 0..{vocab_size - 1}, found {short_repr(max(token_ids))}); "
            "was `ctx_init` tokenized with another model's tokenizer?"
        )
    return token_ids


def _tokenize_ctx_init(config: MuDPTConfig, model: nn.Module) -> None:
    """Tokenize `ctx_init` into `config.ctx_init_token_ids`, setting `n_ctx` to the token count (with a warning)."""
    source = config.tokenizer_name_or_path or getattr(model, "name_or_path", None) or None
    words, where = short_repr(config.ctx_init), short_repr(source)
    if not source:
        raise ValueError(
            f"`ctx_init`={words} needs a tokenizer, but the base model has no `name_or_path`. "
            "Pass `tokenizer_name_or_path=<tokenizer id or local directory>` or `ctx_init_token_ids=[...]`."
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"`ctx_init`={words} needs a tokenizer, but none could be loaded from {where} ({str(error)[:500]}). "
            "Offline, pass `tokenizer_name_or_path=<local directory with the tokenizer files>` or "
            "`ctx_init_token_ids=[...]`."
        ) from error
    token_ids = list(tokenizer(config.ctx_init, add_special_tokens=False)["input_ids"])
    if not token_ids:
        raise ValueError(f"`ctx_init`={words} produced no tokens with the tokenizer from {where}.")
    if len(token_ids) > MAX_N_CTX:  # it sets `n_ctx`, which has this bound
        raise ValueError(
            f"`ctx_init`={words} has {len(token_ids)} tokens with the tokenizer from {where}; it sets `n_ctx`, so "
            f"allowed: 1..{MAX_N_CTX} tokens."
        )
    if len(token_ids) != config.n_ctx:
        warnings.warn(
            f"`ctx_init`={words} has {len(token_ids)} tokens, so `n_ctx` is set to {len(token_ids)} "
            f"(was {config.n_ctx}).",
            UserWarning,
            stacklevel=4,
        )
        if config.vision_n_ctx is not None and config.vision_n_ctx != len(token_ids):
            raise ValueError(
                f"`ctx_init` sets `n_ctx` to {len(token_ids)}, which differs from `vision_n_ctx`={config.vision_n_ctx};"
                " leave `vision_n_ctx=None` or make them equal."
            )
        config.n_ctx = len(token_ids)
    config.ctx_init_token_ids = token_ids


def _factory(tower: MuDPTTower, on_meta: bool = False) -> dict[str, Any]:
    """Device and dtype of the tower's weights, for the adapter tensors created in it (the meta device instead when
    `on_meta`)."""
    reference = first_float_parameter(tower.base_layer)
    return {"device": torch.device("meta") if on_meta else reference.device, "dtype": reference.dtype}


def _init_prompts(
    config: MuDPTConfig,
    geometry: dict[str, int],
    towers: dict[str, MuDPTTower],
    init_ids: list[int] | None,
    on_meta: bool = False,
) -> dict[str, torch.Tensor | None]:
    """The initial learned prompts of each prompted tower (`None` where the method derives them); on the meta device
    and not initialised when `on_meta` (loading assigns them)."""
    shapes = {
        "text": (config.resolved_text_depth, config.n_ctx, geometry["text_width"]),
        "vision": (config.resolved_vision_depth, config.resolved_vision_n_ctx, geometry["vision_width"]),
    }
    learned: dict[str, torch.Tensor | None] = {}
    for modality, tower in towers.items():
        if modality == "vision" and not config.learns_vision_prompts:
            learned[modality] = None
            continue
        prompts = torch.empty(shapes[modality], **_factory(tower, on_meta))
        if on_meta:
            learned[modality] = prompts
            continue
        with torch.no_grad():
            nn.init.normal_(prompts, std=config.prompt_init_std)
            if modality == "text" and init_ids is not None:
                embedding = tower.base_layer.get_submodule(tower.spec.text_token_embedding).get_base_layer()
                prompts[0] = embedding.weight[torch.tensor(init_ids, device=embedding.weight.device)].to(prompts.dtype)
        learned[modality] = prompts
    return learned


def image_feature_dim(model: nn.Module, geometry: dict[str, int]) -> int:
    """The width of the model's image features: the output of its `visual_projection` (CLIP's projection dim), or
    the vision width for a family without one (SigLIP pools to the vision width)."""
    projection = getattr(model, "visual_projection", None)
    if isinstance(projection, nn.Linear):
        return projection.out_features
    return geometry["vision_width"]


def _make_fusions(
    config: MuDPTConfig,
    geometry: dict[str, int],
    towers: dict[str, MuDPTTower],
    on_meta: bool = False,
    model: nn.Module | None = None,
) -> dict[str, nn.Module]:
    """The fusion module of each prompted tower, built by the config's [`~mudpt_peft.fusion.Fusion`] (on the meta
    device when `on_meta`)."""
    fusion = FUSIONS[config.fusion]
    feature_dim = image_feature_dim(model, geometry) if model is not None else None
    widths = {"text": geometry["text_width"], "vision": geometry["vision_width"]}
    depths = {"text": config.resolved_text_depth, "vision": config.resolved_vision_depth}
    shared_depth = min(depths.values())
    modules: dict[str, nn.Module] = {}
    for target in towers:
        source = "vision" if target == "text" else "text"
        factory = _factory(towers[target], on_meta)
        side = FusionSide(target, widths[source], widths[target], shared_depth, depths[target], factory, feature_dim)
        modules[target] = fusion.build(config, side)
    return modules


def _discard_adapter(model: nn.Module, adapter_name: str) -> None:
    """Remove a half-loaded adapter: delete it, or unwrap the base model when it is the only one."""
    from peft import PeftModel

    tuner = model.base_model if isinstance(model, PeftModel) else None
    if tuner is None:
        return
    if len(tuner.peft_config) > 1:
        model.delete_adapter(adapter_name)
    else:
        tuner.unload()
