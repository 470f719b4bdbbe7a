"""An independent re-implementation of the original Patronus model, in its module layout
(nina-weng/patronus models/patronus_unet.py; keys in tests/fixtures/ckpt-keys-fmnist32.tsv),
used only to test checkpoint import.

It follows the original's code paths where they differ from ours: the prototype distances come
from two conv2d calls (||z||^2 - 2 z.p + ||p||^2, clamped), the min from a max-pool of negated
distances, and the time table from an nn.Embedding.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class SinusoidalPositionEmbeddings(nn.Module):
    def __init__(self, total_time_steps=1000, time_emb_dims=128, time_emb_dims_exp=512):
        super().__init__()
        half_dim = time_emb_dims // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -emb)
        ts = torch.arange(total_time_steps, dtype=torch.float32)
        emb = torch.unsqueeze(ts, dim=-1) * torch.unsqueeze(emb, dim=0)
        emb = torch.cat((emb.sin(), emb.cos()), dim=-1)
        self.time_blocks = nn.Sequential(
            nn.Embedding.from_pretrained(emb),
            nn.Linear(in_features=time_emb_dims, out_features=time_emb_dims_exp),
            nn.SiLU(),
            nn.Linear(in_features=time_emb_dims_exp, out_features=time_emb_dims_exp),
        )

    def forward(self, time):
        return self.time_blocks(time)


class VectorEmbedding(nn.Module):
    def __init__(self, num_protos, emb_dims):
        super().__init__()
        self.vector_fc = nn.Sequential(
            nn.Linear(num_protos, emb_dims), nn.SiLU(), nn.Linear(emb_dims, emb_dims)
        )

    def forward(self, s):
        return self.vector_fc(s)


class AttentionBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.group_norm = nn.GroupNorm(num_groups=8, num_channels=channels)
        self.mhsa = nn.MultiheadAttention(embed_dim=channels, num_heads=4, batch_first=True)

    def forward(self, x):
        B, _, H, W = x.shape
        h = self.group_norm(x)
        h = h.reshape(B, self.channels, H * W).swapaxes(1, 2)
        h, _ = self.mhsa(h, h, h)
        h = h.swapaxes(2, 1).view(B, self.channels, H, W)
        return x + h


class ResnetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, dropout_rate, emb_dims, apply_attention):
        super().__init__()
        self.act_fn = nn.SiLU()
        self.normlize_1 = nn.GroupNorm(num_groups=8, num_channels=in_channels)
        self.conv_1 = nn.Conv2d(in_channels, out_channels, 3, 1, padding="same")
        self.dense_1 = nn.Linear(emb_dims, out_channels)
        self.dense_2 = nn.Linear(emb_dims, out_channels)
        self.normlize_2 = nn.GroupNorm(num_groups=8, num_channels=out_channels)
        self.dropout = nn.Dropout2d(p=dropout_rate)
        self.conv_2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding="same")
        if in_channels != out_channels:
            self.match_input = nn.Conv2d(in_channels, out_channels, 1, 1)
        else:
            self.match_input = nn.Identity()
        self.attention = AttentionBlock(out_channels) if apply_attention else nn.Identity()

    def forward(self, x, t, c):
        h = self.conv_1(self.act_fn(self.normlize_1(x)))
        h += self.dense_1(self.act_fn(t))[:, :, None, None]
        h += self.dense_2(self.act_fn(c))[:, :, None, None]
        h = self.conv_2(self.dropout(self.act_fn(self.normlize_2(h))))
        h = h + self.match_input(x)
        return self.attention(h)


class DownSample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.downsample = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x, *args):
        return self.downsample(x)


class UpSample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.upsample = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, channels, 3, 1, 1)
        )

    def forward(self, x, *args):
        return self.upsample(x)


class ProtoEncoder(nn.Module):
    def __init__(self, channel_inputs, channels, kernel_sizes, strides, paddings):
        super().__init__()
        layers = []
        for c_in, c_out, k, s, p in zip(
            channel_inputs, channels, kernel_sizes, strides, paddings, strict=True
        ):
            layers += [nn.Conv2d(c_in, c_out, k, s, p), nn.ReLU()]
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        return self.features(x)


class ProactBlock(nn.Module):
    def __init__(self, encoder, num_protos, dim, eps=1e-4):
        super().__init__()
        self.encoder = encoder
        self.prototype_vectors = nn.Parameter(torch.rand(num_protos, dim, 1, 1))
        self.ones = nn.Parameter(torch.ones(num_protos, dim, 1, 1), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        z = self.encoder(x)
        x2_patch_sum = F.conv2d(z**2, weight=self.ones)
        xp = F.conv2d(z, weight=self.prototype_vectors)
        p2 = torch.sum(self.prototype_vectors**2, dim=(1, 2, 3)).view(-1, 1, 1)
        distances = F.relu(x2_patch_sum - 2 * xp + p2)
        min_distances = -F.max_pool2d(-distances, kernel_size=distances.shape[2:]).flatten(1)
        return torch.log((min_distances + 1) / (min_distances + self.eps))


PAPER_ENCODER = ((1, 32, 64, 64), (32, 64, 64, 128), (3,) * 4, (2, 1, 1, 1), (1, 0, 0, 0))


class OriginalPatronus(nn.Module):
    def __init__(
        self,
        input_channels=1,
        num_res_blocks=2,
        base_channels=64,
        base_channels_multiples=(1, 2, 4, 4),
        apply_attention=(False,) * 4,
        dropout_rate=0.1,
        time_multiple=4,
        num_protos=30,
        timesteps=1000,
        plb=PAPER_ENCODER,
    ):
        super().__init__()
        emb = base_channels * time_multiple
        self.proactBlock = ProactBlock(ProtoEncoder(*plb), num_protos, plb[1][-1])
        self.time_embeddings = SinusoidalPositionEmbeddings(timesteps, base_channels, emb)
        self.cond_embeddings = VectorEmbedding(num_protos, emb)
        self.first = nn.Conv2d(input_channels, base_channels, 3, 1, padding="same")
        levels = len(base_channels_multiples)
        self.encoder_blocks = nn.ModuleList()
        curr_channels = [base_channels]
        in_channels = base_channels
        for level in range(levels):
            out_channels = base_channels * base_channels_multiples[level]
            for _ in range(num_res_blocks):
                self.encoder_blocks.append(
                    ResnetBlock(
                        in_channels, out_channels, dropout_rate, emb, apply_attention[level]
                    )
                )
                in_channels = out_channels
                curr_channels.append(in_channels)
            if level != levels - 1:
                self.encoder_blocks.append(DownSample(in_channels))
                curr_channels.append(in_channels)
        self.bottleneck_blocks = nn.ModuleList(
            (
                ResnetBlock(in_channels, in_channels, dropout_rate, emb, True),
                ResnetBlock(in_channels, in_channels, dropout_rate, emb, False),
            )
        )
        self.decoder_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            out_channels = base_channels * base_channels_multiples[level]
            for _ in range(num_res_blocks + 1):
                encoder_in_channels = curr_channels.pop()
                self.decoder_blocks.append(
                    ResnetBlock(
                        encoder_in_channels + in_channels,
                        out_channels,
                        dropout_rate,
                        emb,
                        apply_attention[level],
                    )
                )
                in_channels = out_channels
            if level != 0:
                self.decoder_blocks.append(UpSample(in_channels))
        self.final = nn.Sequential(
            nn.GroupNorm(num_groups=8, num_channels=in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, input_channels, 3, 1, padding="same"),
        )

    def forward(self, x, t, x0):
        s = self.proactBlock(x0)
        time_emb = self.time_embeddings(t)
        cond_emb = self.cond_embeddings(s)
        h = self.first(x)
        outs = [h]
        for layer in self.encoder_blocks:
            h = layer(h, time_emb, cond_emb)
            outs.append(h)
        for layer in self.bottleneck_blocks:
            h = layer(h, time_emb, cond_emb)
        for layer in self.decoder_blocks:
            if isinstance(layer, ResnetBlock):
                h = torch.cat([h, outs.pop()], dim=1)
            h = layer(h, time_emb, cond_emb)
        return self.final(h), s
