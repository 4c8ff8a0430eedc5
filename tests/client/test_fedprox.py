"""FedProx's proximal term (Li et al. 2020): ``(mu / 2) * ||w - w_t||^2`` added to the local
loss, with gradient ``mu * (w - w_t)``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollinate.client import proximal_gradient, proximal_mu, proximal_term
from pollinate.strategy import FedProx


def test_proximal_gradient_hand_case() -> None:
    # 0.5 * ([3, -1] - [1, 1]) = [1, -1] ; 0.5 * (2 - 2) = 0
    local = {"w": np.array([3.0, -1.0]), "b": np.array(2.0)}
    global_ = {"w": np.array([1.0, 1.0]), "b": np.array(2.0)}
    grad = proximal_gradient(local, global_, mu=0.5)
    assert list(grad) == ["w", "b"]
    assert grad["w"].tolist() == [1.0, -1.0]
    assert grad["b"].tolist() == 0.0


def test_proximal_gradient_with_mu_zero_is_zero() -> None:
    grad = proximal_gradient({"w": np.array([3.0, -1.0])}, {"w": np.zeros(2)}, mu=0.0)
    assert grad["w"].tolist() == [0.0, 0.0]


@settings(max_examples=50, deadline=None)
@given(
    w=hnp.arrays(np.float64, 4, elements=st.floats(-100, 100)),
    mu=st.floats(0, 10),
    eps=st.floats(1e-3, 1e-1),
)
def test_proximal_gradient_is_the_derivative_of_the_proximal_term(
    w: np.ndarray, mu: float, eps: float
) -> None:
    w_t = np.linspace(-1, 1, 4)

    def term(x: np.ndarray) -> float:
        return mu / 2 * float(np.sum((x - w_t) ** 2))

    grad = proximal_gradient({"w": w}, {"w": w_t}, mu)["w"]
    # central differences are exact for a quadratic, up to rounding
    for i in range(4):
        step = np.zeros(4)
        step[i] = eps
        numeric = (term(w + step) - term(w - step)) / (2 * eps)
        assert numeric == pytest.approx(grad[i], rel=1e-6, abs=1e-4 * (1 + mu * 100))


def test_proximal_mu_reads_the_strategys_config() -> None:
    assert proximal_mu(FedProx(proximal_mu=0.3).configure_fit(1)) == 0.3


def test_proximal_mu_is_zero_when_the_run_does_not_use_fedprox() -> None:
    assert proximal_mu({}) == 0.0
    assert proximal_mu({"lr": 0.1}) == 0.0


def test_proximal_mu_is_a_float() -> None:
    mu = proximal_mu({"proximal_mu": 1})
    assert mu == 1.0 and type(mu) is float


def test_proximal_term_value_and_autograd_gradient() -> None:
    torch = pytest.importorskip("torch")
    w = [
        torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True),
        torch.tensor([0.5, -0.5], dtype=torch.float64, requires_grad=True),
    ]
    w_t = [
        torch.tensor([[0.0, 2.0], [1.0, 1.0]], dtype=torch.float64),
        torch.tensor([0.5, 0.5], dtype=torch.float64),
    ]
    mu = 0.2
    term = proximal_term(w, w_t, mu)
    # ||w - w_t||^2 = (1 + 0 + 4 + 9) + (0 + 1) = 15 ; (0.2 / 2) * 15 = 1.5
    assert term.dim() == 0
    assert term.item() == pytest.approx(1.5, rel=1e-12)
    term.backward()
    for p, p_t in zip(w, w_t, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, mu * (p.detach() - p_t))


def test_proximal_term_added_to_a_loss_pulls_training_towards_the_global_model() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    global_params = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # local training has moved away from the global model
    loss = proximal_term(model.parameters(), global_params, mu=0.4)
    loss.backward()
    for p in model.parameters():
        # gradient is mu * (w - w_t) = 0.4 * 1 everywhere
        torch.testing.assert_close(p.grad, torch.full_like(p, 0.4))
    assert loss.item() == pytest.approx(0.4 / 2 * 4, rel=1e-6)  # 4 parameters, each off by 1


def test_proximal_term_is_zero_at_the_global_model_and_with_mu_zero() -> None:
    torch = pytest.importorskip("torch")
    w = [torch.tensor([1.0, 2.0], requires_grad=True)]
    assert float(proximal_term(w, [torch.tensor([1.0, 2.0])], mu=5.0).detach()) == 0.0
    assert float(proximal_term(w, [torch.tensor([9.0, 9.0])], mu=0.0).detach()) == 0.0


def test_proximal_term_needs_as_many_global_tensors_as_parameters() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        proximal_term([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)], mu=1.0)


def test_proximal_gradient_refuses_weights_trained_in_place() -> None:
    # a client that trained the arrays it received has no global weights left: the term
    # would be 0, FedProx silently off
    arrays = {"w": np.array([1.0, 2.0])}
    with pytest.raises(ValueError, match=r"(?s)same arrays.*in place.*arrays.copy\(\)"):
        proximal_gradient(arrays, arrays, mu=0.5)
    view = {"w": arrays["w"][:]}  # a view of the same memory is the same weights
    with pytest.raises(ValueError, match="in place"):
        proximal_gradient(view, arrays, mu=0.5)
    # a frozen layer passed as it came is no pull: only the trained one's counts
    frozen = {"w": arrays["w"], "b": np.array([1.0])}
    grad = proximal_gradient(frozen, {"w": arrays["w"], "b": np.array([0.0])}, mu=0.5)
    assert grad["w"].tolist() == [0.0, 0.0] and grad["b"].tolist() == [0.5]
