"""seelike.runtime: device selection, the forward's autocast, the full-float32 context."""
import pytest
import torch

from seelike import runtime


def test_device_names():
    assert runtime.device("cpu") == torch.device("cpu")
    assert runtime.device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="config key device: 'cuda:0' requested but no CUDA device is visible"):
            runtime.device("cuda:0")


def test_fp32_precision_turns_tf32_and_autocast_off_and_restores_them():
    """precision "fp32" is float32 on GPUs too: cuDNN's TF32 default and any TF32 matmul setting are
    off inside the forward's context and restored after it (the flags exist without a GPU), and an
    enclosing autocast does not reach the products."""
    old = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    x = torch.randn(4, 8)
    try:
        with runtime.autocast(torch.device("cpu"), "fp32"):
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is True and torch.get_float32_matmul_precision() == "high"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert (x @ x.T).dtype == torch.bfloat16
            with runtime.full_fp32():
                assert (x @ x.T).dtype == torch.float32
            assert (x @ x.T).dtype == torch.bfloat16
    finally:
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_is_bf16(precision):
    """CPU autocast's mixed type is bf16, for "fp16" too."""
    x = torch.randn(4, 8)
    with runtime.autocast(torch.device("cpu"), precision):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (x @ x.T).dtype == torch.bfloat16



def test_gram_matmul_is_tf32_only_on_cuda_and_restores_the_setting():
    """extraction.gram_precision "tf32" switches TF32 matmuls on for CUDA tensors only (the setting
    exists without a GPU); cuDNN's TF32 stays off, and the caller's settings come back."""
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("medium")
        with runtime.gram_matmul("tf32", torch.device("cuda")):
            assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32 is False
        for precision, device in (("tf32", "cpu"), ("fp32", "cuda"), ("fp32", "cpu")):
            with runtime.gram_matmul(precision, device):
                assert torch.get_float32_matmul_precision() == "highest", (precision, device)
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(ValueError, match=r"extraction\.gram_precision: 'bf16' is not one of fp32, tf32"):
            with runtime.gram_matmul("bf16"):
                pass
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]
