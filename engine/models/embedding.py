"""Token and position embedding tables left uninitialised: the checkpoint fills them.

`nn.Embedding` draws random weights as it is built; models are built on the meta
device, where that draw runs through torch's Python references and imports
torch._dynamo (about 2 s of a worker's startup) for values nobody reads.
"""

from __future__ import annotations

import torch
from torch import nn


def embedding(num_embeddings: int, embedding_dim: int) -> nn.Embedding:
    """An embedding table of this shape, its values whatever the loader writes."""
    return nn.Embedding(
        num_embeddings, embedding_dim, _weight=torch.empty(num_embeddings, embedding_dim)
    )
