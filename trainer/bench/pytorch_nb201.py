"""The NAS-Bench-201 network in PyTorch eager mode, trained for a fixed number of steps on
random CIFAR-sized batches: the baseline of nasop-trainer's throughput benchmark.

Usage: python pytorch_nb201.py ARCH --steps N --batch-size B --threads T [--device cpu|cuda]
Prints one JSON object with images_per_second.
"""
import argparse, json, time
import torch
import torch.nn as nn


class ReLUConvBN(nn.Sequential):
    def __init__(self, cin, cout, k, stride, pad):
        super().__init__(nn.ReLU(), nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout))


class Pool(nn.Module):
    def forward(self, x):
        return nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def op(name, c):
    return {
        "skip_connect": nn.Identity(),
        "nor_conv_1x1": ReLUConvBN(c, c, 1, 1, 0),
        "nor_conv_3x3": ReLUConvBN(c, c, 3, 1, 1),
        "avg_pool_3x3": Pool(),
    }.get(name)


class Cell(nn.Module):
    def __init__(self, arch, c):
        super().__init__()
        self.nodes = []
        self.ops = nn.ModuleList()
        for j, part in enumerate(arch.strip().split("+"), start=1):
            for i, item in enumerate(part.strip("|").split("|")):
                name = item.split("~")[0]
                m = op(name, c)
                if m is not None:
                    self.nodes.append((i, j, len(self.ops)))
                    self.ops.append(m)
        self.n = arch.count("+") + 2

    def forward(self, x):
        states = [x]
        for j in range(1, self.n):
            terms = [self.ops[k](states[i]) for (i, jj, k) in self.nodes if jj == j]
            states.append(sum(terms) if terms else torch.zeros_like(x))
        return states[-1]


class Reduction(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a = ReLUConvBN(cin, cout, 3, 2, 1)
        self.b = ReLUConvBN(cout, cout, 3, 1, 1)
        self.short = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.b(self.a(x)) + self.short(x)


def network(arch, c=16, n=5, classes=10):
    layers = [nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
    for stage in range(3):
        ch = c << stage
        if stage:
            layers.append(Reduction(ch // 2, ch))
        layers += [Cell(arch, ch) for _ in range(n)]
    layers += [nn.BatchNorm2d(4 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, classes)]
    return nn.Sequential(*layers)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = network(a.arch).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = loss_fn(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    params = sum(q.numel() for q in net.parameters())
    print(json.dumps({"implementation": "pytorch", "torch": torch.__version__, "device": a.device, "params": params,
                      "steps": a.steps, "batch_size": a.batch_size, "threads": a.threads,
                      "images_per_second": a.steps * a.batch_size / secs}))


if __name__ == "__main__":
    main()
