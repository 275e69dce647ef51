"""Sharing on the Hub: push and load MuDPT adapters and prompt classifiers through a local Hub-compatible server.

Design. `huggingface_hub` reads `HF_ENDPOINT`, `HF_HOME`, `HF_TOKEN`, `HF_HUB_DISABLE_XET`... once, when it is
imported, and the test process imported it long before this module (`conftest.py` imports transformers and peft). So
the checks cannot run in the test process itself. Instead:

1. In the test process, a session fixture ([`hub_run`]) starts the test Hub (`tests/hub_server.py`, standard library
   only) as a subprocess on port 0 with a temporary storage folder, reads its address from its first output line,
   then runs `python -m pytest tests/test_hub.py::<the selected tests>` once in a child process whose environment
   points `huggingface_hub` at that server from the start: `HF_ENDPOINT`, an empty `HF_HOME` (cache and token file),
   a dummy `HF_TOKEN` with `HF_HUB_DISABLE_IMPLICIT_TOKEN=1` (a developer's real token is never read nor sent),
   `HF_HUB_DISABLE_XET=1` (basic LFS uploads even with `hf_xet` installed), and an unreachable HTTP(S) proxy for every
   host but 127.0.0.1, so that any request that would leave the machine fails at once instead of reaching
   huggingface.co. The environment variable `MUDPT_HUB_TEST_CHILD=1` tells this module which side it is on.
2. In the child, the test functions below run for real, with the unmodified `huggingface_hub` client, and compare
   outputs bit for bit (`torch.equal`). After each test, the server's request log is checked: no unexpected
   endpoint, no server error, no token other than the dummy.
3. In the test process, each test function is replaced (by [`hub_test`]) by a proxy that reports the child's outcome
   for that test (with the child's failure text), so that `pytest -k`, `-ra` and CI reports show each Hub check by
   name. The server stops when the session ends (it also exits on its own when its standard input closes, so it
   never outlives the test process).

To debug the child directly: start `python tests/hub_server.py`, then run
`MUDPT_HUB_TEST_CHILD=1 HF_ENDPOINT=<its url> HF_HOME=$(mktemp -d) HF_TOKEN=dummy HF_HUB_DISABLE_IMPLICIT_TOKEN=1
HF_HUB_DISABLE_XET=1 python -m pytest tests/test_hub.py`.
"""

from __future__ import annotations

import concurrent.futures
import copy
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from mudpt_peft import MuDPTConfig, PromptClassifier, adapter_files, compat, hub, model_card
from mudpt_peft.config import METHOD_PRESETS
from mudpt_peft.evaluation import evaluate, record_eval_result, recorded_eval_results
from mudpt_peft.layer import MuDPTLayer
from mudpt_peft.methods import METHODS

from .helpers import TOKENIZER_EOS_ID, logits, make_clip, make_inputs, make_tokenizer_files, randomize_adapter

IN_CHILD = os.environ.get("MUDPT_HUB_TEST_CHILD") == "1"
DUMMY_TOKEN = "hf_mudpt_test_dummy_token"
REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 600
CLASSES = ["cat", "dog", "zebra", "of"]


# =====================================================================================================================
# the test-process side: server, child run, proxies


@dataclass
class CaseResult:
    name: str
    outcome: str  # "passed", "failed", "error" or "skipped"
    text: str


@dataclass
class HubRun:
    """The child run's outcome per test, its output, and the server's start-up time."""

    cases: list[CaseResult]
    returncode: int
    output: str
    server_url: str
    server_startup_s: float
    child_s: float

    def report(self, name: str) -> None:
        cases = [case for case in self.cases if case.name == name or case.name.startswith(f"{name}[")]
        if not cases:
            pytest.fail(
                f"The Hub child run did not report {name} (exit code {self.returncode}). Its output:\n"
                f"{self.output[-6000:]}",
                pytrace=False,
            )
        failed = [case for case in cases if case.outcome in ("failed", "error")]
        if failed:
            pytest.fail("\n\n".join(f"[child] {case.name} {case.outcome}:\n{case.text}" for case in failed), False)
        if all(case.outcome == "skipped" for case in cases):
            pytest.skip(f"[child] {cases[0].text}")


def _child_env(url: str, home: Path, storage: Path) -> dict[str, str]:
    dropped = (
        "TRANSFORMERS_CACHE",
        "TRANSFORMERS_OFFLINE",
        "HUGGING_FACE_HUB_TOKEN",
        adapter_files.ALLOW_PICKLED_WEIGHTS_ENV,
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_")) and key not in dropped and "PROXY" not in key.upper()
    }
    env.update(
        MUDPT_HUB_TEST_CHILD="1",
        MUDPT_HUB_STORAGE=str(storage),
        HF_ENDPOINT=url,
        HF_HOME=str(home),
        HF_TOKEN=DUMMY_TOKEN,
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_OFFLINE="0",
        # anything that would leave the machine goes to a closed port and fails at once
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",  # tiny models: threads only contend for the (busy) cores
    )
    return env


def _parse_junit(path: Path) -> list[CaseResult]:
    if not path.exists():
        return []
    cases = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                text = (child.get("message") or "") + "\n" + (child.text or "")
                break
        cases.append(CaseResult(case.get("name", ""), outcome, text.strip()))
    return cases


@pytest.fixture(scope="session")
def hub_run(request, tmp_path_factory) -> HubRun:
    """Start the test Hub, run the selected Hub tests in a child process against it, stop the Hub."""
    names = sorted({item.originalname for item in request.session.items if getattr(item.function, "_hub_test", False)})
    if not names:  # only the start-up check is selected: never let the child run the whole suite
        names = ["test_server_speaks_the_hub_protocol"]
    root = tmp_path_factory.mktemp("hub")
    storage, home = root / "storage", root / "hf_home"
    storage.mkdir()
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "hub_server.py"), "--storage", str(storage), "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        reader = concurrent.futures.ThreadPoolExecutor(1)
        try:
            line = reader.submit(server.stdout.readline).result(timeout=60)
        except concurrent.futures.TimeoutError:
            line = ""
        reader.shutdown(wait=False)
        startup = time.perf_counter() - started
        if not line:
            pytest.fail(f"The test Hub server did not start (exit code {server.poll()}).", pytrace=False)
        url = json.loads(line)["url"]
        junit = root / "child.xml"
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={junit}"]
        command += [f"tests/test_hub.py::{name}" for name in names]
        child_started = time.perf_counter()
        try:
            child = subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=_child_env(url, home, storage),
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT_S,
            )
            returncode, output = child.returncode, child.stdout + child.stderr
        except subprocess.TimeoutExpired as error:
            returncode, output = -1, f"timed out after {CHILD_TIMEOUT_S} s\n{error.stdout or ''}{error.stderr or ''}"
        run = HubRun(_parse_junit(junit), returncode, output, url, startup, time.perf_counter() - child_started)
        print(f"\n[test hub] server start-up {startup * 1000:.0f} ms; child run {run.child_s:.1f} s", file=sys.stderr)
        yield run
    finally:
        server.stdin.close()  # the server exits when its standard input closes
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stdout.close()


def hub_test(function):
    """Mark a Hub check: it runs in the child process; in the test process a proxy reports its outcome there."""
    if IN_CHILD:
        function._hub_test = True
        return function

    def proxy(hub_run: HubRun) -> None:
        hub_run.report(function.__name__)

    proxy.__name__ = proxy.__qualname__ = function.__name__
    proxy.__doc__ = function.__doc__
    proxy.__module__ = function.__module__
    proxy._hub_test = True
    return proxy


@pytest.mark.skipif(IN_CHILD, reason="runs in the test process")
def test_hub_server_starts_quickly_and_serves_the_child_run(hub_run, record_property):
    record_property("hub_server_startup_s", round(hub_run.server_startup_s, 3))
    record_property("hub_child_run_s", round(hub_run.child_s, 1))
    assert hub_run.server_startup_s < 10, hub_run.server_startup_s
    assert hub_run.returncode in (0, 1), hub_run.output[-6000:]  # 0: all passed, 1: some failed (reported by name)


# =====================================================================================================================
# the child side: fixtures

_repo_counter = itertools.count()
BASE_REPO = "test-user/tiny-clip"


def server_get(path: str):
    with urllib.request.urlopen(os.environ["HF_ENDPOINT"] + path, timeout=30) as response:
        return json.load(response)


@pytest.fixture(autouse=True)
def _server_log_is_clean():
    """After each Hub check: only known endpoints, no server error, no token other than the dummy one."""
    if not IN_CHILD:
        yield
        return
    start, unhandled = len(server_get("/_test/requests")), len(server_get("/_test/unhandled"))
    yield
    requests = server_get("/_test/requests")[start:]
    assert server_get("/_test/errors") == []
    assert server_get("/_test/unhandled")[unhandled:] == []
    assert not [r for r in requests if r["status"] >= 500]
    assert all(r["authorization"] in (None, f"Bearer {DUMMY_TOKEN}") for r in requests)


@pytest.fixture(scope="session")
def api():
    from huggingface_hub import HfApi

    return HfApi()


@pytest.fixture(scope="session")
def base_repo(api, tmp_path_factory) -> str:
    """A tiny CLIP and its tokenizer, pushed once with transformers' own `push_to_hub`."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(make_tokenizer_files(tmp_path_factory.mktemp("tokenizer")))
    make_clip(eos_token_id=TOKENIZER_EOS_ID).push_to_hub(BASE_REPO)
    tokenizer.push_to_hub(BASE_REPO)
    return BASE_REPO


_downloaded_base: list = []


def base():
    """A fresh copy of the base model as downloaded from the test Hub (once: `from_pretrained` takes a while)."""
    if not _downloaded_base:
        from transformers import CLIPModel

        _downloaded_base.append(CLIPModel.from_pretrained(BASE_REPO).eval())
    return copy.deepcopy(_downloaded_base[0])


@pytest.fixture
def repo_id(request) -> str:
    return f"test-user/{re.sub(r'[^A-Za-z0-9-]+', '-', request.node.name)[:70].strip('-')}-{next(_repo_counter)}"


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


def adapter(config: MuDPTConfig, seed: int, adapter_name: str = "default"):
    """A MuDPT adapter on the Hub's base model, with random (non-trivial) values."""
    model = get_peft_model(base(), config, adapter_name=adapter_name)
    randomize_adapter(model, adapter_name, seed=seed)
    return model


def has_wrappers(model) -> bool:
    return any(isinstance(module, MuDPTLayer) for module in model.modules())


class Untouched:
    """Checks that a failed load left a base model or a PeftModel exactly as it was: the same modules (no MuDPT
    wrapper added or left behind), the same tensors with the same values, the same adapters and active adapter."""

    def __init__(self, model) -> None:
        self.model = model
        self.modules = [(name, type(module)) for name, module in model.named_modules()]
        self.state = {key: value.clone() for key, value in model.state_dict().items()}
        self.adapters = list(getattr(model, "peft_config", {}))
        self.active = getattr(model, "active_adapter", None)
        self.wrapped = has_wrappers(model)

    def check(self) -> None:
        assert [(name, type(module)) for name, module in self.model.named_modules()] == self.modules
        assert has_wrappers(self.model) == self.wrapped
        state = self.model.state_dict()
        assert list(state) == list(self.state)
        assert all(torch.equal(state[key], value) for key, value in self.state.items())
        assert list(getattr(self.model, "peft_config", {})) == self.adapters
        assert getattr(self.model, "active_adapter", None) == self.active
        if not self.adapters:
            assert not hasattr(self.model, "peft_config")


_targets: dict = {}


def refused(source, match: str, **kwargs) -> None:
    """Loading `source` fails with `match`, both onto a base model and into a PeftModel, leaving both as they were.

    The two targets are shared by all calls: each call checks them against their state when they were made, so
    sharing them only makes the check stricter (and saves building models).
    """
    if not _targets:
        _targets["base"] = Untouched(base())
        _targets["peft"] = Untouched(adapter(MuDPTConfig(depth=2), seed=7))
    with pytest.raises(ValueError, match=match):
        PeftModel.from_pretrained(_targets["base"].model, source, **kwargs)
    _targets["base"].check()
    with pytest.raises(ValueError, match=match):
        _targets["peft"].model.load_adapter(source, adapter_name="incoming", **kwargs)
    _targets["peft"].check()


# =====================================================================================================================
# the child side: checks


@hub_test
def test_plain_peft_push_and_load_round_trip(api, base_repo, repo_id, inputs):
    """`peft_model.push_to_hub` uploads the three files through the real protocol; every loader gets them back."""
    model = adapter(MuDPTConfig(depth=3, n_ctx=3), seed=1)
    expected = logits(model, inputs)
    start = len(server_get("/_test/requests"))
    model.push_to_hub(repo_id)

    calls = [(r["method"], r["path"], r["status"]) for r in server_get("/_test/requests")[start:]]
    sequence = [
        ("POST", "/api/repos/create", 200),
        ("HEAD", f"/{repo_id}/resolve/main/README.md", 404),
        ("POST", "/api/validate-yaml", 200),
        ("POST", f"/api/models/{repo_id}/preupload/main", 200),
        ("POST", f"/{repo_id}.git/info/lfs/objects/batch", 200),
        ("PUT", None, 200),
        ("POST", f"/api/models/{repo_id}/commit/main", 200),
    ]
    position = 0
    for method, path, status in calls:
        want = sequence[position] if position < len(sequence) else None
        if want and method == want[0] and (want[1] is None or path == want[1]) and status == want[2]:
            position += 1
    assert position == len(sequence), calls
    assert sorted(api.list_repo_files(repo_id)) == [
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    lfs = {entry.path: entry.lfs for entry in api.list_repo_tree(repo_id)}
    assert lfs["adapter_model.safetensors"] is not None and lfs["adapter_config.json"] is None

    for kwargs in ({}, {"adapter_name": "other"}, {"low_cpu_mem_usage": True}):
        loaded = PeftModel.from_pretrained(base(), repo_id, **kwargs)
        assert torch.equal(logits(loaded, inputs), expected), kwargs
        assert not any(p.requires_grad for p in loaded.parameters())
    assert list(PeftModel.from_pretrained(base(), repo_id, adapter_name="other").peft_config) == ["other"]
    trainable = PeftModel.from_pretrained(base(), repo_id, is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == {
        n for n, p in model.named_parameters() if p.requires_grad
    }

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generic = PeftConfig.from_pretrained(repo_id)
        specific = MuDPTConfig.from_pretrained(repo_id)
    assert not [w for w in caught if "Unexpected keyword" in str(w.message)]
    assert type(generic) is MuDPTConfig and type(specific) is MuDPTConfig
    # the same config by both entry points, with the fingerprint of the tensors, which the tuner checks on loading
    from huggingface_hub import hf_hub_download
    from safetensors.torch import load_file

    assert generic.to_dict() == specific.to_dict()
    weights = load_file(hf_hub_download(repo_id, "adapter_model.safetensors"))
    assert specific.auto_mapping[adapter_files.TENSORS_FINGERPRINT_KEY] == adapter_files.tensors_fingerprint(weights)
    assert (specific.depth, specific.n_ctx, specific.fusion) == (3, 3, "injection")
    assert specific.base_model_name_or_path == base_repo

    # a plain save writes peft's card, tagged by the tuner (`add_model_tags`: peft merges the base model's tags); a
    # plain push replaces it by transformers' card, which takes only the `tags=` argument (no hook for more); the
    # MuDPT card with its loading snippet and the recorded evaluation results comes from `mudpt_peft.hub.push_to_hub`
    from huggingface_hub import ModelCard

    with tempfile.TemporaryDirectory() as plain_save:
        model.save_pretrained(plain_save)
        card = ModelCard.load(Path(plain_save) / "README.md")
    assert card.data.library_name == "peft" and {"mudpt", "prompt-tuning", "clip"} <= set(card.data.tags)
    from transformers import AutoTokenizer

    from .helpers import LABELLED_CLASSES as NAMES
    from .helpers import image_processor, labelled

    tokenizer = AutoTokenizer.from_pretrained(base_repo)
    data = labelled([2, 2, 2, 2])
    accuracy = evaluate(model, data, NAMES[:4], tokenizer, image_processor(), dataset_name="toy", shots=4, seed=7)[
        "accuracy"
    ]
    hub.push_to_hub(model, repo_id)
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "peft" and card.data.base_model == base_repo
    assert {"mudpt", "prompt-tuning", "clip", f"base_model:adapter:{base_repo}"} <= set(card.data.tags)
    assert [(r.dataset_name, r.metric_value) for r in card.data.eval_results] == [("toy", accuracy)]
    assert f"| toy | – | 4 | 7 | {accuracy:.2f} |" in card.text
    namespace: dict = {}
    exec(python_block(card.text), namespace)
    assert torch.equal(logits(namespace["model"], inputs), expected)

    # other peft methods: no MuDPT tag, no fingerprint
    lora = get_peft_model(base(), LoraConfig(target_modules=["q_proj"], r=2))
    lora.push_to_hub(f"{repo_id}-lora")
    lora_card = ModelCard.load(f"{repo_id}-lora")
    assert lora_card.data.library_name == "transformers" and "mudpt" not in (lora_card.data.tags or [])
    assert adapter_files.TENSORS_FINGERPRINT_KEY not in str(PeftConfig.from_pretrained(f"{repo_id}-lora").to_dict())


@hub_test
def test_revisions_branches_tags_and_commit_hashes(api, base_repo, repo_id, inputs):
    first = adapter(MuDPTConfig(depth=2), seed=1)
    commit = hub.push_to_hub(first, repo_id)
    api.create_branch(repo_id, branch="v1")
    api.create_tag(repo_id, tag="first")
    second = adapter(MuDPTConfig(depth=3), seed=2)
    second.push_to_hub(repo_id)  # plain peft, to main
    third = adapter(MuDPTConfig.for_method("maple", depth=2), seed=3)
    third.push_to_hub(repo_id, revision="feature/maple")  # transformers creates the branch
    hub.push_to_hub(adapter(MuDPTConfig(depth=4), seed=4), repo_id, revision="via-helper")

    refs = api.list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "v1", "feature/maple", "via-helper"}
    assert {t.name for t in refs.tags} == {"first"}
    expected = {"first": logits(first, inputs), "second": logits(second, inputs), "third": logits(third, inputs)}
    for revision, which in (
        (None, "second"),
        ("main", "second"),
        ("v1", "first"),
        ("first", "first"),
        (commit.oid, "first"),
        ("feature/maple", "third"),
    ):
        kwargs = {} if revision is None else {"revision": revision}
        loaded = PeftModel.from_pretrained(base(), repo_id, **kwargs)
        assert torch.equal(logits(loaded, inputs), expected[which]), revision
    assert MuDPTConfig.from_pretrained(repo_id, revision="v1").depth == 2
    assert MuDPTConfig.from_pretrained(repo_id, revision="via-helper").depth == 4
    assert MuDPTConfig.from_pretrained(repo_id, revision="feature/maple").fusion == "text_to_vision"


@hub_test
def test_subfolders_hold_independent_adapters(api, base_repo, repo_id, inputs):
    a = adapter(MuDPTConfig(depth=2), seed=1)
    b = adapter(MuDPTConfig.for_method("mudpt-linear", depth=3), seed=2)
    hub.push_to_hub(a, repo_id, subfolder="a")
    hub.push_to_hub(b, repo_id, subfolder="b")
    both = adapter(MuDPTConfig(depth=3, n_ctx=1), seed=3)
    both.add_adapter("second", MuDPTConfig.for_method("ivlp", depth=2))
    randomize_adapter(both, "second", seed=4)
    both.push_to_hub(repo_id)  # plain peft: `default` at the root, `second` in second/
    files = set(api.list_repo_files(repo_id))
    assert {"a/adapter_config.json", "a/adapter_model.safetensors", "a/README.md", "b/README.md"} <= files
    assert {"adapter_config.json", "second/adapter_config.json", "second/adapter_model.safetensors"} <= files

    assert torch.equal(logits(PeftModel.from_pretrained(base(), repo_id, subfolder="a"), inputs), logits(a, inputs))
    assert torch.equal(logits(PeftModel.from_pretrained(base(), repo_id, subfolder="b"), inputs), logits(b, inputs))
    assert torch.equal(logits(PeftModel.from_pretrained(base(), repo_id), inputs), logits(both, inputs))
    both.set_adapter("second")
    second = PeftModel.from_pretrained(base(), repo_id, subfolder="second")
    assert torch.equal(logits(second, inputs), logits(both, inputs))

    model = PeftModel.from_pretrained(base(), repo_id, subfolder="a")
    model.load_adapter(repo_id, adapter_name="b", subfolder="b")
    model.set_adapter("b")
    assert torch.equal(logits(model, inputs), logits(b, inputs))
    model.set_adapter("default")
    assert torch.equal(logits(model, inputs), logits(a, inputs))
    assert MuDPTConfig.from_pretrained(repo_id, subfolder="b").fusion == "shared_linear"


def strip_fingerprint(folder: Path) -> None:
    """Remove the weights' sha256 from `folder`'s adapter_config.json, as a tool that records none would save it."""
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    del config["auto_mapping"][adapter_files.TENSORS_FINGERPRINT_KEY]
    config_file.write_text(json.dumps(config))


def python_block(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, text
    return blocks[0]


@hub_test
def test_model_card_of_the_helpers(api, base_repo, repo_id, inputs, tmp_path):
    from huggingface_hub import ModelCard, hf_hub_download

    model = adapter(MuDPTConfig.for_method("maple", depth=3), seed=1)
    results = [
        {"dataset": "eurosat", "accuracy": 81.25, "shots": 16, "seed": 1, "split": "test"},
        {"dataset": "eurosat", "eval_accuracy": 79.5, "shots": 16, "seed": 2, "split": "test", "dataset_id": "x/y"},
    ]
    hub.push_to_hub(model, repo_id, eval_results=results)
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "peft" and card.data.base_model == base_repo
    assert {"mudpt", "prompt-tuning", "clip", "maple", f"base_model:adapter:{base_repo}"} <= set(card.data.tags)
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert [(r.dataset_name, r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results] == [
        ("eurosat", "eurosat", "accuracy", 81.25),
        ("eurosat", "x/y", "accuracy", 79.5),
    ]
    size = Path(hf_hub_download(repo_id, "adapter_model.safetensors")).stat().st_size
    parameters = sum(t.numel() for t in get_peft_model_state_dict(model).values())
    row = f"| `default` | `.` | maple | 3 / 3 | 2 / 2 | text_to_vision | {parameters:,} | "
    assert row in card.text and f"({size:,} bytes)" in card.text
    assert "| eurosat | test | 16 | 1 | 81.25 |" in card.text and "| eurosat | test | 16 | 2 | 79.50 |" in card.text
    assert "import mudpt_peft" in card.text and "KeyError: 'MUDPT'" in card.text

    namespace: dict = {}
    exec(python_block(card.text), namespace)  # the card's own loading snippet, run against the Hub
    assert torch.equal(logits(namespace["model"], inputs), logits(model, inputs))

    # two adapters: one row each, and a snippet that loads both
    two = adapter(MuDPTConfig(depth=2), seed=2)
    two.add_adapter("coop", MuDPTConfig.for_method("coop", n_ctx=3))
    randomize_adapter(two, "coop", seed=3)
    hub.push_to_hub(two, repo_id, subfolder="pair", revision="pair")
    text = ModelCard.load(hf_hub_download(repo_id, "pair/README.md", revision="pair")).text
    assert "| `default` | `.` | mudpt | 2 / 2 |" in text and "| `coop` | `coop` | coop | 1 / – | 3 / – | none |" in text
    namespace = {}
    exec(python_block(text), namespace)
    assert torch.equal(logits(namespace["model"], inputs), logits(two, inputs))
    namespace["model"].set_adapter("coop")
    two.set_adapter("coop")
    assert torch.equal(logits(namespace["model"], inputs), logits(two, inputs))


@hub_test
def test_model_card_paths_and_method_presets(base_repo, tmp_path):
    for name in METHOD_PRESETS:
        # KgCoOp and PromptSRC train CoOp's and IVLP's adapters: an adapter is named after its architecture
        assert model_card.method_preset(MuDPTConfig.for_method(name)) == (METHODS[name].adapter or name)
    model = adapter(MuDPTConfig.for_method("vpt", depth=2), seed=1)

    plain = tmp_path / "plain"
    model.save_pretrained(plain)  # a plain peft save writes peft's card, with the tuner's tags
    text = (plain / "README.md").read_text()
    assert "library_name: peft" in text and "- mudpt\n" in text and "- vpt\n" in text
    assert "| – / 2 | – / 8 | none |" not in text

    model_card.write_model_card(model, plain, {"dataset": "dtd", "accuracy": 60.0, "shots": 4, "seed": 3})
    text = (plain / "README.md").read_text()
    assert "- vpt" in text and "| dtd | – | 4 | 3 | 60.00 |" in text and "| – / 2 | – / 8 | none |" in text

    # results given to write_model_card are not remembered; recorded ones (evaluate, the trainer) are
    hub.save_pretrained(model, plain)
    assert "## Evaluation" not in (plain / "README.md").read_text()
    record_eval_result(model, {"dataset": "dtd", "split": "test", "accuracy": 61.5, "shots": 4, "seed": 3})
    record_eval_result(model, {"dataset": "dtd", "split": "test", "accuracy": 62.5, "shots": 4, "seed": 3})  # replaces
    record_eval_result(model, {"dataset": "dtd", "split": "test", "accuracy": 58.0, "shots": 4, "seed": 4})
    assert [r["accuracy"] for r in recorded_eval_results(model)] == [62.5, 58.0]
    hub.save_pretrained(model, plain)
    text = (plain / "README.md").read_text()
    assert "| dtd | test | 4 | 3 | 62.50 |" in text and "| dtd | test | 4 | 4 | 58.00 |" in text
    assert "61.50" not in text
    with model.disable_adapter():  # zero-shot is not the adapter's result
        record_eval_result(model, {"dataset": "dtd", "accuracy": 40.0})
    assert len(recorded_eval_results(model)) == 2
    with pytest.raises(ValueError, match="needs `dataset` and `accuracy`"):
        record_eval_result(model, {"dataset": "dtd", "loss": 1.0})

    for bad, match in (
        ({"dataset": "dtd"}, "needs `dataset`"),
        ({"dataset": "dtd", "accuracy": 0.6, "loss": 1.0}, r"unknown keys \['loss'\]"),
        ({"dataset": "dtd", "accuracy": 160}, r"percentage in \[0, 100\]"),
        ({"dataset": "dtd", "accuracy": 60, "shots": "16"}, "must be an integer"),
        ({"dataset": "dtd", "accuracy": 60, "adapter": "nope"}, "not saved here"),
    ):
        with pytest.raises(ValueError, match=match):
            hub.save_pretrained(model, tmp_path / "bad", eval_results=bad)
    assert not (tmp_path / "bad" / "adapter_config.json").exists()


@hub_test
def test_prompt_classifier_round_trip(api, base_repo, repo_id, inputs, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_repo)
    model = adapter(MuDPTConfig(depth=2), seed=1)
    classifier = PromptClassifier(model, tokenizer, CLASSES, template="a photo of {}.").eval()
    pixel_values = inputs["pixel_values"]
    with torch.no_grad():
        expected = classifier(pixel_values=pixel_values).logits
    classifier.push_to_hub(repo_id, eval_results={"dataset": "pets", "accuracy": 90.0, "shots": 1, "seed": 1})
    assert {"prompt_classifier.json", "adapter_model.safetensors", "README.md"} <= set(api.list_repo_files(repo_id))

    restored = PromptClassifier.from_pretrained(base(), repo_id)  # tokenizer from base_model.name_or_path
    assert restored.class_names == CLASSES and restored.template == "a photo of {}." and not restored.training
    with torch.no_grad():
        assert torch.equal(restored(pixel_values=pixel_values).logits, expected)

    card = ModelCard.load(repo_id)
    assert "## Classifier" in card.text and "`zebra`" in card.text and "prompt_classifier.json" in card.text
    namespace: dict = {}
    exec(python_block(card.text), namespace)
    with torch.no_grad():
        assert torch.equal(namespace["classifier"](pixel_values=pixel_values).logits, expected)

    # subfolder and branch; an active adapter that is not "default" is saved at the folder's root
    model.add_adapter("other", MuDPTConfig.for_method("maple", depth=2))
    randomize_adapter(model, "other", seed=5)
    model.set_adapter("other")
    other = PromptClassifier(model, tokenizer, ["a", "b"]).eval()
    with torch.no_grad():
        other_expected = other(pixel_values=pixel_values).logits
    other.push_to_hub(repo_id, subfolder="v2", revision="dev")
    restored = PromptClassifier.from_pretrained(base(), repo_id, subfolder="v2", revision="dev", tokenizer=tokenizer)
    assert restored.class_names == ["a", "b"] and restored.template == "a photo of a {}."
    with torch.no_grad():
        assert torch.equal(restored(pixel_values=pixel_values).logits, other_expected)
    trainable = PromptClassifier.from_pretrained(base(), repo_id, subfolder="v2", revision="dev", is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters())

    # locally; the folder is also a plain peft adapter folder
    other.save_pretrained(tmp_path / "local")
    assert sorted(p.name for p in (tmp_path / "local").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "prompt_classifier.json",
    ]
    local = PromptClassifier.from_pretrained(base(), tmp_path / "local", tokenizer=tokenizer)
    with torch.no_grad():
        assert torch.equal(local(pixel_values=pixel_values).logits, other_expected)
    plain = PeftModel.from_pretrained(base(), tmp_path / "local")
    assert torch.equal(logits(plain, inputs), logits(model, inputs))


@hub_test
def test_prompt_classifier_errors(api, base_repo, repo_id, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_repo)
    model = adapter(MuDPTConfig(depth=2), seed=1)
    PromptClassifier(model, tokenizer, CLASSES).push_to_hub(repo_id)

    nameless = make_clip(eos_token_id=TOKENIZER_EOS_ID)
    state = Untouched(nameless)
    with pytest.raises(ValueError, match=r"no `name_or_path`.*Pass `tokenizer=`"):
        PromptClassifier.from_pretrained(nameless, repo_id)
    state.check()
    model.push_to_hub(f"{repo_id}-no-tokenizer")
    elsewhere = base()
    elsewhere.name_or_path = f"{repo_id}-no-tokenizer"
    state = Untouched(elsewhere)
    with pytest.raises(ValueError, match=r"(?s)could not load the base model's tokenizer from .*Pass `tokenizer=`"):
        PromptClassifier.from_pretrained(elsewhere, repo_id)
    state.check()

    fresh = base()
    state = Untouched(fresh)
    with pytest.raises(ValueError, match=r"prompt_classifier.json' in the Hub repository .* does not exist.*PeftModel"):
        PromptClassifier.from_pretrained(fresh, f"{repo_id}-no-tokenizer", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="Hub repository 'test-user/no-such-classifier' was not found"):
        PromptClassifier.from_pretrained(fresh, "test-user/no-such-classifier", tokenizer=tokenizer)
    with pytest.raises(ValueError, match=f"revision 'v9' was not found in the Hub repository '{repo_id}'"):
        PromptClassifier.from_pretrained(fresh, repo_id, revision="v9", tokenizer=tokenizer)
    state.check()

    # a plain peft save over a saved classifier: prompt_classifier.json no longer matches the adapter beside it
    folder = tmp_path / "classifier"
    PromptClassifier(model, tokenizer, CLASSES).save_pretrained(folder)
    adapter(MuDPTConfig(depth=2), seed=9).save_pretrained(folder)
    with pytest.raises(ValueError, match="prompt_classifier.json' in the local folder .* was saved with another"):
        PromptClassifier.from_pretrained(fresh, folder, tokenizer=tokenizer)
    state.check()

    with pytest.raises(ValueError, match="not a peft model with a MuDPT adapter"):
        PromptClassifier(base(), tokenizer, CLASSES).save_pretrained(tmp_path / "zero-shot")
    with pytest.raises(ValueError, match="`base_model` is already a PeftModel"):
        PromptClassifier.from_pretrained(model, repo_id, tokenizer=tokenizer)


@hub_test
def test_pickled_weights_are_refused_unless_allowed(api, base_repo, repo_id, inputs, tmp_path, monkeypatch):
    model = adapter(MuDPTConfig(depth=2), seed=1)
    expected = logits(model, inputs)
    folder = tmp_path / "pickled"
    model.save_pretrained(folder, safe_serialization=False)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.bin"]
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=folder)

    for source in (folder, repo_id):
        refused(source, r"Refusing to load 'adapter_model.bin' in .*allow_pickled_weights")
        with pytest.raises(ValueError, match="Refusing to load"):
            adapter_files.check_adapter(source)
        with pytest.raises(ValueError, match="Refusing to load"):  # peft reads the config first: refused there
            MuDPTConfig.from_pretrained(source)
        with adapter_files.allow_pickled_weights():
            assert adapter_files.pickled_weights_allowed()
            loaded = PeftModel.from_pretrained(base(), source)
        assert torch.equal(logits(loaded, inputs), expected)
        assert not adapter_files.pickled_weights_allowed()
        monkeypatch.setenv(adapter_files.ALLOW_PICKLED_WEIGHTS_ENV, "1")
        assert torch.equal(logits(PeftModel.from_pretrained(base(), source), inputs), expected)
        monkeypatch.delenv(adapter_files.ALLOW_PICKLED_WEIGHTS_ENV)

    # allowed, but not a weights-only pickle: refused before the base model is touched
    torch.save({"x": torch.nn.Linear(2, 2)}, folder / "adapter_model.bin")
    with adapter_files.allow_pickled_weights():
        refused(folder, r"'adapter_model.bin' in the local folder .* could not be read")


def damaged_copies(model, folder: Path) -> dict[str, Path]:
    """A helper-saved adapter (with its fingerprint), damaged in four ways, one subfolder each."""
    hub.save_pretrained(model, folder / "intact")
    data = (folder / "intact" / "adapter_model.safetensors").read_bytes()
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    damages = {"truncated": data[: len(data) // 2], "header": b"\x07" * 64, "empty": b"", "bit-flip": bytes(flipped)}
    copies = {}
    for name, content in damages.items():
        target = folder / name
        target.mkdir()
        (target / "adapter_config.json").write_bytes((folder / "intact" / "adapter_config.json").read_bytes())
        (target / "adapter_model.safetensors").write_bytes(content)
        copies[name] = target
    return copies


@hub_test
def test_damaged_weights_are_refused(api, base_repo, repo_id, inputs, tmp_path):
    model = adapter(MuDPTConfig(depth=2), seed=1)
    copies = damaged_copies(model, tmp_path)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path)
    messages = {
        "truncated": "is not a valid safetensors file .*truncated or corrupted",
        "header": "is not a valid safetensors file",
        "empty": "is not a valid safetensors file",
        "bit-flip": "does not belong to its adapter_config.json.*interrupted `save_pretrained`",
    }
    for name, folder in copies.items():
        local = re.escape(f"'adapter_model.safetensors' in the local folder '{folder}")
        refused(folder, f"{local}.*{messages[name]}")
        remote = re.escape(f"'{name}/adapter_model.safetensors' in the Hub repository '{repo_id}'")
        refused(repo_id, f"{remote}.*{messages[name]}", subfolder=name)
    intact = PeftModel.from_pretrained(base(), repo_id, subfolder="intact")
    assert torch.equal(logits(intact, inputs), logits(model, inputs))

    # a plain peft save records the fingerprint too (`import mudpt_peft` hooks it): a flipped bit is refused
    model.save_pretrained(tmp_path / "plain")
    tensors = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    tensors["base_model.model.text_model.mudpt_prompts"][0, 0, 0] += 1.0
    save_file(tensors, tmp_path / "plain" / "adapter_model.safetensors", metadata={"format": "pt"})
    refused(tmp_path / "plain", "does not belong to its adapter_config.json")
    # without a fingerprint (a folder written by a tool that records none) it goes unnoticed: only the format is checked
    strip_fingerprint(tmp_path / "plain")
    assert not torch.equal(logits(PeftModel.from_pretrained(base(), tmp_path / "plain"), inputs), logits(model, inputs))


@hub_test
def test_missing_files_are_refused(api, base_repo, repo_id, tmp_path):
    model = adapter(MuDPTConfig(depth=2), seed=1)
    model.save_pretrained(tmp_path / "full")
    (tmp_path / "config-only").mkdir()
    (tmp_path / "weights-only").mkdir()
    os.replace(tmp_path / "full" / "adapter_config.json", tmp_path / "config-only" / "adapter_config.json")
    os.replace(tmp_path / "full" / "adapter_model.safetensors", tmp_path / "weights-only" / "adapter_model.safetensors")
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path, ignore_patterns=["full/*"])

    missing_weights = r"'(config-only/)?adapter_model.safetensors' in .* does not exist: an adapter needs its weights"
    refused(tmp_path / "config-only", missing_weights)
    refused(repo_id, missing_weights, subfolder="config-only")
    with pytest.raises(ValueError, match=missing_weights):
        adapter_files.check_adapter(repo_id, subfolder="config-only")
    # the config of a save with weights records their fingerprint: reading it alone is refused too (same checks on
    # every entry point); a config saved on its own (`MuDPTConfig.save_pretrained`) records none and needs no weights
    with pytest.raises(ValueError, match=missing_weights):
        MuDPTConfig.from_pretrained(tmp_path / "config-only")
    model.peft_config["default"].save_pretrained(tmp_path / "alone")
    assert "mudpt_tensors_sha256" not in (tmp_path / "alone" / "adapter_config.json").read_text()
    assert MuDPTConfig.from_pretrained(tmp_path / "alone").depth == 2
    # peft's own error for a missing config (it reads the config before calling mudpt_peft)
    refused(tmp_path / "weights-only", "Can't find 'adapter_config.json'")
    refused(repo_id, "Can't find 'adapter_config.json'", subfolder="weights-only")
    refused(repo_id, "Can't find 'adapter_config.json'", subfolder="nowhere")
    for source, subfolder in ((tmp_path / "weights-only", None), (repo_id, "weights-only"), (repo_id, "nowhere")):
        with pytest.raises(ValueError, match=r"adapter_config.json' in .* does not exist: a MuDPT adapter folder"):
            MuDPTConfig.from_pretrained(source, subfolder=subfolder)
    with pytest.raises(ValueError, match="has no subfolder 'nope'"):
        MuDPTConfig.from_pretrained(tmp_path, subfolder="nope")


def tiny_siglip():
    """A SigLIP model with the tiny CLIP's widths and layer counts: a MuDPT-CLIP adapter's tensors fit it."""
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    text = dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4)
    vision = dict(hidden_size=48, intermediate_size=37, num_hidden_layers=4, num_attention_heads=4, image_size=16)
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


@hub_test
def test_adapters_for_another_base_are_refused(api, base_repo, repo_id):
    from transformers import AutoTokenizer

    for index, (geometry, depth, match) in enumerate(
        (
            ({"text_width": 16}, 2, r"saved for a base model with text_width 16 \(this model: 32\)"),
            ({"vision_width": 64}, 2, r"saved for a base model with vision_width 64 \(this model: 48\)"),
            (
                {"text_layers": 6, "vision_layers": 6},
                6,
                r"saved for a base model with text_layers 6 \(this model: 4\), vision_layers 6 \(this model: 4\)",
            ),
        )
    ):
        other = get_peft_model(make_clip(eos_token_id=TOKENIZER_EOS_ID, **geometry), MuDPTConfig(depth=depth))
        other.push_to_hub(repo_id, revision=f"geometry-{index}")
        refused(repo_id, match, revision=f"geometry-{index}")

    # tensors that fit, but another family or other layer counts: caught from what the config recorded
    tokenizer = AutoTokenizer.from_pretrained(base_repo)
    model = adapter(MuDPTConfig(depth=2), seed=1)
    PromptClassifier(model, tokenizer, CLASSES).push_to_hub(repo_id, subfolder="helper")  # records family, geometry
    model.push_to_hub(repo_id)  # plain peft push: the config records the family and geometry too
    siglip = tiny_siglip()
    state = Untouched(siglip)
    with pytest.raises(ValueError, match=r"saved for a CLIPModel model \(family 'clip'\), not for a SiglipModel"):
        PromptClassifier.from_pretrained(siglip, repo_id, subfolder="helper", tokenizer=tokenizer)
    state.check()
    with pytest.raises(ValueError, match=r"saved for a CLIPModel model \(family 'clip'\), not for a SiglipModel"):
        compat.check_base_model(MuDPTConfig.from_pretrained(repo_id), siglip)
    # peft's own loader and load_adapter refuse it too, before any weight is created
    for subfolder in (None, "helper"):
        with pytest.raises(ValueError, match=r"saved for a CLIPModel model \(family 'clip'\), not for a SiglipModel"):
            PeftModel.from_pretrained(siglip, repo_id, subfolder=subfolder)
        state.check()
    deeper = make_clip(eos_token_id=TOKENIZER_EOS_ID, text_layers=6)
    state = Untouched(deeper)
    with pytest.raises(ValueError, match=r"saved for a base model with text_layers 4 \(this model: 6\)"):
        PromptClassifier.from_pretrained(deeper, repo_id, subfolder="helper", tokenizer=tokenizer)
    state.check()
    with pytest.raises(ValueError, match=r"saved for a base model with text_layers 4 \(this model: 6\)"):
        PeftModel.from_pretrained(deeper, repo_id)
    state.check()
    loaded = PeftModel.from_pretrained(base(), repo_id)
    siglip_model = get_peft_model(tiny_siglip(), MuDPTConfig(depth=2))
    with pytest.raises(ValueError, match=r"family 'clip'\), not for a SiglipModel"):  # load_adapter onto SigLIP
        siglip_model.load_adapter(repo_id, adapter_name="clip")
    assert list(siglip_model.peft_config) == ["default"]
    loaded.load_adapter(repo_id, adapter_name="second", subfolder="helper")  # the right base passes
    compat.check_base_model(MuDPTConfig.from_pretrained(repo_id, subfolder="helper"), base())
    # a config of another base model can start a fresh adapter once its record is dropped
    config = MuDPTConfig.from_pretrained(repo_id)
    with pytest.raises(ValueError, match=r"set `config.auto_mapping = None` first"):
        get_peft_model(tiny_siglip(), config)
    config.auto_mapping = None
    assert has_wrappers(get_peft_model(tiny_siglip(), config))


@hub_test
def test_non_mudpt_and_invalid_configs_are_refused(api, base_repo, repo_id, tmp_path):
    from transformers import AutoTokenizer

    lora = get_peft_model(base(), LoraConfig(target_modules=["q_proj"], r=2))
    lora.push_to_hub(repo_id)
    where = rf"'adapter_config.json' in the Hub repository '{repo_id}' \(commit [0-9a-f]{{12}}\)"
    with pytest.raises(ValueError, match=f"{where} is a LORA adapter"):
        MuDPTConfig.from_pretrained(repo_id)
    fresh = base()
    state = Untouched(fresh)
    with pytest.raises(ValueError, match="is a LORA adapter, not a MuDPT"):
        PromptClassifier.from_pretrained(fresh, repo_id, tokenizer=AutoTokenizer.from_pretrained(base_repo))
    state.check()
    with pytest.raises(ValueError, match="mudpt_peft.hub saves MuDPT adapters"):
        hub.save_pretrained(lora, tmp_path / "lora")

    for name, content, match in (
        ("no-type", "{}", "has no 'peft_type'"),
        ("truncated", '{"peft_type": "MUDPT", "dep', r"is not valid JSON .*truncated or corrupted"),
        ("invalid", '{"peft_type": "MUDPT", "depth": 0}', r"is not a valid MuDPT config: `depth` must be"),
    ):
        folder = tmp_path / name
        adapter(MuDPTConfig(depth=2), seed=1).save_pretrained(folder)
        (folder / "adapter_config.json").write_text(content)
        with pytest.raises(ValueError, match=rf"'adapter_config.json' in the local folder '{folder}' {match}"):
            MuDPTConfig.from_pretrained(folder)


@hub_test
def test_unknown_repositories_revisions_and_ids_are_refused(api, base_repo, repo_id):
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    adapter(MuDPTConfig(depth=2), seed=1).push_to_hub(repo_id)
    missing = "test-user/no-such-adapter"
    fresh = base()
    state = Untouched(fresh)
    # peft reads the peft type before mudpt_peft is involved; its error names the file and the repository
    with pytest.raises(ValueError, match=f"Can't find 'adapter_config.json' at '{missing}'") as caught:
        PeftModel.from_pretrained(fresh, missing)
    assert isinstance(caught.value.__context__, RepositoryNotFoundError)
    with pytest.raises(ValueError, match=f"Can't find 'adapter_config.json' at '{repo_id}'") as caught:
        PeftModel.from_pretrained(fresh, repo_id, revision="no-such-branch")
    assert isinstance(caught.value.__context__, RevisionNotFoundError)
    state.check()
    refused(missing, "Can't find 'adapter_config.json'")

    with pytest.raises(ValueError, match=f"The Hub repository '{missing}' was not found at http://127.0.0.1"):
        MuDPTConfig.from_pretrained(missing)
    with pytest.raises(
        ValueError, match=f"The revision 'no-such-branch' was not found in the Hub repository '{repo_id}'"
    ):
        MuDPTConfig.from_pretrained(repo_id, revision="no-such-branch")
    with pytest.raises(ValueError, match="neither an existing local folder nor a valid Hub repository id"):
        MuDPTConfig.from_pretrained("not/a/valid/id")


class SimulatedCrash(Exception):
    """Stands for the process dying at that point."""


def crash(*args, **kwargs):
    raise SimulatedCrash


@hub_test
def test_interrupted_saves_never_load_as_a_wrong_adapter(base_repo, inputs, tmp_path, monkeypatch):
    # A and B have tensors of the same shapes (they differ in the Injection Model's head count), different weights
    a = adapter(MuDPTConfig(depth=2, injection_heads=2), seed=1)
    b = adapter(MuDPTConfig(depth=2, injection_heads=4), seed=2)
    expected_a, expected_b = logits(a, inputs), logits(b, inputs)

    # without a fingerprint (A saved by a tool that records none): a save of B over A that dies between the weights
    # and the config loads as a wrong adapter
    unprotected = tmp_path / "unprotected"
    a.save_pretrained(unprotected)
    strip_fingerprint(unprotected)
    with monkeypatch.context() as patch:
        patch.setattr(PeftConfig, "save_pretrained", crash)
        with pytest.raises(SimulatedCrash):
            b.save_pretrained(unprotected)
    wrong = logits(PeftModel.from_pretrained(base(), unprotected), inputs)  # loads without error...
    assert not torch.equal(wrong, expected_a) and not torch.equal(wrong, expected_b)  # ...as neither A nor B

    # A saved with plain peft (hooked by `import mudpt_peft`): the same interrupted plain save is detected
    plain = tmp_path / "plain"
    a.save_pretrained(plain)
    with monkeypatch.context() as patch:
        patch.setattr(PeftConfig, "save_pretrained", crash)
        with pytest.raises(SimulatedCrash):
            b.save_pretrained(plain)
    refused(plain, "does not belong to its adapter_config.json")

    # A saved with the helper: detected as well (A's config fingerprints A's weights)
    protected = tmp_path / "protected"
    hub.save_pretrained(a, protected)
    with monkeypatch.context() as patch:
        patch.setattr(PeftConfig, "save_pretrained", crash)
        with pytest.raises(SimulatedCrash):
            b.save_pretrained(protected)
    refused(protected, "does not belong to its adapter_config.json")

    # the helper dying while it writes its temporary folder leaves the target as it was
    hub.save_pretrained(a, protected)
    with monkeypatch.context() as patch:
        patch.setattr(PeftConfig, "save_pretrained", crash)
        with pytest.raises(SimulatedCrash):
            hub.save_pretrained(b, protected)
    assert torch.equal(logits(PeftModel.from_pretrained(base(), protected), inputs), expected_a)
    assert not [p for p in tmp_path.iterdir() if "mudpt-save" in p.name]  # no temporary folder left behind

    # the helper dying while it moves files into place, right after the weights: the folder has no config at all
    moved = []

    def replace_then_crash(source, destination):
        moved.append(Path(destination).name)
        os.rename(source, destination)
        if Path(destination).name == "adapter_model.safetensors":
            raise SimulatedCrash

    with monkeypatch.context() as patch:
        patch.setattr(hub.os, "replace", replace_then_crash)
        with pytest.raises(OSError, match="The complete new adapter is staged in '.*mudpt-save-") as caught:
            hub.save_pretrained(b, protected)
    assert isinstance(caught.value.__cause__, SimulatedCrash)
    assert moved == [".mudpt-staged.json", "adapter_model.safetensors"]  # the staging marker, then the weights
    assert not (protected / "adapter_config.json").exists()
    refused(protected, "Can't find 'adapter_config.json'")  # peft reads the config before any MuDPT code runs
    MuDPTConfig.from_pretrained(protected)  # a MuDPT load finishes the move from the staged copy
    assert torch.equal(logits(PeftModel.from_pretrained(base(), protected), inputs), expected_b)
    assert not [p for p in tmp_path.iterdir() if "mudpt-save" in p.name]

    # a completed save of B
    hub.save_pretrained(b, protected)
    assert torch.equal(logits(PeftModel.from_pretrained(base(), protected), inputs), expected_b)
    assert sorted(p.name for p in protected.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


@hub_test
def test_a_push_landing_while_loading_never_loads_a_mixed_adapter(api, base_repo, repo_id, inputs, monkeypatch):
    """A push of adapter B lands after the loader read adapter A's config and before it downloads the weights (made
    deterministic by pushing from inside peft's weights download). `PeftModel.from_pretrained` refuses the mix;
    `PromptClassifier.from_pretrained` pins the commit of the first file it reads and loads exactly A."""
    import peft.utils.save_and_load as peft_save_and_load
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_repo)
    model_a, model_b = adapter(MuDPTConfig(depth=2), seed=1), adapter(MuDPTConfig(depth=2), seed=2)
    classifier_a = PromptClassifier(model_a, tokenizer, CLASSES).eval()
    classifier_a.push_to_hub(repo_id)
    real_download = peft_save_and_load.hf_hub_download
    pushed = []

    def push_b_then_download(*args, **kwargs):
        if not pushed:
            pushed.append(PromptClassifier(model_b, tokenizer, CLASSES).push_to_hub(repo_id).oid)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(peft_save_and_load, "hf_hub_download", push_b_then_download)
    fresh = base()
    state = Untouched(fresh)
    with pytest.raises(ValueError, match=rf"'adapter_model.safetensors' in the Hub repository '{repo_id}' \(commit "
                       rf"[0-9a-f]{{12}}\) does not belong to its adapter_config.json"):  # fmt: skip
        PeftModel.from_pretrained(fresh, repo_id)
    state.check()
    assert pushed

    classifier_a.push_to_hub(repo_id)  # main is A again; B will be pushed during the next load
    pushed.clear()
    restored = PromptClassifier.from_pretrained(base(), repo_id, tokenizer=tokenizer)
    assert pushed  # B is on main now, yet every file came from A's commit
    assert torch.equal(logits(restored.model, inputs), logits(model_a, inputs))
    latest = PromptClassifier.from_pretrained(base(), repo_id, tokenizer=tokenizer)
    assert torch.equal(logits(latest.model, inputs), logits(model_b, inputs))


@hub_test
def test_server_speaks_the_hub_protocol(api, repo_id, tmp_path):
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = api.create_repo(repo_id)
    assert url.repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as caught:
        api.create_repo(repo_id)
    assert caught.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "sub" / "b.safetensors").write_bytes(b"\0" * 100)
    commit = api.upload_folder(repo_id=repo_id, folder_path=tmp_path, commit_message="files")
    info = api.repo_info(repo_id)
    assert info.sha == commit.oid and {s.rfilename for s in info.siblings} == {
        ".gitattributes",
        "a.txt",
        "sub/b.safetensors",
    }
    assert [e.path for e in api.list_repo_tree(repo_id)] == [".gitattributes", "a.txt", "sub"]
    snapshot = Path(snapshot_download(repo_id))
    assert (snapshot / "a.txt").read_text() == "a" and (snapshot / "sub" / "b.safetensors").stat().st_size == 100
    api.delete_file("a.txt", repo_id)
    assert api.list_repo_files(repo_id) == [".gitattributes", "sub/b.safetensors"]
    assert Path(hf_hub_download(repo_id, "a.txt", revision=commit.oid)).read_text() == "a"

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/nothing-here", "a.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, "a.txt", revision="nope")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "a.txt")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(path_or_fileobj=b"---\ntags: [unclosed\n---\ntext\n", path_in_repo="README.md", repo_id=repo_id)
    assert api.whoami()["name"] == "test-user"
    api.delete_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo_id)
