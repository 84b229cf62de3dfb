"""Layout-invariant initialisation: any shard of a matrix is the same slice of one draw."""

import torch

from runtime.init import BLOCK_ROWS, canonical_name, normal_shard


def test_any_rows_and_columns_are_the_slice_of_the_whole_matrix():
    shape = (3 * BLOCK_ROWS + 5, 40)
    whole = normal_shard(shape, None, None, seed=3, name="w", std=0.02)
    assert whole.std().item() == __import__("pytest").approx(0.02, rel=0.1)
    rows = torch.tensor([1, 7, BLOCK_ROWS + 2, 3 * BLOCK_ROWS + 4])  # strided, across blocks
    cols = torch.arange(10, 30)
    part = normal_shard(shape, rows, cols, seed=3, name="w", std=0.02)
    assert torch.equal(part, whole[rows][:, cols])
    other = normal_shard(shape, None, None, seed=3, name="v", std=0.02)
    assert not torch.equal(whole, other)  # each parameter draws its own values


def test_wrapped_and_tied_names_map_to_the_plain_model():
    assert canonical_name("layers.3._checkpoint_wrapped_module.attention.wq.weight", False) == \
        "layers.3.attention.wq.weight"
    assert canonical_name("output.weight", True) == "tok_embeddings.weight"
    assert canonical_name("output.weight", False) == "output.weight"
