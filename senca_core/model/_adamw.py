"""``AdamW``: torch's AdamW (``foreach=True``) without ``torch.optim``'s start-up cost.

Constructing any ``torch.optim.Optimizer`` (and calling its ``zero_grad``) imports torch's compiler stack
(``torch._dynamo``, to mark the methods as not compilable): 1.1-1.4 s of CPU in a fresh process, paid by every
training process before its first step, for a compiler this project never uses. This class does the same
arithmetic as ``torch.optim.AdamW(..., foreach=True)`` in the same order with the same ``torch._foreach_*`` kernels
(decoupled weight decay, bias-corrected moments, no amsgrad), so training gives the same numbers to the last bit
(test ``tests/test_adamw.py``), and its ``state_dict`` has torch's layout, so a checkpoint of either loads into the
other. Multi-worker training still imports the compiler through ``DistributedDataParallel``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class AdamW:
    """AdamW over one group of parameters (all on one device, one dtype), updated all at once."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(betas), float(eps), float(weight_decay)
        self.state: dict[int, dict[str, torch.Tensor]] = {}  # parameter index -> step, exp_avg, exp_avg_sq

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def _state(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state.get(i)
        if s is None:
            s = self.state[i] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        return s

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (one without is left as it is, as torch does)."""
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        if any(p.grad.is_sparse for _, p in live):
            raise RuntimeError("AdamW does not support sparse gradients")
        states = [self._state(i, p) for i, p in live]
        params = [p for _, p in live]
        grads = [p.grad for _, p in live]
        exp_avgs = [s["exp_avg"] for s in states]
        exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        steps = [s["step"] for s in states]
        beta1, beta2 = self.betas
        lr = self.lr
        torch._foreach_add_(steps, torch.tensor(1.0, device="cpu"), alpha=1.0)
        if self.weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * self.weight_decay)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        counts = [s.item() for s in steps]
        step_size = [(lr / (1 - beta1 ** n)) * -1 for n in counts]
        bias_correction2_sqrt = [(1 - beta2 ** n) ** 0.5 for n in counts]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_size)

    def _group(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
                "amsgrad": False, "foreach": True, "maximize": False, "capturable": False, "differentiable": False,
                "fused": None, "decoupled_weight_decay": True, "params": list(range(len(self.params)))}

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer layout: ``{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}``."""
        return {"state": {i: dict(s) for i, s in sorted(self.state.items())}, "param_groups": [self._group()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("loaded state dict does not match this optimizer's parameters")
        group = groups[0]
        self.lr, self.betas = float(group["lr"]), tuple(group["betas"])
        self.eps, self.weight_decay = float(group["eps"]), float(group["weight_decay"])
        index = {old: new for new, old in enumerate(group["params"])}
        self.state = {}
        for old, s in state_dict["state"].items():
            p = self.params[index[int(old)]]
            self.state[index[int(old)]] = {
                "step": torch.as_tensor(s["step"], dtype=torch.float32).detach().clone().cpu(),
                "exp_avg": s["exp_avg"].detach().to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": s["exp_avg_sq"].detach().to(device=p.device, dtype=p.dtype).clone()}
