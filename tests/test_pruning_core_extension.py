"""The criterion and structure tables of pruning_core: one class, and one test, per entry."""
import pytest
import torch
from torch import nn

import pruning_core as pc
from pruning_core import criteria, structures
from pruning_core.compaction import FilterUnit


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def with_gradients(model, x):
    pc.accumulate_gradients(model, [(x, torch.arange(x.shape[0]) % 4)])
    return model


# --- the tables -------------------------------------------------------------------------------

def test_the_tables_keep_the_public_names_in_order():
    assert pc.CRITERIA == ("magnitude", "gradient", "magnitude_gradient", "random") == tuple(criteria.REGISTRY)
    assert pc.STRUCTURES == ("unstructured", "filters", "n:m") == tuple(structures.REGISTRY)
    assert all(isinstance(c, criteria.Criterion) and c.name == n for n, c in criteria.REGISTRY.items())
    assert all(issubclass(s, structures.Structure) and s.kind == k for k, s in structures.REGISTRY.items())


@pytest.mark.parametrize("name", pc.CRITERIA)
def test_needs_gradients_says_which_criteria_prune_refuses_without_gradients(name):
    model = cnn()
    if pc.needs_gradients(name):
        with pytest.raises(ValueError, match="needs gradients"):
            pc.prune(model, 0.5, criterion=name)
    else:
        pc.prune(model, 0.5, criterion=name)
    assert pc.needs_gradients(name) == (name in ("gradient", "magnitude_gradient"))


def test_needs_gradients_refuses_an_unknown_criterion():
    with pytest.raises(ValueError, match="criterion must be one of magnitude, gradient, magnitude_gradient, random"):
        pc.needs_gradients("taylor")


# --- one test per criterion -------------------------------------------------------------------

def _weight_and_filter_scores(name, norm=2):
    x = torch.randn(4, 3, 6, 6)
    model = with_gradients(cnn(), x)
    unit = pc.prunable_weights(model)[1]
    units, _ = pc.filter_units(model, pc.units_in_scope(model, "filters"), x)
    filters = [u for u in units if u.name == "3"][0]
    crit = criteria.REGISTRY[name]
    return model[3].weight.detach(), model[3].weight.grad, crit.weight_scores(unit), crit.filter_scores(filters, norm)


def test_magnitude_scores_are_abs_weights_and_filter_norms():
    w, _, scores, filters = _weight_and_filter_scores("magnitude")
    assert torch.equal(scores, w.abs())
    assert torch.allclose(filters, w.reshape(8, -1).norm(dim=1))


def test_gradient_scores_are_abs_gradients_and_filter_norms():
    _, g, scores, filters = _weight_and_filter_scores("gradient")
    assert torch.equal(scores, g.abs())
    assert torch.allclose(filters, g.reshape(8, -1).norm(dim=1))


def test_magnitude_gradient_scores_are_abs_products_and_filter_norms():
    w, g, scores, filters = _weight_and_filter_scores("magnitude_gradient")
    assert torch.equal(scores, (w * g).abs())
    assert torch.allclose(filters, (w * g).reshape(8, -1).norm(dim=1))


def test_random_scores_are_torch_rand_draws():
    torch.manual_seed(3)
    expected = torch.rand(8, 8, 3, 3), torch.rand(8)
    model = cnn()
    unit = pc.prunable_weights(model)[1]
    filters = FilterUnit("3", unit, [(model[3], torch.arange(8))])
    torch.manual_seed(3)
    crit = criteria.REGISTRY["random"]
    assert torch.equal(crit.weight_scores(unit), expected[0])
    assert torch.equal(crit.filter_scores(filters, 1), expected[1])


def test_a_new_criterion_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(criteria, "REGISTRY", dict(criteria.REGISTRY))

    @criteria.register
    class Largest(criteria.SignedCriterion):
        """Prunes the largest weights first (a test criterion)."""
        name = "largest"

        def signed(self, unit, weight):
            return 1.0 / weight

    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, -3.0, 2.0, 1.0]]))
    pc.prune(model, 0.5, criterion="largest")
    assert model.weight_mask.flatten().tolist() == [False, False, True, True]
    assert not pc.needs_gradients("largest")


# --- one test per structure -------------------------------------------------------------------

def test_unstructured_units_are_weights_masked_in_their_shape():
    model = cnn()
    shape = structures.get_structure("unstructured")
    weights = structures.weights_in_scope(model, shape, None, None)
    assert [w.name for w in weights] == ["0", "3", "8"]
    assert shape.units(model, weights, None) == weights and shape.keep(weights[2]).all()
    keep = torch.ones(32, dtype=torch.bool)
    keep[:5] = False
    assert torch.equal(shape.install(weights[2], keep), keep.reshape(4, 8))
    assert int((model[8].weight == 0).sum()) == 5 and shape.max_sparsity is None


def test_filters_units_are_filter_units_masked_per_channel():
    model, x = cnn(), torch.randn(2, 3, 6, 6)
    shape = structures.get_structure("filters")
    with pytest.raises(ValueError, match="needs example_inputs"):
        shape.check(0.5, None)
    weights = structures.weights_in_scope(model, shape, None, None)
    assert [w.name for w in weights] == ["0", "3"]  # no Linear
    units = shape.units(model, weights, x)
    assert [u.name for u in units] == ["0", "3"] and shape.keep(units[0]).tolist() == [True] * 8
    unit = units[0]
    keep = torch.tensor([False, True] * 4)
    mask = shape.install(unit, keep)
    assert mask.shape == model[0].weight.shape and torch.equal(shape.keep(unit), keep)
    assert torch.all(model[1].weight[~keep] == 0) and torch.all(model[1].bias[~keep] == 0)


def test_n_m_forbids_scores_beyond_m_minus_n_per_group():
    shape = structures.get_structure(" 1:4 ")
    assert (shape.kind, shape.args, shape.max_sparsity) == ("n:m", (1, 4), 0.75)
    with pytest.raises(ValueError, match=r"structure ' 1:4 ' keeps 1 of every 4 weights, so sparsity is at most 0.75"):
        shape.check(0.8, None)
    layer = nn.Linear(8, 1)
    unit = pc.prunable_weights(layer)[0]
    score = torch.tensor([[5.0, 1.0, 3.0, 2.0, 0.5, 0.25, 0.75, 1.5]])
    out = shape.constrain(unit, score, torch.ones_like(score, dtype=torch.bool))
    assert out.tolist() == [[torch.inf, 1.0, 3.0, 2.0, 0.5, 0.25, 0.75, torch.inf]]
    with pytest.raises(ValueError, match="input dimension 8, not a multiple of 3"):
        structures.get_structure("1:3").weights_in_scope([unit])


def test_a_new_structure_is_one_registered_class(monkeypatch):
    monkeypatch.setattr(structures, "REGISTRY", dict(structures.REGISTRY))

    @structures.register
    class Rows(structures.Structure):
        """Whole output rows of Linear layers (a test structure)."""
        kind = "rows"

        def weights_in_scope(self, weights):
            return [w for w in weights if isinstance(w.module, nn.Linear)]

        def keep(self, unit):
            return structures.weight_keep(unit).any(dim=1)

        def scores(self, unit, criterion, norm):
            return criterion.weight_scores(unit).sum(dim=1)

        def install(self, unit, keep):
            unit.set_mask(structures.weight_keep(unit) & keep[:, None])
            return unit.mask.clone()

    model = cnn()
    masks = pc.prune(model, 0.5, structure="rows")
    assert list(masks) == ["8"] and masks["8"].all(dim=1).sum() == 2 and masks["8"].any(dim=1).sum() == 2
    assert pc.parse_structure("rows") == ("rows", None) and pc.nm_sparsity("rows") is None


def test_a_structure_says_whether_it_needs_example_inputs():
    assert pc.needs_example_inputs("filters")
    assert not pc.needs_example_inputs("unstructured") and not pc.needs_example_inputs("2:4")
    with pytest.raises(ValueError, match="structure must be"):
        pc.needs_example_inputs("rows of 3")
