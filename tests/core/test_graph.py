"""batch_systems: the systems of one call as one graph, eager and scripted."""

import pytest
import torch

from atomplug.core import NeighborList, NeighborListOptions, System, batch_systems

OPTIONS = NeighborListOptions(2.5, True, True)
TYPES = [1, 6, 8]
MESSAGE = "this model knows only the atom types [1, 6, 8]"


def species_table() -> torch.Tensor:
    table = torch.full((max(TYPES) + 1,), -1, dtype=torch.long)
    for index, number in enumerate(TYPES):
        table[number] = index
    return table


def system(types, positions, pairs) -> System:
    types = torch.tensor(types, dtype=torch.int32)
    positions = torch.tensor(positions, dtype=torch.float64, requires_grad=True)
    pairs = torch.tensor(pairs, dtype=torch.int32).reshape(-1, 2)
    shifts = torch.zeros((pairs.shape[0], 3), dtype=torch.int32)
    vectors = positions.index_select(0, pairs[:, 1]) - positions.index_select(0, pairs[:, 0])
    result = System(types, positions, torch.zeros((3, 3), dtype=torch.float64), torch.zeros(3, dtype=torch.bool))
    result.add_neighbor_list(NeighborList(OPTIONS, pairs, shifts, vectors))
    return result


@pytest.fixture(params=["eager", "scripted"])
def batch(request):
    return batch_systems if request.param == "eager" else torch.jit.script(batch_systems)


def test_two_systems_one_graph(batch):
    first = system([8, 1], [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]], [[0, 1], [1, 0]])
    second = system([6, 1, 1], [[5.0, 0.0, 0.0], [6.0, 0.0, 0.0], [5.0, 1.2, 0.0]], [[0, 1], [0, 2], [2, 1]])
    result = batch([first, second], OPTIONS, species_table(), MESSAGE)

    assert result.species.tolist() == [2, 0, 1, 0, 0]
    assert result.pairs.dtype == torch.long
    assert result.pairs.tolist() == [[0, 1], [1, 0], [2, 3], [2, 4], [4, 3]]
    assert result.owners.tolist() == [0, 0, 1, 1, 1]
    assert list(result.offsets) == [0, 2, 5]
    expected = torch.cat([first.get_neighbor_list(OPTIONS).vectors, second.get_neighbor_list(OPTIONS).vectors])
    assert torch.equal(result.vectors, expected)
    # gradients flow through the vectors back to each system's positions
    result.vectors.pow(2).sum().backward()
    assert first.positions.grad is not None and second.positions.grad is not None
    assert first.positions.grad.abs().sum() > 0 and second.positions.grad.abs().sum() > 0


@pytest.mark.parametrize("unknown", [7, 9, -1], ids=["not in the table", "beyond the table", "negative"])
def test_unknown_type_refused_with_the_message(batch, unknown):
    known = system([8, 1], [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]], [[0, 1], [1, 0]])
    stranger = system([1, unknown], [[0.0, 0.0, 0.0], [0.9, 0.0, 0.0]], [[0, 1], [1, 0]])
    with pytest.raises((ValueError, torch.jit.Error), match=r"this model knows only the atom types \[1, 6, 8\]"):
        batch([known, stranger], OPTIONS, species_table(), MESSAGE)
