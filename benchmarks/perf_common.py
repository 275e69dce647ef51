"""Shared pieces of the performance benchmarks (`benchmarks/perf_*.py`).

- ViT-B/16- and ViT-B/32-shaped CLIP models built from configs with random weights (no download);
- the real CLIP BPE tokenizer (49,408 tokens) of the embedded tiny CLIP, and 1,000 realistic class names;
- an alternating timer: the cases of a comparison run in turn in one process, `reps` times, in an order that flips on
  every repetition (A B, B A, ...), so that slow drifts of the machine (another process, thermal state) hit both; a
  ratio is taken per repetition and summarised by its median and spread;
- a peak-memory measurement for CPU (see [`peak_memory`]).

Nothing here is imported by the library or the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "examples" / "assets" / "tiny-clip"  # the real CLIP BPE vocabulary (49,408 tokens)

_TEXT_B = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
_VISION_B = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "image_size": 224}

#: The encoder geometries of OpenAI's CLIP ViT-B/16 and ViT-B/32 (text 512 wide, 12 layers, 77 positions, vocabulary
#: 49,408; vision 768 wide, 12 layers, 224 px), and `smoke`: the same depth and vocabulary at toy widths and 32 px, for
#: the test that runs every script (`tests/test_benchmarks.py`); its timings mean nothing.
SHAPES: dict[str, dict[str, Any]] = {
    "vit-b16": {"text": _TEXT_B, "vision": {**_VISION_B, "patch_size": 16}, "projection_dim": 512},
    "vit-b32": {"text": _TEXT_B, "vision": {**_VISION_B, "patch_size": 32}, "projection_dim": 512},
    "smoke": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2},
        "vision": {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "projection_dim": 32,
    },
}


def image_size(shape: str) -> int:
    """The input resolution of a shape (224 px for the ViT-B models)."""
    return SHAPES[shape]["vision"]["image_size"]


def build_clip(shape: str = "vit-b16", seed: int = 0, attn_implementation: str = "sdpa") -> CLIPModel:
    """A CLIP model of the given shape with random weights, in eval mode, on [`device`]."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            **SHAPES[shape]["text"],
            num_hidden_layers=12,
            max_position_embeddings=77,
            vocab_size=49408,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(**SHAPES[shape]["vision"], num_hidden_layers=12),
        projection_dim=SHAPES[shape]["projection_dim"],
    )
    config._attn_implementation = attn_implementation
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = attn_implementation
    return CLIPModel(config).eval().to(device())


def mudpt(clip: nn.Module, depth: int = 9, n_ctx: int = 2, method: str = "mudpt") -> nn.Module:
    """`get_peft_model` on a deep copy of `clip` with the method's preset (`depth`, `n_ctx` as given)."""
    from peft import get_peft_model

    import mudpt_peft

    config = mudpt_peft.MuDPTConfig.for_method(method, depth=depth, n_ctx=n_ctx)
    return get_peft_model(copy.deepcopy(clip), config)


def load_tokenizer() -> CLIPTokenizer:
    """The CLIP BPE tokenizer, from the embedded tiny CLIP's files (same vocabulary and merges as OpenAI's)."""
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


# --------------------------------------------------------------------------------------------------------------------
# class names: ImageNet-like names of one to three words, written for these benchmarks

_NAMES = """
tench, goldfish, shark, ray, cock, hen, ostrich, finch, junco, goldfinch, robin, bulbul, jay, magpie, chickadee,
kite, vulture, owl, newt, salamander, frog, turtle, gecko, iguana, chameleon, lizard, alligator, crocodile, python,
boa, viper, rattlesnake, scorpion, tarantula, tick, centipede, grouse, peacock, quail, partridge, parrot, macaw,
cockatoo, lorikeet, toucan, hornbill, hummingbird, duck, goose, swan, flamingo, heron, egret, stork, crane, pelican,
penguin, albatross, whale, dolphin, seal, walrus, sea lion, jellyfish, anemone, coral, flatworm, nematode, conch,
snail, slug, chiton, crab, lobster, crayfish, hermit crab, isopod, chihuahua, spaniel, beagle, bloodhound,
greyhound, whippet, terrier, schnauzer, retriever, setter, pointer, collie, sheepdog, shepherd, rottweiler, boxer,
mastiff, husky, malamute, dalmatian, pug, poodle, corgi, wolf, coyote, dingo, jackal, fox, tabby cat, tiger cat,
persian cat, siamese cat, egyptian cat, cougar, lynx, leopard, jaguar, lion, cheetah, bear, polar bear, sloth bear,
mongoose, meerkat, beetle, ladybug, weevil, fly, bee, ant, grasshopper, cricket, cockroach, mantis, cicada,
dragonfly, damselfly, butterfly, moth, starfish, urchin, rabbit, hare, hamster, porcupine, squirrel, marmot, beaver,
guinea pig, horse, zebra, pig, boar, hippopotamus, ox, bison, ram, bighorn, ibex, gazelle, camel, llama, weasel,
mink, otter, skunk, badger, armadillo, orangutan, gorilla, chimpanzee, gibbon, baboon, macaque, lemur, elephant,
panda, eel, salmon, sturgeon, pufferfish, abacus, accordion, airliner, airship, altar, ambulance, amphibian vehicle,
anvil, apron, ashcan, assault rifle, backpack, bakery, balloon, ballpoint pen, banjo, barbell, barn, barometer,
barrel, bassinet, bassoon, bathtub, beacon, beaker, bearskin, bicycle, binoculars, birdhouse, boathouse, bobsled,
bookcase, bookshop, bottlecap, bow tie, brassiere, breakwater, breastplate, broom, bucket, buckle, bulletproof vest,
cab, caldron, candle, cannon, canoe, can opener, cardigan, carousel, cassette, castle, catamaran, cello, chain saw,
chest, chime, church, cinema, cleaver, cliff dwelling, cloak, clog, cocktail shaker, coffee mug, computer keyboard,
confectionery, container ship, convertible, corkscrew, cornet, cowboy boot, cradle, crash helmet, crate, crib,
croquet ball, crutch, cuirass, dam, desk, dial telephone, diaper, digital clock, dishwasher, dock, dogsled, dome,
doormat, drilling platform, drum, dumbbell, dutch oven, electric fan, envelope, espresso maker, face powder, feather
boa, fire engine, fire screen, flagpole, flute, football helmet, forklift, fountain, fountain pen, freight car,
frying pan, fur coat, garbage truck, gasmask, gas pump, goblet, golf ball, gong, gown, grand piano, greenhouse,
grille, grocery store, guillotine, hair slide, hair spray, hammer, hamper, hand blower, hard disc, harmonica, harp,
harvester, hatchet, holster, honeycomb, hook, hoopskirt, horizontal bar, hourglass, iron, jeep, jersey, jigsaw
puzzle, jinrikisha, joystick, kimono, knee pad, knot, lab coat, ladle, lampshade, laptop, lawn mower, lens cap,
letter opener, library, lifeboat, lighter, limousine, liner, lipstick, lotion, loudspeaker, loupe, lumbermill,
magnetic compass, mailbag, mailbox, maillot, manhole cover, maraca, marimba, mask, matchstick, maypole, maze,
measuring cup, medicine chest, megalith, microphone, microwave, milk can, minibus, miniskirt, minivan, missile,
mitten, mixing bowl, mobile home, modem, monastery, monitor, moped, mortar, mosque, mosquito net, motor scooter,
mountain bike, mountain tent, mouse, mousetrap, moving van, muzzle, nail, neck brace, necklace, nipple, notebook,
obelisk, oboe, ocarina, odometer, oil filter, organ, oscilloscope, overskirt, oxcart, oxygen mask, packet, paddle,
paddlewheel, padlock, paintbrush, pajama, palace, panpipe, paper towel, parachute, parallel bars, park bench,
parking meter, passenger car, patio, pay phone, pedestal, pencil box, pencil sharpener, perfume, petri dish,
photocopier, pick, pickelhaube, picket fence, pickup, pier, piggy bank, pill bottle, pillow, pinwheel, pirate ship,
pitcher, plane, planetarium, plastic bag, plate rack, plow, plunger, polaroid camera, pole, police van, poncho, pool
table, pop bottle, pot, potter's wheel, power drill, prayer rug, printer, prison, projectile, projector, puck,
punching bag, purse, quill, quilt, racer, racket, radiator, radio, radio telescope, rain barrel, recreational
vehicle, reel, reflex camera, refrigerator, remote control, restaurant, revolver, rifle, rocking chair, rotisserie,
rubber eraser, rugby ball, rule, running shoe, safe, safety pin, saltshaker, sandal, sarong, sax, scabbard, scale,
school bus, schooner, scoreboard, screen, screw, screwdriver, seat belt, sewing machine, shield, shoe, shop, shoji,
shopping basket, shopping cart, shovel, shower cap, shower curtain, ski, ski mask, sleeping bag, slide rule, sliding
door, slot, snorkel, snowmobile, snowplow, soap dispenser, soccer ball, sock, solar dish, sombrero, soup bowl, space
bar, space heater, space shuttle, spatula, speedboat, spider web, spindle, sports car, spotlight, stage, steam
locomotive, steel arch bridge, steel drum, stethoscope, stole, stone wall, stopwatch, stove, strainer, streetcar,
stretcher, studio couch, stupa, submarine, suit, sundial, sunglass, sunglasses, sunscreen, suspension bridge, swab,
sweatshirt, swimming trunks, swing, switch, syringe, table lamp, tank, tape player, teapot, teddy, television,
tennis ball, thatch, theater curtain, thimble, thresher, throne, tile roof, toaster, tobacco shop, toilet seat,
torch, totem pole, tow truck, toyshop, tractor, trailer truck, tray, trench coat, tricycle, trimaran, tripod,
triumphal arch, trolleybus, trombone, tub, turnstile, typewriter keyboard, umbrella, unicycle, upright, vacuum,
vase, vault, velvet, vending machine, vestment, viaduct, violin, volleyball, waffle iron, wall clock, wallet,
wardrobe, warplane, washbasin, washer, water bottle, water jug, water tower, whiskey jug, whistle, wig, window
screen, window shade, windsor tie, wine bottle, wing, wok, wooden spoon, wool, worm fence, wreck, yawl, yurt, web
site, comic book, crossword puzzle, street sign, traffic light, book jacket, menu, plate, guacamole, consomme, hot
pot, trifle, ice cream, ice lolly, french loaf, bagel, pretzel, cheeseburger, hotdog, mashed potato, head cabbage,
broccoli, cauliflower, zucchini, spaghetti squash, acorn squash, butternut squash, cucumber, artichoke, bell pepper,
cardoon, mushroom, granny smith, strawberry, orange, lemon, fig, pineapple, banana, jackfruit, custard apple,
pomegranate, hay, carbonara, chocolate sauce, dough, meat loaf, pizza, potpie, burrito, red wine, espresso cup,
eggnog, alp, bubble, cliff, coral reef, geyser, lakeside, promontory, sandbar, seashore, valley, volcano,
ballplayer, groom, scuba diver, rapeseed, daisy, corn, acorn, hip, buckeye, coral fungus, agaric, gyromitra,
stinkhorn, earthstar, bolete, ear, toilet tissue, great white shark, loggerhead sea turtle, american black bear,
black-footed ferret, greater swiss mountain dog, soft-coated wheaten terrier, german short-haired pointer, old
english sheepdog, yellow lady's slipper, three-toed sloth, red-breasted merganser, ruffed grouse, prairie chicken,
african hunting dog, american chameleon, european fire salamander, king penguin, grey whale, killer whale, red-
backed sandpiper, crane fly, leaf beetle, long-horned beetle, dung beetle, tree frog, bullfrog, chambered nautilus,
black and gold garden spider, barn spider, wolf spider, indian cobra, green mamba, sea snake, horned viper, hognose
snake, ring-necked snake, water ouzel, bald eagle, great grey owl, black grouse, sulphur-crested cockatoo
"""
_MODIFIERS = """
red green spotted striped giant dwarf wild common golden silver black white great little northern southern eastern
western american african european asian arctic desert mountain river garden house wooden electric antique folding
portable vintage miniature royal sea snow rock forest
""".split()


def class_names(count: int) -> list[str]:
    """`count` (<= 1,000 distinct) ImageNet-like class names of one to five words, in a fixed order.

    740 names come from the list above (animals, objects, food and scenes, as in ImageNet); the rest put a modifier in
    front of a listed name ("striped canoe"). A fixed pseudo-random order spreads the lengths evenly, so that the first
    10 or 100 names have about the length distribution of all 1,000.
    """
    names = [name.strip() for name in " ".join(_NAMES.split()).split(",")]
    i = 0
    while len(names) < 1000:
        candidate = f"{_MODIFIERS[i % len(_MODIFIERS)]} {names[(i * 113) % 740]}"
        if candidate not in names:
            names.append(candidate)
        i += 1
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(1234)).tolist()
    names = [names[i] for i in order]
    if count > len(names):
        raise ValueError(f"At most {len(names)} class names, asked for {count}.")
    return names[:count]


def token_lengths(tokenizer: Any, prompts: Sequence[str]) -> list[int]:
    """Token count of each prompt, BOS and EOS included."""
    return [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]


# --------------------------------------------------------------------------------------------------------------------
# numerics of the runs


def image_features(output: Any) -> torch.Tensor:
    """The projected features from `get_image_features` / `get_text_features` (an output object in transformers 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """`"fp32"`: nothing; `"bf16"` / `"fp16"`: CPU (or CUDA) autocast to that dtype."""
    if dtype == "fp32":
        yield
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]):
        yield


def device() -> torch.device:
    """Where the benchmarks run: the GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------------------------------
# timing


@dataclass
class Timings:
    """Seconds per call of each case, one entry per repetition (in repetition order), by two clocks.

    `wall`: elapsed time (`time.perf_counter`; on CUDA after a synchronize). `cpu`: the CPU time of this process
    (`time.process_time`, all its threads), which does not count the time the process waits while other processes
    hold the cores: on a shared machine the CPU-time ratio is the stable one; on one thread the two agree when the
    machine is otherwise idle.
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    system: dict[str, list[float]]  # the part of `cpu` spent in the kernel (page faults of fresh allocations)

    def clock(self, clock: str) -> dict[str, list[float]]:
        return self.cpu if clock == "cpu" else self.wall

    def median(self, case: str, clock: str = "wall") -> float:
        return statistics.median(self.clock(clock)[case])

    def ratios(self, case: str, reference: str, clock: str = "wall") -> list[float]:
        """Per repetition: time of `case` / time of `reference` (measured next to each other)."""
        times = self.clock(clock)
        return [a / b for a, b in zip(times[case], times[reference], strict=True)]

    def fastest_ratio(self, case: str, reference: str, clock: str = "wall") -> float:
        """Fastest run of `case` / fastest run of `reference`: interference from other processes only ever adds
        time, so on a shared machine the fastest runs are the least disturbed ones."""
        times = self.clock(clock)
        return min(times[case]) / min(times[reference])


def default_clock() -> str:
    """The clock the ratios are taken on: CPU time on CPU (see [`Timings`]), elapsed time on CUDA."""
    return "wall" if torch.cuda.is_available() else "cpu"


def alternate(cases: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> Timings:
    """Time each case `reps` times, alternating: repetition `r` runs the cases in order, reversed on odd `r`.

    Each case first runs `warmup` times (not timed). Garbage is collected before each timed call, outside the timing.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    synchronize()
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    system: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else reversed(names):
            gc.collect()
            synchronize()
            start, start_cpu, start_system = time.perf_counter(), time.process_time(), os.times().system
            cases[name]()
            synchronize()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            system[name].append(os.times().system - start_system)
    return Timings(wall, cpu, system)


def median_cpu_time(fn: Callable[[], Any], n: int, warmup: int = 0) -> float:
    """Median CPU time (`time.process_time`) of `n` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(n):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def spread(values: Sequence[float], digits: int = 3) -> str:
    """`median [q1–q3] (min–max)` of `values`: the median, the interquartile range and the full range."""
    median = statistics.median(values)
    if len(values) < 4:
        return f"{median:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
    q1, _, q3 = statistics.quantiles(values, n=4)
    return f"{median:.{digits}f} [{q1:.{digits}f}–{q3:.{digits}f}] ({min(values):.{digits}f}–{max(values):.{digits}f})"


def seconds(values: Sequence[float]) -> str:
    median = statistics.median(values)
    return f"{median * 1000:.1f} ms" if median < 1 else f"{median:.2f} s"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# memory


def tensor_bytes(objects: Any) -> int:
    """Bytes of the distinct storages of every tensor found in `objects` (modules, optimizers, tensors, containers)."""
    seen: dict[int, int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            if value.grad is not None:
                visit(value.grad)
        elif isinstance(value, nn.Module):
            for tensor in (*value.parameters(), *value.buffers()):
                visit(tensor)
        elif isinstance(value, torch.optim.Optimizer):
            for state in value.state.values():
                visit(state)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(objects)
    return sum(seen.values())


def peak_memory(step: Callable[[], Any], persistent: Any) -> dict[str, int]:
    """Peak bytes of memory in use during one call of `step`.

    On CUDA: `torch.cuda.max_memory_allocated` (reset before the call). On CPU there is no such counter, so the CPU
    allocator's own accounting is used: with `torch.profiler.profile(profile_memory=True)`, PyTorch's CPU allocator
    reports every allocation and free to the profiler together with the running total of the bytes it has handed out
    *during profiling* (`total_allocated` of each allocation event). The highest running total is the transient peak
    of the step, every tensor included (activations saved for backward, gradients, temporaries, kernel outputs, the
    optimizer's temporaries). The bytes already live before the step (the weights, the optimizer state, the inputs,
    counted once per storage from `persistent`) are added to it: `peak = persistent + transient`.

    Returns:
        `dict`: `persistent`, `transient` and `peak`, in bytes.
    """
    gc.collect()
    held = tensor_bytes(persistent)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        transient = torch.cuda.max_memory_allocated() - start
        return {"persistent": held, "transient": transient, "peak": held + transient}
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    peak = 0
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            peak = max(peak, node.extra_fields.total_allocated)
        stack.extend(node.children)
    return {"persistent": held, "transient": peak, "peak": held + peak}


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB"


# --------------------------------------------------------------------------------------------------------------------
# command line and report


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32, or autocast to bf16 / fp16 (both sides of every comparison)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run: fewer repetitions and cases")


def setup(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(True)


def machine(args: argparse.Namespace) -> str:
    """One line on where the numbers come from."""
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name()
    else:
        where = _cpu_name()
    import peft
    import transformers

    return (
        f"{where}, {os.cpu_count()} logical cores; {torch.get_num_threads()} thread(s); {args.dtype}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"peft {peft.__version__}; {load_average()}"
    )


def load_average() -> str:
    """The 1-minute load average (other processes competing for the cores)."""
    try:
        return f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        return "load average unknown"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                return f"CPU {name} ({torch.backends.cpu.get_cpu_capability()})"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()}"


def command_line() -> str:
    return "python " + " ".join(sys.argv)


def logits_of(features: torch.Tensor, class_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's classification logits from unnormalised image features and normalised class features."""
    return F.normalize(features, dim=-1) @ class_features.to(features.dtype).t() * scale.exp().to(features.dtype)
