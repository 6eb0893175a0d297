"""nets.pointwise: strided 1x1 convolutions as subsample + stride-1 convolution, the same numbers in any layout."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from lit_imit.nets.pointwise import subsample_strided_pointwise_convs


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.ReLU(), nn.Conv2d(16, 12, 3, padding=1),
                         nn.Conv2d(12, 12, 1, stride=(2, 3)), nn.Conv2d(12, 12, 1),
                         nn.Conv2d(12, 8, 1, stride=2, padding=1), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1, stride=2))


@pytest.mark.parametrize("hw", [(32, 24), (33, 25)], ids=["even", "odd"])
def test_the_swap_keeps_outputs_gradients_and_state_dict(hw):
    plain, swapped = _net(), _net()
    # left alone: stride 1, padding, and >= 16 input channels (oneDNN's strided kernel is fine there)
    assert subsample_strided_pointwise_convs(swapped) == 2
    assert [type(m).__name__ for m in swapped] == ["SubsampledPointwiseConv2d", "ReLU", "Conv2d",
                                                   "SubsampledPointwiseConv2d", "Conv2d", "Conv2d", "Conv2d", "Conv2d"]
    assert swapped.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8, *hw)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_swapped = plain(xa), swapped(xb)
    torch.testing.assert_close(out_swapped, out_plain)
    grad = torch.randn_like(out_plain)
    out_plain.backward(grad)
    out_swapped.backward(grad)
    torch.testing.assert_close(xb.grad, xa.grad)
    for p, q in zip(plain.parameters(), swapped.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


NARROW_CHANNELS_LAST_STEP = """
import torch
from torch import nn
from lit_imit.nets.pointwise import subsample_strided_pointwise_convs
torch.set_num_threads(1)
conv = nn.Conv2d(8, 16, 1, stride=2, bias=False)
subsample_strided_pointwise_convs(conv)
conv.to(memory_format=torch.channels_last)
x = torch.randn(8, 8, 128, 96).contiguous(memory_format=torch.channels_last).requires_grad_()
y = conv(x)
y.backward(torch.randn_like(y))
print(float(x.grad.abs().sum() > 0))
"""


def test_a_narrow_strided_pointwise_layer_trains_in_channels_last():
    """The layer shape that kills the process through oneDNN's strided kernel (8 -> 16 channels, stride 2, 128x96,
    channels-last) runs its backward to the end once swapped. In a subprocess: a crash must not take pytest along."""
    out = subprocess.run([sys.executable, "-c", NARROW_CHANNELS_LAST_STEP], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["1.0"], (out.returncode, out.stderr[-2000:])

