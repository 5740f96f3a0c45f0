"""The NCA step as a Triton kernel (kernel: triton) computes what torch's convolutions compute:
states, every parameter's gradient, k folds in one launch, a whole fold's training. On CPU the
kernel runs under Triton's interpreter (conftest sets TRITON_INTERPRET=1 without CUDA)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ncawss import ConfigError, NCAClassifier, TrainConfig, load_config, make_synthetic, train_fold
from ncawss.method.nca.model import FoldStack, fire_masks

pytest.importorskip("triton")


def torch_step(state, base, kernel, out, fire, folds):
    """One step as run_nca's torch loop computes it, channel first: the reference."""
    b, km, h, w = state.shape
    z = F.conv2d(F.pad(state, (1, 1, 1, 1), mode="reflect"), kernel, groups=folds).add(base).relu()
    update = F.conv2d(z, out, groups=folds)
    return torch.addcmul(state.view(b, folds, -1, h, w), update.view(b, folds, -1, h, w), fire).view(b, km, h, w)


def classifiers(kernel: str, folds: int, channels: int, seed: int = 0) -> list[NCAClassifier]:
    """k classifiers with a non-zero output layer (zero at init would hide most gradients)."""
    torch.manual_seed(seed)
    models = [NCAClassifier(channels, hidden=16, steps=3, n_classes=3, head_hidden=8, kernel=kernel)
              for _ in range(folds)]
    torch.manual_seed(seed + 1)
    for model in models:
        torch.nn.init.normal_(model.nca.fc1.weight, std=0.1)
    return models


def run(kernel: str, folds: int, channels: int, size: tuple[int, int], fire):
    models = classifiers(kernel, folds, channels)
    torch.manual_seed(7)
    x = torch.randn(4, folds, 3, *size)
    logits, state = FoldStack(models, grouped=True)(x, fire, steps=3)
    loss = logits.square().sum() + state.square().mean()
    loss.backward()
    return state.detach(), {f"{i}.{n}": p.grad for i, m in enumerate(models) for n, p in m.named_parameters()}


def masks(folds: int, size: tuple[int, int]) -> torch.Tensor:
    """Stochastic fire masks; each fold's last batch row is padding and never fires."""
    generators = [torch.Generator().manual_seed(i) for i in range(folds)]
    return fire_masks(generators, [3] * folds, 3, 4, *size, 0.5, "cpu")


@pytest.mark.parametrize("folds, channels, size", [(1, 6, (8, 8)), (3, 32, (12, 10))])
@pytest.mark.parametrize("inference", ["stochastic", "mean_field"])
def test_states_and_every_gradient_equal_the_torch_path(folds, channels, size, inference):
    fire = masks(folds, size) if inference == "stochastic" else 0.5
    state_t, grads_t = run("torch", folds, channels, size, fire)
    state_k, grads_k = run("triton", folds, channels, size, fire)
    torch.testing.assert_close(state_k, state_t, rtol=1e-5, atol=1e-5)
    assert grads_k.keys() == grads_t.keys()
    for name in grads_t:
        torch.testing.assert_close(grads_k[name], grads_t[name], rtol=1e-4, atol=1e-5, msg=name)
    assert all(grads_t[f"{i}.nca.p0.weight"].abs().sum() > 0 for i in range(folds))  # gradients that can differ


def test_the_padded_row_that_never_fires_keeps_its_state_at_zero():
    state, _ = run("triton", 2, 6, (8, 8), masks(2, (8, 8)))
    assert torch.count_nonzero(state[3, :, 3:]) == 0 and torch.count_nonzero(state[2, :, 3:]) > 0


def test_a_fold_of_a_batched_launch_equals_that_fold_alone():
    fire = masks(3, (12, 10))
    together, _ = run("triton", 3, 6, (12, 10), fire)
    models = classifiers("triton", 3, 6)
    torch.manual_seed(7)
    x = torch.randn(4, 3, 3, 12, 10)
    for i in range(3):
        _, alone = FoldStack([models[i]])(x[:, i:i + 1], fire[:, :, i:i + 1], steps=3)
        torch.testing.assert_close(alone[:, 0], together[:, i], rtol=1e-5, atol=1e-6)


def test_a_fold_trained_with_the_triton_kernel_equals_the_torch_kernel():
    data = make_synthetic(n=24, size=16, seed=2)
    config = TrainConfig(channels=6, hidden=8, head_hidden=8, steps=3, image_size=12, epochs=1, batch_size=8,
                         seed=1, variants={})
    train, test = data.subset(range(16)), data.subset(range(16, 24))
    a = train_fold(config, train, test)
    b = train_fold(config.replace(kernel="triton"), train, test)
    for key, value in a.model.state_dict.items():
        torch.testing.assert_close(b.model.state_dict[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert np.allclose(b.evaluation.image_iou, a.evaluation.image_iou, atol=1e-3)


def test_an_unknown_kernel_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kernel: cuda\n")
    with pytest.raises(ConfigError, match=r"key 'kernel'"):
        load_config(path)


@pytest.mark.parametrize("block, splits", [(64, 32), (16, 4)])  # one pixel block; 6 blocks in 3 runs of 2
def test_one_step_s_backward_kernels_give_torch_s_four_gradients_through_the_reflect_border(block, splits):
    from ncawss.method.nca.triton_step import Weights, step_gradients, to_first, to_last

    torch.manual_seed(0)
    b, k, m, hid, h, w = 2, 2, 5, 8, 6, 7  # every pixel of a 6x7 image is near a border
    state, base = torch.randn(b, k * m, h, w, requires_grad=True), torch.randn(b, k * hid, h, w, requires_grad=True)
    kernel = (torch.randn(k * hid, m, 3, 3) * 0.3).requires_grad_()
    out = (torch.randn(k * m, hid, 1, 1) * 0.3).requires_grad_()
    fire = (torch.rand(b, k, 1, h, w) < 0.5).float()
    new = torch_step(state, base, kernel, out, fire, k)
    grad = torch.randn_like(new)
    expected = torch.autograd.grad(new, [state, base, kernel, out], grad)
    weights = Weights.of(base.detach(), kernel.detach(), out.detach(), k)
    d_state, *rest = step_gradients(to_last(state.detach(), k), weights, fire.reshape(b, k, h, w).contiguous(),
                                    to_last(grad, k), k, block=block, splits=splits)
    for got, want in zip([to_first(d_state), *rest], expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def rounded(t: torch.Tensor) -> torch.Tensor:
    return t.bfloat16().float()


def test_a_bf16_step_is_fp32_arithmetic_on_operands_rounded_to_bf16():
    from ncawss.method.nca.triton_step import Weights, to_first, to_last, triton_step

    torch.manual_seed(0)
    b, k, m, hid, h, w = 2, 2, 6, 16, 9, 8
    state, base = torch.randn(b, k * m, h, w), torch.randn(b, k * hid, h, w)
    kernel, out = torch.randn(k * hid, m, 3, 3) * 0.3, torch.randn(k * m, hid, 1, 1) * 0.3
    fire = (torch.rand(b, k, 1, h, w) < 0.5).float()
    z = F.conv2d(F.pad(rounded(state), (1, 1, 1, 1), mode="reflect"), rounded(kernel), groups=k).add(base).relu()
    update = F.conv2d(rounded(z), rounded(out), groups=k)
    want = torch.addcmul(state.view(b, k, m, h, w), update.view(b, k, m, h, w), fire).view(b, k * m, h, w)
    weights = Weights.of(base, kernel, out, k)
    got = to_first(triton_step(to_last(state, k), weights, fire.reshape(b, k, h, w).contiguous(), bf16=True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    fp32 = to_first(triton_step(to_last(state, k), weights, fire.reshape(b, k, h, w).contiguous()))
    assert (got - fp32).abs().max() > 1e-3  # the rounding is there: fp32 gives other numbers


def test_bf16_autocast_training_step_stays_within_stated_tolerance_of_fp32():
    """Under a bfloat16 autocast the kernel's states are within 2% and every gradient within 5%
    (relative to its norm) of the fp32 torch path's; 3 steps, 2 folds, 16 channels."""
    size, fire = (8, 8), masks(2, (8, 8))
    state_t, grads_t = run("torch", 2, 16, size, fire)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state_k, grads_k = run("triton", 2, 16, size, fire)
    torch.testing.assert_close(state_k.float(), state_t, rtol=2e-2, atol=2e-2)
    for name in grads_t:
        error = (grads_k[name].float() - grads_t[name]).norm() / grads_t[name].norm().clamp_min(1e-12)
        assert error < 5e-2, (name, float(error))
    assert not torch.equal(state_k.float(), state_t)
