"""Exact behaviour of pruning_core: which weights, how many, and that they stay pruned."""
import copy
import io
import os

import pytest
import torch
import torch.nn.utils.prune
from torch import nn

import pruning_core as pc
from sweeps.models import build_model


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(6, 3),
    )


def set_weights(model):
    """Distinct magnitudes 1..N across all prunable weights, random signs."""
    g = torch.Generator().manual_seed(1)
    start = 1
    with torch.no_grad():
        for _, m in pc.prunable_modules(model):
            n = m.weight.numel()
            vals = torch.arange(start, start + n, dtype=torch.float32)
            signs = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
            m.weight.copy_((vals * signs).view_as(m.weight))
            start += n
    return start - 1


def tiny_weights():
    model = tiny()
    set_weights(model)
    return model


def test_prunable_modules_skip_bias_and_norm():
    model = tiny()
    names = [n for n, _ in pc.prunable_modules(model)]
    assert names == ["0", "3", "7"]
    assert [n for n, _ in pc.prunable_modules(model, exclude=["0", "7"])] == ["3"]
    assert [n for n, _ in pc.prunable_modules(model, include=["[07]"])] == ["0", "7"]


def test_global_magnitude_prunes_exactly_the_smallest():
    model = tiny()
    n = set_weights(model)
    masks = pc.prune(model, 0.4)
    k = round(0.4 * n)
    for name, m in pc.prunable_modules(model):
        pruned = m.weight.abs() == 0
        assert torch.equal(~masks[name], pruned)
    allw = torch.cat([m.weight.detach().abs().flatten() for _, m in pc.prunable_modules(model)])
    assert int((allw == 0).sum()) == k
    orig = torch.arange(1, n + 1, dtype=torch.float32)
    assert torch.equal(allw == 0, orig <= k)
    assert pc.sparsity(model) == pytest.approx(k / n)
    # biases and batchnorm untouched
    assert torch.count_nonzero(model[1].weight) == 4


def test_layerwise_prunes_each_layer_exactly():
    model = tiny()
    set_weights(model)
    pc.prune(model, 0.5, scope="layerwise")
    orig = {n: m.weight.detach().abs().flatten().clone() for n, m in pc.prunable_modules(tiny_weights())}
    for name, m in pc.prunable_modules(model):
        w = m.weight.detach().abs().flatten()
        k = round(0.5 * w.numel())
        assert int((w == 0).sum()) == k
        # the pruned ones are exactly the k smallest of this layer
        assert torch.equal(w == 0, orig[name] <= torch.sort(orig[name]).values[k - 1])
    layer = pc.layer_sparsity(model)
    assert layer["0"] == pytest.approx(round(0.5 * 36) / 36)
    assert layer["3"] == pytest.approx(round(0.5 * 216) / 216)
    assert layer["7"] == pytest.approx(round(0.5 * 18) / 18)


def test_ties_are_broken_by_position_and_count_is_exact():
    model = nn.Linear(10, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    masks = pc.prune(model, 0.3)
    keep = masks[""].flatten()
    assert keep.tolist() == [False] * 3 + [True] * 7


def reference_keep(scores, keep, k):
    """The k lowest (already pruned first, ties by position) via a stable full sort."""
    ranked = torch.sort(scores.masked_fill(~keep, float("-inf")), stable=True).indices
    out = torch.ones_like(keep)
    out[ranked[:k]] = False
    return out


@pytest.mark.parametrize("kind", ["normal", "few_values", "constant", "strided_trap"])
def test_kth_smallest_is_exact_on_large_inputs(kind):
    from pruning_core.selection import SAMPLE_SIZE, SAMPLED_SELECTION_MIN, kth_smallest

    g = torch.Generator().manual_seed(3)
    n = 3 * SAMPLED_SELECTION_MIN + 17
    if kind == "normal":
        x = torch.randn(n, generator=g).abs()
    elif kind == "few_values":  # heavy ties everywhere
        x = torch.randint(0, 5, (n,), generator=g).float()
    elif kind == "constant":
        x = torch.full((n,), 0.25)
    else:  # the strided sample sees only huge values: its bracket must miss and fall back
        x = torch.rand(n, generator=g)
        x[:: n // SAMPLE_SIZE] += 100.0
    ordered = torch.sort(x).values
    for k in [1, 2, n // 100, n // 2, (9 * n) // 10, n - 1, n]:
        assert kth_smallest(x, k).item() == ordered[k - 1].item(), k


def test_global_prune_of_a_large_model_matches_a_full_sort():
    model = build_model("resnet20")  # 270k prunable weights: the sampled selection path
    modules = pc.prunable_modules(model)
    keep = torch.ones(sum(m.weight.numel() for _, m in modules), dtype=torch.bool)
    n = keep.numel()
    for target in (0.5, 0.9, 0.95):
        scores = torch.cat([m.weight.detach().abs().flatten() for _, m in modules])
        expected = reference_keep(scores, keep, round(target * n))
        masks = pc.prune(model, target)
        keep = torch.cat([masks[name].flatten() for name, _ in modules])
        assert torch.equal(keep, expected), target
        assert n - int(keep.sum()) == round(target * n)


def test_large_layer_with_heavy_ties_prunes_first_positions():
    model = nn.Linear(400, 300, bias=False)  # 120k weights, 5 distinct magnitudes
    with torch.no_grad():
        model.weight.copy_(torch.randint(0, 5, (300, 400), generator=torch.Generator().manual_seed(4)).float())
    keep = torch.ones(model.weight.numel(), dtype=torch.bool)
    for target in (0.37, 0.61):
        expected = reference_keep(model.weight.detach().abs().flatten(), keep, round(target * keep.numel()))
        keep = pc.prune(model, target)[""].flatten()
        assert torch.equal(keep, expected), target


def test_cumulative_and_monotone():
    model = tiny()
    n = set_weights(model)
    pc.prune(model, 0.3)
    first = {k: v.clone() for k, v in ((nm, m.weight_mask) for nm, m in pc.prunable_modules(model))}
    # make a pruned-position weight "large" would be impossible; instead change survivors' magnitudes
    with torch.no_grad():
        for _, m in pc.prunable_modules(model):
            m.weight.mul_(-1)
    pc.prune(model, 0.6)
    for name, m in pc.prunable_modules(model):
        assert not (m.weight_mask & ~first[name]).any(), "a pruned weight came back"
    assert pc.sparsity(model) == pytest.approx(round(0.6 * n) / n)
    with pytest.raises(ValueError, match=r"below the current sparsity .*allowed range is \[0\.6"):
        pc.prune(model, 0.5)
    pc.prune(model, 0.6)  # same target: a no-op, not an error
    assert pc.sparsity(model) == pytest.approx(round(0.6 * n) / n)


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), 1.5, "x"])
def test_bad_sparsity_is_value_error(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pc.prune(tiny(), bad)


def test_bad_choices_name_allowed_values():
    with pytest.raises(ValueError, match="criterion must be one of magnitude, gradient"):
        pc.prune(tiny(), 0.5, criterion="taylor")
    with pytest.raises(ValueError, match="scope must be one of global, layerwise"):
        pc.prune(tiny(), 0.5, scope="local")
    with pytest.raises(ValueError, match="structure must be unstructured, filters or N:M"):
        pc.prune(tiny(), 0.5, structure="channels")


def test_gradient_criteria_order():
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    with pytest.raises(ValueError, match="needs gradients.*backward"):
        pc.prune(model, 0.5, criterion="gradient")
    model.weight.grad = torch.tensor([[0.1, 1.0, -3.0, 0.5]])
    g = copy.deepcopy(model)
    g.weight.grad = model.weight.grad.clone()
    pc.prune(g, 0.5, criterion="gradient")  # |g| = .1, 1, 3, .5 -> prune idx 0, 3
    assert g.weight_mask.flatten().tolist() == [False, True, True, False]
    mg = copy.deepcopy(model)
    mg.weight.grad = model.weight.grad.clone()
    pc.prune(mg, 0.5, criterion="magnitude_gradient")  # |w g| = .4, 3, 6, .5 -> prune 0, 3
    assert mg.weight_mask.flatten().tolist() == [False, True, True, False]
    mg2 = copy.deepcopy(model)
    mg2.weight.grad = torch.tensor([[0.1, 0.01, 3.0, 5.0]])  # |w g| = .4, .03, 6, 5
    pc.prune(mg2, 0.25, criterion="magnitude_gradient")
    assert mg2.weight_mask.flatten().tolist() == [True, False, True, True]


@pytest.mark.parametrize("criterion,where", [("magnitude", "weight"), ("gradient", "grad")])
def test_nan_scores_are_a_value_error_naming_the_layer(criterion, where):
    model = tiny()
    for _, m in pc.prunable_modules(model):
        m.weight.grad = torch.ones_like(m.weight)
    with torch.no_grad():
        getattr(model[3].weight, "data" if where == "weight" else "grad")[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"scores of layer '3' contain NaN"):
        pc.prune(model, 0.5, criterion=criterion)
    assert pc.sparsity(model) == 0  # nothing pruned


def test_accumulate_gradients_sums_batches():
    model = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    assert pc.accumulate_gradients(model, [(x, y), (x, y)]) == 2
    one = nn.Linear(3, 2)
    one.load_state_dict(model.state_dict())
    nn.functional.cross_entropy(one(x), y).backward()
    assert torch.allclose(model.weight.grad, 2 * one.weight.grad)


def test_random_criterion_is_reproducible():
    a, b = tiny(), tiny()
    torch.manual_seed(5)
    ma = pc.prune(a, 0.5, criterion="random")
    torch.manual_seed(5)
    mb = pc.prune(b, 0.5, criterion="random")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    torch.manual_seed(6)
    c = tiny()
    mc = pc.prune(c, 0.5, criterion="random")
    assert not all(torch.equal(ma[k], mc[k]) for k in ma)


def test_filters_layerwise_and_global():
    model = tiny()
    with torch.no_grad():
        for i in range(4):
            model[0].weight[i].fill_([3.0, 1.0, 4.0, 2.0][i])
        for i in range(6):
            model[3].weight[i].fill_(0.1 * (6 - i))
    x = torch.zeros(1, 1, 6, 6)
    with pytest.raises(ValueError, match="structure 'filters' needs example_inputs"):
        pc.prune(copy.deepcopy(model), 0.5, structure="filters")
    lw = copy.deepcopy(model)
    pc.prune(lw, 0.5, structure="filters", scope="layerwise", example_inputs=x)
    assert lw[0].weight_mask.reshape(4, -1).all(1).tolist() == [True, False, True, False]
    # the pruned channel is exactly zero: its bias and batch-norm scale and shift go with the filter
    for param in ("weight", "bias"):
        assert pc.get_mask(lw[1], param).tolist() == [True, False, True, False]
        assert pc.get_mask(lw[0], "bias" if param == "bias" else "weight") is not None
    assert lw[0].bias[1] == 0 and lw[1].weight[1] == 0 and lw[1].bias[3] == 0
    _train(lw, torch.optim.Adam(lw.parameters(), lr=0.1))  # and stays zero, in training mode too
    assert lw[1].weight[1] == 0 and lw[1].bias[1] == 0 and lw[0].bias[3] == 0
    lw.train()
    assert torch.all(lw[:3](torch.randn(4, 1, 6, 6))[:, [1, 3]] == 0)
    assert lw[3].weight_mask.reshape(6, -1).all(1).tolist() == [True, True, True, False, False, False]
    assert not hasattr(lw[7], "weight_mask")  # Linear untouched
    # whole filters: a row is all kept or all pruned
    rows = lw[3].weight_mask.reshape(6, -1)
    assert torch.equal(rows.all(1), rows.any(1))
    gl = copy.deepcopy(model)
    pc.prune(gl, 0.5, structure="filters", scope="global", example_inputs=x)  # 10 filters -> 5 lowest L1 norms
    pruned = (~gl[0].weight_mask.reshape(4, -1).all(1)).sum() + (~gl[3].weight_mask.reshape(6, -1).all(1)).sum()
    assert int(pruned) == 5
    # conv[3] filters have L1 = 36 * 0.1*(6-i) <= 21.6; conv[0] filters have L1 9 * {3,1,4,2}
    # norms: conv0: 27, 9, 36, 18; conv3: 21.6, 18, 14.4, 10.8, 7.2, 3.6 -> lowest 5: 3.6 7.2 9 10.8 14.4
    assert gl[0].weight_mask.reshape(4, -1).all(1).tolist() == [True, False, True, True]
    assert gl[3].weight_mask.reshape(6, -1).all(1).tolist() == [True, True, False, False, False, False]


def test_threshold():
    model = tiny()
    n = set_weights(model)
    s = pc.prune_threshold(model, 10.5)
    assert s == pytest.approx(10 / n)
    allw = torch.cat([m.weight.detach().abs().flatten() for _, m in pc.prunable_modules(model)])
    assert int((allw == 0).sum()) == 10
    assert pc.prune_threshold(model, 3) == pytest.approx(10 / n)  # cumulative: nothing comes back


def make_opt(kind, model):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-2)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_zeros_survive_training(kind, when):
    torch.manual_seed(0)
    model = tiny()
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    opt = None
    if when == "before":
        opt = make_opt(kind, model)
        for _ in range(3):  # builds momentum / Adam moments for every weight
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        pc.prune(model, 0.7, optimizer=opt)
    else:
        pc.prune(model, 0.7)
        opt = pc.attach_optimizer(model, make_opt(kind, model))
    before = pc.sparsity(model)
    masks = {n: m.weight_mask.clone() for n, m in pc.prunable_modules(model)}
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert pc.sparsity(model) == before
    for n, m in pc.prunable_modules(model):
        assert torch.all(m.weight[~masks[n]] == 0)
        assert torch.all(m.weight[masks[n]] != 0)  # survivors still train


def _train(model, opt, steps=5):
    torch.manual_seed(3)
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 3, (16,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _restored(how, tmp_path):
    """A pruned ``tiny`` model, as the notebook gets it back: itself, a deep copy, an unpickled
    copy, or a fresh instance filled by load_pruned or pc.load_state_dict."""
    model = tiny()
    pc.prune(model, 0.7)
    if how == "itself":
        return model
    if how == "deepcopy":
        return copy.deepcopy(model)
    if how == "pickle":
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        return torch.load(buf, weights_only=False)
    fresh = tiny()
    if how == "load_pruned":
        pc.save_pruned(model, tmp_path / "m.pt")
        return pc.load_pruned(tmp_path / "m.pt", fresh)
    pc.load_state_dict(fresh, model.state_dict())
    return fresh


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("how", ["itself", "deepcopy", "pickle", "load_pruned", "load_state_dict"])
def test_no_optimizer_made_after_the_prune_revives_a_pruned_weight(kind, how, tmp_path):
    """The notebook pattern: prune, then ``opt = SGD(model.parameters())`` and train, no attach."""
    model = _restored(how, tmp_path)
    masks = {n: m.weight_mask.clone() for n, m in pc.prunable_modules(model)}
    _train(model, make_opt(kind, model))
    for n, m in pc.prunable_modules(model):
        assert torch.all(m.weight[~masks[n]] == 0), n
        assert torch.all(m.weight[masks[n]] != 0), n  # survivors still train
    assert pc.sparsity(model) == pytest.approx(0.7, abs=1 / 270)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_an_optimizer_made_before_the_prune_that_has_not_stepped_needs_nothing(kind):
    model = tiny()
    opt = make_opt(kind, model)
    pc.prune(model, 0.7)
    masks = {n: m.weight_mask.clone() for n, m in pc.prunable_modules(model)}
    _train(model, opt)
    for n, m in pc.prunable_modules(model):
        assert torch.all(m.weight[~masks[n]] == 0)


def test_state_from_before_the_prune_moves_pruned_weights_unless_attached():
    """What the README says: momentum gathered before the prune needs attach_optimizer."""
    moved = []
    for attach in (False, True):
        model = tiny()
        opt = make_opt("sgd", model)
        _train(model, opt, steps=3)
        pc.prune(model, 0.7)
        if attach:
            pc.attach_optimizer(model, opt)
        _train(model, opt, steps=2)
        moved.append(sum(int((m.weight[~m.weight_mask] != 0).sum()) for _, m in pc.prunable_modules(model)))
    assert moved[0] > 0 and moved[1] == 0


def test_gradients_of_pruned_weights_are_zero_and_copies_mask_their_own():
    model = tiny()
    pc.prune(model, 0.5)
    clone = copy.deepcopy(model)
    pc.prune(clone, 0.8)  # the copy goes further; the original's masks stay its own
    for m in (model, clone):
        m.zero_grad()
        nn.functional.cross_entropy(m(torch.randn(4, 1, 6, 6)), torch.tensor([0, 1, 2, 0])).backward()
        for _, layer in pc.prunable_modules(m):
            assert torch.all(layer.weight.grad[~layer.weight_mask] == 0)
            assert torch.count_nonzero(layer.weight.grad[layer.weight_mask]) > 0
    pc.make_permanent(model)  # no machinery left: gradients flow everywhere again
    model.zero_grad()
    nn.functional.cross_entropy(model(torch.randn(4, 1, 6, 6)), torch.tensor([0, 1, 2, 0])).backward()
    assert torch.count_nonzero(model[3].weight.grad) == model[3].weight.numel()


def test_deepcopy_keeps_masks_and_state_round_trip():
    model = build_model("resnet20")
    pc.prune(model, 0.8)
    clone = copy.deepcopy(model)
    assert pc.sparsity(clone) == pc.sparsity(model)
    assert torch.equal(clone.conv1.weight_mask, model.conv1.weight_mask)
    state = model.state_dict()
    assert "conv1.weight_mask" in state
    fresh = build_model("resnet20")
    pc.load_state_dict(fresh, state)
    assert torch.equal(fresh.conv1.weight_mask, model.conv1.weight_mask)
    assert pc.sparsity(fresh) == pc.sparsity(model)
    # the restored masks are live: training keeps them
    opt = pc.attach_optimizer(fresh, torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9))
    nn.functional.cross_entropy(fresh(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    opt.step()
    assert pc.sparsity(fresh) == pc.sparsity(model)


def test_torch_compile_training_sees_trained_weights():
    torch.manual_seed(0)
    model = tiny()
    pc.prune(model, 0.5)
    opt = pc.attach_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.5))
    compiled = torch.compile(model, backend="aot_eager")
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    start = model[3].weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
    assert not torch.equal(model[3].weight, start)  # the module's weight is the trained one
    assert pc.sparsity(model) == pytest.approx(0.5, abs=1 / 270)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf)
    assert torch.equal(saved["3.weight"], model[3].weight.detach())
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x))


def test_torch_nn_utils_prune_interop():
    model = tiny()
    set_weights(model)
    torch.nn.utils.prune.l1_unstructured(model[3], "weight", amount=100)
    assert pc.sparsity(model) == pytest.approx(100 / 270)
    assert pc.layer_sparsity(model)["3"] == pytest.approx(100 / 216)
    # torch's mask counts as already pruned, then pruning continues from there
    pc.prune(model, 0.5)
    assert pc.sparsity(model) == pytest.approx(135 / 270)
    assert "weight_orig" not in dict(model[3].named_parameters())
    assert pc.sparsity(copy.deepcopy(model)) == pytest.approx(135 / 270)  # torch's own pruning cannot deepcopy
    pc.make_permanent(model)
    assert set(model.state_dict()) == set(tiny().state_dict())
    assert pc.sparsity(model) == pytest.approx(135 / 270)
    # make_permanent also strips torch's own machinery
    other = tiny()
    torch.nn.utils.prune.random_unstructured(other[0], "weight", amount=0.5)
    pc.make_permanent(other)
    assert set(other.state_dict()) == set(tiny().state_dict())
    assert not other[0]._forward_pre_hooks


def test_make_permanent_keys_and_values():
    model = build_model("resnet20")
    pc.prune(model, 0.9)
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    out = model(x)
    pc.make_permanent(model)
    assert set(model.state_dict()) == set(build_model("resnet20").state_dict())
    assert torch.allclose(model(x), out)
    assert pc.sparsity(model) == pytest.approx(round(0.9 * 268336) / 268336)


def test_save_load_round_trip_and_size(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20")
    pc.prune(model, 0.9)
    model.eval()
    path = tmp_path / "m.pt"
    pc.save_pruned(model, path)
    dense = tmp_path / "dense.pt"
    torch.save(build_model("resnet20").state_dict(), dense)
    assert os.path.getsize(path) <= os.path.getsize(dense) / 4
    fresh = build_model("resnet20")
    pc.load_pruned(path, fresh)
    fresh.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(fresh.layer2[0].conv1.weight_mask, model.layer2[0].conv1.weight_mask)
    pc.prune(fresh, 0.95)  # masks live: cumulative pruning goes on
    assert pc.sparsity(fresh) == pytest.approx(round(0.95 * 268336) / 268336)


def test_damaged_and_foreign_files(tmp_path):
    model = build_model("resnet20")
    pc.prune(model, 0.5)
    good = tmp_path / "good.pt"
    pc.save_pruned(model, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated.pt"):
        pc.load_pruned(truncated, build_model("resnet20"))
    foreign = tmp_path / "foreign.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(ValueError, match="foreign.pt: not a pruned-model file"):
        pc.load_pruned(foreign, build_model("resnet20"))
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="text.pt"):
        pc.load_pruned(text, build_model("resnet20"))
    with pytest.raises(ValueError, match="good.pt: does not fit"):
        pc.load_pruned(good, build_model("resnet32"))


def test_sparsity_report_macs():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0)
    pc.prune(model, 0.5, scope="layerwise")
    rep = pc.sparsity_report(model, input_shape=(1, 4, 4))
    conv, lin = rep["layers"]
    assert conv["params"] == 18 and conv["nonzero"] == 9
    assert conv["macs_dense"] == 18 * 16 and conv["macs_sparse"] == 9 * 16
    assert lin["macs_dense"] == 160 and lin["macs_sparse"] == 80
    assert rep["macs_dense"] == 18 * 16 + 160
    assert rep["sparsity"] == pytest.approx(0.5)
    assert rep["compression_ratio"] == pytest.approx(2.0)
    assert rep["nonzero_params"] == 9 + 80 + 5  # + linear bias


def test_schedules():
    assert pc.sparsity_schedule("instant", 0.9, 4) == [0.9]
    g = pc.sparsity_schedule("gradual", 0.9, 4)
    assert g == pytest.approx([1 - 0.1 ** (i / 4) for i in range(1, 5)])
    assert g[-1] == 0.9
    # every step prunes the same fraction of what remains
    remain = [1.0] + [1 - s for s in g]
    ratios = [remain[i + 1] / remain[i] for i in range(4)]
    assert ratios == pytest.approx([ratios[0]] * 4)
    c = pc.sparsity_schedule("cubic", 0.8, 3)
    assert c == pytest.approx([0.8 * (1 - (1 - i / 3) ** 3) for i in range(1, 4)])
    assert c[-1] == 0.8
    assert pc.sparsity_schedule("gradual", 0.5, 1) == [0.5]
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        pc.sparsity_schedule("gradual", 0.5, 0)
    with pytest.raises(ValueError, match="one of instant, gradual, cubic"):
        pc.sparsity_schedule("linear", 0.5, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pc.sparsity_schedule("gradual", 1.0, 2)


def test_pruning_core_imports_no_ray_or_pandas():
    import subprocess
    import sys
    code = "import sys, pruning_core; bad=[m for m in ('ray','pandas') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_load_failures_name_the_file_and_module_and_leave_the_model_unchanged(tmp_path):
    model = build_model("resnet20")
    pc.prune(model, 0.5)
    path = tmp_path / "r20.pt"
    pc.save_pruned(model, path)
    for other, says in ((build_model("resnet32"), r"module 'layer1.3.conv1' has 'weight'"),
                        (build_model("small_cnn", 10, 3), r"module 'conv2' has 'weight', the saved state has not"),
                        (build_model("resnet20", 100), r"module 'linear': weight is \(10, 64\) in the saved state, \(100, 64\)")):
        before = {k: v.clone() for k, v in other.state_dict().items()}
        with pytest.raises(ValueError, match=r"r20\.pt: does not fit this model: " + says):
            pc.load_pruned(path, other)
        after = other.state_dict()
        assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
        assert not list(pc.masks.masked_modules(other))
    state = model.state_dict()
    state["layer1.0.conv1.weight_mask"] = state["layer1.0.conv1.weight_mask"][:8]
    fresh = build_model("resnet20")
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"state_dict: does not fit this model: module 'layer1.0.conv1': weight_mask"):
        pc.load_state_dict(fresh, state)
    assert set(fresh.state_dict()) == set(before)


def test_a_float64_model_is_ranked_in_float64():
    layer = nn.Linear(8, 1, bias=False).double()
    with torch.no_grad():  # magnitudes that differ only beyond float32's precision
        layer.weight.copy_(1 + torch.arange(8, 0, -1, dtype=torch.float64).view(1, 8) * 1e-12)
    pc.prune(layer, 0.5)
    assert pc.get_mask(layer).flatten().tolist() == [True] * 4 + [False] * 4


def mha_model(separate=False):
    torch.manual_seed(0)
    kdim = 6 if separate else None
    return nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2, kdim=kdim, vdim=kdim, batch_first=True),
                          "head": nn.Linear(8, 3)})


@pytest.mark.parametrize("separate", [False, True])
def test_attention_projections_are_prunable_weights_scored_per_projection(separate):
    model = mha_model(separate)
    names = [u.name for u in pc.prunable_weights(model)]
    assert names == ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "head"]
    pc.prune(model, 0.75, scope="layerwise")
    for unit in pc.prunable_weights(model):
        n = unit.weight.numel()
        assert int((unit.weight == 0).sum()) == round(0.75 * n), unit.name
        keep = unit.mask  # the kept ones are exactly the largest of their own projection
        assert unit.weight[keep].abs().min() >= unit.weight.abs()[~keep].max() or not (~keep).any()
    assert pc.layer_sparsity(model)["attn.k_proj"] == pytest.approx(0.75)
    # pruned projection weights stay zero through training with a fresh optimizer
    attn = model["attn"]
    q = torch.randn(2, 5, 8)
    kv = torch.randn(2, 5, 6) if separate else q
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model["head"](attn(q, kv, kv)[0]).sum().backward()
        opt.step()
    assert pc.sparsity(model) == pytest.approx(0.75, abs=0.01)
    assert [u.name for u in pc.prunable_weights(model, exclude=["attn"])] == ["attn.out_proj", "head"]
    assert [u.name for u in pc.prunable_weights(model, include=["*.v_proj"])] == ["attn.v_proj"]


def test_vit_prunes_its_attention_and_counts_torchvisions_macs(tmp_path):
    import torchvision
    vit = torchvision.models.vit_b_16()
    pc.prune(vit, 0.9)
    rep = pc.sparsity_report(vit, (3, 224, 224))
    matrices = [m.weight for _, m in pc.prunable_modules(vit)] + [m.in_proj_weight for m in vit.modules()
                                                                     if isinstance(m, nn.MultiheadAttention)]
    zero = sum(int((w == 0).sum()) for w in matrices)
    assert zero / sum(w.numel() for w in matrices) == pytest.approx(0.9, abs=1e-6)  # Q/K/V too
    assert rep["sparsity"] == pytest.approx(0.9, abs=1e-6)
    assert rep["macs_dense"] == pytest.approx(17.56e9, rel=0.01)  # torchvision's published figure
    q = next(r for r in rep["layers"] if r["name"] == "encoder.layers.encoder_layer_0.self_attention.q_proj")
    assert q["calls"] == 1 and q["macs_dense"] == 768 * 768 * 197
    assert rep["macs_activations"] == 12 * 2 * 197 * 197 * 768
    assert rep["macs_sparse"] == sum(r["macs_sparse"] for r in rep["layers"]) + rep["macs_activations"]
    assert rep["layers_not_run"] == []
    # the compact file round-trips the fused projection's mask
    pc.save_pruned(vit, tmp_path / "vit.pt")
    fresh = pc.load_pruned(tmp_path / "vit.pt", torchvision.models.vit_b_16())
    attn = fresh.encoder.layers[0].self_attention
    assert torch.equal(attn.in_proj_weight_mask, vit.encoder.layers[0].self_attention.in_proj_weight_mask)


def test_a_layer_the_forward_never_used_is_reported_not_silently_zero():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.used(self.used(x))  # called twice

    with pytest.warns(UserWarning, match="did not run in the forward pass.*: spare"):
        rep = pc.sparsity_report(Unused(), (4,))
    rows = {r["name"]: r for r in rep["layers"]}
    assert rep["layers_not_run"] == ["spare"] and rows["spare"]["calls"] == 0
    assert rows["used"]["calls"] == 2 and rows["used"]["macs_dense"] == 2 * 16


def _linear(out_f, in_f, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_n_m_keeps_the_n_largest_of_every_m_along_the_input(n, m):
    layer = _linear(6, 16)
    scores = layer.weight.detach().abs().clone()
    pc.prune(layer, 1 - n / m, structure=f"{n}:{m}")
    keep = pc.get_mask(layer)
    for row in range(6):
        for g in range(0, 16, m):
            group, kept = scores[row, g:g + m], keep[row, g:g + m]
            assert int(kept.sum()) == n
            assert set(torch.topk(group, n).indices.tolist()) == set(torch.nonzero(kept).flatten().tolist())
    # the layout torch.sparse.to_sparse_semi_structured reads: groups of m consecutive entries of a row
    assert (layer.weight.detach().reshape(-1, m) != 0).sum(dim=1).eq(n).all()


def test_n_m_on_convolutions_groups_input_channels_and_schedules_end_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 4, 3)
    scores = conv.weight.detach().abs().clone()
    pc.prune(conv, 0.25, structure="2:4")  # on the way: at most two of every four go
    keep = pc.get_mask(conv)
    by_group = keep.movedim(1, -1).reshape(-1, 4)
    assert int((~keep).sum()) == round(0.25 * keep.numel()) and (by_group.sum(1) >= 2).all()
    pc.prune(conv, 0.5, structure="2:4")
    keep = pc.get_mask(conv)
    groups = keep.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(1) == 2).all()
    assert pc.sparsity(conv) == 0.5
    with pytest.raises(ValueError, match=r"structure '2:4' keeps 2 of every 4 weights, so sparsity is at most 0.5; got 0.6"):
        pc.prune(conv, 0.6, structure="2:4")
    with pytest.raises(ValueError, match=r"structure '2:4': layer '0' has input dimension 3, not a multiple of 4; exclude it"):
        pc.prune(nn.Sequential(nn.Conv2d(3, 8, 3)), 0.5, structure="2:4")
    with pytest.raises(ValueError, match="N:M needs 0 < N < M"):
        pc.prune(conv, 0.5, structure="4:2")
    assert pc.nm_sparsity("2:4") == 0.5 and pc.nm_sparsity("filters") is None


def _random_norms(model):
    """Batch-norm statistics and affine values far from their init, so a wrongly kept or deleted
    channel shows in the outputs."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


@pytest.mark.parametrize("model_name, size, sparsity", [("resnet20", 32, 0.5), ("resnet20", 32, 0.75),
                                                        ("torchvision:resnet18", 64, 0.5)])
def test_compact_removes_pruned_filters_with_identical_outputs(model_name, size, sparsity):
    torch.manual_seed(0)
    model = _random_norms(build_model(model_name, 10, 3))
    x = torch.randn(2, 3, size, size)
    pruned = pc.prune(model, sparsity, structure="filters", scope="layerwise", example_inputs=x)
    # only convs inside a residual block: the residual stream's channels are tied by the adds
    # (ResNet-20's option-A shortcut pads them, a tie torch-pruning's graph cannot follow)
    assert sorted(pruned) == sorted(n for n, m in model.named_modules()
                                     if isinstance(m, nn.Conv2d) and n.endswith(".conv1"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = pc.compact(model, x)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model itself unchanged
    assert not list(pc.masks.masked_modules(small))
    for name in pruned:
        conv = small.get_submodule(name)
        original = model.get_submodule(name).out_channels
        assert conv.out_channels == original - round(sparsity * original)
    model.eval(), small.eval()
    fresh = torch.randn(4, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(small(fresh), model(fresh), rtol=1e-4, atol=1e-5)
    macs = pc.sparsity_report(model, (3, size, size))["macs_dense"], pc.sparsity_report(small, (3, size, size))["macs_dense"]
    if model_name == "resnet20" and sparsity == 0.5:
        assert macs == (40_551_040, 20_497_024)
    assert macs[1] < macs[0] * (1 - sparsity / 3)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


def test_compact_refuses_a_model_whose_outputs_would_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Sigmoid(), nn.Conv2d(8, 4, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.randn(2, 3, 8, 8)
    pc.prune(model, 0.5, structure="filters", scope="layerwise", example_inputs=x)
    with pytest.raises(RuntimeError, match="compacted model's outputs differ.*not map zero to zero"):
        pc.compact(model, x)  # a pruned channel is sigmoid(0) = 0.5 downstream, not 0


def test_a_copy_is_armed_under_torch_compile_and_tied_weights_keep_every_mask():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    pc.prune(net, 0.7)
    copied = copy.deepcopy(net)  # never run eagerly: its first call is the compiled one
    compiled = torch.compile(copied, backend="eager")
    opt = torch.optim.SGD(copied.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        compiled(torch.randn(4, 8)).sum().backward()
        opt.step()
    assert pc.sparsity(copied) == pc.sparsity(net)
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight  # one weight, two layers: listed and counted once
    tied = nn.Sequential(a, nn.ReLU(), b)
    assert [u.name for u in pc.prunable_weights(tied)] == ["0"]
    pc.prune(tied, 0.5)
    pc.masks.set_mask(b, pc.get_mask(a).flip(0))  # the second layer's own mask: both must hold
    _ = pc.arm(tied)
    opt = torch.optim.SGD(tied.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        tied(torch.randn(4, 8)).sum().backward()
        opt.step()
    assert torch.all(a.weight[~pc.get_mask(b)] == 0)


def test_loads_refuse_a_state_without_the_models_masks_and_leave_it_unchanged(tmp_path):
    model = tiny()
    pc.prune(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"state_dict: does not fit this model: module '0' has 'weight_mask', "
                                         r"the saved state has not"):
        pc.load_state_dict(model, tiny().state_dict())  # a dense state into a pruned model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    class Own(nn.Module):  # names ending in _orig/_mask that are nobody's pruning
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("scale_orig", torch.ones(2))
            self.register_buffer("causal_mask", torch.ones(2, dtype=torch.bool))

    own = Own()
    pc.load_state_dict(own, Own().state_dict())
    state = Own().state_dict()
    del state["causal_mask"]
    with pytest.raises(ValueError, match="module \\(the model itself\\) has 'causal_mask'"):
        pc.load_state_dict(own, state)


def test_report_counts_a_weight_applied_through_a_view():
    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 5)

        def forward(self, x):
            return x @ self.lin.weight.T

    rep = pc.sparsity_report(ByHand(), (3, 4))
    assert rep["layers"][0]["macs_dense"] == 3 * 20 and rep["macs_activations"] == 0 and rep["layers_not_run"] == []

    class Attend(nn.Module):  # scaled_dot_product_attention: scores and weighted sums, per head
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):  # x: (1, heads 2, length 5, 4)
            return nn.functional.scaled_dot_product_attention(self.lin(x), x, value=x)

    rep = pc.sparsity_report(Attend(), (2, 5, 4))
    assert rep["macs_activations"] == 2 * 5 * 5 * (4 + 4) and rep["layers"][0]["macs_dense"] == 16 * 10


def test_a_norm_without_scale_and_shift_keeps_its_conv_out_of_filter_pruning():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 3, 9, 9)
    units, skipped = pc.filter_units(model, pc.units_in_scope(model, "filters"), x)
    assert [u.name for u in units] == ["3"] and skipped == {"0": "batch norm '1' has no scale and shift to zero"}
    pc.prune(model, 0.5, structure="filters", example_inputs=x)
    small = pc.compact(model, x)
    assert small[3].out_channels == 4 and small[0].out_channels == 8


@pytest.mark.parametrize("structure", ["unstructured", "2:4", "filters"])
@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "magnitude_gradient"])
def test_pruning_changes_no_surviving_weight(structure, criterion):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    x, y = torch.randn(4, 4, 7, 7), torch.tensor([0, 1, 2, 3])
    pc.accumulate_gradients(model, [(x, y)])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    pc.prune(model, 0.5, criterion=criterion, structure=structure, example_inputs=x)
    for name, value in model.state_dict().items():
        if name in before and not name.endswith("_mask"):
            kept = value != 0
            assert torch.equal(value[kept], before[name][kept]), name  # signs and values untouched
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())  # the gradients too


def test_attached_optimizer_masks_a_gradient_set_by_hand_and_prune_hands_out_copies():
    model = tiny()
    masks = pc.prune(model, 0.5)
    masks["3"].fill_(True)  # the caller's copy: the model's mask is untouched
    assert not pc.get_mask(model[3]).all()
    opt = pc.attach_optimizer(model, torch.optim.SGD(model.parameters(), lr=0.1))
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # not through autograd: only the attached pre-hook sees it
    opt.step()
    assert torch.all(model[3].weight[~model[3].weight_mask] == 0)
    assert torch.all(model[3].weight.grad[~model[3].weight_mask] == 0)


class ConvAttention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(8, 16, 1)
        self.bn = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 16, 1)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):  # (batch, length, 8)
        h = self.conv2(torch.relu(self.bn(self.conv(x.transpose(1, 2))))).transpose(1, 2)
        return self.head(self.att(h, h, h, need_weights=False)[0].mean(1))


def test_filter_units_takes_every_prunable_weight_and_says_why_the_linear_is_not_a_unit():
    model, x = tiny(), torch.randn(2, 1, 6, 6)
    convs_only = pc.filter_units(model, pc.units_in_scope(model, "filters"), x)
    for units, skipped in (pc.filter_units(model, pc.prunable_weights(model), x),
                           pc.filter_units(model, example_inputs=x)):
        assert [u.name for u in units] == [u.name for u in convs_only[0]] == ["0", "3"]
        assert skipped == {**convs_only[1], "7": "a Linear, not a convolution: only convolutions have filters"}


def test_filter_units_on_a_model_with_attention_lists_its_projections_as_not_convolutions():
    model, x = ConvAttention(), torch.randn(2, 5, 8)
    units, skipped = pc.filter_units(model, example_inputs=x)
    assert [u.name for u in units] == ["conv"]
    assert skipped["att.q_proj"] == "a MultiheadAttention, not a convolution: only convolutions have filters"
    assert skipped["head"].startswith("a Linear, not a convolution")


def test_filter_units_without_a_unit_names_the_first_conv_or_says_none_is_a_conv():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"no convolution in scope can lose filters on its own \('0': a Linear"):
        pc.filter_units(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), example_inputs=x)
    model = nn.Sequential(nn.Linear(4, 8), nn.Unflatten(1, (8, 1)), nn.Conv1d(8, 4, 1), nn.Flatten())
    with pytest.raises(ValueError, match=r"\('2': its channels are the model's output\)"):
        pc.filter_units(model, example_inputs=x)
    with pytest.raises(ValueError, match="filter_units needs example_inputs"):
        pc.filter_units(model)
