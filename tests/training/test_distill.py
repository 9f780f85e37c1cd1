from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lightning_elastic.core.errors import ConfigError
from lightning_elastic.training.distill import alpha_divergence, kl_divergence, logits_of, resolve_distill


def test_kl_matches_definition():
    s, t = torch.randn(5, 7), torch.randn(5, 7)
    temp = 2.0
    p_t = F.softmax(t / temp, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    torch.testing.assert_close(kl_divergence(s, t, temp), expected)
    assert kl_divergence(t, t).abs() < 1e-6


def test_kl_does_not_backprop_into_teacher_and_handles_token_logits():
    s, t = torch.randn(2, 3, 5, requires_grad=True), torch.randn(2, 3, 5, requires_grad=True)
    kl_divergence(s, t).backward()
    assert s.grad is not None and t.grad is None


def _alphanet_reference(q_logits, p_logits, alpha, clip):
    # AlphaNet's f_divergence, transcribed from the paper's code
    q_prob, p_prob = F.softmax(q_logits, 1).detach(), F.softmax(p_logits, 1).detach()
    ratio = p_prob / q_prob
    iw = torch.pow(ratio, alpha).clamp(0, clip)
    f = iw / alpha / (alpha - 1)
    base = 1 / alpha / (alpha - 1)
    loss = (q_prob * (f - base)).sum(1)
    grad_loss = -(q_prob * (iw / alpha + base) * F.log_softmax(q_logits, 1)).sum(1)
    return loss, grad_loss


def test_alpha_divergence_value_and_gradient_follow_alphanet():
    s = torch.randn(6, 4, requires_grad=True)
    t = torch.randn(6, 4)
    left, gl = _alphanet_reference(s, t, -1.0, 5.0)
    right, gr = _alphanet_reference(s, t, 0.5, 5.0)
    pick = (left > right).float()
    ref_value = (pick * left + (1 - pick) * right).mean()
    (ref_grad,) = torch.autograd.grad((pick * gl + (1 - pick) * gr).mean(), s)
    value = alpha_divergence(s, t, alpha_min=-1.0, alpha_max=0.5)
    (grad,) = torch.autograd.grad(value, s)
    torch.testing.assert_close(value, ref_value)
    torch.testing.assert_close(grad, ref_grad)
    assert alpha_divergence(t, t).abs() < 1e-6


def test_logits_of_outputs():
    x = torch.randn(2, 3)
    assert logits_of(x) is x
    assert logits_of(SimpleNamespace(logits=x, loss=None)) is x
    assert logits_of({"logits": x}) is x
    assert logits_of((x, "aux")) is x
    assert logits_of("nothing") is None


def test_resolve_distill():
    assert resolve_distill(None, 1.0) is None
    fn = resolve_distill("alpha-divergence", 1.0)
    assert fn(torch.zeros(2, 3), torch.zeros(2, 3)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match=r"`distill` got 'kl'; allowed: 'inplace-kl', 'alpha-divergence', None"):
        resolve_distill("kl", 1.0)


def test_shape_mismatch():
    with pytest.raises(ConfigError, match=r"student logits of shape \(2, 3\) and soft targets of shape \(2, 4\)"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 4))
