"""ACT (Action Chunking with Transformers, Zhao et al. 2023) as a plain ``nn.Module``.

The network predicts a chunk of ``chunk_size`` future actions from proprioception (qpos) and camera images:

* **CVAE encoder** (training only, ``use_vae``): tokens [CLS, proj(qpos), proj(a_1) .. proj(a_k)] plus a fixed
  1-D sinusoid table go through a post-norm transformer encoder; padded actions are hidden through the key
  padding mask, so they cannot influence the posterior. The CLS output gives (mu, log sigma^2) of a
  ``latent_dim`` Gaussian and z is drawn by reparameterisation. At inference z = 0, the prior mean.
* **Policy**: every camera image goes through a ResNet-18 (frozen batch norm) and a 1x1 conv to ``dim_model``
  channels; each feature cell is a token with a 2-D sine position. In the original all cameras share
  ``backbones[0]``; ``shared_backbone=False`` gives each camera its own ResNet. Two more tokens, proj(z) and
  proj(qpos), get a learned 2-slot position embedding. A post-norm transformer encoder reads all tokens and a
  decoder with ``chunk_size`` learned queries attends to them; a linear head maps each query to an action.
* Positions are added to queries and keys at every attention layer (never to values), as in DETR.
* Low-dimensional observations besides qpos (``extra_state_dims``, e.g. the object poses of the original
  ACT sim's ``env_state``) each get their own projection and token, as LeRobot does for its environment
  state; the CVAE encoder keeps reading qpos only. With ``n_cameras=0`` the policy reads only these tokens
  (the original's state-only variant has no backbone either).

About the decoder depth: the original builds 7 decoder layers, but it keeps the intermediate outputs and
reads index 0, i.e. the first layer's (layer-normed) output. Layers 2-7 never influence the loss and receive
no gradient. ``n_decoder_layers=1`` (LeRobot's preset and the default here) computes exactly what the original
uses; with n > 1 this module really uses all n layers (the final output, as a fixed DETR would).

The original also has an ``is_pad_head`` that no loss uses; it is left out.

Auxiliary state (not in the original; ``aux_dim``): a head regresses a low-dimensional target, e.g. the object
poses, that the images must carry. By default it reads the mean of the encoder's image tokens. With
``aux_token`` it reads spatial-softmax keypoints of each camera's backbone features instead, before the
encoder, and its estimate (detached: the action loss cannot bend it) enters the encoder as one more token, as
the true object pose does in a state policy. The policy then gets the image's answer to "where is the object" in
the form it is quickest to use, instead of having to find it in the image tokens by itself.

Shapes are batch-first everywhere: tokens are (B, L, dim_model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_imit.nets.backbones import ResNet18Features, images_to_input
from lit_imit.nets.dropout import FastDropout
from lit_imit.nets.dropout import dropout as cheap_dropout
from lit_imit.nets.positional import SinePositionEncoding2d, sinusoid_table
from lit_imit.nets.spatial_softmax import SpatialSoftmax

#: keypoints per camera of the auxiliary estimate (``aux_token``), as robomimic's and Diffusion Policy's pooling
AUX_KEYPOINTS = 32


def _dropout_layer(p: float, fast: bool) -> nn.Module:
    """``FastDropout`` (cheap CPU masks, ``lit_imit.nets.dropout``) or torch's ``nn.Dropout``."""
    return FastDropout(p) if fast else nn.Dropout(p)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v inputs (positions go into q and k, not v).

    With ``fast_dropout`` and dropout on, CPU training computes the attention explicitly so that the dropout on
    its weights draws cheap masks (``lit_imit.nets.dropout``); otherwise ``F.scaled_dot_product_attention``,
    whose own dropout draws a Bernoulli sample per weight.
    """

    def __init__(self, dim: int, n_heads: int, dropout: float, fast_dropout: bool = True) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim_model={dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.fast_dropout = fast_dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """query (B, Lq, d), key/value (B, Lk, d); key_padding_mask (B, Lk) is True where a key must be ignored."""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        mask = None if key_padding_mask is None else (~key_padding_mask)[:, None, None, :]
        if self.training and self.dropout > 0 and self.fast_dropout and q.device.type == "cpu":
            out = self._attend_with_cheap_dropout(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                 dropout_p=self.dropout if self.training else 0.0)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def _attend_with_cheap_dropout(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """softmax(q k^T / sqrt(d) masked) with dropout, times v: SDPA's math, the dropout's masks drawn cheaply."""
        scores = torch.matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = cheap_dropout(scores.softmax(dim=-1), self.dropout, True)
        return torch.matmul(weights, v)


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> Linear, the transformer's position-wise MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float, fast_dropout: bool = True) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = _dropout_layer(dropout, fast_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer: x = LN(x + SA(x + pos)); x = LN(x + FF(x))."""

    def __init__(self, dim: int, n_heads: int, dim_feedforward: int, dropout: float,
                 fast_dropout: bool = True) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout, fast_dropout)
        self.ff = FeedForward(dim, dim_feedforward, dropout, fast_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = (_dropout_layer(dropout, fast_dropout) for _ in range(2))

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        qk = x + pos
        x = self.norm1(x + self.dropout1(self.self_attn(qk, qk, x, key_padding_mask)))
        return self.norm2(x + self.dropout2(self.ff(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention over the queries, cross-attention to the memory, MLP."""

    def __init__(self, dim: int, n_heads: int, dim_feedforward: int, dropout: float,
                 fast_dropout: bool = True) -> None:
        super().__init__()
        self.self_attn = Attention(dim, n_heads, dropout, fast_dropout)
        self.cross_attn = Attention(dim, n_heads, dropout, fast_dropout)
        self.ff = FeedForward(dim, dim_feedforward, dropout, fast_dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = (_dropout_layer(dropout, fast_dropout) for _ in range(3))

    def forward(self, tgt: Tensor, memory: Tensor, memory_with_pos: Tensor, query_pos: Tensor) -> Tensor:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, q, tgt)))
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(tgt + query_pos, memory_with_pos, memory)))
        return self.norm3(tgt + self.dropout3(self.ff(tgt)))


class TransformerEncoder(nn.Module):
    """A stack of post-norm encoder layers (no final norm: post-norm layers end normalised already)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, dim_feedforward: int, dropout: float,
                 fast_dropout: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, n_heads, dim_feedforward, dropout, fast_dropout)
                                    for _ in range(n_layers))

    def forward(self, x: Tensor, pos: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos, key_padding_mask)
        return x


class TransformerDecoder(nn.Module):
    """A stack of decoder layers followed by a LayerNorm (DETR applies it even in the post-norm setting)."""

    def __init__(self, n_layers: int, dim: int, n_heads: int, dim_feedforward: int, dropout: float,
                 fast_dropout: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, n_heads, dim_feedforward, dropout, fast_dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        memory_with_pos = memory + pos
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_with_pos, query_pos)
        return self.norm(tgt)


@dataclass
class ACTOutput:
    """Predicted (normalised) action chunk, the posterior parameters when the CVAE encoder ran, and the
    auxiliary state prediction when the network has an ``aux_dim`` head."""

    actions: Tensor  # (B, chunk_size, action_dim)
    mu: Tensor | None = None  # (B, latent_dim)
    logvar: Tensor | None = None  # (B, latent_dim)
    aux: Tensor | None = None  # (B, aux_dim)


class ACT(nn.Module):
    """The ACT network. Inputs are normalised qpos/actions and uint8 (B, H, W, 3) images, one per camera."""

    def __init__(
        self,
        state_dim: int = 14,
        action_dim: int = 14,
        n_cameras: int = 1,
        chunk_size: int = 100,
        dim_model: int = 512,
        n_heads: int = 8,
        dim_feedforward: int = 3200,
        n_encoder_layers: int = 4,
        n_decoder_layers: int = 1,
        n_vae_encoder_layers: int = 4,
        latent_dim: int = 32,
        dropout: float = 0.1,
        use_vae: bool = True,
        shared_backbone: bool = True,
        pretrained_backbone: str | None = None,
        fuse_frozen_bn: bool = True,
        fast_dropout: bool = True,
        extra_state_dims: Sequence[int] = (),
        allow_random_init: bool = False,
        backbone_norm: str = "frozen_batch",
        backbone_stride: int = 32,
        aux_dim: int = 0,
        image_pos_in_tokens: bool = False,
        aux_token: bool = False,
    ) -> None:
        super().__init__()
        if n_cameras < 0:
            raise ValueError(f"n_cameras must be >= 0, got {n_cameras}")
        self.state_dim, self.action_dim, self.n_cameras = state_dim, action_dim, n_cameras
        self.extra_state_dims = [int(d) for d in extra_state_dims]
        self.chunk_size, self.dim_model, self.latent_dim = chunk_size, dim_model, latent_dim
        self.use_vae, self.shared_backbone = use_vae, shared_backbone
        self.image_pos_in_tokens = bool(image_pos_in_tokens)
        self.aux_token = bool(aux_token)
        self.channels_last = False

        if use_vae:  # CVAE encoder q(z | qpos, a_1..a_k)
            self.vae_cls_embed = nn.Embedding(1, dim_model)
            self.vae_state_proj = nn.Linear(state_dim, dim_model)
            self.vae_action_proj = nn.Linear(action_dim, dim_model)
            self.vae_encoder = TransformerEncoder(n_vae_encoder_layers, dim_model, n_heads, dim_feedforward, dropout,
                                                  fast_dropout)
            self.vae_latent_proj = nn.Linear(dim_model, 2 * latent_dim)
            self.register_buffer("vae_pos_table", sinusoid_table(2 + chunk_size, dim_model)[None], persistent=False)

        n_backbones = 0 if n_cameras == 0 else 1 if shared_backbone else n_cameras
        self.backbones = nn.ModuleList(
            ResNet18Features(pretrained_backbone, fuse_frozen_bn=fuse_frozen_bn, allow_random_init=allow_random_init,
                             norm=backbone_norm, stride=backbone_stride)
            for _ in range(n_backbones)
        )
        if n_cameras:
            self.image_proj = nn.Conv2d(self.backbones[0].num_channels, dim_model, kernel_size=1)
            self.image_pos = SinePositionEncoding2d(dim_model)
        self.state_proj = nn.Linear(state_dim, dim_model)
        self.extra_state_projs = nn.ModuleList(nn.Linear(d, dim_model) for d in self.extra_state_dims)
        self.latent_proj = nn.Linear(latent_dim, dim_model)
        if aux_dim and not n_cameras:
            raise ValueError("aux_dim needs cameras: the auxiliary head reads the image features")
        if aux_token and not aux_dim:
            raise ValueError("aux_token needs aux_dim > 0: the token carries the auxiliary estimate")
        # positions of the [latent, qpos, extra states..., auxiliary estimate] tokens
        self.extra_pos_embed = nn.Embedding(2 + len(self.extra_state_dims) + int(self.aux_token), dim_model)
        self.encoder = TransformerEncoder(n_encoder_layers, dim_model, n_heads, dim_feedforward, dropout, fast_dropout)
        self.decoder = TransformerDecoder(n_decoder_layers, dim_model, n_heads, dim_feedforward, dropout, fast_dropout)
        self.query_embed = nn.Embedding(chunk_size, dim_model)
        self.action_head = nn.Linear(dim_model, action_dim)
        # Auxiliary state head (ACTModule's aux_state_keys): from the mean of the encoder's image tokens, or
        # (aux_token) from backbone keypoints, its estimate then an input token
        self.aux_head: nn.Module | None = None
        if aux_dim and not self.aux_token:
            self.aux_head = nn.Linear(dim_model, aux_dim)
        elif self.aux_token:
            channels = self.backbones[0].num_channels
            self.aux_keypoints = nn.ModuleList(SpatialSoftmax(channels, AUX_KEYPOINTS) for _ in range(n_cameras))
            self.aux_head = nn.Sequential(nn.Linear(2 * AUX_KEYPOINTS * n_cameras, dim_model), nn.ReLU(),
                                          nn.Linear(dim_model, aux_dim))
            self.aux_token_proj = nn.Linear(aux_dim, dim_model)
        self._reset_transformer_parameters()

    def _reset_transformer_parameters(self) -> None:
        """Xavier-uniform init of the main encoder/decoder matrices, as DETR's Transformer does."""
        for module in (self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    # ---- parameter groups -----------------------------------------------------------------------------
    def backbone_parameters(self) -> list[nn.Parameter]:
        """ResNet parameters (they get their own learning rate)."""
        return list(self.backbones.parameters())

    def non_backbone_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbones.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]

    def use_channels_last(self, enabled: bool = True) -> None:
        """Run the ResNets in channels-last layout (usually faster convolutions on CPU and on tensor cores)."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        if self.n_cameras:
            self.backbones.to(memory_format=fmt)
            self.image_proj.to(memory_format=fmt)
        self.channels_last = enabled

    # ---- CVAE encoder ---------------------------------------------------------------------------------
    def encode_latent(self, qpos: Tensor, actions: Tensor, action_is_pad: Tensor | None) -> tuple[Tensor, Tensor]:
        """Posterior (mu, logvar), each (B, latent_dim), from normalised qpos (B, S) and actions (B, k, A)."""
        if not self.use_vae:
            raise RuntimeError("this ACT was built with use_vae=False: it has no CVAE encoder")
        b, k, _ = actions.shape
        if k != self.chunk_size:
            raise ValueError(f"expected {self.chunk_size} actions per sample, got {k}")
        tokens = torch.cat(
            [
                self.vae_cls_embed.weight.expand(b, 1, -1),
                self.vae_state_proj(qpos).unsqueeze(1),
                self.vae_action_proj(actions),
            ],
            dim=1,
        )
        mask = None
        if action_is_pad is not None:
            mask = torch.cat([action_is_pad.new_zeros(b, 2), action_is_pad.bool()], dim=1)
        cls_out = self.vae_encoder(tokens, self.vae_pos_table.to(tokens.dtype), mask)[:, 0]
        mu, logvar = self.vae_latent_proj(cls_out).chunk(2, dim=-1)
        return mu, logvar

    # ---- policy ----------------------------------------------------------------------------------------
    def _camera_features(self, images: Sequence[Tensor]) -> list[Tensor]:
        """Backbone features (B, C, h, w) per camera; a shared backbone sees all cameras in one batch."""
        if not images:
            return []
        inputs = [images_to_input(img, channels_last=self.channels_last) for img in images]
        if not self.shared_backbone:
            return [bb(x) for bb, x in zip(self.backbones, inputs)]
        if all(x.shape == inputs[0].shape for x in inputs):
            return list(self.backbones[0](torch.cat(inputs, dim=0)).chunk(len(inputs), dim=0))
        return [self.backbones[0](x) for x in inputs]

    def observation_tokens(
        self, qpos: Tensor, images: Sequence[Tensor], extra_states: Sequence[Tensor] = ()
    ) -> tuple[Tensor, Tensor]:
        """Tokens (B, L, d) for [qpos, extra states, (auxiliary estimate,) image cells of every camera] and their
        positions (1, L, d); see :meth:`observation_tokens_and_estimate`."""
        tokens, positions, _ = self.observation_tokens_and_estimate(qpos, images, extra_states)
        return tokens, positions

    def observation_tokens_and_estimate(
        self, qpos: Tensor, images: Sequence[Tensor], extra_states: Sequence[Tensor] = (),
        aux_token_value: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """:meth:`observation_tokens` plus, with ``aux_token``, the auxiliary estimate (B, aux_dim). The token
        carries the (detached) estimate, or ``aux_token_value`` when given (teacher forcing in training).

        Cameras are concatenated camera after camera; the original concatenates feature maps along the
        width instead, which is the same set of (token, position) pairs in another order, and attention
        does not depend on the order.
        """
        if len(images) != self.n_cameras:
            raise ValueError(f"expected {self.n_cameras} camera images, got {len(images)}")
        if len(extra_states) != len(self.extra_state_dims):
            raise ValueError(f"expected {len(self.extra_state_dims)} extra state inputs, got {len(extra_states)}")
        tokens, positions = [self.state_proj(qpos).unsqueeze(1)], [self.extra_pos_embed.weight[1:2].unsqueeze(0)]
        for i, (proj, state) in enumerate(zip(self.extra_state_projs, extra_states)):
            tokens.append(proj(state).unsqueeze(1))
            positions.append(self.extra_pos_embed.weight[2 + i : 3 + i].unsqueeze(0))
        features = self._camera_features(images)
        estimate = self.estimate_aux(features) if self.aux_token else None
        if estimate is not None:
            value = estimate.detach() if aux_token_value is None else aux_token_value.to(estimate.dtype)
            tokens.append(self.aux_token_proj(value).unsqueeze(1))
            positions.append(self.extra_pos_embed.weight[-1:].unsqueeze(0))
        for feat in features:
            proj = self.image_proj(feat)
            pos = self.image_pos(proj).to(proj.dtype)
            if self.image_pos_in_tokens:
                proj = proj + pos
            tokens.append(proj.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2))
        return torch.cat(tokens, dim=1), torch.cat(positions, dim=1), estimate

    def estimate_aux(self, features: Sequence[Tensor]) -> Tensor:
        """``aux_token``'s estimate (B, aux_dim) from each camera's backbone features (B, C, h, w)."""
        keypoints = [kp(feat).flatten(1) for kp, feat in zip(self.aux_keypoints, features)]
        return self.aux_head(torch.cat(keypoints, dim=-1).to(features[0].dtype))

    def encode(self, obs_tokens: Tensor, obs_pos: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder memory (B, 1 + L, d) over [latent, observation tokens] and its positions (1, 1 + L, d)."""
        latent_token = self.latent_proj(z).unsqueeze(1).to(obs_tokens.dtype)
        tokens = torch.cat([latent_token, obs_tokens], dim=1)
        pos = torch.cat([self.extra_pos_embed.weight[0:1].unsqueeze(0).to(obs_pos.dtype), obs_pos], dim=1)
        return self.encoder(tokens, pos), pos

    def decode_memory(self, memory: Tensor, pos: Tensor) -> Tensor:
        """Normalised action chunk (B, k, A) from the encoder memory."""
        query_pos = self.query_embed.weight.unsqueeze(0).to(memory.dtype)
        tgt = torch.zeros(memory.shape[0], self.chunk_size, self.dim_model, dtype=memory.dtype, device=memory.device)
        return self.action_head(self.decoder(tgt, memory, pos, query_pos))

    def decode(self, obs_tokens: Tensor, obs_pos: Tensor, z: Tensor) -> Tensor:
        """Normalised action chunk (B, k, A) from observation tokens and latents z (B, latent_dim)."""
        return self.decode_memory(*self.encode(obs_tokens, obs_pos, z))

    def predict_aux(self, memory: Tensor) -> Tensor:
        """The auxiliary head's prediction (B, aux_dim) from the mean of the image tokens of ``memory``.

        Only image tokens are pooled: the latent token carries the posterior's view of the target actions and
        the state tokens carry the low-dimensional inputs, and neither may answer for the images.
        """
        if self.aux_head is None or self.aux_token:
            raise RuntimeError("this ACT has no auxiliary head on the encoder memory (aux_dim=0 or aux_token)")
        first_image_token = 2 + len(self.extra_state_dims)  # latent, qpos, extra states
        return self.aux_head(memory[:, first_image_token:].mean(dim=1))

    def forward(
        self,
        qpos: Tensor,
        images: Sequence[Tensor],
        actions: Tensor | None = None,
        action_is_pad: Tensor | None = None,
        z: Tensor | None = None,
        extra_states: Sequence[Tensor] = (),
        aux_token_value: Tensor | None = None,
    ) -> ACTOutput:
        """Training (actions given, use_vae): z from the posterior. Otherwise z = ``z`` or 0 (prior mean).
        ``aux`` is the head on the encoder memory, predicted only when actions are given (the policy never needs
        it), or with ``aux_token`` the estimate, which is an input and so always made; ``aux_token_value``
        replaces the estimate in the token (teacher forcing)."""
        mu = logvar = None
        if z is None:
            if self.use_vae and actions is not None:
                mu, logvar = self.encode_latent(qpos, actions, action_is_pad)
                z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            else:
                z = qpos.new_zeros(qpos.shape[0], self.latent_dim)
        obs_tokens, obs_pos, estimate = self.observation_tokens_and_estimate(qpos, images, extra_states,
                                                                             aux_token_value)
        memory, pos = self.encode(obs_tokens, obs_pos, z)
        # the auxiliary target is a training signal only: computed when actions are given (training, validation);
        # with aux_token the estimate is an input, made in any case
        aux = estimate
        if aux is None and self.aux_head is not None and actions is not None:
            aux = self.predict_aux(memory)
        return ACTOutput(self.decode_memory(memory, pos), mu, logvar, aux)

    def decode_latents(
        self, qpos: Tensor, images: Sequence[Tensor], z: Tensor, extra_states: Sequence[Tensor] = ()
    ) -> Tensor:
        """Chunks (B, n, k, A) for n latents per sample, z (B, n, latent_dim), in one decoder batch.

        The images go through the backbone once; only the transformer runs on the B * n rows.
        """
        b, n, _ = z.shape
        obs_tokens, obs_pos = self.observation_tokens(qpos, images, extra_states)
        obs_tokens = obs_tokens.repeat_interleave(n, dim=0)
        chunks = self.decode(obs_tokens, obs_pos, z.reshape(b * n, -1))
        return chunks.view(b, n, self.chunk_size, self.action_dim)
