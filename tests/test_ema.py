"""EMA callback: decay schedule, update rule, swap/restore, checkpoint contents and bit-exact resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.ema import EMA, ema_decay


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- schedule ------------------------------------------------------------------------------------------
def test_decay_schedule_values():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0  # the first two updates copy the weights
    assert ema_decay(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(10_001) == pytest.approx(0.999, abs=1e-7)  # power 0.75: 0.999 after ~10k updates
    assert ema_decay(215_444) == pytest.approx(0.9999, abs=1e-7)
    assert ema_decay(10**7) == 0.9999  # clipped at max_decay
    assert ema_decay(7, update_after_step=5) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(6, update_after_step=5) == 0.0
    assert ema_decay(3, inv_gamma=2.0, power=1.0) == pytest.approx(1 - 1 / 2)
    assert ema_decay(3, min_decay=0.9) == 0.9
    values = [ema_decay(n) for n in range(2, 2000)]
    assert all(b >= a for a, b in zip(values, values[1:]))


class Holder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.register_buffer("count", torch.zeros(()))


def test_update_follows_the_formula():
    module, ema = Holder(), EMA()
    ema._initialize(module)
    expected = module.w.detach().clone()
    for n, value in enumerate([1.0, 2.0, 4.0, 8.0, -3.0]):
        with torch.no_grad():
            module.w.fill_(value)
        ema.update(module)
        d = ema_decay(n)
        expected = d * expected + (1 - d) * value
        torch.testing.assert_close(ema.averaged_weights["w"], expected)
    assert ema.num_updates == 5 and ema.decay == ema_decay(4)
    assert "count" not in ema.averaged_weights  # buffers are not averaged


def test_swap_and_restore():
    module, ema = Holder(), EMA()
    with ema.averaged(module):  # before any average exists: no-op
        assert torch.equal(module.w, torch.zeros(3))
    ema._initialize(module)
    ema._ema["w"] = torch.tensor([1.0, 2.0, 3.0])
    live = torch.tensor([0.1, 0.2, 0.3])
    with torch.no_grad():
        module.w.copy_(live)
    with ema.averaged(module):
        assert torch.equal(module.w, torch.tensor([1.0, 2.0, 3.0]))
        with ema.averaged(module):  # nested: still averaged, restored only by the outer block
            assert torch.equal(module.w, torch.tensor([1.0, 2.0, 3.0]))
        assert torch.equal(module.w, torch.tensor([1.0, 2.0, 3.0]))
    assert torch.equal(module.w, live)
    with pytest.raises(RuntimeError, match="boom"):
        with ema.averaged(module):
            raise RuntimeError("boom")
    assert torch.equal(module.w, live)
    assert module.w.requires_grad


# ---- with a Trainer --------------------------------------------------------------------------------------
class Regressor(pl.LightningModule):
    """A tiny net with a norm layer (buffers) that records the weights its eval loops see."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))
        self.seen: dict[str, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def validation_step(self, batch, batch_idx):
        self.seen["val"] = self.net[0].weight.detach().clone()

    def test_step(self, batch, batch_idx):
        self.seen["test"] = self.net[0].weight.detach().clone()

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)}


def data() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True).sin()), batch_size=8, shuffle=False)


def trainer(tmp_path, max_epochs, ema, **kw) -> pl.Trainer:
    return pl.Trainer(max_epochs=max_epochs, callbacks=[ema], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      num_sanity_val_steps=0, deterministic=True, **kw)


def test_fit_updates_each_step_and_eval_loops_use_the_average(tmp_path):
    torch.manual_seed(0)
    module, ema = Regressor(), EMA()
    trainer(tmp_path, 2, ema).fit(module, data(), data())
    assert ema.num_updates == 6  # 3 batches x 2 epochs
    averaged = ema.averaged_weights["net.0.weight"]
    assert not torch.equal(averaged, module.net[0].weight), "the average must differ from the live weights"
    assert torch.equal(module.seen["val"], averaged), "validation ran on the live weights"
    trainer(tmp_path, 2, ema).test(module, data())
    assert torch.equal(module.seen["test"], averaged)
    assert not torch.equal(module.net[0].weight, averaged), "the live weights were not restored after test"


def test_gradient_accumulation_updates_once_per_optimizer_step(tmp_path):
    module, ema = Regressor(), EMA()
    t = trainer(tmp_path, 2, ema, accumulate_grad_batches=3)
    t.fit(module, data())
    assert ema.num_updates == t.global_step == 2


def test_checkpoint_holds_the_average_and_the_raw_weights(tmp_path):
    torch.manual_seed(0)
    module, ema = Regressor(), EMA()
    t = trainer(tmp_path, 2, ema)
    t.fit(module, data())
    path = tmp_path / "ema.ckpt"
    t.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["callbacks"]["EMA"]
    for name, p in module.named_parameters():
        assert torch.equal(ckpt["state_dict"][name], ema.averaged_weights[name])
        assert torch.equal(state["live"][name], p.detach())
        assert torch.equal(state["ema"][name], ema.averaged_weights[name])
    for name, b in module.named_buffers():
        assert torch.equal(ckpt["state_dict"][name], b)  # buffers are the live ones
    # a checkpoint loaded alone runs the averaged weights
    alone = Regressor.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(alone.net[0].weight, ema.averaged_weights["net.0.weight"])


def test_state_dict_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    module, ema = Regressor(), EMA()
    trainer(tmp_path, 1, ema).fit(module, data())
    torch.save(ema.state_dict(), tmp_path / "state.pt")
    restored = EMA()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.num_updates == ema.num_updates and restored.decay == ema.decay
    assert restored.averaged_weights.keys() == ema.averaged_weights.keys()
    assert all(torch.equal(restored.averaged_weights[k], v) for k, v in ema.averaged_weights.items())


def test_resume_continues_bit_exactly(tmp_path):
    torch.manual_seed(0)
    straight, ema_straight = Regressor(), EMA()
    trainer(tmp_path / "a", 4, ema_straight).fit(straight, data(), data())

    torch.manual_seed(0)
    first, ema_first = Regressor(), EMA()
    t = trainer(tmp_path / "b", 2, ema_first)
    t.fit(first, data(), data())
    t.save_checkpoint(tmp_path / "half.ckpt")

    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    resumed, ema_resumed = Regressor(), EMA()
    trainer(tmp_path / "c", 4, ema_resumed).fit(resumed, data(), data(), ckpt_path=tmp_path / "half.ckpt")

    assert ema_resumed.num_updates == ema_straight.num_updates == 12
    for name, p in straight.named_parameters():
        assert torch.equal(dict(resumed.named_parameters())[name], p), f"live {name} differs after resume"
        assert torch.equal(ema_resumed.averaged_weights[name], ema_straight.averaged_weights[name]), name
    for name, b in straight.named_buffers():
        assert torch.equal(dict(resumed.named_buffers())[name], b)
