"""Save and push MuDPT adapters and prompt classifiers: crash-safe, in one commit, with the MuDPT model card.

Plain peft works for MuDPT adapters once `mudpt_peft` is imported: `peft_model.save_pretrained(folder)`,
`peft_model.push_to_hub(repo_id)`, `PeftModel.from_pretrained(base_model, repo_id, revision=..., subfolder=...)`;
every save records the fingerprint of the tensors written and the base model's family and geometry, and every load
checks them (see `mudpt_peft.adapter_files` and `mudpt_peft.compat`). This module adds, for a `PeftModel` or a
[`~mudpt_peft.PromptClassifier`] (whose class names and template travel in `prompt_classifier.json` beside the
adapter):

- [`save_pretrained`]: a crash-safe save with the MuDPT model card ([`~mudpt_peft.model_card.write_model_card`]);
- [`push_to_hub`]: the same files in one commit.

Why the write order: peft's `save_pretrained` writes `README.md`, then `adapter_model.safetensors`, then
`adapter_config.json`, each in place. A save of adapter B over a folder holding adapter A that is interrupted
between the weights and the config leaves B's weights with A's config; the fingerprint refuses that folder when it is
loaded. [`save_pretrained`] goes further (see `mudpt_peft.staging`): under a lock per target folder, it stages every
file in a folder beside the target, marks the staged copy complete, and moves the files into place with the config
removed first and written last; the next save into the folder or MuDPT load from it finishes the move of a save that
was killed, or removes its incomplete staging. Adapter names and subfolders are checked before any file is touched
(see `mudpt_peft.names`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import huggingface_hub
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

from . import staging
from .adapter_files import (
    CLASSIFIER_CONFIG_NAME,
    CLASSIFIER_FORMAT,
    CLASSIFIER_TENSORS_KEY,
    CONFIG_NAME,
    PICKLED_WEIGHTS_NAME,
    SAFETENSORS_WEIGHTS_NAME,
    recorded_fingerprints,
)
from .model_card import adapters_to_save, normalize_eval_results, split_model, write_card
from .names import check_adapter_name, check_subfolder

if TYPE_CHECKING:
    from peft import PeftModel

    from .classifier import PromptClassifier

__all__ = ["push_to_hub", "save_pretrained"]


# ---------------------------------------------------------------------------------------------------------------------
# saving and pushing


def _stage(
    peft_model: PeftModel,
    classifier: PromptClassifier | None,
    layout: Mapping[str, str],
    root: Path,
    eval_results: Mapping | Sequence[Mapping] | None,
    repo_id: str | None = None,
    subfolder: str | None = None,
    revision: str | None = None,
) -> None:
    """Write every file of the save into `root` (in `layout`): peft's files (the config records the tensors'
    fingerprint and the base model), the classifier file and the model card."""
    normalize_eval_results(eval_results)  # fail before writing anything
    peft_model.save_pretrained(str(root), selected_adapters=list(layout), safe_serialization=True)
    for name, folder in layout.items():
        written = root / ("" if name == "default" else name)
        if written != root / folder:  # a classifier's active adapter that is not "default": move it to the root
            for item in written.iterdir():
                os.replace(item, root / folder / item.name)
            written.rmdir()
        if classifier is not None:
            # the fingerprint the save recorded for the tensors it wrote (this staging folder is this save's own)
            write_classifier_file(classifier.class_names, classifier.templates, root / folder)
    write_card(peft_model, classifier, layout, root, eval_results, repo_id, subfolder, revision)


def _read_staged_config(folder: Path) -> dict:
    return json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))


def write_classifier_file(class_names: Sequence[str], templates: Sequence[str], folder: str | os.PathLike) -> Path:
    """Write `prompt_classifier.json` (class names in label order, template(s)) beside the adapter saved in `folder`.

    The file records the tensors fingerprint that `adapter_config.json` in `folder` holds, so that
    [`~mudpt_peft.PromptClassifier.from_pretrained`] refuses it beside another adapter; write it right after the
    adapter (e.g. after `peft_model.save_pretrained(folder)`, as `PromptTuningTrainer.save_model` does).

    Args:
        class_names (`Sequence[str]`): The class names, in label order.
        templates (`Sequence[str]`): The prompt template, or the templates of an ensemble.
        folder (`str` or `os.PathLike`): The folder of the saved adapter.

    Returns:
        `Path`: the file written.
    """
    folder = Path(folder)
    templates = list(templates)
    info = {
        # a single-template file stays readable by the versions before ensembles
        "format_version": CLASSIFIER_FORMAT if len(templates) > 1 else 1,
        "class_names": [str(name) for name in class_names],
        "template": templates[0],
        **({"templates": templates} if len(templates) > 1 else {}),
        CLASSIFIER_TENSORS_KEY: recorded_fingerprints(_read_staged_config(folder))[0],
    }
    path = folder / CLASSIFIER_CONFIG_NAME
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return path


def _check_names(layout: Mapping[str, str]) -> None:
    """Refuse adapter names that are not plain folder names before any file is touched: peft saves an adapter other
    than `default` in `<folder>/<adapter name>`, so an absolute or `..` name would write (and the move delete) files
    outside the target (an adapter added by a route that bypassed the tuner's check of the name)."""
    for name in layout:
        check_adapter_name(name, "adapter name")


def save_pretrained(
    model: PeftModel | PromptClassifier,
    save_directory: str | os.PathLike,
    selected_adapters: Sequence[str] | None = None,
    eval_results: Mapping | Sequence[Mapping] | None = None,
    is_main_process: bool = True,
) -> Path:
    """Save MuDPT adapters (or a prompt classifier) like `PeftModel.save_pretrained`, crash-safe and with a model card.

    The folder gets what peft writes (`adapter_config.json`, `adapter_model.safetensors`; adapters other than
    `default` in a subfolder of their name), the MuDPT model card (`README.md`, see [`write_model_card`]) and, for a
    [`~mudpt_peft.PromptClassifier`], `prompt_classifier.json` with the class names and template beside its active
    adapter (saved in the folder itself whatever its name). Each `adapter_config.json` records the sha256 of its
    tensors, checked when loading (as a plain `PeftModel.save_pretrained` does). Weights are always safetensors.

    Crash-safe (see `mudpt_peft.staging`): saves into the same folder take turns (a file lock beside it); files are
    written to a staging folder beside it first and moved into place with each config removed first and written last;
    a save killed at any point leaves the old adapter, or the new one once the next save or MuDPT load
    (`MuDPTConfig.from_pretrained`, `PromptClassifier.from_pretrained`) has finished its move. A failure while moving
    raises an `OSError` that names the staged copy. Adapter names are checked before any file is touched
    ([`~mudpt_peft.names.check_adapter_name`]: peft saves each adapter other than `default` in a folder of its name).

    Args:
        model (`PeftModel` or [`~mudpt_peft.PromptClassifier`]):
            The model whose adapters to save.
        save_directory (`str` or `os.PathLike`):
            The folder (created if needed). Files of an earlier save there are replaced.
        selected_adapters (`list[str]`, *optional*):
            The adapters to save (default: all; not for a classifier).
        eval_results (`dict` or list of `dict`, *optional*):
            Evaluation results for the model card (see [`~mudpt_peft.model_card.write_model_card`]).
        is_main_process (`bool`, defaults to `True`):
            Write nothing unless `True` (for distributed training).

    Returns:
        `Path`: the folder.

    Example:

        ```py
        >>> mudpt_peft.hub.save_pretrained(model, "out", eval_results={"dataset": "eurosat", "accuracy": 84.2})
        >>> PeftModel.from_pretrained(CLIPModel.from_pretrained(base_id), "out")
        ```
    """
    target = Path(save_directory)
    if target.is_file():
        raise ValueError(f"`save_directory` must be a folder, but '{target}' is a file.")
    peft_model, classifier = split_model(model)
    layout = adapters_to_save(peft_model, classifier, selected_adapters)
    _check_names(layout)
    if not is_main_process:
        return target
    normalize_eval_results(eval_results)  # fail before writing anything
    target.mkdir(parents=True, exist_ok=True)
    resolved = target.resolve()
    with staging.target_lock(resolved) as lock:
        if lock is staging.LockState.HELD:  # no other save into the folder runs: what is there is of dead saves
            with contextlib.suppress(OSError):  # what cannot be finished stays named in load errors
                staging.recover(resolved)
        folder = staging.new_staging_folder(resolved)
        try:
            _stage(peft_model, classifier, layout, folder, eval_results)
            stale = [] if classifier is not None else [CLASSIFIER_CONFIG_NAME]
            folders = sorted(set(layout.values()))
            staging.mark_complete(folder, resolved, folders, CONFIG_NAME, [SAFETENSORS_WEIGHTS_NAME], stale)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # nothing of the target was touched yet
            raise
        try:
            staging.move_into_place(folder, resolved)
        except Exception as error:
            raise OSError(
                f"Saving into '{target}' failed while moving the files into place ({error}). The complete new "
                f"adapter is staged in '{folder}': the next `mudpt_peft.hub.save_pretrained` into '{target}' or "
                "MuDPT load from it (`MuDPTConfig.from_pretrained`, `PromptClassifier.from_pretrained`) finishes the "
                "move, or move its files in yourself (adapter_config.json last)."
            ) from error
        shutil.rmtree(folder, ignore_errors=True)
    return target


def push_to_hub(
    model: PeftModel | PromptClassifier,
    repo_id: str,
    *,
    subfolder: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    selected_adapters: Sequence[str] | None = None,
    eval_results: Mapping | Sequence[Mapping] | None = None,
) -> huggingface_hub.CommitInfo:
    """Push MuDPT adapters (or a prompt classifier) to a Hub repository in one commit, with the MuDPT model card.

    Uploads the files [`save_pretrained`] writes (the card goes beside the adapter: into `subfolder` when one is
    given, leaving the repository's root card alone). Creates the repository and the branch `revision` if needed.
    Stale files of an older push in the same folder that this push would contradict (`adapter_model.bin`, a
    `prompt_classifier.json` of an earlier classifier) are deleted in the same commit.

    Args:
        model (`PeftModel` or [`~mudpt_peft.PromptClassifier`]):
            The model whose adapters to push.
        repo_id (`str`):
            The repository, e.g. `"your-name/clip-mudpt-eurosat"`.
        subfolder (`str`, *optional*):
            A folder of the repository to push to, so that one repository can hold several adapters (load them with
            `PeftModel.from_pretrained(base, repo_id, subfolder=...)`). A relative path of `/`-separated names, which
            may be nested (`"adapters/eurosat"`); absolute paths, `..` and empty parts are refused before any request
            ([`~mudpt_peft.names.check_subfolder`]).
        revision (`str`, *optional*):
            The branch to push to (created from `main` if it does not exist).
        commit_message (`str`, *optional*):
            Defaults to `"Upload MuDPT adapter"`.
        commit_description (`str`, *optional*):
            The commit's description.
        private (`bool`, *optional*):
            Whether a newly created repository is private.
        token (`str` or `bool`, *optional*):
            The Hub token (default: the one you are logged in with).
        create_pr (`bool`, defaults to `False`):
            Open a pull request instead of committing to `revision`.
        selected_adapters (`list[str]`, *optional*):
            The adapters to push (default: all; not for a classifier).
        eval_results (`dict` or list of `dict`, *optional*):
            Evaluation results for the model card (see [`~mudpt_peft.model_card.write_model_card`]).

    Returns:
        `huggingface_hub.CommitInfo`: the commit (its `oid` can be passed as `revision=` when loading).
    """
    peft_model, classifier = split_model(model)
    layout = adapters_to_save(peft_model, classifier, selected_adapters)
    _check_names(layout)
    prefix = check_subfolder(subfolder) or ""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mudpt-push-") as tmp:
        root = Path(tmp)
        _stage(peft_model, classifier, layout, root, eval_results, repo_id, prefix or None, revision)
        operations: list[CommitOperationAdd | CommitOperationDelete] = []
        uploaded = set()
        for path in sorted(root.rglob("*")):
            if path.is_file():
                path_in_repo = "/".join(part for part in (prefix, path.relative_to(root).as_posix()) if part)
                uploaded.add(path_in_repo)
                operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=str(path)))
        remote = set(api.list_repo_files(repo_id, revision=revision))
        for folder in set(layout.values()):
            for stale in (PICKLED_WEIGHTS_NAME, CLASSIFIER_CONFIG_NAME):
                path_in_repo = "/".join(part for part in (prefix, folder, stale) if part)
                if path_in_repo in remote and path_in_repo not in uploaded:
                    operations.append(CommitOperationDelete(path_in_repo=path_in_repo))
        return api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload MuDPT {'prompt classifier' if classifier else 'adapter'}",
            commit_description=commit_description,
            revision=revision,
            create_pr=create_pr,
        )
