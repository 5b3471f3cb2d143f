"""Network builders shared by the robustness tests."""
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def mlp(act: str) -> nn.Sequential:
    a = ACTIVATIONS[act]
    return nn.Sequential(nn.Linear(64, 32), a(), nn.Linear(32, 32), a(), nn.Linear(32, 10))


def cnn(act: str) -> nn.Sequential:
    a = ACTIVATIONS[act]
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), a(), nn.Conv2d(4, 8, 3, stride=2, padding=1), a(),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(32, 10))
