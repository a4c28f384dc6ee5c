"""A researcher's own network: any torch.nn.Module works. lossland passes `in_shape` and `n_classes`
because the signature names them; everything else comes from the config's model.factory_kwargs."""

from torch import nn


class ResidualMLP(nn.Module):
    """x -> Linear -> (x + tanh(Linear(x))) per block -> Linear to the classes."""

    def __init__(self, in_dim: int, width: int, blocks: int, n_classes: int):
        super().__init__()
        self.stem = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(blocks))
        self.head = nn.Linear(width, n_classes)

    def forward(self, x):
        h = self.stem(x.flatten(1))
        for block in self.blocks:
            h = h + block(h).tanh()
        return self.head(h)


def make_net(in_shape, n_classes, width=16, blocks=1):
    return ResidualMLP(in_shape[0], width, blocks, n_classes)
