"""``senca_core.model._adamw.AdamW``: torch's AdamW (``foreach=True``) to the last bit, without importing torch's
compiler, and checkpoints that load both ways."""

from __future__ import annotations

import subprocess
import sys

import torch

from senca_core.model import SencaConfig, build_model, make_batch, make_optimizer, seed_everything, train_step
from senca_core.model._adamw import AdamW
from test_model import FAST, _grid_slide


def _torch_adamw(model, config):
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)


def _train(config, make, steps, *, resume_with=None):
    """``steps`` SENCA-st steps on one synthetic slide (prototypes on after the first third, so some parameters have
    no gradient at first); with ``resume_with`` the optimizer is swapped half-way through its state dict."""
    batch = make_batch(_grid_slide(), config)
    torch.manual_seed(0)
    model = build_model(config, [batch])
    optimizer = make(model, config)
    generator = seed_everything(0)
    for i in range(steps):
        if resume_with is not None and i == steps // 2:
            state = optimizer.state_dict()
            optimizer = resume_with(model, config)
            optimizer.load_state_dict(state)
        train_step(model, batch, optimizer, generator=generator, use_prototypes=i >= steps // 3)
    return [p.detach().clone() for p in model.parameters()], optimizer


def test_the_same_parameters_and_moments_as_torch_adamw_to_the_last_bit():
    config = SencaConfig(**FAST)
    ours, opt_ours = _train(config, make_optimizer, 12)
    theirs, opt_theirs = _train(config, _torch_adamw, 12)
    assert isinstance(opt_ours, AdamW)
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    mine, torch_state = opt_ours.state_dict(), opt_theirs.state_dict()
    assert mine["state"].keys() == torch_state["state"].keys()  # the same parameters stepped (and the same left out)
    for i, s in torch_state["state"].items():
        assert torch.equal(mine["state"][i]["step"], s["step"])
        assert torch.equal(mine["state"][i]["exp_avg"], s["exp_avg"])
        assert torch.equal(mine["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
    assert {k: v for k, v in mine["param_groups"][0].items() if k != "params"} == \
        {k: v for k, v in torch_state["param_groups"][0].items() if k in mine["param_groups"][0] and k != "params"}


def test_a_checkpoint_of_either_resumes_in_the_other_with_the_same_numbers():
    config = SencaConfig(**FAST)
    straight, _ = _train(config, make_optimizer, 10)
    pairs = ((make_optimizer, _torch_adamw), (_torch_adamw, make_optimizer), (make_optimizer, make_optimizer))
    for first, second in pairs:
        resumed, _ = _train(config, first, 10, resume_with=second)
        assert all(torch.equal(a, b) for a, b in zip(straight, resumed))


def test_training_does_not_import_torch_compiler():
    """A whole ``fit`` (optimizer, deterministic mode, steps) in a fresh process: torch's compiler never loads, and
    the deterministic switch is on while training and restored after."""
    probe = ("import sys, torch\n"
             "sys.path.insert(0, 'tests')\n"
             "from test_model import FAST, _grid_slide\n"
             "from senca_core.model import SencaConfig, deterministic, fit\n"
             "seen = []\n"
             "fit(_grid_slide(), SencaConfig(**dict(FAST, epochs=3)),\n"
             "    callback=lambda e, p: seen.append(torch.are_deterministic_algorithms_enabled()))\n"
             "print(seen, torch.are_deterministic_algorithms_enabled(),\n"
             "      sorted(k for k in sys.modules if k.startswith(('torch._dynamo', 'torch._inductor')))[:3])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[True, True, True] False []", out.stdout
