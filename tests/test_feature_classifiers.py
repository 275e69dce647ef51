"""Peer baselines on frozen features (`mudpt_peft.feature_classifiers`): the linear probe solves scikit-learn's
objective and CoOp's search of C, Tip-Adapter is its formula and its search, Tip-Adapter-F lowers its training loss,
and the feature helpers give the frozen model's features.

Opts into `one_thread`: every model and problem here is tiny."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model

from mudpt_peft import MuDPTConfig, PromptClassifier
from mudpt_peft.data import ImageClassificationCollator
from mudpt_peft.feature_classifiers import (
    COOP_C_GRID,
    TIP_ADAPTER_CONFIGS,
    LinearProbe,
    TipAdapter,
    TipAdapterF,
    coop_c_search,
    extract_image_features,
    tip_adapter_grid,
    zero_shot_text_weights,
)

from .helpers import COLOR_CLASSES, clip_for_tokenizer, color_dataset, image_processor, randomize_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def blobs(samples: int, classes: int, dim: int, seed: int = 0, spread: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Gaussian blobs around random class centres (overlapping with `spread` ~1): float64 features and labels."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator, dtype=F64)
    labels = torch.arange(samples) % classes
    features = centres[labels] + spread * torch.randn(samples, dim, generator=generator, dtype=F64)
    return features, labels


def sklearn_objective(features, labels, weight, bias, C, binary):
    """scikit-learn's L2 logistic-regression objective, written out: C * sum_i CE_i + 0.5 ||W||^2 (bias free)."""
    scores = features @ weight.t() + bias
    if binary:  # binary logistic: log(1 + exp(-s)) for y = 1, log(1 + exp(s)) for y = 0
        signs = 2.0 * labels.to(F64) - 1.0
        losses = torch.log1p(torch.exp(-signs * scores[:, 0]))
    else:
        log_p = scores - torch.logsumexp(scores, dim=1, keepdim=True)
        losses = -log_p[torch.arange(len(labels)), labels]
    return C * losses.sum() + 0.5 * (weight**2).sum()


def bisect(function, low: float, high: float, iterations: int = 200) -> float:
    """A root of an increasing `function` on [low, high]."""
    for _ in range(iterations):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if function(middle) < 0 else (low, middle)
    return 0.5 * (low + high)


# ----------------------------------------------------------------------------------------------------------------------
# linear probe: the optimum


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_the_fit_is_a_stationary_point_of_sklearns_objective(classes, C):
    features, labels = blobs(40, classes, 6, seed=classes)
    probe = LinearProbe(C=C, tol=1e-10).fit(features, labels)
    assert probe.converged_
    weight = probe.weight.clone().requires_grad_(True)
    bias = probe.bias.clone().requires_grad_(True)
    objective = sklearn_objective(features, labels, weight, bias, C, binary=classes == 2)
    grad_weight, grad_bias = torch.autograd.grad(objective, [weight, bias])
    # the objective is a sum over 40 samples times C: the gradient is ~0 on its scale
    scale = C * len(labels)
    assert float(grad_weight.abs().max()) < 1e-6 * scale
    assert float(grad_bias.abs().max()) < 1e-6 * scale
    assert probe.weight.shape == ((1 if classes == 2 else classes), 6)
    if classes > 2:
        assert abs(float(probe.bias.sum())) < 1e-12  # centred: the logits do not depend on a shift
    assert probe(features).shape == (40, classes)


def test_binary_fit_matches_the_closed_form_of_a_symmetric_problem():
    # x = +1 for class 1, -1 for class 0, n of each: b = 0 by symmetry and w solves w = 2 n C sigmoid(-w)
    n, C = 7, 0.3
    features = torch.tensor([[1.0]] * n + [[-1.0]] * n, dtype=F64)
    labels = torch.tensor([1] * n + [0] * n)
    probe = LinearProbe(C=C, tol=1e-12).fit(features, labels)
    expected = bisect(lambda w: w - 2 * n * C / (1 + math.exp(w)), 0.0, 100.0)
    torch.testing.assert_close(probe.weight, torch.tensor([[expected]], dtype=F64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(probe.bias, torch.zeros(1, dtype=F64), rtol=0, atol=1e-9)


def test_multinomial_fit_matches_the_closed_form_of_a_symmetric_problem():
    # class k at the basis vector e_k, n samples each: W = a (I - J / K), b = 0, with
    # a = C n K e^-a / (1 + (K - 1) e^-a) (the stationary point of C n K log(1 + (K-1) e^-a) + (K-1) a^2 / 2)
    K, n, C = 4, 3, 2.0
    features = torch.eye(K, dtype=F64).repeat(n, 1)
    labels = torch.arange(K).repeat(n)
    probe = LinearProbe(C=C, tol=1e-12).fit(features, labels)
    a = bisect(lambda a: a - C * n * K * math.exp(-a) / (1 + (K - 1) * math.exp(-a)), 0.0, 100.0)
    expected = a * (torch.eye(K, dtype=F64) - torch.full((K, K), 1.0 / K, dtype=F64))
    torch.testing.assert_close(probe.weight, expected, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(probe.bias, torch.zeros(K, dtype=F64), rtol=0, atol=1e-8)


def test_float32_features_on_the_fit_are_fitted_in_float64():
    features, labels = blobs(30, 3, 5)
    probe64 = LinearProbe(C=0.5, tol=1e-10).fit(features, labels)
    probe32 = LinearProbe(C=0.5, tol=1e-10).fit(features.float(), labels)
    assert probe32.weight.dtype == F64
    torch.testing.assert_close(probe32.weight, probe64.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probe32.predict(features.float()), probe64.predict(features))


def test_without_intercept_the_bias_stays_zero():
    features, labels = blobs(30, 3, 5)
    probe = LinearProbe(C=1.0, fit_intercept=False, tol=1e-10).fit(features, labels)
    assert float(probe.bias.abs().max()) == 0.0
    weight = probe.weight.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(sklearn_objective(features, labels, weight, probe.bias, 1.0, False), [weight])
    assert float(grad.abs().max()) < 1e-7 * 30


@pytest.mark.parametrize("classes", [2, 4])
def test_matches_scikit_learn_when_it_is_installed(classes):
    linear_model = pytest.importorskip("sklearn.linear_model")
    features, labels = blobs(48, classes, 7, seed=3)
    for C in (0.05, 1.0, 20.0):
        reference = linear_model.LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(features.numpy(), labels)
        probe = LinearProbe(C=C, tol=1e-10).fit(features, labels)
        coef, intercept = torch.from_numpy(reference.coef_), torch.from_numpy(reference.intercept_)
        torch.testing.assert_close(probe.weight, coef, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            probe.bias, intercept - (intercept.mean() if classes > 2 else 0), rtol=1e-4, atol=1e-5
        )
        assert probe.predict(features).tolist() == reference.predict(features.numpy()).tolist()


# ----------------------------------------------------------------------------------------------------------------------
# linear probe: CoOp's search of C


def test_coop_search_follows_the_official_bisection_on_a_constructed_score():
    def accuracy(c: float) -> float:  # peaks at C = 10 ** 2.3
        return -abs(math.log10(c) - 2.3)

    chosen, history = coop_c_search(accuracy, steps=3)
    # grid peak 1e2 -> bracket [1e1, 1e3]; step 0: 1e1 < 1e3 -> 1e3, [1e2, 1e3]; step 1: 1e2 >= 1e3 -> 1e2,
    # [1e2, 10 ** 2.5]; step 2: 1e2 < 10 ** 2.5 -> 10 ** 2.5
    assert [c for c, _ in history[:7]] == list(COOP_C_GRID)
    expected = [10.0, 1e3, 100.0, 1e3, 100.0, 10**2.5]
    assert [c for c, _ in history[7:]] == pytest.approx(expected, rel=1e-12)
    assert chosen == pytest.approx(10**2.5, rel=1e-12)
    # eight steps close in on the peak
    chosen, history = coop_c_search(accuracy)
    assert len(history) == 7 + 2 * 8
    assert abs(math.log10(chosen) - 2.3) < 0.05


def test_coop_search_keeps_the_first_peak_and_breaks_ties_to_the_left():
    chosen, _ = coop_c_search(lambda c: 0.5, steps=4)
    # peak 1e6 (first of the grid); every tie picks the left end, 1e5, and shrinks the right end only
    assert chosen == pytest.approx(1e5)
    assert coop_c_search(lambda c: 0.5, steps=0)[0] == 1e6
    assert coop_c_search(lambda c: float(c == 1e-2), steps=0)[0] == 1e-2


def test_probe_search_picks_the_C_of_the_search_over_fitted_probes():
    features, labels = blobs(60, 3, 4, seed=5, spread=2.0)
    train, val = slice(0, 30), slice(30, 60)
    result = LinearProbe.search(features[train], labels[train], features[val], labels[val], steps=3)

    def accuracy(c: float) -> float:
        probe = LinearProbe(C=c).fit(features[train], labels[train])
        return float((probe.predict(features[val]) == labels[val]).double().mean())

    chosen, history = coop_c_search(accuracy, steps=3)
    assert result.C == chosen and result.history == history
    assert result.probe.C == chosen
    assert result.probe.score(features[val], labels[val]) == pytest.approx(accuracy(chosen))


def test_probe_search_prefers_strong_regularisation_when_the_validation_split_wants_it():
    # training labels of one sample per class are "flipped" outliers far away: a weak penalty fits them, a strong one
    # (small C) keeps the class means, which the validation split follows
    features, labels = blobs(90, 3, 3, seed=2, spread=0.3)
    train_features, train_labels = features[:30].clone(), labels[:30].clone()
    train_features[:3] = -8 * train_features[:3]
    result = LinearProbe.search(train_features, train_labels, features[30:], labels[30:], steps=2)
    weak = LinearProbe(C=1e6).fit(train_features, train_labels).score(features[30:], labels[30:])
    assert result.probe.score(features[30:], labels[30:]) >= weak


# ----------------------------------------------------------------------------------------------------------------------
# linear probe: errors


def test_linear_probe_errors_say_what_to_do():
    features, labels = blobs(12, 3, 4)
    with pytest.raises(ValueError, match="C"):
        LinearProbe(C=0)
    with pytest.raises(ValueError, match="max_iter"):
        LinearProbe(max_iter=0)
    with pytest.raises(ValueError, match="2-D floating-point"):
        LinearProbe().fit(features[0], labels)
    with pytest.raises(ValueError, match="one label per sample"):
        LinearProbe().fit(features, labels[:5])
    with pytest.raises(ValueError, match="integer tensor"):
        LinearProbe().fit(features, labels.double())
    with pytest.raises(ValueError, match="without samples of \\[3\\]"):
        LinearProbe().fit(features, labels, num_classes=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        LinearProbe().fit(features, torch.zeros(12, dtype=torch.long))
    with pytest.raises(ValueError, match="non-finite"):
        LinearProbe().fit(torch.full((12, 4), float("nan")), labels)
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().predict(features)
    probe = LinearProbe().fit(features, labels)
    with pytest.raises(ValueError, match="size 5.*size 4"):
        probe.predict(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="grid"):
        coop_c_search(lambda c: 0.0, grid=[])
    with pytest.raises(ValueError, match="grid"):
        coop_c_search(lambda c: 0.0, grid=[1.0, -1.0])


# ----------------------------------------------------------------------------------------------------------------------
# Tip-Adapter


def unit(rows: int, dim: int, seed: int, dtype=F64) -> torch.Tensor:
    return F.normalize(torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1)


@pytest.fixture
def tip_problem():
    """Text weights of 4 classes, 3 augmented views of 8 training images (unnormalised), normalised queries."""
    text = unit(4, 6, 0)
    views = 3 * torch.randn(3, 8, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    train_labels = torch.arange(8) % 4
    queries = unit(10, 6, 2)
    return text, views, train_labels, queries


def test_training_free_tip_adapter_is_its_formula(tip_problem):
    text, views, train_labels, queries = tip_problem
    tip = TipAdapter(text, alpha=1.7, beta=5.5).fit(views, train_labels)
    keys = views.mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)  # averaged over views, then normalised
    values = torch.zeros(8, 4, dtype=F64)
    values[torch.arange(8), train_labels] = 1.0
    expected = 100 * queries @ text.t() + 1.7 * torch.exp(-5.5 * (1 - queries @ keys.t())) @ values
    torch.testing.assert_close(tip.cache_keys.detach(), keys, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(tip(queries), expected, rtol=1e-13, atol=1e-13)
    assert tip.predict(queries).tolist() == expected.argmax(-1).tolist()
    # a 2-D tensor is one view
    one_view = TipAdapter(text, alpha=1.7, beta=5.5).fit(views[0], train_labels)
    torch.testing.assert_close(one_view.cache_keys.detach(), F.normalize(views[0], dim=-1))


def test_alpha_zero_is_zero_shot_clip(tip_problem):
    text, views, train_labels, queries = tip_problem
    tip = TipAdapter(text, alpha=0.0, beta=3.0).fit(views, train_labels)
    torch.testing.assert_close(tip(queries), 100 * queries @ text.t(), rtol=0, atol=0)


def test_search_picks_the_first_best_setting_on_the_validation_split(tip_problem):
    text, views, train_labels, _ = tip_problem
    val = unit(40, 6, 9)
    val_labels = torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(3))
    tip = TipAdapter(text).fit(views, train_labels, val, val_labels, search_scale=(9.0, 4.0), search_step=(15, 7))
    betas = [0.1 + i * (9.0 - 0.1) / 15 for i in range(15)]
    alphas = [0.1 + i * (4.0 - 0.1) / 7 for i in range(7)]
    assert tip_adapter_grid((9.0, 4.0), (15, 7)) == (betas, alphas)
    keys = F.normalize(views.mean(0), dim=-1)
    values = F.one_hot(train_labels, 4).to(F64)
    best, best_setting = -1.0, None
    for beta in betas:  # beta outer, alpha inner; the first best kept
        for alpha in alphas:
            logits = 100 * val @ text.t() + alpha * torch.exp(-beta * (1 - val @ keys.t())) @ values
            accuracy = float((logits.argmax(-1) == val_labels).double().mean())
            if accuracy > best:
                best, best_setting = accuracy, (beta, alpha)
    assert (tip.beta, tip.alpha) == best_setting
    assert max(accuracy for _, _, accuracy in tip.search_history) == best
    assert len(tip.search_history) == 15 * 7
    assert tip.score(val, val_labels) == pytest.approx(best)


def test_the_official_configs_are_recorded():
    assert TIP_ADAPTER_CONFIGS["imagenet"] == dict(
        search_scale=(7.0, 3.0), search_step=(200, 20), init_beta=1.0, init_alpha=1.17, epochs=20
    )
    assert TIP_ADAPTER_CONFIGS["eurosat"]["epochs"] == 100
    betas, alphas = tip_adapter_grid(**{k: TIP_ADAPTER_CONFIGS["dtd"][k] for k in ("search_scale", "search_step")})
    assert len(betas) == 200 and len(alphas) == 20 and betas[0] == alphas[0] == 0.1 and betas[-1] < 13


def test_tip_adapter_f_lowers_its_training_loss_and_trains_only_the_keys(tip_problem):
    text, views, train_labels, _ = tip_problem
    views = views[0]  # one view: every epoch trains on the same features
    train_queries = F.normalize(views, dim=-1)
    before = TipAdapter(text, alpha=1.0, beta=1.0).fit(views, train_labels)
    loss_before = float(F.cross_entropy(before(train_queries), train_labels))
    tip = TipAdapterF(text, alpha=1.0, beta=1.0).fit(views, train_labels, epochs=30, lr=0.01, batch_size=4)
    assert tip.training_loss(train_queries, train_labels) < loss_before - 0.1
    assert len(tip.train_losses) == 30
    assert all(later < earlier for earlier, later in zip(tip.train_losses[::5], tip.train_losses[5::5], strict=False))
    assert not torch.equal(tip.cache_keys, before.cache_keys)
    assert not tip.cache_keys.requires_grad
    torch.testing.assert_close(tip.text_weights, text, rtol=0, atol=0)
    torch.testing.assert_close(tip.cache_values, before.cache_values, rtol=0, atol=0)
    # seeded shuffling: the same fit twice gives the same keys
    again = TipAdapterF(text, alpha=1.0, beta=1.0).fit(views, train_labels, epochs=30, lr=0.01, batch_size=4)
    torch.testing.assert_close(again.cache_keys, tip.cache_keys, rtol=0, atol=0)
    # no epochs: Tip-Adapter
    untrained = TipAdapterF(text).fit(views, train_labels, epochs=0)
    torch.testing.assert_close(untrained.cache_keys, before.cache_keys, rtol=0, atol=0)


def test_tip_adapter_f_follows_adamw_with_a_cosine_schedule(tip_problem):
    # an independent loop: one view, one batch per epoch (no shuffling effect), the official optimiser and schedule
    text, views, train_labels, _ = tip_problem
    tip = TipAdapterF(text, alpha=2.0, beta=3.0).fit(views[:1], train_labels, epochs=5, batch_size=8)
    keys = torch.nn.Parameter(F.normalize(views[0], dim=-1).clone())
    values = F.one_hot(train_labels, 4).to(F64)
    queries = F.normalize(views[0], dim=-1)
    optimizer = torch.optim.AdamW([keys], lr=1e-3, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 5)
    for _ in range(5):
        logits = 100 * queries @ text.t() + 2.0 * torch.exp(-3.0 * (1 - queries @ keys.t())) @ values
        loss = F.cross_entropy(logits, train_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    torch.testing.assert_close(tip.cache_keys.detach(), keys.detach(), rtol=1e-12, atol=1e-12)


def test_tip_adapter_f_searches_alpha_and_beta_with_the_fine_tuned_keys(tip_problem):
    text, views, train_labels, _ = tip_problem
    val = unit(20, 6, 4)
    val_labels = torch.randint(0, 4, (20,), generator=torch.Generator().manual_seed(5))
    tip = TipAdapterF(text, alpha=1.0, beta=1.0)
    tip.fit(views, train_labels, val, val_labels, epochs=3, batch_size=4, search_scale=(5, 3), search_step=(6, 4))
    keys = tip.cache_keys.detach().clone()
    searched = (tip.beta, tip.alpha)
    assert searched == TipAdapter.search(tip, val, val_labels, (5, 3), (6, 4))
    torch.testing.assert_close(tip.cache_keys.detach(), keys, rtol=0, atol=0)  # the search trains nothing


def test_tip_adapter_f_keeps_the_epoch_best_on_validation(tip_problem):
    # validation does not change the training trajectory (seeded shuffling): without it the last epoch is kept
    text, views, train_labels, _ = tip_problem
    val = unit(30, 6, 6)
    val_labels = torch.randint(0, 4, (30,), generator=torch.Generator().manual_seed(7))
    settings = dict(epochs=12, lr=0.05, batch_size=4, search_step=(2, 2))
    kept = TipAdapterF(text, alpha=3.0, beta=2.0).fit(views[0], train_labels, val, val_labels, **settings)
    last = TipAdapterF(text, alpha=3.0, beta=2.0).fit(views[0], train_labels, **settings)
    values = F.one_hot(train_labels, 4).to(F64)

    def accuracy(keys: torch.Tensor) -> float:  # at the initial alpha and beta
        logits = 100 * val @ text.t() + 3.0 * torch.exp(-2.0 * (1 - val @ keys.t())) @ values
        return float((logits.argmax(-1) == val_labels).double().mean())

    assert accuracy(kept.cache_keys.detach()) >= accuracy(last.cache_keys.detach())
    assert not torch.equal(kept.cache_keys, last.cache_keys)  # here an earlier epoch is as good: the earlier is kept
    assert (last.alpha, last.beta) == (3.0, 2.0)  # no validation split: no search


def test_tip_adapter_errors_say_what_to_do(tip_problem):
    text, views, train_labels, queries = tip_problem
    with pytest.raises(ValueError, match="cache is empty"):
        TipAdapter(text)(queries)
    tip = TipAdapter(text).fit(views, train_labels)
    with pytest.raises(ValueError, match="L2-normalised"):
        tip(3 * queries)
    with pytest.raises(ValueError, match="size 5.*size 6"):
        tip(unit(2, 5, 0))
    with pytest.raises(ValueError, match="there are 4 classes"):
        TipAdapter(text).fit(views, torch.arange(8))
    with pytest.raises(ValueError, match="one label per sample"):
        TipAdapter(text).fit(views, train_labels[:3])
    with pytest.raises(ValueError, match="views, samples, dim"):
        TipAdapter(text).fit(views[None], train_labels)
    with pytest.raises(ValueError, match="same model"):
        TipAdapter(text).fit(torch.randn(8, 5, dtype=F64), train_labels)
    with pytest.raises(ValueError, match="both"):
        TipAdapter(text).fit(views, train_labels, val_features=queries)
    with pytest.raises(ValueError, match="alpha"):
        TipAdapter(text, alpha=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        TipAdapter(text[:1])
    with pytest.raises(ValueError, match="`text_weights` must be L2-normalised.*zero_shot_text_weights"):
        TipAdapter(2 * text)
    with pytest.raises(ValueError, match="beta, alpha"):
        tip_adapter_grid((7.0,), (200, 20))
    with pytest.raises(ValueError, match="epochs"):
        TipAdapterF(text).fit(views, train_labels, epochs=-1)


# ----------------------------------------------------------------------------------------------------------------------
# features of the tiny CLIP


def test_features_and_zero_shot_weights_give_the_classifiers_logits(tokenizer):
    model = clip_for_tokenizer()
    dataset = color_dataset(7)
    classifier = PromptClassifier(model, tokenizer, COLOR_CLASSES).eval()
    processor = image_processor()
    extracted = extract_image_features(model, dataset, processor, batch_size=3)
    assert extracted.features.shape == (7, 24) and extracted.labels.tolist() == [i % 6 for i in range(7)]
    torch.testing.assert_close(extracted.features.norm(dim=-1), torch.ones(7))
    weights = zero_shot_text_weights(classifier)
    assert weights.shape == (6, 24)
    scale = float(model.logit_scale.detach().exp())
    zero_shot = TipAdapter(weights, alpha=0.0, logit_scale=scale).fit(extracted.features, extracted.labels)
    pixel_values = ImageClassificationCollator(processor)([dataset[i] for i in range(7)])["pixel_values"]
    with torch.no_grad():
        expected = classifier(pixel_values=pixel_values).logits
    torch.testing.assert_close(zero_shot(extracted.features), expected, rtol=1e-5, atol=1e-5)
    raw = extract_image_features(model, dataset, processor, normalize=False)
    torch.testing.assert_close(F.normalize(raw.features, dim=-1), extracted.features)
    assert not raw.features.requires_grad and not model.training


def test_a_peft_model_gives_the_frozen_backbones_features(tokenizer):
    plain = clip_for_tokenizer()
    model = get_peft_model(clip_for_tokenizer(), MuDPTConfig(depth=2))
    randomize_adapter(model)
    dataset = color_dataset(4)
    processor = image_processor()
    frozen = extract_image_features(plain, dataset, processor)
    torch.testing.assert_close(extract_image_features(model, dataset, processor).features, frozen.features)
    adapted = extract_image_features(model, dataset, processor, disable_adapter=False).features
    assert not torch.allclose(adapted, frozen.features)
    weights = zero_shot_text_weights(PromptClassifier(plain, tokenizer, COLOR_CLASSES))
    classifier = PromptClassifier(model, tokenizer, COLOR_CLASSES)
    torch.testing.assert_close(zero_shot_text_weights(classifier), weights)
    assert not torch.allclose(zero_shot_text_weights(classifier, disable_adapter=False), weights)
    # the adapter is enabled again afterwards, and the classifier's cache holds the adapter's features
    with torch.no_grad():
        torch.testing.assert_close(classifier.eval().encode_classes(), zero_shot_text_weights(classifier, False))


def test_augmented_views_for_the_cache():
    model = clip_for_tokenizer()
    dataset = color_dataset(6)
    collator = ImageClassificationCollator(image_processor(), augment=True, scale=(0.5, 1.0))
    torch.manual_seed(0)
    views = torch.stack(
        [extract_image_features(model, dataset, collator=collator, normalize=False).features for _ in range(2)]
    )
    assert views.shape == (2, 6, 24) and not torch.equal(views[0], views[1])
    text = unit(6, 24, 0, dtype=torch.float32)
    tip = TipAdapter(text).fit(views, torch.arange(6))
    torch.testing.assert_close(tip.cache_keys.detach(), F.normalize(views.mean(0), dim=-1))


def test_feature_helpers_errors_say_what_to_do(tokenizer):
    model = clip_for_tokenizer()
    with pytest.raises(ValueError, match="image processor"):
        extract_image_features(model, color_dataset(2))
    with pytest.raises(ValueError, match="empty"):
        extract_image_features(model, [], image_processor())
    with pytest.raises(ValueError, match="batch_size"):
        extract_image_features(model, color_dataset(2), image_processor(), batch_size=0)
    with pytest.raises(ValueError, match="PromptClassifier"):
        zero_shot_text_weights(model)


# ----------------------------------------------------------------------------------------------------------------------
# files


@pytest.mark.parametrize("classes", [2, 3])
def test_linear_probe_save_load_round_trip(tmp_path, classes):
    features, labels = blobs(24, classes, 5)
    probe = LinearProbe(C=0.7, tol=1e-8, max_iter=500).fit(features, labels)
    probe.save(tmp_path / "probe.safetensors")
    loaded = LinearProbe.load(tmp_path / "probe.safetensors")
    assert (loaded.C, loaded.tol, loaded.max_iter, loaded.num_classes) == (0.7, 1e-8, 500, classes)
    assert (loaded.n_iter_, loaded.converged_) == (probe.n_iter_, probe.converged_)
    torch.testing.assert_close(loaded(features), probe(features), rtol=0, atol=0)
    assert [path.name for path in tmp_path.iterdir()] == ["probe.safetensors"]  # no temporary file left


def test_tip_adapters_save_load_round_trip(tmp_path, tip_problem):
    text, views, train_labels, queries = tip_problem
    tip = TipAdapter(text, alpha=1.5, beta=4.0, logit_scale=50.0).fit(views, train_labels)
    tip.save(tmp_path / "tip.safetensors")
    loaded = TipAdapter.load(tmp_path / "tip.safetensors")
    assert type(loaded) is TipAdapter and (loaded.alpha, loaded.beta, loaded.logit_scale) == (1.5, 4.0, 50.0)
    torch.testing.assert_close(loaded(queries), tip(queries), rtol=0, atol=0)
    tuned = TipAdapterF(text).fit(views, train_labels, epochs=2, batch_size=4)
    tuned.save(tmp_path / "tip_f.safetensors")
    for cls in (TipAdapter, TipAdapterF):
        loaded = cls.load(tmp_path / "tip_f.safetensors")
        assert type(loaded) is TipAdapterF and not loaded.cache_keys.requires_grad
        torch.testing.assert_close(loaded(queries), tuned(queries), rtol=0, atol=0)


def test_file_errors_say_what_to_do(tmp_path, tip_problem):
    text, views, train_labels, _ = tip_problem
    with pytest.raises(ValueError, match="not fitted"):
        LinearProbe().save(tmp_path / "probe.safetensors")
    with pytest.raises(ValueError, match="cache is empty"):
        TipAdapter(text).save(tmp_path / "tip.safetensors")
    with pytest.raises(ValueError, match="No file"):
        LinearProbe.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        TipAdapter.load(tmp_path / "junk.safetensors")
    TipAdapter(text).fit(views, train_labels).save(tmp_path / "tip.safetensors")
    with pytest.raises(ValueError, match="holds no LinearProbe"):
        LinearProbe.load(tmp_path / "tip.safetensors")
    with pytest.raises(ValueError, match="holds no TipAdapterF"):
        TipAdapterF.load(tmp_path / "tip.safetensors")
