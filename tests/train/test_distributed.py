"""Two gloo ranks (real processes, real DDP) against one process on the same global batch."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lookalike.siglip import build_config, init_siglip_head
from lookalike.train.loss import global_sigmoid_loss

GLOBAL_BATCH = 12
# Pairs 1 and 8 share a photo (same group) and sit on different ranks: the mask must be global.
GROUPS = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 9, 10, 11])


def _model():
    from transformers import SiglipModel

    torch.manual_seed(0)
    model = SiglipModel(build_config("tiny", vocab_size=40, max_text_length=6))
    init_siglip_head(model)
    with torch.no_grad():  # a head that does not saturate: every term contributes gradient
        model.logit_scale.fill_(1.0)
        model.logit_bias.fill_(-1.0)
    return model


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randint(2, 40, (GLOBAL_BATCH, 6), generator=g)


def _rank(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lookalike.train.distributed import init_from_env, mean_over_ranks, shutdown

    w = init_from_env("cpu")
    model = _model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    pixels, ids = _batch()
    local = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    o = ddp(pixel_values=pixels[local], input_ids=ids[local])
    loss = global_sigmoid_loss(o.image_embeds, o.text_embeds, model.logit_scale, model.logit_bias, GROUPS[local])
    loss.backward()
    mean_loss = mean_over_ranks(loss.item(), w)
    if rank == 0:
        torch.save({"loss": mean_loss, "grads": {n: p.grad.clone() for n, p in model.named_parameters()}}, out)
    shutdown(w)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2])
def test_distributed_loss_and_gradients_equal_the_single_process_ones(tmp_path, world):
    out = str(tmp_path / "rank0.pt")
    mp.start_processes(_rank, args=(world, _free_port(), out), nprocs=world, join=True, start_method="spawn")
    got = torch.load(out)

    model = _model()
    pixels, ids = _batch()
    o = model(pixel_values=pixels, input_ids=ids)
    loss = global_sigmoid_loss(o.image_embeds, o.text_embeds, model.logit_scale, model.logit_bias, GROUPS)
    loss.backward()

    assert got["loss"] == pytest.approx(loss.item(), rel=1e-5)
    grads = dict(model.named_parameters())
    assert set(got["grads"]) == set(grads)
    for name, g in got["grads"].items():
        torch.testing.assert_close(g, grads[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    # the shared photo across ranks counted: without the mask the loss differs
    plain = global_sigmoid_loss(o.image_embeds, o.text_embeds, model.logit_scale, model.logit_bias,
                                torch.arange(GLOBAL_BATCH))
    assert abs(plain.item() - loss.item()) > 1e-3
