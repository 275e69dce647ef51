"""peft's own generic tuner tests, from the source distribution of the installed peft, run against MuDPT.

peft checks every tuner it ships with one battery: `PeftCommonTester` (`tests/testing_common.py`), the
`TestPeftCustomModel` tests that bind it to toy models (`tests/test_custom_models.py`, parametrized over its
`TEST_CASES`) and `TestPeftConfig` (`tests/test_config.py`, parametrized over `ALL_CONFIG_CLASSES`). This module runs
those tests, unchanged, with MuDPT in place of peft's methods:

- `TestMuDPTCustomModel`: every `TestPeftCustomModel` test parametrized over `TEST_CASES`, re-parametrized over the
  MuDPT configurations in [`CASES`] (one per method and coupling, deep and shallow, symmetric and asymmetric depths) on
  the tiny CLIP of `tests/helpers.py`; plus the `PeftCommonTester` checks that peft runs on transformers models but
  not on its toy models ([`COMMON_CHECKS`]: saving selected adapters, unloading, gradient checkpointing, the dtype of
  added adapters).
- `TestMuDPTConfig`: every `TestPeftConfig` test parametrized over `ALL_CONFIG_CLASSES`, over the same configurations,
  and `test_from_peft_type` (it walks every registered peft type, MUDPT included).

Not run: the `TestPeftCustomModel` and `TestPeftConfig` tests that are not parametrized over those cases (each builds
one method, such as LoRA or IA3, on peft's own toy models), and, listed in [`NOT_RUN`] with the reason: the tests
that need the Hub (the test suite has no network), those for one method's options (LoRA's `layers_to_transform` and
`bias`), and the `PeftCommonTester` checks that cannot apply (CLIP has no `generate`, no single input embedding, its
text tower takes no `inputs_embeds`) or test LoRA / IA3 features (weighted adapters, layer indexing, LoRA conversion).
Every `PeftCommonTester` check is run or listed there: one added by a new peft version fails the module's last test
until it is bound or listed.

Every test that fails by design is listed in [`EXPECTED_FAILURES`] with the exception it raises and why (merging is
refused, pickles are refused, prompts are no identity at init, ...) and marked `xfail(strict=True, raises=...)`: a new
failure, a different exception, or an expected failure that starts passing turns the run red.

What the glue provides, in place of the `conftest.py` and `__init__.py` that the source distribution does not ship:
the `tests/` folder imported as a package (`peft_sdist_tests`); `diffusers` (imported by `testing_common.py` for its
Stable Diffusion tests only) as an empty stand-in when it is not installed; a transformers-like loader
(`TinyCLIPLoader.from_pretrained`) whose CLIP returns its image-text logits as a tensor, as peft's toy models return
theirs, and accepts the assignment of its own dtype (peft's half-precision tests set `model.dtype` on their toy
models; on transformers models it is a read-only property). peft's helper `set_init_weights_false` (which switches
off identity initialisations through an `init_weights` option that MuDPT does not have) is replaced, for the rebound
tests only, by one that leaves MuDPT's options unchanged, as the helper does for prompt learning: MuDPT's prompts are
random at init, nothing is an identity. peft's `conftest.py` skips tests marked `regression` unless `--regression` is
given (so does the glue; none is bound now) and asserts an `HF_TOKEN` for the Hub; here every test runs with
`HF_HUB_OFFLINE=1` instead (peft's `save_pretrained` would look the base model id up on the Hub).

Where the source distribution comes from: `MUDPT_PEFT_SDIST` names the `.tar.gz` (as `pip download --no-binary :all:
--no-deps peft==<installed version>` gives it) or the folder it was extracted to; its version must be the installed
peft's. Without it the module is skipped, unless `MUDPT_PEFT_BATTERY=required` (CI sets it), which makes its absence a
failure. `.ci/run` downloads it and runs this module; about 600 tests, under 2 minutes on 2 cores.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import os
import re
import shutil
import sys
import tarfile
import tempfile
import types
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from transformers import CLIPModel

from mudpt_peft import MuDPTConfig
from mudpt_peft.methods import METHODS

from .helpers import make_clip_config, make_inputs

# tiny models: more threads only contend for the shared cores
pytestmark = pytest.mark.usefixtures("one_thread")

#: The environment variable naming peft's source distribution (`.tar.gz`) or the folder it was extracted to.
SDIST_ENV = "MUDPT_PEFT_SDIST"
#: Set to `required` (CI does) to make a missing or unusable source distribution a failure instead of a skip.
REQUIRED_ENV = "MUDPT_PEFT_BATTERY"
#: The package name under which the source distribution's `tests/` folder is imported.
PACKAGE = "peft_sdist_tests"
#: The model id `TinyCLIPLoader.from_pretrained` builds.
TINY_CLIP = "tiny-clip"


# ---------------------------------------------------------------------------------------------------------------------
# finding and importing peft's tests


def _unavailable(reason: str) -> None:
    """Skip the module, or fail it when the battery is required (CI) or the source distribution was named."""
    required = os.environ.get(REQUIRED_ENV, "").strip().lower() == "required"
    if required or os.environ.get(SDIST_ENV, "").strip():
        pytest.fail(f"peft's generic tuner tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"peft's generic tuner tests are not run: {reason}", allow_module_level=True)


def _sdist_version(root: Path) -> str | None:
    """The `Version:` of the source distribution's `PKG-INFO`, if it has one."""
    info = root / "PKG-INFO"
    match = re.search(r"^Version: *(\S+)", info.read_text(encoding="utf-8"), re.M) if info.is_file() else None
    return match.group(1) if match else None


def _extract(archive_path: Path) -> Path:
    """Copy `PKG-INFO` and `tests/*.py` of the archive into a fresh folder (removed at exit); return the folder.

    Only regular files at those exact places are read, and written under names of our choosing, so that no member of
    the archive can write outside the folder.
    """
    target = Path(tempfile.mkdtemp(prefix="mudpt-peft-battery-"))
    atexit.register(shutil.rmtree, target, True)
    (target / "tests").mkdir()
    with tarfile.open(archive_path) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if not member.isfile() or len(parts) not in (2, 3):
                continue
            if parts[1:] == ["PKG-INFO"]:
                destination = target / "PKG-INFO"
            elif len(parts) == 3 and parts[1] == "tests" and re.fullmatch(r"[A-Za-z0-9_]+\.py", parts[2]):
                destination = target / "tests" / parts[2]
            else:
                continue
            destination.write_bytes(archive.extractfile(member).read())
    return target


def _sdist_tests() -> Path:
    """The `tests/` folder of the source distribution named by `MUDPT_PEFT_SDIST`, of the installed peft's version."""
    value = os.environ.get(SDIST_ENV, "").strip()
    if not value:
        _unavailable(
            f"set {SDIST_ENV} to peft's source distribution, e.g. `pip download --no-binary :all: --no-deps "
            f"peft=={peft.__version__} -d <dir>` and {SDIST_ENV}=<dir>/peft-{peft.__version__}.tar.gz (.ci/run does)"
        )
    path = Path(value)
    if path.is_file():
        try:
            root = _extract(path)
        except (tarfile.TarError, OSError) as error:
            _unavailable(f"{SDIST_ENV}={value} is not a readable source distribution ({error})")
    elif path.is_dir():
        root = path
    else:
        _unavailable(f"{SDIST_ENV}={value} does not exist")
    version = _sdist_version(root)
    if version != peft.__version__:
        _unavailable(f"{SDIST_ENV}={value} holds peft {version}, but peft {peft.__version__} is installed")
    tests = root / "tests"
    missing = [
        name
        for name in ("testing_common.py", "test_custom_models.py", "test_config.py")
        if not (tests / name).is_file()
    ]
    if missing:
        _unavailable(f"{SDIST_ENV}={value} lacks tests/{', tests/'.join(missing)}")
    return tests


def _import_battery(tests: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """`(testing_common, test_custom_models, test_config)` of peft's tests, imported as the package `PACKAGE`."""
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(tests)]
    sys.modules[PACKAGE] = package
    stand_in = None
    if importlib.util.find_spec("diffusers") is None:
        # testing_common.py imports it for its Stable Diffusion tests only (an isinstance check, false here); the
        # stand-in is gone again once it is imported, so that nothing else takes diffusers for installed
        stand_in = sys.modules["diffusers"] = types.ModuleType("diffusers")
        stand_in.StableDiffusionPipeline = type("StableDiffusionPipeline", (), {})
    try:
        names = ("testing_common", "test_custom_models", "test_config")
        return tuple(importlib.import_module(f"{PACKAGE}.{name}") for name in names)
    finally:
        if stand_in is not None and sys.modules.get("diffusers") is stand_in:
            del sys.modules["diffusers"]


common, custom, config_tests = _import_battery(_sdist_tests())


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here needs the Hub, but peft's `save_pretrained` looks the base model id up there unless offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------------------------------
# the model and the MuDPT configurations


class BatteryCLIP(CLIPModel):
    """The tiny CLIP, returning its image-text logits as a tensor (peft's tests compare and sum model outputs)."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().forward(*args, **kwargs).logits_per_image

    @property
    def dtype(self) -> torch.dtype:
        return super().dtype

    @dtype.setter
    def dtype(self, value: torch.dtype) -> None:
        # peft's half-precision tests assign the dtype to their toy models, which have no such property
        if value != super().dtype:
            raise ValueError(f"the model's dtype is {super().dtype}, not {value}")


class TinyCLIPLoader:
    """Stands for a transformers class in peft's tests (`transformers_class.from_pretrained(model_id, dtype=...)`)."""

    @classmethod
    def from_pretrained(cls, model_id: str, dtype: torch.dtype | None = None) -> BatteryCLIP:
        """The tiny CLIP of `tests/helpers.py`, the same on every call, in eval mode as transformers loads models."""
        if model_id != TINY_CLIP:
            raise ValueError(f"TinyCLIPLoader builds {TINY_CLIP!r} only, not {model_id!r}")
        torch.manual_seed(0)
        config = make_clip_config()
        config._name_or_path = model_id  # as `from_pretrained` records it
        return BatteryCLIP(config).eval().to(dtype or torch.float32)


def _fields(method: str, **overrides: Any) -> dict[str, Any]:
    """The `MuDPTConfig` fields of a method preset, with `overrides` (the tiny CLIP has 4 layers per tower)."""
    return dict(METHODS[method].config_fields(overrides))


#: The MuDPT configurations the tests run with, by test id.
CASES: dict[str, dict[str, Any]] = {
    "mudpt": _fields("mudpt", depth=3),  # the Injection Model, both directions
    "coop": _fields("coop", n_ctx=4),  # text prompts only
    "vpt": _fields("vpt", depth=3, vision_n_ctx=3),  # vision prompts only
    "maple": _fields("maple", depth=3),  # vision prompts derived from the text prompts
    "mudpt-linear": _fields("mudpt-linear", depth=3),  # the official code's shared linear maps
    "ivlp-shallow": _fields("ivlp", depth=1),  # uncoupled prompts at the input layer only
    "cross-attention": _fields("cross-attention", text_depth=4, vision_depth=2),  # asymmetric depths
}


# ---------------------------------------------------------------------------------------------------------------------
# what fails by design, and what is not run

MERGING = (
    NotImplementedError,
    "MuDPT refuses to merge: prompts add tokens to the sequence and have no weight delta (the test gets that far: "
    "what it checks before merging passes)",
)
PICKLES = (
    ValueError,
    "MuDPT refuses to load pickled adapter_model.bin weights unless `mudpt_peft.allow_pickled_weights()` is active",
)
#: Tests that fail by design: test name -> (exception, reason), for every configuration.
EXPECTED_FAILURES: dict[str, tuple[type[BaseException], str]] = {
    "test_merge_layers": MERGING,
    "test_merge_layers_fp16": MERGING,
    "test_merge_layers_is_idempotent": MERGING,
    "test_merge_layers_is_deterministic_in_train_mode": MERGING,
    "test_safe_merge": MERGING,
    "test_disable_adapters_with_merging": MERGING,
    "test_delete_merged_adapter_raises_without_mutation": MERGING,
    "test_delete_merged_adapter_only_rejects_the_merged_one": MERGING,
    "test_forward_float16": MERGING,
    "test_forward_bfloat16": MERGING,
    "test_forward_float16_no_autocast": MERGING,
    "test_forward_bfloat16_no_autocast": MERGING,
    "test_save_pretrained_pickle": PICKLES,
    "test_save_pretrained_selected_adapters_pickle": PICKLES,
    "test_disable_adapters": (
        AssertionError,
        "it requires a fresh adapter to leave the output unchanged (LoRA's B = 0); MuDPT's prompts change it from "
        "the start (tests/test_lifecycle.py checks that disabling gives the base model's outputs)",
    ),
    "test_in_features_out_features_exposed": (
        AssertionError,
        "MuDPT wraps towers, embeddings and encoder layers, not linear layers: there are no in/out features to expose",
    ),
}

#: peft tests in the classes this module binds that are not run, and why.
NOT_RUN: dict[str, str] = {
    "TestPeftConfig.test_from_pretrained": "downloads a LoRA adapter from the Hub",
    "TestPeftConfig.test_from_pretrained_cache_dir": "downloads a LoRA adapter from the Hub",
    "TestPeftConfig.test_save_pretrained_with_runtime_config": "downloads a LoRA adapter from the Hub",
    "TestPeftConfig.test_from_pretrained_cache_dir_remote": "downloads a LoRA adapter from the Hub",
    "TestPeftConfig.test_config_layers_to_transform_index_zero": "parametrized over the configs with "
    "`layers_to_transform` (LoRA's layer selection), which MuDPT does not have",
    "TestPeftCustomModel.test_disable_adapter_with_bias_warns": "LoRA's and BOFT's `bias` option; peft skips it for "
    "every other method",
    "TestPeftCustomModel.test_adding_multiple_adapters_with_bias_raises": "LoRA's `bias` option; peft skips it for "
    "methods without one",
    # the PeftCommonTester checks that neither peft's TestPeftCustomModel nor COMMON_CHECKS run
    "PeftCommonTester._test_disable_adapter": "reads the output of every PeftModel through `generate`, which a "
    "PeftModel always has and CLIP cannot run (tests/test_lifecycle.py checks disabling)",
    "PeftCommonTester._test_prepare_for_training": "calls `get_input_embeddings()`, which transformers' CLIPModel (two "
    "towers, two embeddings) does not implement",
    "PeftCommonTester._test_adding_multiple_adapters_with_bias_raises": "LoRA's `bias` option (see above)",
    "PeftCommonTester._test_generate": "CLIP has no `generate`",
    "PeftCommonTester._test_generate_half_prec": "CLIP has no `generate`",
    "PeftCommonTester._test_generate_pos_args": "CLIP has no `generate`",
    "PeftCommonTester._test_generate_with_mixed_adapter_batches_and_beam_search": "CLIP has no `generate`",
    "PeftCommonTester._test_mixed_adapter_batches": "runs `generate` with `adapter_names` (LoRA's mixed batches; MuDPT "
    "uses one adapter per call)",
    "PeftCommonTester._test_passing_input_embeds_works": "CLIP's text tower takes no `inputs_embeds`",
    "PeftCommonTester._test_merge_layers_multi": "merging, refused (the merge tests that run show it)",
    "PeftCommonTester._test_merge_layers_nan": "merging, refused (the merge tests that run show it)",
    "PeftCommonTester._test_weighted_combination_of_adapters": "`add_weighted_adapter` is LoRA's and IA3's",
    "PeftCommonTester._test_weighted_combination_of_adapters_lora": "`add_weighted_adapter` is LoRA's and IA3's",
    "PeftCommonTester._test_weighted_combination_of_adapters_ia3": "`add_weighted_adapter` is LoRA's and IA3's",
    "PeftCommonTester._test_training_layer_indexing": "LoRA's `layers_to_transform`",
    "PeftCommonTester._test_lora_conversion": "converts weight deltas into LoRA; prompts have none",
    "PeftCommonTester._test_training_prompt_learning_tasks": "peft's own prompt-learning route (PromptLearningConfig)",
}

CUSTOM_ARGNAMES = ("test_name", "model_id", "config_cls", "config_kwargs")
CONFIG_ARGNAMES = ("config_class", "mandatory_kwargs")


def _params(test: str, argnames: tuple[str, ...]) -> list[Any]:
    """The parameters of `test` for every configuration in `CASES`, marked as expected failures where listed."""
    marks = []
    if test in EXPECTED_FAILURES:
        raises, reason = EXPECTED_FAILURES[test]
        marks = [pytest.mark.xfail(strict=True, raises=raises, reason=reason)]
    rows = {
        CUSTOM_ARGNAMES: lambda name, kwargs: (name, TINY_CLIP, MuDPTConfig, kwargs),
        CONFIG_ARGNAMES: lambda name, kwargs: (MuDPTConfig, kwargs),
    }[argnames]
    return [pytest.param(*rows(name, dict(kwargs)), id=name, marks=marks) for name, kwargs in CASES.items()]


# ---------------------------------------------------------------------------------------------------------------------
# binding peft's tests to MuDPT


def _parametrization(function: Any, argnames: tuple[str, ...]) -> Any:
    """The `parametrize` mark of `function` over `argnames`, or `None`."""
    for mark in getattr(function, "pytestmark", []):
        names = mark.args[0] if mark.name == "parametrize" else ()
        names = tuple(n.strip() for n in names.split(",")) if isinstance(names, str) else tuple(names)
        if names == argnames:
            return mark
    return None


def _rebound(function: Any, namespace: dict[str, Any], argnames: tuple[str, ...], qualname: str) -> Any:
    """A copy of peft's test `function`, reading its globals from `namespace`, parametrized over `CASES` instead
    of peft's cases (its other marks and parametrizations kept)."""
    code, defaults, closure = function.__code__, function.__defaults__, function.__closure__
    copy = types.FunctionType(code, namespace, function.__name__, defaults, closure)
    copy.__kwdefaults__, copy.__doc__, copy.__qualname__ = function.__kwdefaults__, function.__doc__, qualname
    own = _parametrization(function, argnames)
    copy.pytestmark = [mark for mark in getattr(function, "pytestmark", []) if mark is not own]
    if any(mark.name == "regression" for mark in copy.pytestmark):  # as peft's conftest.py without --regression
        copy.pytestmark.append(pytest.mark.skip(reason="a peft regression test (peft runs them with --regression)"))
    return pytest.mark.parametrize(argnames, _params(function.__name__, argnames))(copy)


def _bind(target: type, source: type, cases: Any, argnames: tuple[str, ...], namespace: dict[str, Any]) -> None:
    """Copy onto `target` every test of `source` that peft parametrizes over `cases`, unless listed in `NOT_RUN`."""
    for name, function in vars(source).items():
        mark = _parametrization(function, argnames) if name.startswith("test_") else None
        if mark is not None and mark.args[1] is cases and f"{source.__name__}.{name}" not in NOT_RUN:
            setattr(target, name, _rebound(function, namespace, argnames, f"{target.__name__}.{name}"))


def _code_names(function: Any) -> set[str]:
    """The names a function's code uses (globals and attributes), nested functions included."""
    codes, names = [getattr(function, "__code__", None)], set()
    while codes:
        code = codes.pop()
        if code is not None:
            names |= set(code.co_names)
            codes += [const for const in code.co_consts if isinstance(const, types.CodeType)]
    return names


def _unchanged_init(config_cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """peft's `set_init_weights_false` for MuDPT: nothing to switch off (as for prompt learning, see the docstring)."""
    return dict(kwargs)


class TestMuDPTCustomModel(common.PeftCommonTester):
    """peft's `TestPeftCustomModel` tests and the `PeftCommonTester` checks of `COMMON_CHECKS`, on the tiny CLIP."""

    transformers_class = TinyCLIPLoader

    def prepare_inputs_for_testing(self) -> dict[str, torch.Tensor]:
        return make_inputs()

    @pytest.mark.parametrize(CUSTOM_ARGNAMES, _params("test_save_pretrained_selected_adapters", CUSTOM_ARGNAMES))
    def test_save_pretrained_selected_adapters(self, test_name, model_id, config_cls, config_kwargs):
        self._test_save_pretrained_selected_adapters(model_id, config_cls, config_kwargs)

    @pytest.mark.parametrize(CUSTOM_ARGNAMES, _params("test_save_pretrained_selected_adapters_pickle", CUSTOM_ARGNAMES))
    def test_save_pretrained_selected_adapters_pickle(self, test_name, model_id, config_cls, config_kwargs):
        self._test_save_pretrained_selected_adapters(model_id, config_cls, config_kwargs, safe_serialization=False)

    @pytest.mark.parametrize(CUSTOM_ARGNAMES, _params("test_unload_adapter", CUSTOM_ARGNAMES))
    def test_unload_adapter(self, test_name, model_id, config_cls, config_kwargs):
        self._test_unload_adapter(model_id, config_cls, config_kwargs)

    @pytest.mark.parametrize("use_reentrant", [True, False])
    @pytest.mark.parametrize(CUSTOM_ARGNAMES, _params("test_training_gradient_checkpointing", CUSTOM_ARGNAMES))
    def test_training_gradient_checkpointing(self, test_name, model_id, config_cls, config_kwargs, use_reentrant):
        self._test_training_gradient_checkpointing(model_id, config_cls, config_kwargs, use_reentrant=use_reentrant)

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
    @pytest.mark.parametrize(CUSTOM_ARGNAMES, _params("test_add_adapter_no_autocast_adapter_dtype", CUSTOM_ARGNAMES))
    def test_add_adapter_no_autocast_adapter_dtype(self, test_name, model_id, config_cls, config_kwargs, dtype):
        self._test_add_adapter_no_autocast_adapter_dtype(model_id, config_cls, config_kwargs, dtype)


#: The `PeftCommonTester` checks bound above, which peft's `TestPeftCustomModel` does not run on its toy models.
COMMON_CHECKS = [
    "test_save_pretrained_selected_adapters",
    "test_save_pretrained_selected_adapters_pickle",
    "test_unload_adapter",
    "test_training_gradient_checkpointing",
    "test_add_adapter_no_autocast_adapter_dtype",
]

_bind(
    TestMuDPTCustomModel,
    custom.TestPeftCustomModel,
    custom.TEST_CASES,
    CUSTOM_ARGNAMES,
    {**vars(custom), "set_init_weights_false": _unchanged_init},
)


class TestMuDPTConfig:
    """peft's `TestPeftConfig` tests, for `MuDPTConfig` with each configuration of `CASES`."""

    test_from_peft_type = config_tests.TestPeftConfig.test_from_peft_type


_bind(
    TestMuDPTConfig, config_tests.TestPeftConfig, config_tests.ALL_CONFIG_CLASSES, CONFIG_ARGNAMES, vars(config_tests)
)


def test_every_listed_test_exists_and_every_bound_test_is_accounted_for():
    """The lists above name real tests: an expected failure or an exclusion that no longer matches fails here."""
    bound = {name for cls in (TestMuDPTCustomModel, TestMuDPTConfig) for name in vars(cls) if name.startswith("test_")}
    assert set(EXPECTED_FAILURES) <= bound, sorted(set(EXPECTED_FAILURES) - bound)
    assert set(COMMON_CHECKS) <= bound
    sources = {
        "TestPeftCustomModel": custom.TestPeftCustomModel,
        "TestPeftConfig": config_tests.TestPeftConfig,
        "PeftCommonTester": common.PeftCommonTester,
    }
    for qualified in NOT_RUN:
        owner, name = qualified.split(".")
        assert callable(getattr(sources[owner], name, None)), qualified
        assert name not in bound, qualified
    # every check of PeftCommonTester is called by a bound test or listed (a new one in a new peft version shows here)
    checks = {name for name in vars(common.PeftCommonTester) if name.startswith("_test_")}
    called, todo = set(), {name for function in vars(TestMuDPTCustomModel).values() for name in _code_names(function)}
    while todo:  # and the checks those call
        name = todo.pop()
        if name in checks and name not in called:
            called.add(name)
            todo |= _code_names(vars(common.PeftCommonTester)[name])
    listed = {qualified.split(".")[1] for qualified in NOT_RUN if qualified.startswith("PeftCommonTester.")}
    assert checks - called == listed, sorted((checks - called) ^ listed)
    # each rebound test is one of peft's, and runs for every configuration
    pairs = ((TestMuDPTCustomModel, custom.TestPeftCustomModel), (TestMuDPTConfig, config_tests.TestPeftConfig))
    for cls, source in pairs:
        for name in vars(cls):
            if name.startswith("test_") and name not in COMMON_CHECKS:
                assert getattr(source, name).__code__ is vars(cls)[name].__code__, name
