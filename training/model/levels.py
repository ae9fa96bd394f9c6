"""The resolution levels of a DynUNet, found by walking its *structure*, not its parameter names.

Why structure: the paper's public code listed parameter names per freeze level, and those lists
silently stopped matching when MONAI renamed modules. Here the blocks at each resolution level are
found by walking DynUNet's topology (``skip_layers``: a chain of
``DynUNetSkipLayer(downsample, upsample, super_head, next_layer)`` ending in the bottleneck), and a
level's distance from the bottleneck is its *depth*. Two users: the age head
(:mod:`training.model.age`) hooks the bottleneck, and the transfer-learning freeze levels
(:mod:`training.fit.finetune`) train the blocks up to a depth. Names are only used to *report*.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class UNetStructureError(ValueError):
    """A network in which no DynUNet encoder/decoder/bottleneck structure can be found."""


@dataclass
class UNetLevel:
    """The blocks at one resolution level (0 = full resolution) and their distance from the bottleneck."""

    index: int
    depth: int
    modules: list[nn.Module]


def unet_levels(model: nn.Module) -> tuple[list[UNetLevel], nn.Module]:
    """Walk a DynUNet's topology: per resolution level its encoder/decoder/head blocks, plus the bottleneck.

    An encoder block at resolution level ``i`` of an ``L``-level U-Net has depth ``L-1-i``; so has the
    decoder block that outputs that level, its deep-supervision head and, at level 0, the output block.
    Uses ``skip_layers`` (the chain DynUNet actually runs in ``forward``); falls back to the
    ``input_block``/``downsamples``/``upsamples`` lists if that chain is missing.
    """
    per_level: list[list[nn.Module]] = []
    layer = getattr(model, "skip_layers", None)
    if layer is not None and hasattr(layer, "next_layer"):
        while hasattr(layer, "next_layer") and hasattr(layer, "downsample"):
            mods = [layer.downsample, layer.upsample]
            head = getattr(layer, "super_head", None)
            if isinstance(head, nn.Module):
                mods.append(head)
            per_level.append(mods)
            layer = layer.next_layer
        bottleneck = layer
    else:
        try:
            enc = [model.input_block, *model.downsamples]
            dec = list(model.upsamples)[::-1]
            bottleneck = model.bottleneck
        except AttributeError as exc:
            raise UNetStructureError(f"{type(model).__name__} has no DynUNet structure (input_block/downsamples/"
                                     f"bottleneck/upsamples): freeze levels need a U-Net") from exc
        if len(enc) != len(dec):
            raise UNetStructureError(f"encoder has {len(enc)} blocks but decoder {len(dec)}: not a DynUNet")
        heads = list(getattr(model, "deep_supervision_heads", []) or [])
        per_level = [[e, d] for e, d in zip(enc, dec, strict=True)]
        for i, h in enumerate(heads):  # DynUNet: head i reads the decoder output of level i + 1
            if i + 1 < len(per_level):
                per_level[i + 1].append(h)
    if bottleneck is None or not per_level:
        raise UNetStructureError(f"{type(model).__name__}: no encoder/decoder levels found")
    out_block = getattr(model, "output_block", None)
    if isinstance(out_block, nn.Module):
        per_level[0].append(out_block)
    n = len(per_level) + 1  # + bottleneck level
    levels = [UNetLevel(i, n - 1 - i, mods) for i, mods in enumerate(per_level)]
    return levels, bottleneck


def bottleneck_extras(model: nn.Module) -> list[nn.Module]:
    """Modules that read the bottleneck and so belong to its level (the AgeU-Net ``age_head``)."""
    head = getattr(model, "age_head", None)
    return [head] if isinstance(head, nn.Module) else []


def module_names(model: nn.Module) -> dict[int, str]:
    """``id(module) → name`` for reports; a module registered under two names gets its first one."""
    names: dict[int, str] = {}
    for name, mod in model.named_modules():  # first (shortest, registration-order) name wins
        names.setdefault(id(mod), name or type(mod).__name__)
    return names
