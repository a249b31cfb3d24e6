"""The one device picker: what auto, cpu and cuda give here, and the ranks torchrun hands a process."""

from __future__ import annotations

import pytest
import torch
from resmtnet.util.errors import ResMTNetError
from resmtnet.util.runtime import pick_device, torchrun_ranks

GPU = torch.cuda.is_available()


def test_auto_takes_the_gpu_where_there_is_one_and_cpu_is_always_cpu():
    assert pick_device("auto").type == ("cuda" if GPU else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("cpu", local_rank=3) == torch.device("cpu")
    with pytest.raises(ResMTNetError, match="unknown device 'gpu'"):
        pick_device("gpu")


@pytest.mark.skipif(GPU, reason="this machine has a GPU: asking for CUDA is no error here")
def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ResMTNetError, match="no CUDA device"):
        pick_device("cuda")
    assert pick_device("auto", local_rank=1) == torch.device("cpu")


@pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")
def test_a_torchrun_process_gets_the_gpu_of_its_local_rank():
    assert pick_device("cuda", local_rank=0) == torch.device("cuda:0")
    assert pick_device("auto", local_rank=0) == torch.device("cuda:0")


def test_torchrun_ranks_come_from_its_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_ranks() == (1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_ranks() == (4, 3, 1)
