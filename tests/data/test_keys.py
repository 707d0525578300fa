import pytest
import torch

from pairsmith.data.keys import INSTANCE, LABEL, KeyedDataset, batch_keys, collate


def test_collate_stacks_images_and_keys():
    batch = [
        (torch.full((1, 3, 3), i, dtype=torch.uint8), {INSTANCE: i, LABEL: i % 2}) for i in range(4)
    ]
    images, keys = collate(batch)
    assert images.shape == (4, 1, 3, 3) and images.dtype == torch.uint8
    assert keys[INSTANCE].dtype == torch.long
    assert keys[INSTANCE].tolist() == [0, 1, 2, 3]
    assert keys[LABEL].tolist() == [0, 1, 0, 1]


def test_collate_errors():
    with pytest.raises(ValueError, match="batch"):
        collate([])
    with pytest.raises(ValueError, match="same keys"):
        collate([(torch.zeros(1, 2, 2), {INSTANCE: 0}), (torch.zeros(1, 2, 2), {LABEL: 0})])


def test_batch_keys():
    k = batch_keys(instance=[0, 1], label=torch.tensor([3, 4]))
    assert k["label"].dtype == torch.long
    with pytest.raises(ValueError, match="same length"):
        batch_keys(instance=[0, 1], label=[0])


def test_protocol_is_structural():
    class Tiny:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(1, 2, 2), {INSTANCE: i}

    assert isinstance(Tiny(), KeyedDataset)
