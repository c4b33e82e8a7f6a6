"""A block with its skip connection removed computes exactly f(z) where the normal block computes z + f(z)."""
import pytest
import torch

from seelike.models.build import create_timm_model
from seelike.models.modify import ModificationError, remove_skip

KW = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10}


def reference_block(block, x, drop_attn, drop_mlp):
    """Written out from the definition, independent of the patched forward."""
    a = block.ls1(block.attn(block.norm1(x)))
    x = a if drop_attn else x + a
    m = block.ls2(block.mlp(block.norm2(x)))
    return m if drop_mlp else x + m


@pytest.mark.parametrize("branch", ["attn", "mlp", "both"])
def test_removed_skip_computes_branch_only(branch):
    torch.manual_seed(0)
    normal = create_timm_model("vit_tiny_patch16_224", KW).eval()
    ablated = create_timm_model("vit_tiny_patch16_224", KW, {"remove_skip": {"block": 1, "branch": branch}}).eval()
    ablated.load_state_dict(normal.state_dict())  # same parameters, same keys
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    normal, ablated = normal.double(), ablated.double()
    with torch.no_grad():
        want = reference_block(normal.blocks[1], x, branch in ("attn", "both"), branch in ("mlp", "both"))
        torch.testing.assert_close(ablated.blocks[1](x), want, rtol=0, atol=0)
        # the unablated block still computes z + f(z), and the other blocks are untouched
        torch.testing.assert_close(normal.blocks[1](x), reference_block(normal.blocks[1], x, False, False), rtol=0, atol=0)
        torch.testing.assert_close(ablated.blocks[0](x), normal.blocks[0](x), rtol=0, atol=0)
        assert not torch.allclose(ablated.blocks[1](x), normal.blocks[1](x))


def test_bad_requests_are_named():
    model = create_timm_model("vit_tiny_patch16_224", KW)
    with pytest.raises(ModificationError, match="block 7 does not exist.*3 blocks"):
        remove_skip(model, 7)
    with pytest.raises(ModificationError, match="branch"):
        remove_skip(model, 0, "norm")
    with pytest.raises(ModificationError, match="no .blocks"):
        remove_skip(create_timm_model("resnet18", {"num_classes": 10}), 0)
