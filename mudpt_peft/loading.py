"""Loading saved MuDPT weights into an adapter that already exists, with every check of the other loading paths.

peft's `PeftModel.load_adapter(path, adapter_name)` reads no config when `adapter_name` already exists, which is how
`transformers.Trainer` resumes from a checkpoint and loads the best one: the tuner then sees the tensors but not the
files they came from, so it cannot tie them to the config saved with them. [`load_adapter`] reads the saved config
and the weights itself, each once and from one place (one commit on the Hub), and checks the very tensors it loads:
floating point and finite, the tensors and config of one save (the fingerprints), the config's fields equal to those
of the adapter they are loaded into, shapes that fit. [`~mudpt_peft.PromptTuningTrainer`] resumes and loads its best
checkpoint through it. For a new adapter name it is `PeftModel.load_adapter`, whose config and tuner run the same
checks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from .adapter_files import (
    FINGERPRINTED_FIELDS,
    PICKLED_WEIGHTS_NAME,
    SAFETENSORS_WEIGHTS_NAME,
    loaded_from,
    read_safetensors,
    recorded_for_load,
    short_message,
    verify_tensors,
)
from .compat import check_base_model
from .config import MuDPTConfig, short_repr

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["load_adapter"]


def load_adapter(
    model: PeftModel,
    model_id: str | os.PathLike,
    adapter_name: str = "default",
    *,
    is_trainable: bool = False,
    subfolder: str | None = None,
    **hub_kwargs: Any,
) -> Any:
    """Load a saved MuDPT adapter into `model` as `adapter_name`, checking the tensors it loads, also when that
    adapter exists already (where `PeftModel.load_adapter` reads no config and so cannot tie the weights to theirs).

    For an existing adapter: the saved `adapter_config.json` and `adapter_model.safetensors` are checked and read once
    (on the Hub, from one commit); the config's fields that decide what the tensors compute must equal the adapter's
    (else loading them would compute something else, silently); the base model must be the one the adapter was saved
    for; the tensors must be floating point, finite, the ones saved with that config, and fit the adapter's shapes.
    Anything refused raises a `ValueError` that names the file, and leaves the adapter's values as they were. For a new
    adapter name, this is `model.load_adapter(...)`, which runs the same checks through `MuDPTConfig.from_pretrained`
    and the tuner.

    Args:
        model (`PeftModel`):
            The model with MuDPT adapters.
        model_id (`str` or `os.PathLike`):
            A local folder (e.g. a `transformers.Trainer` checkpoint) or a Hub repository id.
        adapter_name (`str`, defaults to `"default"`):
            The adapter to load into.
        is_trainable (`bool`, defaults to `False`):
            As in `PeftModel.load_adapter`: unless `True`, the model is put in eval mode after loading (for an
            existing adapter, its parameters keep their `requires_grad`).
        subfolder (`str`, *optional*):
            The folder of the adapter inside `model_id`.
        hub_kwargs:
            `revision`, `token`, `cache_dir`, `local_files_only`, `force_download` for the Hub.

    Returns:
        The result of `set_peft_model_state_dict` (`missing_keys`, `unexpected_keys`).

    Example:

        ```py
        >>> mudpt_peft.load_adapter(peft_model, "out/checkpoint-500", "default", is_trainable=True)
        ```
    """
    from peft import PeftModel, set_peft_model_state_dict

    if not isinstance(model, PeftModel):
        raise ValueError(f"`model` must be a PeftModel with MuDPT adapters, got {type(model).__name__}.")
    if adapter_name not in model.peft_config:
        return model.load_adapter(model_id, adapter_name, is_trainable=is_trainable, subfolder=subfolder, **hub_kwargs)
    current = model.peft_config[adapter_name]
    if not isinstance(current, MuDPTConfig):
        raise ValueError(
            f"The adapter '{adapter_name}' is a {type(current).__name__} adapter, not a MuDPT one: load into it with "
            "`model.load_adapter(...)`."
        )
    saved = MuDPTConfig.from_pretrained(model_id, subfolder=subfolder, **hub_kwargs)
    checked = loaded_from(saved)
    where = checked.source.describe()
    differing = [name for name in FINGERPRINTED_FIELDS if getattr(saved, name) != getattr(current, name)]
    if differing:
        listed = "; ".join(
            f"{name}: {short_repr(getattr(saved, name), 40)} saved, {short_repr(getattr(current, name), 40)} here"
            for name in differing
        )
        raise ValueError(
            f"{where} holds a MuDPT adapter made with other settings than the adapter '{adapter_name}' it would be "
            f"loaded into ({listed}), so its weights would compute something else. Load it as a new adapter (another "
            "`adapter_name`), or onto the base model with `PeftModel.from_pretrained`."
        )
    check_base_model(saved, model.get_base_model())
    if checked.safetensors_file is not None:
        what = checked.source.describe(SAFETENSORS_WEIGHTS_NAME)
        state_dict = read_safetensors(checked.safetensors_file, what)
    else:  # only reached inside `allow_pickled_weights()`: MuDPTConfig.from_pretrained refuses pickles otherwise
        what = checked.source.describe(PICKLED_WEIGHTS_NAME)
        try:
            state_dict = torch.load(checked.source.require(PICKLED_WEIGHTS_NAME, what), weights_only=True)
        except Exception as error:
            raise ValueError(f"{what} could not be read as a PyTorch state dict ({short_message(error)}).") from error
    verify_tensors(state_dict, saved, what, recorded_for_load(saved))
    # the tuner checks the values and shapes once more (its config has no fingerprint: an existing adapter is kept)
    result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
    if not is_trainable:
        model.eval()
    return result
