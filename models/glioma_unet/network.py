"""A compact 3D U-Net for region-based glioma segmentation (WT, TC, ET logits).

Input: [batch, 4, D, H, W] in the channel order of ``neuroflow.core.roles.GLIOMA_INPUT_ROLES``
(T1, T1CE, T2, FLAIR), each channel z-scored in the brain. Output: [batch, 3, D, H, W] logits in the
order of ``neuroflow.core.labels.TUMOUR_REGIONS`` (WT, TC, ET); a sigmoid per channel gives the
probability of each nested region. Fully convolutional: every spatial size divisible by
2 ** (levels - 1) works. Small on purpose (about half a million weights) so it trains on a 2-core CPU.
"""

from __future__ import annotations

import torch
from torch import nn

from neuroflow.core.labels import TUMOUR_REGIONS
from neuroflow.core.roles import GLIOMA_INPUT_ROLES

IN_CHANNELS = len(GLIOMA_INPUT_ROLES)
OUT_CHANNELS = len(TUMOUR_REGIONS)


def _conv_block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """Two 3x3x3 convolutions, each followed by instance norm and LeakyReLU; the first may stride."""
    return nn.Sequential(
        nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class GliomaUNet(nn.Module):
    """U-Net with ``levels`` resolutions; channels double at each level starting from ``base``.

    Downsampling is a strided convolution, upsampling a transposed convolution; skip connections
    concatenate. The head is a 1x1x1 convolution to the region logits (no activation). Other pipelines
    (metastases) reuse the architecture with their own ``in_channels``/``out_channels``."""

    def __init__(self, base: int = 8, levels: int = 4, *, in_channels: int = IN_CHANNELS,
                 out_channels: int = OUT_CHANNELS) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.encoders = nn.ModuleList([_conv_block(in_channels, widths[0])])
        for i in range(1, levels):
            self.encoders.append(_conv_block(widths[i - 1], widths[i], stride=2))
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(levels - 1, 0, -1):
            self.upsamplers.append(nn.ConvTranspose3d(widths[i], widths[i - 1], 2, stride=2))
            self.decoders.append(_conv_block(2 * widths[i - 1], widths[i - 1]))
        self.head = nn.Conv3d(widths[0], out_channels, 1)
        self.base = base
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = skips.pop()
        for upsample, decoder in zip(self.upsamplers, self.decoders, strict=True):
            x = upsample(x)
            x = decoder(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
