"""Prompt templates of the CoOp benchmark protocol that are lists rather than one string per dataset: CLIP's ImageNet
prompt ensembles.

The per-dataset template of each benchmark dataset (CoOp's `trainers/zsclip.py` `CUSTOM_TEMPLATES`) is a column of the
dataset table, [`mudpt_peft.benchmark_datasets.BENCHMARKS`]; its `templates()` combines the two the way CoOp's
zero-shot CLIP trainers do. The strings are facts of the protocol, kept exactly (spelling included: "a origami {}.").
"""

from __future__ import annotations

__all__ = ["IMAGENET_7_TEMPLATES", "IMAGENET_80_TEMPLATES", "PROMPTSRC_TEMPLATES"]

#: CLIP's 80 ImageNet prompt templates (CLIP's "Prompt Engineering for ImageNet" notebook; CoOp's
#: `trainers/imagenet_templates.py` holds the same list), in their order.
IMAGENET_80_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.",
    "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.",
    "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.",
    "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.",
    "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.", "a good photo of a {}.",
    "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.", "itap of a {}.",
    "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)  # fmt: skip

#: The 7 of them CLIP's notebook selected, in its order: the ensemble of CoOp's `ZeroshotCLIP2` (prompt ensembling),
#: which adds the dataset's own template for every dataset but ImageNet.
IMAGENET_7_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.", "a {} in a video game.",
    "art of the {}.", "a photo of the small {}.",
)  # fmt: skip

#: The ensemble of PromptSRC's frozen text features (its `trainers/imagenet_templates.py` `IMAGENET_TEMPLATES`): the
#: first 60 of CLIP's 80 with "a photo of a {}." moved first, in its order.
PROMPTSRC_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    *(template for template in IMAGENET_80_TEMPLATES[:60] if template != "a photo of a {}."),
)
