"""--train-top-layers N: a 🤗 BERT-style base (BERT, MiniLM, MPNet) split at layer k = L − N into a frozen bottom
(the embeddings and layers 1..k, run once per text; `qpairs.tokencache` keeps their output) and the N top layers
that train on it."""
from __future__ import annotations

import torch
from torch import nn


def base_layers(model) -> nn.ModuleList:
    """The transformer layers of a 🤗 BERT-style base (``model.encoder.layer``)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"--train-top-layers needs a BERT-style base (encoder.layer); {type(model).__name__} has none")
    return layers


def check_top_layers(n: int, total: int) -> None:
    """Refuse --train-top-layers `n` outside 1 ≤ n < `total`, the base's number of layers."""
    if not 1 <= n < total:
        raise ValueError(f"--train-top-layers must be between 1 and {total - 1}: the base has {total} layers, got {n}")


def freeze_bottom(model, n: int) -> None:
    """Only the top `n` layers of `model` train (`check_top_layers` first), without attention-probability dropout:
    with it, attention runs outside the fused CPU kernel (docs/results.md, "Training the top layers")."""
    layers = base_layers(model)
    check_top_layers(n, len(layers))
    model.requires_grad_(False)
    layers[len(layers) - n :].requires_grad_(True)
    for layer in layers[len(layers) - n :]:
        attention = getattr(layer, "attention", None)
        inner = getattr(attention, "self", None) or getattr(attention, "attn", None)  # BERT's, MPNet's
        dropout = getattr(inner, "dropout", None)
        if isinstance(dropout, nn.Dropout):
            dropout.p = 0.0


def run_layers(model, hidden: torch.Tensor, attention_mask: torch.Tensor, layers) -> torch.Tensor:
    """Token states [B, T, hidden] through `layers` of `model`, masked as the model masks its own forward."""
    from transformers.masking_utils import create_bidirectional_mask

    mask = create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=attention_mask)
    extra = relative_positions(model, hidden)
    for layer in layers:
        hidden = layer(hidden, mask, **extra)
        if isinstance(hidden, tuple):  # MPNet's layers return (states, ...)
            hidden = hidden[0]
    return hidden


def relative_positions(model, hidden: torch.Tensor) -> dict:
    """The keyword a base's layers need beside the mask: MPNet's encoder computes one relative-position bias for
    all its layers and hands it to each (BERT's layers need nothing)."""
    compute = getattr(getattr(model, "encoder", None), "compute_position_bias", None)
    return {"position_bias": compute(hidden)} if compute is not None else {}


@torch.no_grad()
def bottom_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """The output of layer `layer` (counting from 1): the embeddings and the layers below run, no gradients."""
    bottom = list(base_layers(model))[:layer]
    return run_layers(model, model.embeddings(input_ids=input_ids), attention_mask, bottom)


def layer_prefixes(model, layers) -> list[str]:
    """State-dict prefixes of `layers` in `model` (e.g. ``encoder.layer.5.``)."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names[id(layer)] + "." for layer in layers]
