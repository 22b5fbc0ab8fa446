"""The NAS-Bench-201 network in PyTorch eager mode: the baseline of nasop-trainer's benchmarks.

  python pytorch_nb201.py ARCH --steps N --batch-size B --threads T [--device cpu|cuda]
      trains for a fixed number of steps on random CIFAR-sized batches; prints images_per_second.
  python pytorch_nb201.py ARCH --train --data-dir D --epochs E --seed S [...]
      trains on Fashion-MNIST (IDX files) with nasop-trainer's recipe (SGD with Nesterov
      momentum, cosine learning rate per step to 0, weight decay, pad-4 random crop and flip
      on the raw pixels, a held-out validation share, evaluation every epoch) and prints the
      test accuracy and images per second of the whole loop (batching, augmentation, the
      per-step loss read-back and the validation passes included).
"""
import argparse, gzip, json, math, os, struct, time
from functools import reduce
import operator
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
            # reduce, not sum(): sum() starts from 0 and adds one more tensor per node.
            states.append(reduce(operator.add, terms) if terms else torch.zeros_like(x))
        return states[-1]


class Reduction(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.a = ReLUConvBN(cin, cout, 3, 2, 1)
        self.b = ReLUConvBN(cout, cout, 3, 1, 1)
        self.short = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x):
        return self.b(self.a(x)) + self.short(x)


def network(arch, c=16, n=5, classes=10, input_channels=3):
    layers = [nn.Conv2d(input_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
    for stage in range(3):
        ch = c << stage
        if stage:
            layers.append(Reduction(ch // 2, ch))
        layers += [Cell(arch, ch) for _ in range(n)]
    layers += [nn.BatchNorm2d(4 * c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * c, classes)]
    return nn.Sequential(*layers)


def idx(path):
    """An IDX file (plain or .gz) as a uint8 tensor."""
    if not os.path.exists(path):
        path += ".gz"
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    dims = struct.unpack(">" + "I" * data[3], data[4:4 + 4 * data[3]])
    return torch.frombuffer(bytearray(data[4 + 4 * data[3]:]), dtype=torch.uint8).view(*dims)


def train(a):
    """nasop-trainer's `train` on Fashion-MNIST, the same recipe, written as a PyTorch user would."""
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    x = idx(os.path.join(a.data_dir, "train-images-idx3-ubyte")).float().div_(255).unsqueeze(1)
    y = idx(os.path.join(a.data_dir, "train-labels-idx1-ubyte")).long()
    tx = idx(os.path.join(a.data_dir, "t10k-images-idx3-ubyte")).float().div_(255).unsqueeze(1)
    ty = idx(os.path.join(a.data_dir, "t10k-labels-idx1-ubyte")).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(a.seed))
    if a.limit:
        order = order[:a.limit]
    n_valid = round(len(order) * a.valid_fraction)
    vx, vy, x, y = x[order[:n_valid]], y[order[:n_valid]], x[order[n_valid:]], y[order[n_valid:]]
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    norm = lambda t: (t - mean) / std
    vx, tx = norm(vx), norm(tx)
    net = network(a.arch, a.channels, a.cells_per_stage, 10, 1).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=a.learning_rate, momentum=0.9, nesterov=True,
                          weight_decay=a.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n, b = len(y), a.batch_size
    batches = math.ceil(n / b)
    total = batches * a.epochs
    h, w = x.shape[2], x.shape[3]

    def augment(batch, g):
        padded = nn.functional.pad(batch, (4, 4, 4, 4))  # black, before normalisation
        offsets = torch.randint(0, 9, (len(batch), 2), generator=g).tolist()
        flips = torch.randint(0, 2, (len(batch),), generator=g).tolist()
        out = []
        for i, ((dy, dx), flip) in enumerate(zip(offsets, flips)):
            img = padded[i, :, dy:dy + h, dx:dx + w]
            out.append(img.flip(2) if flip else img)
        return torch.stack(out)

    def evaluate(ex, ey):
        net.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(ey), 1000):
                correct += (net(ex[s:s + 1000].to(dev)).argmax(-1) == ey[s:s + 1000].to(dev)).sum().item()
        net.train()
        return correct / len(ey)

    seconds = []
    for epoch in range(a.epochs):
        t = time.perf_counter()
        g = torch.Generator().manual_seed(a.seed * 1000 + epoch)
        perm = torch.randperm(n, generator=g)
        for k in range(batches):
            i = perm[k * b:(k + 1) * b]
            bx = x[i]
            if a.augment:
                bx = augment(bx, g)
            bx, by = norm(bx).to(dev), y[i].to(dev)
            for group in opt.param_groups:
                group["lr"] = 0.5 * a.learning_rate * (1 + math.cos(math.pi * (epoch * batches + k) / total))
            loss = loss_fn(net(bx), by)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss {loss.item()} at epoch {epoch + 1}")
        val = evaluate(vx, vy)
        seconds.append(time.perf_counter() - t)
        print(json.dumps({"epoch": epoch + 1, "val_accuracy": val, "epoch_seconds": seconds[-1]}), flush=True)
    print(json.dumps({"implementation": "pytorch", "torch": torch.__version__, "seed": a.seed,
                      "train_images": n, "epochs": a.epochs, "test_accuracy": evaluate(tx, ty),
                      "params": sum(q.numel() for q in net.parameters()),
                      "images_per_second": n * a.epochs / sum(seconds)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("arch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: autocast on CUDA (CPU always runs fp32)")
    p.add_argument("--train", action="store_true", help="train on Fashion-MNIST (see the module's doc)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--valid-fraction", type=float, default=0.1)
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--augment", type=lambda v: v == "true", default=True)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--cells-per-stage", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.train:
        return train(a)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = network(a.arch).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(a.batch_size, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda" and a.precision == "bf16"):
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
