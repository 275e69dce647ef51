"""Print the trainable parameters and adapter file size of every method preset, as a markdown table.

By default the model is a randomly initialised ViT-B/16-shaped CLIP (text 512 wide / 12 layers, vision 768 / 12
layers, patch 16, image 224), so nothing is downloaded; the counts do not depend on the weights. Pass a model id or
directory to count for another CLIP:

    python examples/adapter_sizes.py [--model openai/clip-vit-large-patch14]
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

from peft import get_peft_model
from transformers import CLIPConfig, CLIPModel

import mudpt_peft
from mudpt_peft.config import METHOD_PRESETS


def vit_b16_clip() -> CLIPModel:
    """A randomly initialised CLIP with the shapes of `openai/clip-vit-base-patch16`."""
    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=224,
            patch_size=16,
        ),
        projection_dim=512,
    )
    return CLIPModel(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model id or directory (default: random ViT-B/16 shape)")
    args = parser.parse_args()
    base = CLIPModel.from_pretrained(args.model) if args.model else vit_b16_clip()
    base_parameters = sum(p.numel() for p in base.parameters())
    print(f"base model: {base_parameters:,} parameters\n")
    print("| method | trainable parameters | % of base | adapter file (fp32) |")
    print("| --- | ---: | ---: | ---: |")
    for method in METHOD_PRESETS:
        model = get_peft_model(copy.deepcopy(base), mudpt_peft.MuDPTConfig.for_method(method))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        with tempfile.TemporaryDirectory() as directory:
            model.save_pretrained(directory)
            size = os.path.getsize(os.path.join(directory, "adapter_model.safetensors"))
        print(f"| {method} | {trainable:,} | {100 * trainable / base_parameters:.3f} | {size / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
