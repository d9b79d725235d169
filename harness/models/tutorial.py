"""The PyTorch tutorial net (write-ups 000 and 003): conv-pool-conv-pool-fc-fc-fc."""

import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class TutorialNet(nn.Module):
    def __init__(self, c1: int = 6, c2: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, c1, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        # the write-ups hard-code 16 * 5 * 5: c2 must stay 16 for the view below to work
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


@register_model("tutorial_net")
def tutorial_net(c1: int = 6, c2: int = 16) -> nn.Module:
    return TutorialNet(c1, c2)
