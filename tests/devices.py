"""The devices a test runs on: the CPU always, CUDA where torch sees a GPU (`make gpu-check` runs the
cuda cases on a GPU machine; elsewhere they are skipped, saying the accelerator is missing)."""

import pytest
import torch

NO_CUDA = (
    "needs a CUDA GPU: the accelerator is missing on this machine (torch sees no CUDA device); "
    "`make gpu-check` runs these cases on a GPU machine"
)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA))]
