"""Reading training state that may be split across processes: DDP (replicated), FSDP2 (DTensor shards),
DeepSpeed ZeRO-3 (partitioned parameters). One place, so every rank takes the same collective path.

- ``agree(flag)``: a decision every rank must share (skip a step, use cached features), ANDed over ranks;
- ``local(t)``: the part of a tensor this rank holds (its shard), for checks that are then agreed on;
- ``gathered(named)``: whole tensors, one at a time (bounded memory), on every rank; a collective per sharded one;
- ``state_to_save(model, rank0)``: what a final save writes, gathered (masters in float32 under ZeRO).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ..format.compat import deepspeed_zero_mapped


def world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def agree(flag: bool, device: torch.device) -> bool:
    """``flag`` ANDed over all ranks (one tiny all-reduce; none in a single process)."""
    if world_size() == 1:
        return flag
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor(int(flag), device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())


def _zero3(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")  # a ZeRO-3 partitioned parameter (its data is a placeholder)


def numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter (a ZeRO-3 parameter's own ``numel`` is its empty placeholder's)."""
    return param.ds_numel if _zero3(param) else param.numel()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part: the local shard of a DTensor or a ZeRO-3 partition, the tensor itself otherwise."""
    if isinstance(tensor, DTensor):
        return tensor.to_local()
    if _zero3(tensor):
        return tensor.ds_tensor
    return tensor


def gathered(named: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, whole tensor)`` one at a time on every rank; all ranks must iterate the same names."""
    for name, tensor in named:
        if isinstance(tensor, DTensor):
            yield name, tensor.full_tensor()
        elif _zero3(tensor):
            import deepspeed

            with deepspeed.zero.GatheredParameters([tensor]):
                yield name, tensor.data
        else:
            yield name, tensor


def _deepspeed_master(param: torch.Tensor) -> bool:
    """A parameter whose float32 master lives in a DeepSpeed ZeRO optimizer (the module holds a 16-bit copy)."""
    return param.requires_grad and (_zero3(param) or deepspeed_zero_mapped(param))


def state_to_save(model: nn.Module, rank0: bool) -> dict[str, torch.Tensor]:
    """The state a final save writes, gathered on every rank and kept (on CPU) by rank 0 only.

    A peft model gives the entries its ``save_pretrained`` keeps (LoRA weights and the ``modules_to_save``
    copies, by the model's own names), so the frozen base is never gathered; any other model gives
    everything. Under DeepSpeed, trained weights are its float32 masters.
    """
    state = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))  # tied names too: ZeRO-3 state is a placeholder
    unique = dict(model.named_parameters())
    names = [n for n in state if n in unique or n not in params]  # a tied alias (lm_head of tied embeddings) once
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        # peft selects (and renames) the adapter's entries; values that are their own index map them back
        picked = get_peft_model_state_dict(model, state_dict={n: torch.tensor(i) for i, n in enumerate(names)})
        names = [names[int(t)] for t in picked.values()]
    out = {}
    for name, tensor in gathered((n, params.get(n, state[n])) for n in names):
        if name in params and _deepspeed_master(params[name]):
            from deepspeed.utils import safe_get_full_fp32_param

            tensor = safe_get_full_fp32_param(params[name])
        if rank0:
            out[name] = tensor.detach().to("cpu", copy=True)
    return out
