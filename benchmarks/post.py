"""The plain script: the post's last example (DESIGN.md), as a person would write it."""

import torch

torch.manual_seed(42)
x_data = torch.linspace(0, 1, 50)
y_data = 2 * x_data + 1 + 0.1 * torch.randn(50)
w = torch.tensor(0.0, requires_grad=True)
b = torch.tensor(0.0, requires_grad=True)
lr = 0.1
for epoch in range(200):  # noqa: B007 (the post names it)
    y_pred = w * x_data + b
    loss = ((y_pred - y_data) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
        b -= lr * b.grad
    w.grad.zero_()
    b.grad.zero_()
print(f"Learned: y = {w.item():.3f}x + {b.item():.3f}")  # Learned: y = 1.924x + 1.050
