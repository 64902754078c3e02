from __future__ import annotations

import torch
from torch import nn

from models._registry import ModelSpec, register_model


class LeNet5(nn.Module):
    """The classic LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, FC 120, 84, classes) with ReLU."""

    def __init__(self, *, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


# Four units (conv1, conv2, fc1, fc2) and no stages: at this size every unit is searched on its own.
register_model(ModelSpec(name="lenet5", build=LeNet5))
