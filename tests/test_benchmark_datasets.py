"""`mudpt_peft.benchmark_datasets`: the table of the CoOp benchmark's datasets, and every loader on tiny datasets
written here in the layouts of CoOp's DATASETS.md (split JSONs, FGVC-Aircraft's text files, ImageNet-style folders)."""

from __future__ import annotations

import json
import re

import datasets
import numpy as np
import pytest
from peft import get_peft_model

from mudpt_peft import MuDPTConfig
from mudpt_peft.benchmark_datasets import (
    BENCHMARKS,
    benchmark_of,
    get_benchmark,
    load_benchmark,
    protocol_class_names,
    protocol_splits,
)
from mudpt_peft.evaluation import evaluate, recorded_eval_results
from mudpt_peft.templates import IMAGENET_7_TEMPLATES, IMAGENET_80_TEMPLATES

from .helpers import (
    clip_for_tokenizer,
    image_processor,
    write_aircraft,
    write_class_folders,
    write_classnames,
    write_png,
    write_split_file_dataset,
)

#: The layout facts, from CoOp's DATASETS.md and datasets/*.py: folder under $DATA, the image folder in it, the split
#: file; the templates of CoOp's trainers/zsclip.py CUSTOM_TEMPLATES.
EXPECTED = {
    "imagenet": ("imagenet", "images", None, "a photo of a {}."),
    "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
    "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
    "oxford_flowers": ("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."),
    "food101": ("food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
    "fgvc_aircraft": ("fgvc_aircraft", "images", None, "a photo of a {}, a type of aircraft."),
    "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
    "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
    "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", None, "a photo of a {}."),
    "imagenet_sketch": ("imagenet-sketch", "images", None, "a photo of a {}."),
    "imagenet_a": ("imagenet-adversarial", "imagenet-a", None, "a photo of a {}."),
    "imagenet_r": ("imagenet-rendition", "imagenet-r", None, "a photo of a {}."),
}
SPLIT_FILE_DATASETS = [name for name, (_, _, split_file, _) in EXPECTED.items() if split_file]
VARIANTS = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


# ------------------------------------------------------------------------------------------------------------------
# the table


def test_the_table_lists_the_15_datasets_with_their_layouts_and_templates():
    assert list(BENCHMARKS) == list(EXPECTED)
    for name, (folder, image_folder, split_file, template) in EXPECTED.items():
        row = BENCHMARKS[name]
        assert (row.folder, row.image_folder, row.split_file) == (folder, image_folder, split_file)
        assert row.template == template
        assert row.test_only == (name in VARIANTS)
        assert row.splits == (("test",) if name in VARIANTS else ("train", "validation", "test"))
        assert row.sample_validation == (name != "imagenet")
    assert [BENCHMARKS[name].num_classes for name in ("imagenet_a", "imagenet_r", "eurosat")] == [200, 200, 10]


def test_names_resolve_from_coop_class_names_and_titles():
    assert get_benchmark("OxfordPets") is BENCHMARKS["oxford_pets"]
    assert get_benchmark("DescribableTextures") is get_benchmark("DTD") is BENCHMARKS["dtd"]
    assert get_benchmark("Flowers102") is get_benchmark("oxford_flowers") is BENCHMARKS["oxford_flowers"]
    assert get_benchmark("ImageNet-Sketch") is get_benchmark("imagenet-sketch") is BENCHMARKS["imagenet_sketch"]
    assert get_benchmark("ImageNetV2") is BENCHMARKS["imagenetv2"]
    with pytest.raises(ValueError, match=r"Unknown benchmark dataset 'cifar10'; choose one of imagenet, caltech101"):
        get_benchmark("cifar10")


def test_zero_shot_templates_single_and_ensembled_as_coop_does():
    assert BENCHMARKS["eurosat"].templates() == ["a centered satellite photo of {}."]
    # ZeroshotCLIP2: the 7 selected ImageNet templates, plus the dataset's own one except on ImageNet
    eurosat = "a centered satellite photo of {}."
    assert BENCHMARKS["eurosat"].templates(ensemble=True) == [*IMAGENET_7_TEMPLATES, eurosat]
    assert BENCHMARKS["imagenet"].templates(ensemble=True) == list(IMAGENET_7_TEMPLATES)
    assert BENCHMARKS["imagenet_r"].templates(ensemble=True) == [*IMAGENET_7_TEMPLATES, "a photo of a {}."]
    assert len(IMAGENET_80_TEMPLATES) == len(set(IMAGENET_80_TEMPLATES)) == 80
    assert set(IMAGENET_7_TEMPLATES) <= set(IMAGENET_80_TEMPLATES) and len(IMAGENET_7_TEMPLATES) == 7
    assert IMAGENET_7_TEMPLATES[0] == "itap of a {}." and IMAGENET_80_TEMPLATES[0] == "a bad photo of a {}."
    assert all(template.count("{}") == 1 for template in IMAGENET_80_TEMPLATES)


# ------------------------------------------------------------------------------------------------------------------
# the split-file datasets

#: class names in label order (underscores as in the real split files), and entries whose labels appear unsorted
CLASSES = ["sea_lake", "abyssinian", "Apply_Eye_Makeup"]
ENTRIES = {
    "train": [("c2/x.png", 2, "Apply_Eye_Makeup"), ("c0/b.png", 0, "sea_lake"), ("c0/a.png", 0, "sea_lake"),
              ("c1/z.png", 1, "abyssinian"), ("c2/y.png", 2, "Apply_Eye_Makeup")],
    "val": [("c1/v.png", 1, "abyssinian"), ("c0/v.png", 0, "sea_lake")],
    "test": [("c0/t.png", 0, "sea_lake"), ("c2/t.png", 2, "Apply_Eye_Makeup"), ("c1/t.png", 1, "abyssinian")],
}  # fmt: skip


@pytest.mark.parametrize("name", SPLIT_FILE_DATASETS)
def test_split_file_datasets_keep_the_files_rows_labels_and_class_names(tmp_path, name):
    folder, image_folder, split_file, _ = EXPECTED[name]
    write_split_file_dataset(tmp_path / folder, split_file, image_folder, ENTRIES)
    loaded = load_benchmark(name, tmp_path)
    assert isinstance(loaded, datasets.DatasetDict) and list(loaded) == ["train", "validation", "test"]
    image_dir = tmp_path / folder / image_folder
    for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
        dataset = loaded[split]
        assert dataset.features["label"].names == ["sea lake", "abyssinian", "Apply Eye Makeup"]
        assert isinstance(dataset.features["image"], datasets.Image)
        assert dataset["label"][:] == [label for _, label, _ in ENTRIES[key]]
        paths = [row["path"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]
        assert paths == [str(image_dir / relative) for relative, _, _ in ENTRIES[key]]
        for index in range(len(dataset)):  # the pixels of the file written for entry `index`
            assert np.asarray(dataset[index]["image"])[0, 0].tolist() == [index, 255 - index, 7]
        assert dataset.info.dataset_name == name and str(dataset.split) == split
        assert benchmark_of(dataset) is BENCHMARKS[name]
    assert benchmark_of(loaded) is BENCHMARKS[name] and protocol_class_names(loaded) == loaded["train"].features[
        "label"
    ].names


def test_images_are_not_decoded_at_load_time(tmp_path):
    write_split_file_dataset(tmp_path / "eurosat", "split_zhou_EuroSAT.json", "2750", ENTRIES)
    (tmp_path / "eurosat" / "2750" / "c0" / "a.png").write_bytes(b"not an image at all")
    loaded = load_benchmark("eurosat", tmp_path)  # loads: nothing is decoded
    storage = loaded["train"].data.column("image").combine_chunks()
    assert storage.field("bytes").null_count == len(loaded["train"])  # paths only, no image bytes
    assert np.asarray(loaded["train"][0]["image"]).shape == (4, 4, 3)
    with pytest.raises(Exception, match="cannot identify image file"):
        loaded["train"][2]  # the broken file, decoded when its row is read


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    entries = {split: [("cars_train/00001.jpg", 0, "2012 Tesla Model S")] for split in ("train", "val", "test")}
    entries["test"] = [("cars_test/00001.jpg", 0, "2012 Tesla Model S")]
    write_split_file_dataset(tmp_path / "stanford_cars", "split_zhou_StanfordCars.json", "", entries)
    loaded = load_benchmark("stanford_cars", tmp_path)
    paths = loaded["test"].cast_column("image", datasets.Image(decode=False))["image"]
    assert [row["path"] for row in paths] == [str(tmp_path / "stanford_cars" / "cars_test" / "00001.jpg")]
    assert loaded["test"].features["label"].names == ["2012 Tesla Model S"]


def test_the_root_may_start_with_a_tilde(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_split_file_dataset(tmp_path / "data" / "dtd", "split_zhou_DescribableTextures.json", "images", ENTRIES)
    assert len(load_benchmark("dtd", "~/data")["train"]) == 5


def test_a_loaded_benchmark_runs_through_the_protocol_and_evaluate(tmp_path, tokenizer):
    entries = {split: [(f"{split}/{i}.png", i % 3, ["cat", "dog", "of"][i % 3]) for i in range(6)]
               for split in ("train", "val", "test")}  # fmt: skip
    write_split_file_dataset(tmp_path / "dtd", "split_zhou_DescribableTextures.json", "images", entries)
    run = protocol_splits(load_benchmark("dtd", tmp_path), shots=1, seed=1)
    assert [len(run[split]) for split in ("train", "validation", "test")] == [3, 3, 6]
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2))
    names = protocol_class_names(run["test"])
    templates = get_benchmark("dtd").templates()  # "{} texture." (the ensemble is too long for the tiny CLIP)
    metrics = evaluate(model, run["test"], names, tokenizer, image_processor(), templates=templates, shots=1, seed=1)
    assert metrics["num_examples"] == 6
    (recorded,) = recorded_eval_results(model)  # the model card's row names the dataset and split
    assert (recorded["dataset"], recorded["split"], recorded["shots"]) == ("dtd", "test", 1)


# ------------------------------------------------------------------------------------------------------------------
# FGVC-Aircraft


def test_aircraft_reads_variants_and_the_split_lists(tmp_path):
    variants = ["A300B4", "F-16A/B", "Boeing 707-320"]
    lines = {
        "train": [("0001", "Boeing 707-320"), ("0002", "A300B4"), ("0003", "F-16A/B"), ("0004", "A300B4")],
        "val": [("0005", "F-16A/B")],
        "test": [("0006", "A300B4"), ("0007", "Boeing 707-320")],
    }
    write_aircraft(tmp_path / "fgvc_aircraft", variants, lines)
    loaded = load_benchmark("FGVCAircraft", tmp_path)
    assert loaded["train"].features["label"].names == variants
    for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
        assert loaded[split]["label"][:] == [variants.index(variant) for _, variant in lines[key]]
        paths = [row["path"] for row in loaded[split].cast_column("image", datasets.Image(decode=False))["image"]]
        assert paths == [str(tmp_path / "fgvc_aircraft" / "images" / f"{image}.jpg") for image, _ in lines[key]]
    assert np.asarray(loaded["train"][3]["image"])[0, 0].tolist() == [3, 252, 7]


# ------------------------------------------------------------------------------------------------------------------
# ImageNet and its variants

WNIDS = ["n01000001", "n02000002", "n03000003", "n04000004"]
#: classnames.txt in a non-sorted order, with a class name given twice (as CLIP's list does)
CLASSNAMES = {"n02000002": "missile", "n01000001": "tench", "n04000004": "missile", "n03000003": "crane_bird"}


def test_imagenet_labels_sorted_folders_and_lists_files_sorted(tmp_path):
    folder = tmp_path / "imagenet"
    write_classnames(folder, CLASSNAMES)
    files = {"n03000003": ["b.png", "a.JPEG"], "n01000001": ["z.png", "c.png", "m.png"], "n04000004": ["q.png"],
             "n02000002": ["k.png", "j.png"]}  # fmt: skip
    write_class_folders(folder / "images" / "train", files)
    write_class_folders(folder / "images" / "val", {wnid: ["v2.png", "v1.png"] for wnid in reversed(WNIDS)})
    write_png(folder / "images" / "train" / "n01000001" / ".hidden.png")  # hidden files and folders are skipped
    (folder / "images" / "train" / ".cache").mkdir()
    loaded = load_benchmark("imagenet", tmp_path)
    names = loaded["train"].features["label"].names
    assert names == ["tench", "missile (n02000002)", "crane bird", "missile (n04000004)"]
    assert protocol_class_names(loaded["train"]) == ["tench", "missile", "crane bird", "missile"]
    expected = [(str(folder / "images" / "train" / wnid / file), label) for label, wnid in enumerate(WNIDS)
                for file in sorted(files[wnid])]  # fmt: skip
    train = loaded["train"].cast_column("image", datasets.Image(decode=False))
    assert [(row["image"]["path"], row["label"]) for row in train] == expected
    test = loaded["test"].cast_column("image", datasets.Image(decode=False))
    assert test["label"][:] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [row["path"] for row in test["image"]][:2] == [str(folder / "images" / "val" / WNIDS[0] / f"v{i}.png")
                                                         for i in (1, 2)]  # fmt: skip
    validation = loaded["validation"].cast_column("image", datasets.Image(decode=False))
    assert validation["image"][:] == test["image"][:] and validation["label"][:] == test["label"][:]


def test_imagenet_v2_labels_its_folders_by_number(tmp_path):
    folder = tmp_path / "imagenetv2"
    classnames = {f"n{index:08d}": f"class_{index}" for index in range(12)}
    write_classnames(folder, classnames)
    image_dir = folder / "imagenetv2-matched-frequency-format-val"
    write_class_folders(image_dir, {str(label): [f"{label}-b.jpeg", f"{label}-a.jpeg"] for label in range(12)})
    loaded = load_benchmark("imagenetv2", tmp_path)
    assert list(loaded) == ["test"]
    test = loaded["test"].cast_column("image", datasets.Image(decode=False))
    assert test.features["label"].names == [f"class {index}" for index in range(12)]
    # label 10 after 9 (not after 1, as a sorted listing of the folder names "0" .. "11" would have it)
    assert [(row["image"]["path"], row["label"]) for row in test] == [
        (str(image_dir / str(label) / f"{label}-{letter}.jpeg"), label) for label in range(12) for letter in "ab"
    ]


@pytest.mark.parametrize("name", ["imagenet_sketch", "imagenet_a", "imagenet_r"])
def test_imagenet_variants_label_their_wnid_folders_in_sorted_order(tmp_path, name):
    folder, image_folder, _, _ = EXPECTED[name]
    write_classnames(tmp_path / folder, CLASSNAMES)  # ImageNet's file: more classes than the variant has
    subset = ["n04000004", "n01000001", "n03000003"]  # a 200-class variant has some of ImageNet's classes
    write_class_folders(tmp_path / folder / image_folder, {wnid: ["2.png", "1.png"] for wnid in subset})
    (tmp_path / folder / image_folder / "README.txt").write_text("ImageNet-R/A ship a README beside the folders")
    loaded = load_benchmark(name, tmp_path)
    test = loaded["test"].cast_column("image", datasets.Image(decode=False))
    assert list(loaded) == ["test"] and test.features["label"].names == ["tench", "crane bird", "missile"]
    assert protocol_class_names(test) == ["tench", "crane bird", "missile"]  # once in this class list
    image_dir = tmp_path / folder / image_folder
    expected = [(str(image_dir / wnid / file), label) for label, wnid in enumerate(sorted(subset)) for file in "12"]
    assert [(row["image"]["path"].replace(".png", ""), row["label"]) for row in test] == expected


def test_a_large_synthetic_imagenet_loads_without_touching_the_images(tmp_path):
    folder = tmp_path / "imagenet"
    wnids = [f"n{index:08d}" for index in range(50)]
    write_classnames(folder, {wnid: f"class {wnid}" for wnid in wnids})
    for split in ("train", "val"):  # empty files: a load that decoded anything would fail
        write_class_folders(folder / "images" / split, {wnid: [f"{i}.JPEG" for i in range(20)] for wnid in wnids}, True)
    loaded = load_benchmark("imagenet", tmp_path)
    assert len(loaded["train"]) == len(loaded["test"]) == 1000 and loaded["train"]["label"][-1] == 49


# ------------------------------------------------------------------------------------------------------------------
# clear errors


def _pets(tmp_path, entries=None):
    folder = tmp_path / "oxford_pets"
    return write_split_file_dataset(folder, "split_zhou_OxfordPets.json", "images", entries or ENTRIES)


def _rewrite_split(tmp_path, edit):
    path = tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


LAYOUT_TREE = re.escape("oxford_pets/\n    images/                     the images")


def test_a_missing_dataset_folder_names_it_and_shows_the_layout(tmp_path):
    with pytest.raises(ValueError) as error:
        load_benchmark("oxford_pets", tmp_path)
    message = str(error.value)
    assert f"The dataset folder {tmp_path / 'oxford_pets'} does not exist" in message
    assert 'split_zhou_OxfordPets.json  {"train" | "val" | "test": [[image path, label, class name], ...]}' in message


def test_a_missing_split_file_or_image_folder_is_named(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(ValueError, match=rf"(?s)The file {re.escape(str(tmp_path))}/oxford_pets/split_zhou_OxfordPets"
                       rf"\.json does not exist\. OxfordPets .*{LAYOUT_TREE}"):  # fmt: skip
        load_benchmark("oxford_pets", tmp_path)
    (tmp_path / "oxford_pets" / "images").rmdir()
    empty = {"train": [], "val": [], "test": []}
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match=r"The folder .*oxford_pets/images does not exist"):
        load_benchmark("oxford_pets", tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("val"), r"must be a JSON object with the lists 'train', 'val' and 'test' .* it has no 'val'"),
        (lambda c: c["train"].append(["x.png", "1", "abyssinian"]), r"'train' entry 5 of the split file .* must be"),
        (lambda c: c["test"].append(["x.png", -1, "x"]), r"'test' entry 3 .* must be \[image path, label >= 0, class"),
        (lambda c: c["test"].append(["c0/a.png", 0, "pug"]),
         r"Label 0 is called 'sea_lake' in 'train' entry 1 .* and 'pug' in 'test' entry 3 .*: each label must have"),
        (lambda c: c["test"].append(["c0/a.png", 4, "pug"]),
         r"labels of .*OxfordPets.json must be 0 \.\. C-1 with every label used; labels \[3\] have no entry"),
        (lambda c: c["test"].append(["c0/a.png", 3, "sea lake"]),
         r"gives several labels the same class name: \['sea lake'\]"),
    ],
)  # fmt: skip
def test_malformed_split_files_are_refused_with_the_entry(tmp_path, edit, match):
    _pets(tmp_path)
    _rewrite_split(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        load_benchmark("oxford_pets", tmp_path)


def test_invalid_json_and_missing_images_are_named(tmp_path):
    _pets(tmp_path)
    (tmp_path / "oxford_pets" / "images" / "c0" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"1 of the 5 images of the 'train' split do not exist, e\.g\.\n    .*/images/"
                       r"c0/b\.png\n\(pass `check_files=False` to load anyway\)"):  # fmt: skip
        load_benchmark("oxford_pets", tmp_path)
    assert len(load_benchmark("oxford_pets", tmp_path, check_files=False)["train"]) == 5
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"The split file .*split_zhou_OxfordPets\.json is not valid JSON"):
        load_benchmark("oxford_pets", tmp_path)


def test_aircraft_errors_name_the_file_and_line(tmp_path):
    write_aircraft(tmp_path / "fgvc_aircraft", ["A300B4"], {split: [("1", "A300B4")] for split in ("train", "val")})
    with pytest.raises(ValueError, match=r"(?s)The file .*fgvc_aircraft/images_variant_test\.txt does not exist.*\n.*"
                       r"\n.*variants.txt +one class name per line"):  # fmt: skip
        load_benchmark("fgvc_aircraft", tmp_path)
    write_aircraft(tmp_path / "fgvc_aircraft", ["A300B4"], {"test": [("1", "A300B4"), ("2", "A310")]})
    with pytest.raises(ValueError, match=r"Line 2 of .*images_variant_test\.txt \('2 A310'\) names the class 'A310', "
                       r"which .*variants\.txt does not list"):  # fmt: skip
        load_benchmark("fgvc_aircraft", tmp_path)


def test_imagenet_errors_name_the_folders(tmp_path):
    folder = tmp_path / "imagenet"
    write_class_folders(folder / "images" / "train", {wnid: ["a.png"] for wnid in WNIDS}, empty=True)
    write_class_folders(folder / "images" / "val", {wnid: ["a.png"] for wnid in WNIDS[:3]}, empty=True)
    with pytest.raises(ValueError, match=r"val must hold the same class folders as .*train .*only in train: "
                       r"\['n04000004'\], only in val: \[\]"):  # fmt: skip
        load_benchmark("imagenet", tmp_path)
    write_class_folders(folder / "images" / "val", {WNIDS[3]: ["a.png"]}, empty=True)
    with pytest.raises(ValueError, match=r"(?s)The file .*imagenet/classnames\.txt does not exist.*\n.*\n +classnames"
                       r"\.txt +'<WordNet id> <class name>' per line"):  # fmt: skip
        load_benchmark("imagenet", tmp_path)
    write_classnames(folder, {wnid: "x" + wnid for wnid in WNIDS[:2]})
    with pytest.raises(ValueError, match=r"classnames\.txt has no class name for the folders \['n03000003', 'n0400"):
        load_benchmark("imagenet", tmp_path)
    (folder / "classnames.txt").write_text("n01000001 tench\nn01000001 tench again\n")
    with pytest.raises(ValueError, match=r"classnames\.txt lists n01000001 twice \(line 2\)"):
        load_benchmark("imagenet", tmp_path)


def test_imagenet_v2_needs_a_folder_per_class(tmp_path):
    folder = tmp_path / "imagenetv2"
    write_classnames(folder, {wnid: wnid for wnid in WNIDS})
    write_class_folders(folder / "imagenetv2-matched-frequency-format-val", {"0": ["a.jpeg"], "2": ["a.jpeg"]}, True)
    with pytest.raises(ValueError, match=r"format-val has no folders \['1', '3'\]: it needs one folder per line of "
                       r"classnames\.txt, named 0 \.\. 3"):  # fmt: skip
        load_benchmark("imagenetv2", tmp_path)
