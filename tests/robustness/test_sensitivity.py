"""Log-volume sensitivity: finiteness, invariance, metadata."""
import dataclasses

import pytest
import torch

from robustness import Linear, Network, Sensitivity, forward, log_volume

METHODS = ("ibp", "crown", "ibp+crown")
SPACES = ("logits", "logit_diff", "softmax")


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("method", METHODS)
def test_finite_for_tiny_and_huge_eps(networks, digits, space, method):
    net = networks["mlp", "tanh", True]
    x = digits[1][:4]
    for eps in (0.0, 1e-300, 1e-15, 1e3, 1e12):
        for domain in (None, (0.0, 1.0)):
            s = log_volume(net, x, eps, method=method, space=space, domain=domain)
            assert torch.isfinite(s.values).all() and torch.isfinite(s.mean).all(), (eps, domain)


def test_floor_sets_value_for_zero_eps(networks, digits):
    net = networks["mlp", "relu", True]
    s = log_volume(net, digits[1][:4], 0.0, space="logit_diff", floor=1e-12)
    # every width is floored at 1e-12 * max(1, |bound|) >= 1e-12: at least 9 log(1e-12)
    assert (s.values >= 9 * torch.log(torch.tensor(1e-12, dtype=torch.float64)) - 1e-9).all()


def test_result_records_metadata_and_shapes(networks, digits):
    net = networks["mlp", "sigmoid", True]
    s = log_volume(net, digits[1][:6], 0.05, method="crown", space="softmax", split="test", domain=(0, 1))
    assert isinstance(s, Sensitivity)
    assert (s.eps, s.method, s.space, s.split, s.domain) == (0.05, "crown", "softmax", "test", (0, 1))
    assert s.values.shape == (1, 6) and s.mean.shape == (1,)
    torch.testing.assert_close(s.mean, s.values.mean(-1))
    torch.testing.assert_close(s.robustness, -s.mean)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps = 1.0


def _shift_output_rows(net, vector, number):
    *head, last = net.layers
    return Network((*head, Linear(last.weight + vector[None, None, :], last.bias + number)), net.input_shape)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method", METHODS)
def test_logit_diff_and_softmax_invariant_to_common_output_row(networks, digits, kind, method):
    net = networks[kind, "tanh", True]
    x = digits[1][:8].view(8, *net.input_shape)
    hidden = net.layers[-1].weight.shape[-1]
    shifted = _shift_output_rows(net, 3.0 * torch.randn(hidden, dtype=torch.float64), 5.0)
    for space in ("logit_diff", "softmax"):
        a = log_volume(net, x, 0.05, method=method, space=space, domain=(0, 1))
        b = log_volume(shifted, x, 0.05, method=method, space=space, domain=(0, 1))
        torch.testing.assert_close(a.values, b.values, rtol=1e-9, atol=1e-9)
    a = log_volume(net, x, 0.05, method=method, space="logits", domain=(0, 1))
    b = log_volume(shifted, x, 0.05, method=method, space="logits", domain=(0, 1))
    assert not torch.allclose(a.values, b.values, rtol=1e-3)  # raw logits do change


def test_logit_diff_uses_labels_or_prediction(networks, digits):
    net = networks["mlp", "relu", True]
    x, y = digits[1][:10], digits[3][:10]
    predicted = log_volume(net, x, 0.05, space="logit_diff")
    labels = forward(net, x)[0].argmax(-1)
    torch.testing.assert_close(predicted.values, log_volume(net, x, 0.05, space="logit_diff", labels=labels).values)
    wrong = (y + 1) % 10
    assert not torch.allclose(predicted.values, log_volume(net, x, 0.05, space="logit_diff", labels=wrong).values)


def test_softmax_box_is_within_unit_interval_and_tighter_with_crown(networks, digits):
    net = networks["mlp", "relu", True]
    x = digits[1][:10]
    ibp = log_volume(net, x, 0.02, method="ibp", space="softmax", domain=(0, 1))
    both = log_volume(net, x, 0.02, method="ibp+crown", space="softmax", domain=(0, 1))
    assert (both.values <= ibp.values + 1e-12).all()
    assert (ibp.values <= 0).all()  # widths <= 1
