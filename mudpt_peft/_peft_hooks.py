"""What `import mudpt_peft` adds to peft's own `PeftModel.save_pretrained` and `push_to_hub` for MuDPT adapters.

peft's save writes a generic model card and no integrity record, and transformers' `push_to_hub` (which `PeftModel`
inherits) replaces that card by the repository's card or a blank `library_name: transformers` template. For a
`PeftModel` whose adapters are all MuDPT adapters, the hooks below make the plain calls behave like the
`mudpt_peft.hub` helpers:

- after `save_pretrained` (main process, safetensors): each `adapter_config.json` gets the weights' sha256 and the
  MuDPT model card (`README.md`) is written, with the evaluation results recorded by `mudpt_peft.evaluate` or
  `PromptTuningTrainer.evaluate`;
- before `push_to_hub` uploads its folder: the card there is replaced by the MuDPT card (keeping its tags).

Every other model (LoRA, mixed adapter types, anything that is not a `PeftModel`) goes through the original methods
untouched. The hooks wrap the methods once per process; `install()` is idempotent.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

_INSTALLED = "_mudpt_peft_hooks"


def install() -> None:
    """Wrap `PeftModel.save_pretrained` and `PeftModel._upload_modified_files` (once)."""
    from peft import PeftModel

    if getattr(PeftModel, _INSTALLED, False):
        return
    original_save = PeftModel.save_pretrained
    save_signature = inspect.signature(original_save)

    @functools.wraps(original_save)
    def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_save(self, *args, **kwargs)
        from .hub import finish_plain_save, is_mudpt_model

        if is_mudpt_model(self):
            arguments = save_signature.bind(self, *args, **kwargs)
            arguments.apply_defaults()
            options = arguments.arguments
            if options["is_main_process"] and options["safe_serialization"]:
                finish_plain_save(self, options["save_directory"], options["selected_adapters"])
        return result

    PeftModel.save_pretrained = save_pretrained

    original_upload = getattr(PeftModel, "_upload_modified_files", None)
    if original_upload is not None:  # transformers' PushToHubMixin: uploads the folder push_to_hub prepared
        upload_signature = inspect.signature(original_upload)

        @functools.wraps(original_upload)
        def _upload_modified_files(self: Any, *args: Any, **kwargs: Any) -> Any:
            from .hub import is_mudpt_model, rewrite_card_for_push

            if is_mudpt_model(self):
                arguments = upload_signature.bind(self, *args, **kwargs)
                arguments.apply_defaults()
                options = arguments.arguments
                rewrite_card_for_push(self, options["working_dir"], options["repo_id"], options.get("revision"))
            return original_upload(self, *args, **kwargs)

        PeftModel._upload_modified_files = _upload_modified_files
    setattr(PeftModel, _INSTALLED, True)
