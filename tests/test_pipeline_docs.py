"""docs/pipeline.md runs as written: its python blocks, in order, in one namespace, on a tiny local CLIP (offline).

The page's names (its table): `model_id` a local folder with a tiny 12-layer CLIP (MuDPT's preset has depth 9), its
tokenizer and image processor; `image` a PIL image; `train` a 3-class HF dataset; `class_names` its label names.
The page writes under `out/`, here in the test's temporary folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from transformers import CLIPModel, CLIPProcessor

from mudpt_peft.pipelines import PeftZeroShotImageClassificationPipeline

from .helpers import clip_for_tokenizer, color_dataset, image_processor

PAGE = Path(__file__).resolve().parents[1] / "docs" / "pipeline.md"
NOT_SUPPORTED = "The model 'PeftModel' is not supported for zero-shot-image-classification"

# tiny models, several trainers: with several threads on shared cores thread spinning costs up to 20x the compute
pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture
def model_id(tmp_path, tokenizer) -> str:
    folder = tmp_path / "base"
    clip_for_tokenizer(text_layers=12, vision_layers=12).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_the_page_is_in_the_nav_and_has_the_flows():
    mkdocs = (PAGE.parents[1] / "mkdocs.yml").read_text()
    assert "pipeline.md" in mkdocs.split("Guides:")[1].split("Benchmarks:")[0]
    code = "\n".join(python_blocks())
    for flow in (
        'pipeline(\n    "zero-shot-image-classification",\n    model=peft_model',
        'pipeline("zero-shot-image-classification", model=adapter_dir)',
        "CLIPModel.from_pretrained(adapter_dir)",
        "AutoProcessor.from_pretrained(run_dir)",
        "load_from_disk(",
        ".to_iterable_dataset()",
        ".map(to_pixel_values",
        ".with_transform(",
        "zero_shot_pipeline(peft_model",
    ):
        assert flow in code, flow


def test_the_page_runs_as_written(tmp_path, monkeypatch, model_id, transformers_log):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    train = color_dataset(8, classes=3)
    namespace = {
        "__name__": "__pipeline_docs__",
        "model_id": model_id,
        "image": train[0]["image"],
        "train": train,
        "class_names": train.features["label"].names,
    }
    blocks = python_blocks()
    assert len(blocks) == 8, len(blocks)
    logged, pipeline_classes, trainers = [], [], []
    for index, block in enumerate(blocks):
        transformers_log.messages.clear()
        namespace.pop("classify", None)
        exec(compile(block, f"{PAGE}:block{index}", "exec"), namespace)
        logged.append(any(NOT_SUPPORTED in message for message in transformers_log.messages))
        pipeline_classes.append(type(namespace.get("classify")).__name__)
        if "trainer" in namespace:
            trainers.append(namespace.pop("trainer").state.global_step)

    # the log is what the page says: from pipeline(model=peft_model) only, not from zero_shot_pipeline nor a folder
    assert logged == [False, True, False, False, False, False, False, False]
    peft_class = PeftZeroShotImageClassificationPipeline.__name__
    plain_class = "ZeroShotImageClassificationPipeline"
    assert pipeline_classes[1:4] == [plain_class, peft_class, plain_class], pipeline_classes
    assert trainers == [2, 2, 2], trainers  # the last Trainer of each block (the run, datasets, pixel_values) trained

    class_names = namespace["class_names"]
    scores = namespace["scores"]  # from zero_shot_pipeline, the last to set it
    assert sorted(score["label"] for score in scores) == sorted(class_names)
    assert sum(score["score"] for score in scores) == pytest.approx(1, abs=1e-5)
    # before any training, the folder's scores are the PeftModel's (both saved from the same adapter)
    by_label = {score["label"]: score["score"] for score in scores}
    for score in namespace["scores_from_folder"]:
        assert score["score"] == pytest.approx(by_label[score["label"]], abs=1e-6)

    assert type(namespace["model"]) is CLIPModel and "default" in namespace["model"].peft_config
    run_dir = tmp_path / namespace["run_dir"]
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json", "tokenizer.json"} <= {
        path.name for path in run_dir.iterdir()
    }
    assert type(namespace["run_processor"]).__name__ == "CLIPProcessor"
    assert namespace["run_processor"].image_processor.crop_size == {"height": 16, "width": 16}
