import pytest
import torch
import torch.nn.functional as F

from ncawss import NCAClassifier
from ncawss.method.nca.model import NCA
from ncawss.method.training.loop import focal_terms
from reference_nca import reference_forward


def randomised(nca: NCA, seed: int = 0) -> NCA:
    """An NCA with every weight random, the zero-initialised output layer included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in nca.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return nca


def rgb(b=2, h=12, w=10, seed=1):
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_untrained_nca_leaves_hidden_channels_unchanged():
    state = NCA(channels=8, steps=10)(rgb())
    assert torch.equal(state[:, 3:], torch.zeros_like(state[:, 3:]))


def test_rgb_channels_never_change():
    x = rgb()
    state = randomised(NCA(channels=8, steps=20))(x)
    assert torch.equal(state[:, :3], x)
    assert state[:, 3:].abs().sum() > 0


def test_fire_rate_zero_changes_nothing():
    nca = randomised(NCA(channels=8, steps=5))
    state = nca(rgb(), fire_rate=0.0)
    assert torch.equal(state[:, 3:], torch.zeros_like(state[:, 3:]))


def test_fire_rate_one_updates_every_pixel():
    nca = randomised(NCA(channels=8, steps=1))
    state = nca(rgb(), fire_rate=1.0)
    assert (state[:, 3:].abs().amax(dim=1) > 0).all()


def test_fire_rate_half_updates_about_half_the_pixels_each_step():
    nca = randomised(NCA(channels=8, steps=1))
    state = nca(rgb(b=4, h=32, w=32), fire_rate=0.5, generator=torch.Generator().manual_seed(0))
    updated = (state[:, 3:].abs().amax(dim=1) > 0).float().mean()
    assert 0.45 < updated < 0.55


@pytest.mark.parametrize("fire_rate", [0.3, 1.0])
def test_fused_step_equals_reference_style_step(fire_rate):
    nca = randomised(NCA(channels=9, hidden=7, steps=6))
    x = rgb(h=11, w=13)
    ours = nca(x, fire_rate=fire_rate, generator=torch.Generator().manual_seed(5))
    ref = reference_forward(nca, x, 6, fire_rate, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_first_step_matches_perception_formula():
    nca = randomised(NCA(channels=6, hidden=5, steps=1))
    x = rgb(b=1, h=7, w=7)
    s = torch.cat([x, torch.zeros(1, 3, 7, 7)], 1)
    perception = torch.cat([s, nca.p0(s), nca.p1(s)], 1).permute(0, 2, 3, 1)
    ds = nca.fc1(F.relu(nca.fc0(perception))).permute(0, 3, 1, 2)
    expected = torch.cat([x, ds[:, 3:]], 1)
    torch.testing.assert_close(nca(x, fire_rate=1.0), expected, rtol=1e-5, atol=1e-6)


def test_mean_field_at_full_fire_rate_equals_stochastic_run():
    nca = randomised(NCA(channels=8, steps=4))
    x = rgb()
    torch.testing.assert_close(nca(x, fire_rate=1.0, mean_field=True), nca(x, fire_rate=1.0))


def test_mean_field_is_deterministic_and_stochastic_runs_differ():
    nca = randomised(NCA(channels=8, steps=4))
    x = rgb()
    assert torch.equal(nca(x, mean_field=True), nca(x, mean_field=True))
    assert not torch.equal(nca(x), nca(x))


def test_classifier_returns_logits_and_state():
    model = NCAClassifier(channels=10, hidden=8, steps=3, n_classes=4)
    logits, state = model(rgb(b=3, h=16, w=16))
    assert logits.shape == (3, 4) and state.shape == (3, 10, 16, 16)


def test_paper_defaults():
    model = NCAClassifier()
    nca = model.nca
    assert (nca.channels, nca.hidden, nca.steps, nca.fire_rate) == (32, 32, 32, 0.5)
    assert nca.p0.groups == 32 and nca.p0.padding_mode == "reflect" and nca.fc1.bias is None
    assert model.head[0].out_features == 128


def test_invalid_nca_settings_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        NCA(channels=3)
    with pytest.raises(ValueError, match="fire_rate"):
        NCA(fire_rate=1.5)


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_smaller_at_gamma_two():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 4, 0])
    ce = F.cross_entropy(logits, target)
    torch.testing.assert_close(focal_terms(logits, target, gamma=0.0).mean(), ce)
    assert focal_terms(logits, target, gamma=2.0).mean() < ce


def test_channel_padding_and_grouped_convolutions_leave_the_states_unchanged():
    from ncawss.method.nca.model import PARAMETERS, FoldStack, fire_masks, fused_weights, run_nca, stacked
    models = [NCAClassifier(channels=8, hidden=6, steps=4, n_classes=3) for _ in range(3)]
    for i, m in enumerate(models):
        randomised(m.nca, seed=i)
    x = torch.randn(2, 3, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    fire = fire_masks([torch.Generator().manual_seed(i) for i in range(3)], [2, 2, 1], 4, 2, 9, 9, 0.5, "cpu")
    weights = fused_weights(stacked([m.nca for m in models], PARAMETERS))
    torch.testing.assert_close(run_nca(weights, x, 4, fire, align=8), run_nca(weights, x, 4, fire, align=1))
    separate, grouped = FoldStack(models)(x, fire), FoldStack(models, grouped=True)(x, fire)
    for a, b in zip(separate, grouped):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not fire[:, 1, 2].any()  # the padding row of the third fold never fires
