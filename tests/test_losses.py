"One losses module: Eq. 1 = Eq. 13 literal form, Eq. 2, [15]'s weighting, mixed limits, mask loss, the unspecified switch."
import numpy as np
import pytest
import torch

from har_kit.core import KitError
from har_kit.losses import (bce_loss, eq2_weights, mask_loss, mixed_loss, pos_ratio, sample_weights_15, targets,
                            weighted_bce_loss)

torch.set_num_threads(1)
LOGITS = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([[1, 0, -1], [0, 1, 1], [-1, 0, 0], [1, 1, 0], [0, 0, 1]])


def literal(weight=lambda i, j: 1.0, ignore=False):
    p = torch.sigmoid(LOGITS).double()
    tot = 0.0
    for i in range(5):
        for j in range(3):
            y = int(LABELS[i, j])
            if ignore and y == -1: continue
            tot -= weight(i, j) * float(torch.log(p[i, j]) if y == 1 else torch.log(1 - p[i, j]))
    return tot / 5


@pytest.mark.parametrize('ignore', [False, True])
def test_bce_is_the_papers_sum_over_attributes(ignore):
    assert float(bce_loss(LOGITS, LABELS, ignore)) == pytest.approx(literal(ignore=ignore), rel=1e-5)


def test_eq2_and_15_weightings():
    r = pos_ratio(LABELS.numpy())
    np.testing.assert_allclose(r, [2 / 5, 2 / 5, 2 / 5])
    np.testing.assert_allclose(pos_ratio(LABELS.numpy(), True), [2 / 4, 2 / 5, 2 / 4])
    w2 = lambda i, j: 1 / (2 * r[j]) if LABELS[i, j] == 1 else 1 / (2 * (1 - r[j]))
    assert float(weighted_bce_loss(LOGITS, LABELS, r)) == pytest.approx(literal(w2), rel=1e-5)
    assert float(bce_loss(LOGITS, LABELS, weight=eq2_weights(LABELS, r))) == pytest.approx(literal(w2), rel=1e-5)
    w15 = lambda i, j: np.exp(1 - r[j]) if LABELS[i, j] == 1 else np.exp(r[j])
    assert float(bce_loss(LOGITS, LABELS, weight=sample_weights_15(LABELS, r))) == pytest.approx(literal(w15), rel=1e-5)


def test_mixed_limits_and_errors():
    r = pos_ratio(LABELS.numpy())
    assert float(mixed_loss(LOGITS, LABELS, r, 1.0)) == pytest.approx(float(bce_loss(LOGITS, LABELS)))
    assert float(mixed_loss(LOGITS, LABELS, r, 0.0)) == pytest.approx(float(weighted_bce_loss(LOGITS, LABELS, r)))
    with pytest.raises(KitError, match=r'\[0, 1\]'): mixed_loss(LOGITS, LABELS, r, -0.1)
    with pytest.raises(KitError, match='non-empty'): pos_ratio(np.zeros((0, 3)))
    with pytest.raises(KitError, match="batch\\['mask'\\]"): mask_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 4, 4))


def test_targets_and_mask_loss():
    y, keep = targets(LABELS, True)
    assert y.min() == 0 and keep.sum() == 13
    m = torch.zeros(1, 1, 4, 4); m[..., :2, :] = 1
    good = torch.full((1, 1, 2, 2), 30.) * (m[..., ::2, ::2] * 2 - 1)
    assert float(mask_loss(good, m)) < 1e-6 < float(mask_loss(-good, m))


def test_mask_loss_area_averages_the_mask_to_the_branch():
    "A single foreground pixel of a 4x4 mask is a 0.25 target in its 2x2 cell (area average), 0 in the others."
    m = torch.zeros(1, 1, 4, 4); m[0, 0, 1, 1] = 1          # a nearest resize (rows/cols 0, 2) would miss it
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    target = torch.tensor([[[[0.25, 0.0], [0.0, 0.0]]]])
    want = -(target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits))).mean()
    torch.testing.assert_close(mask_loss(logits, m), want)


def test_mask_loss_refuses_another_batch_of_masks_and_integer_masks():
    "Masks of another N than the logits (a raw ValueError) and a 0..255 uint8 mask (silently clamped to 0/1) are KitErrors."
    logits, m = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 8, 8)
    with pytest.raises(KitError, match='holds 3 masks for 2 images'): mask_loss(logits, torch.zeros(3, 1, 8, 8))
    with pytest.raises(KitError, match='holds 3 masks for 2 images'): mask_loss(logits, torch.zeros(3, 8, 8))   # (N, H, W) too
    with pytest.raises(KitError, match='mask_logits must be'): mask_loss(torch.zeros(2, 3, 2, 2), m)
    for dt in (torch.uint8, torch.int64):
        with pytest.raises(KitError, match='floats in \\[0, 1\\].*divide a 0..255 mask by 255'): mask_loss(logits, (m * 255).to(dt))
    m[..., :4, :] = 1
    assert float(mask_loss(logits, m.bool())) == pytest.approx(float(mask_loss(logits, m)))   # bools are 0/1 floats
    assert mask_loss(logits, m[:, 0]).shape == ()   # spatial handling as before: any H, W, (N, H, W) accepted


def test_bf16_logits_are_scored_in_float32_with_unrounded_weights():
    "Eq. 2's and [15]'s weights were cast to the logits' dtype: under amp='bf16' rounded to about 3 digits, the sum in bf16."
    w = sample_weights_15(LABELS.clamp(min=0), np.array([0.1, 0.37, 0.9], dtype=np.float32))
    half = bce_loss(LOGITS.bfloat16(), LABELS, weight=w)
    assert half.dtype == torch.float32 and torch.equal(half, bce_loss(LOGITS.bfloat16().float(), LABELS, weight=w))


def test_a_ratio_held_as_a_tensor_is_read():
    "DaHarLoss keeps pos_ratio as a buffer, which .to('cuda') moves: the weighted losses read it with np.asarray, which a CUDA tensor (or one needing grad) refuses."
    from har_kit.dahar import DaHarLoss
    ratio = torch.tensor([0.2, 0.5, 0.7], requires_grad=True)   # np.asarray refuses it as it refuses a CUDA tensor
    assert torch.equal(weighted_bce_loss(LOGITS, LABELS, ratio), weighted_bce_loss(LOGITS, LABELS, ratio.detach().numpy()))
    crit = DaHarLoss('weighted', pos_ratio=[0.2, 0.5, 0.7])
    crit.pos_ratio.requires_grad_(True)
    assert torch.isfinite(crit(dict(logits=LOGITS), dict(labels=LABELS))['loss'])


def test_another_archs_weights_are_refused():
    "resolve_weights('resnet101', 'ResNet50_Weights.IMAGENET1K_V1') gave ResNet101's weights: the prefix was dropped."
    from har_kit.backbones import resolve_weights
    with pytest.raises(KitError, match=r"are ResNet50_Weights, not resnet101's ResNet101_Weights"):
        resolve_weights('resnet101', 'ResNet50_Weights.IMAGENET1K_V1')
    assert resolve_weights('resnet101', 'ResNet101_Weights.IMAGENET1K_V1').name == 'IMAGENET1K_V1'


def test_the_mask_loss_is_computed_in_float32_under_bf16():
    "The pooled pseudo-mask target was rounded to the mask logits' bf16 (3 digits), as the weights of b3a61de were."
    m = torch.rand(2, 1, 16, 8, generator=torch.Generator().manual_seed(1))
    logits = torch.randn(2, 1, 4, 2, generator=torch.Generator().manual_seed(2))
    half = mask_loss(logits.bfloat16(), m)
    assert half.dtype == torch.float32 and torch.equal(half, mask_loss(logits.bfloat16().float(), m))
