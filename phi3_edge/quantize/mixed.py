"""Mixed precision: int8 for the projections that hurt most at int4, int4 elsewhere.

llama.cpp's Q4_K_M and onnxruntime-genai's `mixed_layers` give more bits to the MLP down projection of the
first and last eighth of the layers and of every third layer between: quantization error there reaches the
residual stream unfiltered and compounds (onnxruntime-genai#1450, onnxruntime#24384 on Phi-4-mini).
The choice is data: quantize/recipe.py turns it into per-tensor overrides of the recipe.
"""

from __future__ import annotations


def uses_more_bits(layer: int, num_layers: int) -> bool:
    """The layer choice llama.cpp calls use_more_bits: first/last eighth, and every third in between."""
    eighth = num_layers // 8
    return layer < eighth or layer >= 7 * num_layers // 8 or (layer - eighth) % 3 == 2


def down_proj_name(layer: int) -> str:
    """The checkpoint name of a layer's MLP down projection (the tensor mixed precision widens)."""
    return f"model.layers.{layer}.mlp.down_proj.weight"
