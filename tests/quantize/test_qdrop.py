"""QDrop's masks (recon.qdrop): the right probability, no pattern, reproducible, the same global draw per rank,
and a selection that is torch.where to the bit."""

from __future__ import annotations

import pytest
import torch

from toolchain.quantize.reconstruct.qdrop import keep_mask, qdrop_hook, select


def test_half_masks_keep_half_of_the_elements_at_every_bit_position():
    # 1e6 fair bits: the fraction's standard deviation is 5e-4, so 0.005 is 10 sigma for the whole mask and ~3.5 sigma
    # per bit position (125k elements each). A packed-bit draw that reused or dropped a bit position fails here.
    keep = keep_mask((1000, 1000), 0.5, torch.Generator().manual_seed(0))
    assert keep.dtype == torch.bool and keep.shape == (1000, 1000)
    assert abs(keep.float().mean().item() - 0.5) < 0.005
    by_position = keep.view(-1, 8).float().mean(0)
    assert (by_position - 0.5).abs().max().item() < 0.005


def test_neighbouring_elements_are_independent():
    # Adjacent elements come from the same random byte: they must still agree half of the time (tolerance as above).
    keep = keep_mask((1_000_000,), 0.5, torch.Generator().manual_seed(1))
    agree = (keep[1:] == keep[:-1]).float().mean().item()
    assert abs(agree - 0.5) < 0.005


def test_other_probabilities_and_odd_shapes():
    keep = keep_mask((3, 5, 7, 11), 0.8, torch.Generator().manual_seed(2))  # 1155 elements, not a multiple of 8
    assert keep.shape == (3, 5, 7, 11)
    big = keep_mask((400_000,), 0.8, torch.Generator().manual_seed(2))
    assert abs(big.float().mean().item() - 0.8) < 0.005
    odd = keep_mask((13,), 0.5, torch.Generator().manual_seed(3))
    assert odd.shape == (13,)


def test_the_same_generator_state_draws_the_same_mask():
    a = keep_mask((4, 3, 9, 9), 0.5, torch.Generator().manual_seed(7))
    b = keep_mask((4, 3, 9, 9), 0.5, torch.Generator().manual_seed(7))
    c = keep_mask((4, 3, 9, 9), 0.5, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_rank_gets_its_rows_of_the_global_draw_and_dropped_elements_dequantize_to_x():
    x = torch.randn(6, 2, 4, 4)
    scale, zero = torch.tensor(0.1), torch.tensor(3.0)
    quantized = torch.round(x / scale + zero)
    whole = qdrop_hook(0.5, torch.Generator().manual_seed(5), lambda: (None, 6))([x, scale, zero], quantized)
    rows = torch.tensor([1, 4])
    part = qdrop_hook(0.5, torch.Generator().manual_seed(5), lambda: (rows, 6))([x[rows], scale, zero], quantized[rows])
    assert torch.equal(part, whole[rows])
    dropped = whole != quantized
    assert dropped.any() and torch.allclose((whole[dropped] - zero) * scale, x[dropped], atol=1e-6)


def test_select_gives_where_s_values_and_gradients_exactly_in_the_tensors_layout():
    # select replaces torch.where for speed; it must not change a single bit of the values or the gradients
    # (torch.equal: exact), in NCHW and in channels-last, and its output keeps the channels-last layout.
    generator = torch.Generator().manual_seed(11)
    for layout in (torch.contiguous_format, torch.channels_last):
        chosen = torch.randn(4, 6, 5, 7, generator=generator).contiguous(memory_format=layout).requires_grad_(True)
        other = (torch.randn(4, 6, 5, 7, generator=generator) * 1e3).contiguous(memory_format=layout)
        other.requires_grad_(True)
        keep = keep_mask((4, 6, 5, 7), 0.5, generator)
        grad = torch.randn(4, 6, 5, 7, generator=generator)
        expected = torch.where(keep, chosen, other)
        expected_grads = torch.autograd.grad(expected, [chosen, other], grad)
        got = select(keep, chosen, other)
        got_grads = torch.autograd.grad(got, [chosen, other], grad)
        assert torch.equal(got, expected)
        assert all(torch.equal(g, e) for g, e in zip(got_grads, expected_grads))
        assert got.is_contiguous(memory_format=layout)
    with pytest.raises(ValueError, match="one shape"):
        select(torch.ones(2, dtype=torch.bool), torch.zeros(3), torch.zeros(3))
